"""Grammar-constrained decoding with the tiny random model: JSON mode, JSON Schema, tool calls.

Every decode applies the constraint at each step of a real (random-weight) model, greedy and
sampled, with a generous budget and with tight ones; outputs must be complete and valid, also
when the budget rule had to force the close.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from qwen_gateway.engines.transformers.constraint import Constraint
from qwen_gateway.engines.transformers.grammar import (
    CompiledGrammar,
    GrammarCompiler,
    _length_patterns,
)
from qwen_gateway.errors import EngineOverloaded, InvalidRequest
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, IM_END_ID, QwenTokenizer
from support.blocking_compiler import BlockingCompiler

EOS = frozenset({IM_END_ID, ENDOFTEXT_ID})
TOOL_OPEN_ID = 151657
TOOL_CLOSE_ID = 151658
REAL_VOCAB = 151665
SEEDS = range(20)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "v": {"const": 2},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "pos": {
            "type": "object",
            "properties": {
                "x": {"type": "number", "minimum": -5, "maximum": 5},
                "ok": {"type": "boolean"},
            },
            "required": ["x"],
            "additionalProperties": False,
        },
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer", "minimum": 1, "maximum": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
    },
    "required": ["v", "kind", "pos"],
    "additionalProperties": False,
}

WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["c", "f"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
}
CLOCK = {"name": "now", "parameters": {"type": "object", "properties": {}}}
TOOLS = [WEATHER, CLOCK]


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> QwenTokenizer:
    return QwenTokenizer.from_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def slot_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    from qwen_gateway.engines.transformers.model import CacheShape, SlotModel

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    return SlotModel(hf, CacheShape(slots=len(SEEDS), max_len=320))


@pytest.fixture(scope="module")
def compiler(tokenizer: QwenTokenizer, slot_model: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, int(slot_model.config.vocab_size))


# ---- decoding ----------------------------------------------------------------------------


@dataclass
class Run:
    tokens: list[int]  # without EOS
    finished: bool  # EOS sampled within the budget
    forced: bool
    text: str


def decode(
    model: Any,
    tokenizer: QwenTokenizer,
    grammar: CompiledGrammar,
    max_tokens: int,
    *,
    sampled: bool,
) -> list[Run]:
    """Decode one sequence per seed (a different prompt each), all in one batch."""
    prompts = [tokenizer.encode_text(f"Request {seed}: reply in JSON, please.") for seed in SEEDS]
    constraints = [Constraint(grammar, max_tokens) for _ in SEEDS]
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    outputs: list[list[int]] = [[] for _ in SEEDS]
    finished = [False] * len(SEEDS)
    positions = [len(p) for p in prompts]
    with torch.inference_mode():
        logits = torch.stack([model.prefill(i, p) for i, p in enumerate(prompts)])
        active = list(SEEDS)
        while active:
            last: list[int] = []
            still: list[int] = []
            for row, i in enumerate(active):
                logit_row = logits[row]
                constraints[i].apply(logit_row, max_tokens - len(outputs[i]))
                if sampled:  # inverse-CDF sampling: multinomial is slow over 152k entries
                    cdf = torch.cumsum(torch.softmax(logit_row, dim=-1), dim=0)
                    u = torch.rand(1, generator=generators[i]) * cdf[-1]
                    token = min(int(torch.searchsorted(cdf, u)), len(cdf) - 1)
                else:
                    token = int(torch.argmax(logit_row))
                constraints[i].accept(token)
                if token in EOS:
                    finished[i] = True
                    assert constraints[i].done
                    continue
                outputs[i].append(token)
                if len(outputs[i]) + 1 > max_tokens:  # EOS counts against the budget too
                    continue
                still.append(i)
                last.append(token)
            active = still
            if active:
                logits = model.decode(active, last, [positions[i] for i in active])
                for i in active:
                    positions[i] += 1
    return [
        Run(out, fin, c.forced_close, tokenizer.decode(out))
        for out, fin, c in zip(outputs, finished, constraints, strict=True)
    ]


def shortest(grammar: CompiledGrammar) -> int:
    return Constraint(grammar, 1000).shortest_completion()


def check_tool_calls(run: Run, tools: Sequence[Mapping[str, Any]], *, parallel: bool) -> None:
    params = {t["name"]: t["parameters"] for t in tools}
    assert run.text.startswith("<tool_call>\n"), run.text
    calls = run.text.split("\n</tool_call>\n<tool_call>\n") if parallel else [run.text]
    if len(calls) > 1:
        calls[0] += "\n</tool_call>"
        calls[-1] = "<tool_call>\n" + calls[-1]
        calls[1:-1] = [f"<tool_call>\n{c}\n</tool_call>" for c in calls[1:-1]]
    for call in calls:
        match = re.fullmatch(
            r'<tool_call>\n\{"name": ("(?:[^"\\]|\\.)*"), "arguments": (.*)\}\n</tool_call>',
            call,
            flags=re.DOTALL,
        )
        assert match, call
        name = json.loads(match.group(1))
        assert name in params, name
        jsonschema.validate(json.loads(match.group(2)), params[name])
    # The tags are the single added tokens, and nothing else spells them.
    assert run.tokens.count(TOOL_OPEN_ID) == len(calls)
    assert run.tokens.count(TOOL_CLOSE_ID) == len(calls)
    assert run.text.count("<tool_call>") == len(calls)


def budgets(grammar: CompiledGrammar) -> list[int]:
    return [200, shortest(grammar) + 2, 30]


MODES = [pytest.param(False, id="greedy"), pytest.param(True, id="sampled")]


# ---- output validity ---------------------------------------------------------------------


@pytest.mark.parametrize("sampled", MODES)
def test_json_object_outputs_parse(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer, sampled: bool
) -> None:
    grammar = compiler.json_schema(None)
    for max_tokens in budgets(grammar):
        for run in decode(slot_model, tokenizer, grammar, max_tokens, sampled=sampled):
            assert run.finished, (max_tokens, run.text)
            assert isinstance(json.loads(run.text), dict), run.text
            assert "\t" not in run.text and "\n" not in run.text


@pytest.mark.parametrize("sampled", MODES)
def test_json_schema_outputs_validate(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer, sampled: bool
) -> None:
    grammar = compiler.json_schema(SCHEMA)
    forced = 0
    for max_tokens in budgets(grammar):
        for run in decode(slot_model, tokenizer, grammar, max_tokens, sampled=sampled):
            assert run.finished, (max_tokens, run.text)
            jsonschema.validate(json.loads(run.text), SCHEMA)
            forced += run.forced
    assert forced  # the tight budgets did exercise the forced close


@pytest.mark.parametrize("sampled", MODES)
@pytest.mark.parametrize("parallel", [False, True], ids=["single", "parallel"])
def test_tool_call_outputs_match_hermes_format(
    compiler: GrammarCompiler,
    slot_model: Any,
    tokenizer: QwenTokenizer,
    sampled: bool,
    parallel: bool,
) -> None:
    grammar = compiler.tool_calls(TOOLS, parallel=parallel)
    forced = 0
    for max_tokens in budgets(grammar):
        for run in decode(slot_model, tokenizer, grammar, max_tokens, sampled=sampled):
            assert run.finished, (max_tokens, run.text)
            check_tool_calls(run, TOOLS, parallel=parallel)
            forced += run.forced
    assert forced


def test_named_tool_choice_forces_that_tool(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.tool_calls([WEATHER], parallel=False)
    for run in decode(slot_model, tokenizer, grammar, 40, sampled=True):
        assert run.finished
        check_tool_calls(run, [WEATHER], parallel=False)
        assert '"name": "get_weather"' in run.text


def test_minimal_budget_closes_exactly(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    grammar = compiler.json_schema(SCHEMA)
    need = shortest(grammar)
    for run in decode(slot_model, tokenizer, grammar, need, sampled=True):
        assert run.finished and run.forced
        assert len(run.tokens) + 1 <= need
        jsonschema.validate(json.loads(run.text), SCHEMA)


def test_recursive_schema(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["v", "kids"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    }
    grammar = compiler.json_schema(tree)
    for max_tokens in (60, shortest(grammar) + 1):
        for run in decode(slot_model, tokenizer, grammar, max_tokens, sampled=True):
            assert run.finished
            jsonschema.validate(json.loads(run.text), tree)


# ---- masks -------------------------------------------------------------------------------


def allowed(constraint: Constraint, vocab: int, remaining: int = 1000) -> set[int]:
    row = torch.zeros(vocab)
    constraint.apply(row, remaining)
    return set(torch.nonzero(row > float("-inf")).flatten().tolist())


def test_padding_and_added_tokens_never_allowed(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    vocab = compiler.model_vocab_size
    constraint = Constraint(compiler.json_schema(None), 100)
    for token in tokenizer.encode_text('{"key'):
        constraint.accept(token)
    inside_string = allowed(constraint, vocab)
    assert len(inside_string) > 100_000
    assert not {t for t in inside_string if t >= REAL_VOCAB - 22}  # added tokens and padding


def test_tool_tags_only_as_single_tokens(
    compiler: GrammarCompiler, tokenizer: QwenTokenizer
) -> None:
    vocab = compiler.model_vocab_size
    constraint = Constraint(compiler.tool_calls(TOOLS, parallel=False), 100)
    assert allowed(constraint, vocab) == {TOOL_OPEN_ID}
    with pytest.raises(ValueError, match="not allowed"):
        constraint.accept(tokenizer.encode_text("<")[0])
    constraint.accept(TOOL_OPEN_ID)
    for token in tokenizer.encode_text('\n{"name": "get_weather", "arguments": {"city": "'):
        assert token in allowed(constraint, vocab)
        constraint.accept(token)
    assert TOOL_CLOSE_ID not in allowed(constraint, vocab)
    for token in tokenizer.encode_text('Oslo"}}\n'):
        constraint.accept(token)
    assert allowed(constraint, vocab) == {TOOL_CLOSE_ID}
    constraint.accept(TOOL_CLOSE_ID)
    assert constraint.done
    assert allowed(constraint, vocab) <= EOS


def test_compact_whitespace_only(compiler: GrammarCompiler, tokenizer: QwenTokenizer) -> None:
    constraint = Constraint(compiler.json_schema(None), 100)
    constraint.accept(tokenizer.encode_text("{")[0])
    texts = [tokenizer.token_bytes(t) for t in allowed(constraint, compiler.model_vocab_size)]
    assert not [t for t in texts if t[:1] in (b" ", b"\n", b"\t", b"\r")]


def test_done_after_complete_object(compiler: GrammarCompiler, tokenizer: QwenTokenizer) -> None:
    constraint = Constraint(compiler.json_schema(None), 100)
    assert not constraint.done
    constraint.accept(tokenizer.encode_text("{}")[0])
    assert constraint.done
    assert allowed(constraint, compiler.model_vocab_size) == set(EOS)
    constraint.accept(IM_END_ID)
    assert constraint.done


def test_budget_forces_the_policy_path(compiler: GrammarCompiler, tokenizer: QwenTokenizer) -> None:
    constraint = Constraint(compiler.json_schema(None), 100)
    for token in tokenizer.encode_text('{"a": [[1, "x'):
        constraint.accept(token)
    need = constraint.shortest_completion()
    assert need >= 4  # '"', ']', ']', '}' (some merged), EOS
    assert len(allowed(constraint, compiler.model_vocab_size, remaining=1000)) > 1000
    assert not constraint.forced_close
    produced: list[int] = []
    for step in range(need):
        (token,) = allowed(constraint, compiler.model_vocab_size, remaining=need - step)
        constraint.accept(token)
        if token in EOS:
            break
        produced.append(token)
    assert constraint.forced_close and constraint.done
    assert json.loads('{"a": [[1, "x' + tokenizer.decode(produced)) == {"a": [[1, "x"]]}


def test_length_bounds_become_patterns() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "minLength": 1, "maxLength": 5},
            "b": {"type": "string", "maxLength": 100_000},
            "c": {"type": "string", "maxLength": 3, "pattern": "^x+$"},
            "d": {"enum": [{"type": "string", "maxLength": 3}]},
        },
    }
    out = json.loads(_length_patterns(json.dumps(schema)))["properties"]
    assert out["a"] == {"type": "string", "pattern": "^[\\s\\S]{1,5}$"}
    assert out["b"] == schema["properties"]["b"]  # too long to unroll: left to xgrammar
    assert out["c"] == schema["properties"]["c"]
    assert out["d"] == schema["properties"]["d"]  # data, not a schema


# ---- compiler ----------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "objekt"},
        {"type": "string", "minLength": -1},
        {"type": "object", "properties": {"a": {"type": "integer", "maximum": "ten"}}},
        {"type": "object", "required": "a"},
    ],
)
def test_invalid_schema_is_invalid_request(compiler: GrammarCompiler, schema: Any) -> None:
    with pytest.raises(InvalidRequest, match="not a valid JSON Schema") as info:
        compiler.json_schema(schema)
    assert info.value.param == "response_format"
    assert info.value.status_code == 400


def test_invalid_tools_are_invalid_requests(compiler: GrammarCompiler) -> None:
    bad = {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": 3}}}}
    with pytest.raises(InvalidRequest, match="tool 'f'") as info:
        compiler.tool_calls([bad], parallel=False)
    assert info.value.param == "tools"
    with pytest.raises(InvalidRequest, match="no name"):
        compiler.tool_calls([{"parameters": {}}], parallel=False)
    with pytest.raises(InvalidRequest):
        compiler.tool_calls([], parallel=False)


def test_deeply_nested_schema_is_refused_quickly(compiler: GrammarCompiler) -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(2000):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidRequest, match="nested"):  # refused before anything recursive runs
        compiler.json_schema(deep)


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


def test_two_hundred_tools(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    tools = [
        {
            "name": f"tool_{i}",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
                "required": ["q"],
            },
        }
        for i in range(200)
    ]
    try:
        grammar = compiler.tool_calls(tools, parallel=True)
    except InvalidRequest:  # failing cleanly is acceptable too
        return
    for run in decode(slot_model, tokenizer, grammar, 40, sampled=True):
        assert run.finished
        check_tool_calls(run, tools, parallel=True)


def test_unicode_tool_names(
    compiler: GrammarCompiler, slot_model: Any, tokenizer: QwenTokenizer
) -> None:
    tools = [
        {
            "name": 'météo_天気"q',
            "parameters": {
                "type": "object",
                "properties": {"城市": {"type": "string", "maxLength": 4}},
                "required": ["城市"],
            },
        },
        {"name": "ñ", "parameters": {"type": "object", "properties": {}}},
    ]
    grammar = compiler.tool_calls(tools, parallel=True)
    for run in decode(slot_model, tokenizer, grammar, shortest(grammar) + 2, sampled=True):
        assert run.finished
        check_tool_calls(run, tools, parallel=True)


# ---- references and fairness -------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["http://127.0.0.1:9/schema.json", "file:///etc/passwd", "#/$defs/missing", "#anchor",
     'x\n{"request_id":"FORGED"}\n', "#/properties/a/type"],
)  # fmt: skip
def test_a_ref_outside_the_schema_is_refused_before_compiling(
    compiler: GrammarCompiler, ref: str
) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"$ref": ref}},
        "$defs": {"other": {"type": "integer"}},
    }
    with pytest.raises(InvalidRequest, match=r"\$ref \(at /properties/b/\$ref\)") as info:
        compiler.json_schema(schema)
    assert info.value.param == "response_format"
    tool = {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": ref}}}}
    with pytest.raises(InvalidRequest, match=r"\$ref") as info:
        compiler.tool_calls([tool], parallel=False)
    assert info.value.param == "tools"


def test_local_refs_and_ref_like_data_are_accepted(compiler: GrammarCompiler) -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/a~1b"},
            "$ref": {"const": {"$ref": "http://not-a-reference"}},  # a property, and data
        },
        "$defs": {"a/b": {"type": "integer"}},
    }
    assert compiler.json_schema(schema) is not None


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
