"""The grammar compiler: its cache, compile timeouts, per-tenant fairness, and which errors
blame the client (xgrammar's refusals: 400) and which are ours (500).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import pytest

from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
from qwen_gateway.errors import EngineOverloaded, GatewayError, InternalError, InvalidRequest
from qwen_gateway.qwen.tokenizer import QwenTokenizer
from support.blocking_compiler import BlockingCompiler
from support.decoding import SCHEMA, TOOLS


def test_cache_returns_the_same_grammar(compiler: GrammarCompiler) -> None:
    assert compiler.json_schema(SCHEMA) is compiler.json_schema(json.loads(json.dumps(SCHEMA)))
    assert compiler.json_schema(None) is compiler.json_schema(None)
    assert compiler.tool_calls(TOOLS, parallel=True) is compiler.tool_calls(TOOLS, parallel=True)
    assert compiler.tool_calls(TOOLS, parallel=True) is not compiler.tool_calls(
        TOOLS, parallel=False
    )
    wrapped = [{"type": "function", "function": t} for t in TOOLS]
    assert compiler.tool_calls(wrapped, parallel=True) is compiler.tool_calls(TOOLS, parallel=True)


def test_cache_is_bounded(tokenizer: QwenTokenizer) -> None:
    small = GrammarCompiler(tokenizer, 151936, cache_size=2)
    schemas = [{"type": "object", "properties": {f"p{i}": {"type": "integer"}}} for i in range(3)]
    first = small.json_schema(schemas[0])
    second = small.json_schema(schemas[1])
    assert small.json_schema(schemas[0]) is first  # refreshed: now the most recent
    small.json_schema(schemas[2])  # evicts schemas[1]
    assert small.json_schema(schemas[0]) is first
    assert small.json_schema(schemas[1]) is not second


def test_slow_compile_times_out(tokenizer: QwenTokenizer) -> None:
    slow = GrammarCompiler(tokenizer, 151936, compile_timeout_s=0.02)
    # Bounded repetitions are slow to compile: this takes about a second.
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 40}}}
    with pytest.raises(InvalidRequest, match="longer than") as info:
        slow.json_schema(schema)
    assert info.value.param == "response_format"
    with pytest.raises(InvalidRequest, match="takes longer"):  # still compiling: fail at once
        slow.json_schema(schema)
    for thread in threading.enumerate():
        if thread.name == "grammar-compile":
            thread.join(timeout=60)
    assert slow.json_schema(schema) is slow.json_schema(schema)  # finished late, then cached


def slow(i: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"slow{i}": {"type": "integer"}}}


def test_a_tenants_slow_compiles_do_not_use_up_other_tenants_share(
    tokenizer: QwenTokenizer,
) -> None:
    # Timeout 0: every compilation still running when it is started counts as abandoned.
    blocking = BlockingCompiler(tokenizer, 151936, compile_timeout_s=0, max_threads=4)
    trivial = {"type": "object", "properties": {"n": {"type": "integer"}}}
    job = blocking.schema_job(trivial)
    with contextlib.suppress(InvalidRequest):
        blocking.json_schema(trivial, tenant="b")
    deadline = time.monotonic() + 120
    while blocking.cached(job) is None:  # compiled in the background, then cached
        assert time.monotonic() < deadline
        threading.Event().wait(0.01)
    for i in (1, 2):  # tenant a leaves two compilations running past their timeout
        with pytest.raises(InvalidRequest, match="took longer"):
            blocking.json_schema(slow(i), tenant="a")
    with pytest.raises(EngineOverloaded, match="Your earlier grammars"):
        blocking.json_schema(slow(3), tenant="a")  # a's share is used up...
    with pytest.raises(InvalidRequest, match="took longer"):
        blocking.json_schema(slow(4), tenant="b")  # ...b's is not
    assert blocking.json_schema(trivial, tenant="a") is blocking.cached(job)  # cached: served
    with pytest.raises(InvalidRequest, match="takes longer"):
        blocking.json_schema(slow(1), tenant="c")  # the same slow schema: refused at once
    with pytest.raises(InvalidRequest, match="took longer"):
        blocking.json_schema(slow(5), tenant="c")  # the fourth compilation running
    with pytest.raises(EngineOverloaded, match="busy"):
        blocking.json_schema(slow(6), tenant="d")  # past the global cap
    blocking.release.set()
    for thread in threading.enumerate():
        if thread.name == "grammar-compile":
            thread.join(timeout=120)
    assert blocking.cached(blocking.schema_job(slow(1))) is not None  # finished late, cached
    blocking.release.clear()
    with pytest.raises(InvalidRequest, match="took longer"):  # a may compile again
        blocking.json_schema(slow(7), tenant="a")
    blocking.release.set()


# ---- whose fault ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "string", "pattern": "(?<=a)b"}, "Lookbehind is not"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum greater than maximum"),
    ],
)
def test_a_schema_xgrammar_refuses_is_invalid_request(
    compiler: GrammarCompiler, schema: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidRequest, match="cannot be used to constrain the output") as info:
        compiler.json_schema(schema)
    assert info.value.status_code == 400
    assert info.value.param == "response_format"
    assert reason in info.value.message
    assert ".cc:" not in info.value.message  # xgrammar's log prefix is not the client's business


def test_parameters_xgrammar_refuses_are_invalid_request(compiler: GrammarCompiler) -> None:
    tool = {
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}},
        },
    }
    with pytest.raises(InvalidRequest, match="tool set cannot be used") as info:
        compiler.tool_calls([tool], parallel=False)
    assert info.value.param == "tools"


class FaultyCompiler(GrammarCompiler):
    """A compiler with a bug of ours: compiling a schema with a "bug" property raises ``fault``
    from our own code, before or after xgrammar compiled it."""

    fault: BaseException = ValueError("our bug")
    after_xgrammar = False

    def _compile_schema(self, text: str) -> Any:
        if '"bug' not in text:
            return super()._compile_schema(text)
        if self.after_xgrammar:
            super()._compile_schema(text)
        raise self.fault


@pytest.mark.parametrize(
    "fault",
    [ValueError("our bug"), RuntimeError("our bug"), MemoryError(), RecursionError("deep")],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("after_xgrammar", [False, True], ids=["before", "after"])
def test_our_bug_while_compiling_is_internal_error_and_logged(
    tokenizer: QwenTokenizer,
    caplog: pytest.LogCaptureFixture,
    fault: BaseException,
    after_xgrammar: bool,
) -> None:
    faulty = FaultyCompiler(tokenizer, 151936)
    faulty.fault = fault
    faulty.after_xgrammar = after_xgrammar
    schema = {"type": "object", "properties": {"bug": {"type": "integer"}}}
    with caplog.at_level("ERROR"), pytest.raises(GatewayError) as info:
        faulty.json_schema(schema)
    assert type(info.value) is InternalError
    assert info.value.status_code == 500
    assert info.value.__cause__ is fault
    (record,) = [r for r in caplog.records if r.name.endswith("decoding.compiler")]
    assert record.exc_info is not None and record.exc_info[1] is fault
    assert faulty.cached(faulty.schema_job(schema)) is None  # nothing cached
    ok = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert faulty.json_schema(ok) is faulty.json_schema(ok)  # the compiler carries on


def test_our_bug_in_the_closing_policy_is_internal_error(
    tokenizer: QwenTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = GrammarCompiler(tokenizer, 151936)

    def broken(self: object) -> None:
        raise ValueError("plan bug")

    from qwen_gateway.engines.transformers.decoding.grammar import CompiledGrammar

    monkeypatch.setattr(CompiledGrammar, "initial_plan", broken)
    with pytest.raises(InternalError):
        fresh.json_schema({"type": "object", "properties": {"q": {"type": "boolean"}}})
