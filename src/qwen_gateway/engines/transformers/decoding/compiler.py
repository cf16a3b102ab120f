"""Compiling response formats and tool sets into grammars, once per model, with an LRU cache.

:class:`GrammarCompiler` (one per model) turns a response format or a set of tools into a
:class:`~.grammar.CompiledGrammar`, compiled once and kept in a bounded LRU cache; compile
time and schema size are bounded. :mod:`.constraint` applies a compiled grammar to one
sequence.

Errors: a schema refused before compiling (:mod:`.schema`) or by xgrammar itself
(:mod:`.rejection`) is the client's :class:`~qwen_gateway.errors.InvalidRequest`; anything
else raised while compiling is our bug: logged with its traceback and reported as
:class:`~qwen_gateway.errors.InternalError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding import toolcall
from qwen_gateway.engines.transformers.decoding.grammar import CompiledGrammar
from qwen_gateway.engines.transformers.decoding.rejection import GrammarRejected, xgrammar_refusal
from qwen_gateway.engines.transformers.decoding.schema import (
    length_patterns,
    schema_text,
    validate_schema,
)
from qwen_gateway.engines.transformers.decoding.vocabulary import build_vocabulary
from qwen_gateway.errors import EngineOverloaded, GatewayError, InternalError, InvalidRequest
from qwen_gateway.qwen.tokenizer import QwenTokenizer

__all__ = ["GrammarCompiler", "GrammarJob"]

log = logging.getLogger(__name__)

#: Compilations of one tenant past their timeout that may still be running before that
#: tenant's new ones are refused.
MAX_ABANDONED_COMPILES: Final = 2
#: Compilations running at once (abandoned ones included) before new ones are refused.
MAX_COMPILE_THREADS: Final = 8


@dataclass(frozen=True, slots=True, eq=False)
class GrammarJob:
    """A grammar to compile (made by :meth:`GrammarCompiler.schema_job`/``tools_job``)."""

    key: Hashable
    description: str
    param: str
    build: Callable[[], xgr.CompiledGrammar]
    check: Callable[[], None]


class _Flight:
    """One compilation, in its own thread; everyone who needs the grammar waits for it."""

    __slots__ = ("abandoned", "deadline", "future", "tenant")

    def __init__(self, tenant: Hashable, deadline: float) -> None:
        self.tenant = tenant
        self.deadline = deadline
        self.abandoned = False  # a waiter gave up on it: it still runs, and is cached after
        self.future: concurrent.futures.Future[CompiledGrammar] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()  # a waiter that leaves cannot cancel it

    @classmethod
    def done(cls, grammar: CompiledGrammar) -> _Flight:
        flight = cls("", 0.0)
        flight.future.set_result(grammar)
        return flight

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


class GrammarCompiler:
    """Compiles response formats and tool sets for one model's vocabulary, with an LRU cache.

    Safe to call from several threads. A compilation runs in its own thread; past
    ``compile_timeout_s`` the request fails with :class:`InvalidRequest` (the compilation
    cannot be interrupted: it finishes in the background and is cached then, and while it
    runs the same request fails at once). Requests for a grammar already being compiled wait
    for that compilation. Each tenant may leave at most ``max_abandoned`` compilations running
    past their timeout, and at most ``max_threads`` run at once; past either, new
    compilations get :class:`EngineOverloaded` (cached grammars are always served).
    :meth:`compile` blocks for the compile time; :meth:`compile_async` waits without a thread.
    """

    def __init__(
        self,
        tokenizer: QwenTokenizer,
        model_vocab_size: int,
        *,
        cache_size: int = 128,
        compile_timeout_s: float = 10.0,
        compile_threads: int = 1,
        max_abandoned: int = MAX_ABANDONED_COMPILES,
        max_threads: int = MAX_COMPILE_THREADS,
    ) -> None:
        self._vocabulary, info = build_vocabulary(tokenizer, model_vocab_size)
        self._xgr = xgr.GrammarCompiler(info, max_threads=compile_threads, cache_enabled=False)
        self._cache_size = cache_size
        self._timeout = compile_timeout_s
        self._max_abandoned = max_abandoned
        self._max_threads = max_threads
        self._cache: OrderedDict[Hashable, CompiledGrammar] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}  # compilations running, by grammar
        self._lock = threading.Lock()

    @property
    def model_vocab_size(self) -> int:
        return self._vocabulary.vocab_size

    # ---- public entry points ------------------------------------------------

    def json_schema(
        self,
        schema: Mapping[str, Any] | None,
        *,
        param: str = "response_format",
        tenant: Hashable = "",
    ) -> CompiledGrammar:
        """Output one JSON value valid for ``schema`` (strict: no undeclared properties);
        ``None`` means any JSON object (``response_format={"type": "json_object"}``)."""
        return self.compile(self.schema_job(schema, param=param), tenant)

    def tool_calls(
        self,
        tools: Sequence[Mapping[str, Any]],
        *,
        parallel: bool,
        param: str = "tools",
        tenant: Hashable = "",
    ) -> CompiledGrammar:
        """Output Qwen's Hermes tool calls (see :mod:`.toolcall`): one, or with ``parallel``
        one or more. ``tools`` are OpenAI function definitions: the ones the model may call."""
        return self.compile(self.tools_job(tools, parallel=parallel, param=param), tenant)

    def schema_job(
        self, schema: Mapping[str, Any] | None, *, param: str = "response_format"
    ) -> GrammarJob:
        """The job for :meth:`json_schema` (the schema is checked for size, not compiled)."""
        if schema is None:
            return GrammarJob(
                ("json_object",),
                "JSON object",
                param,
                lambda: self._compile_schema('{"type": "object"}'),
                lambda: None,
            )
        what = "response_format.json_schema.schema"
        text = schema_text(schema, param, what)
        return GrammarJob(
            ("json_schema", text),
            "JSON schema",
            param,
            lambda: self._compile_schema(text),
            lambda: validate_schema(text, param, what),
        )

    def tools_job(
        self, tools: Sequence[Mapping[str, Any]], *, parallel: bool, param: str = "tools"
    ) -> GrammarJob:
        """The job for :meth:`tool_calls` (the tools are checked for size, not compiled)."""
        calls = toolcall.parse_tools(tools, param)
        return GrammarJob(
            ("tools", parallel, calls),
            "tool set",
            param,
            lambda: self._compile_tools(calls, parallel),
            lambda: toolcall.check_tools(calls, param),
        )

    def cached(self, job: GrammarJob) -> CompiledGrammar | None:
        """The compiled grammar if it is in the cache (no waiting for compilations)."""
        with self._lock:
            return self._hit(job.key)

    def compile(self, job: GrammarJob, tenant: Hashable = "") -> CompiledGrammar:
        """The compiled grammar for ``job``; blocks for up to the compile timeout."""
        flight = self._start(job, tenant)
        concurrent.futures.wait([flight.future], timeout=flight.remaining())
        return self._outcome(flight, job)

    async def compile_async(self, job: GrammarJob, tenant: Hashable = "") -> CompiledGrammar:
        """:meth:`compile` for the event loop: the wait holds no thread."""
        flight = await asyncio.to_thread(self._start, job, tenant)  # the schema check runs here
        waited = asyncio.wrap_future(flight.future)
        try:
            done, _ = await asyncio.wait([waited], timeout=flight.remaining())
            if done:
                waited.exception()  # read here; _outcome reports it
        finally:
            waited.cancel()  # no-op when done; the compilation itself goes on
        return self._outcome(flight, job)

    # ---- compilation ----------------------------------------------------------

    def _compile_schema(self, text: str) -> xgr.CompiledGrammar:
        rewritten = length_patterns(text)
        with xgrammar_refusal():
            return self._xgr.compile_json_schema(rewritten, any_whitespace=False, strict_mode=True)

    def _compile_tools(self, calls: toolcall.ToolSchemas, parallel: bool) -> xgr.CompiledGrammar:
        tag = toolcall.structural_tag(calls, parallel, self._vocabulary.tag_ids)
        with xgrammar_refusal():
            return self._xgr.compile_structural_tag(tag)

    def _hit(self, key: Hashable) -> CompiledGrammar | None:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def _start(self, job: GrammarJob, tenant: Hashable) -> _Flight:
        """Start compiling ``job`` for ``tenant``, or join the compilation of the same grammar
        that is running; a cached grammar comes back as a finished flight."""
        with self._lock:
            hit = self._hit(job.key)
        if hit is not None:
            return _Flight.done(hit)
        job.check()
        with self._lock:
            hit = self._hit(job.key)
            if hit is not None:
                return _Flight.done(hit)
            flight = self._flights.get(job.key)
            if flight is not None:
                if flight.abandoned:
                    raise InvalidRequest(
                        f"The {job.description} is too complex: compiling it takes longer "
                        f"than {self._timeout:g}s.",
                        param=job.param,
                    )
                return flight
            abandoned = sum(f.abandoned and f.tenant == tenant for f in self._flights.values())
            if abandoned >= self._max_abandoned:
                raise EngineOverloaded(
                    "Your earlier grammars are still compiling past the time limit; retry shortly.",
                    headers={"Retry-After": "5"},
                )
            if len(self._flights) >= self._max_threads:
                raise EngineOverloaded(
                    "The grammar compiler is busy with slow schemas; retry shortly.",
                    headers={"Retry-After": "5"},
                )
            flight = self._flights[job.key] = _Flight(tenant, time.monotonic() + self._timeout)
        threading.Thread(
            target=self._run, args=(job, flight), name="grammar-compile", daemon=True
        ).start()
        return flight

    def _run(self, job: GrammarJob, flight: _Flight) -> None:
        try:
            grammar = CompiledGrammar(job.build(), self._vocabulary, job.description)
            grammar.initial_plan()  # shared by every sequence: computed within the timeout
        except BaseException as exc:
            with self._lock:
                del self._flights[job.key]
            flight.future.set_exception(exc)
            return
        with self._lock:
            del self._flights[job.key]
            self._store(job.key, grammar)
        flight.future.set_result(grammar)

    def _outcome(self, flight: _Flight, job: GrammarJob) -> CompiledGrammar:
        """What waiting for ``flight`` gave: the grammar, or the error for the request."""
        with self._lock:
            if not flight.future.done():
                flight.abandoned = True
                raise InvalidRequest(
                    f"The {job.description} is too complex: compiling it took longer than "
                    f"{self._timeout:g}s.",
                    param=job.param,
                )
        error = flight.future.exception()
        if error is None:
            return flight.future.result()
        if isinstance(error, GrammarRejected):
            raise InvalidRequest(
                f"The {job.description} cannot be used to constrain the output: {error.detail}",
                param=job.param,
            ) from error
        if isinstance(error, GatewayError) or not isinstance(error, Exception):
            raise error
        log.exception("compiling a %s failed", job.description, exc_info=error)
        raise InternalError(f"The {job.description} could not be compiled.") from error

    def _store(self, key: Hashable, grammar: CompiledGrammar) -> CompiledGrammar:
        self._cache[key] = grammar
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return grammar
