"""Grammars for constrained decoding: JSON mode, JSON Schema and forced tool calls (xgrammar).

:class:`GrammarCompiler` (one per model) turns a response format or a set of tools into a
:class:`CompiledGrammar`, compiled once and kept in a bounded LRU cache; compile time and
schema size are bounded. :mod:`.constraint` applies a compiled grammar to one sequence.

Special tokens
--------------
xgrammar matches tokens by their text, and cannot accept tokens it considers special (empty
text). The vocabulary handed to it therefore blanks every added token (``<|im_start|>`` and
friends can never appear inside a JSON string) except ``<tool_call>``/``</tool_call>``, whose
text is prefixed with a byte that never occurs in UTF-8 so that no JSON string or literal can
match it; the tool-call grammar refers to them by id. Ids past the tokenizer's vocabulary
(padding of the model's embedding matrix) are special too, so they are never allowed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jsonschema
import numpy as np
import numpy.typing as npt
import torch
import xgrammar as xgr

from qwen_gateway.errors import EngineOverloaded, InvalidRequest
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, IM_END_ID, QwenTokenizer

__all__ = ["CompiledGrammar", "GrammarCompiler", "GrammarJob"]

TOOL_CALL_OPEN: Final = "<tool_call>"
TOOL_CALL_CLOSE: Final = "</tool_call>"

#: A byte that never occurs in UTF-8: prefixed to the tool-call tags' text so that no string
#: the grammar allows can be spelled with them; the grammar names them by id instead.
_HIDDEN_PREFIX: Final = b"\xff"

#: Nesting depth of a schema's JSON (objects and arrays; a nested object property costs two)
#: past which it is refused before compiling.
MAX_SCHEMA_DEPTH: Final = 128
#: Serialised size past which a schema or tool set is refused before compiling.
MAX_SCHEMA_BYTES: Final = 1 << 20
#: Compilations of one tenant past their timeout that may still be running before that
#: tenant's new ones are refused.
MAX_ABANDONED_COMPILES: Final = 2
#: Compilations running at once (abandoned ones included) before new ones are refused.
MAX_COMPILE_THREADS: Final = 8

# Budget rule.
_NEAR_WINDOW: Final = 8  # within this many tokens of the budget, candidates are checked
_GROWTH_PER_STEP: Final = 4  # assumed growth of L per unchecked step after a deviation
_WATCH_WINDOW: Final = 32  # ...and branch points this much further away
_CANDIDATES: Final = 4  # top candidates checked per step in the near window
_BRANCH_CHECK: Final = 8  # branch points with at most this many choices are checked
_MAX_PLAN: Final = 512  # longest plan simulated

# Mask application. A mask is turned once into the ids it allows or the ids it refuses
# (whichever are fewer) and cached by its bytes; applying it is then one gather/scatter or one
# index_fill, several times faster than xgrammar's CPU kernel on masks that refuse many tokens.
_MASK_CACHE_IDS: Final = 4_000_000  # ids kept over all cached masks (int64: 32 MB)
_MASK_ENTRY_IDS: Final = 1 << 17  # masks needing more ids than this use the kernel

# String length bounds up to this are compiled as a regex (see _length_patterns).
_PATTERN_MAX_LENGTH: Final = 128
_DATA_KEYWORDS: Final = frozenset({"enum", "const", "default", "examples"})
# Where a JSON Schema holds subschemas: maps of them, lists of them, or one (or, for the old
# "items", a list); every other keyword holds data or annotations.
_SCHEMA_MAPS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SCHEMA_LISTS: Final = frozenset({"prefixItems", "allOf", "anyOf", "oneOf", "items"})
_SCHEMA_VALUES: Final = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "not",
        "if",
        "then",
        "else",
        "contains",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_STRING_FORMS: Final = frozenset({"pattern", "format", "enum", "const"})

_NEG_INF: Final = float("-inf")
_LOG_PREFIX: Final = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


# ---- compiler -----------------------------------------------------------------------------


class _Runtime:
    """What every constraint of one model shares: vocabulary facts, policy tokens, mask cache."""

    def __init__(
        self,
        tokenizer: QwenTokenizer,
        vocab_size: int,
        stop_ids: list[int],
        tag_ids: Sequence[int] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.stop_ids = stop_ids
        self.stop_id = stop_ids[0]
        stop_words = np.zeros(self.words, dtype=np.uint32)
        for t in stop_ids:
            stop_words[t >> 5] |= np.uint32(1 << (t & 31))
        self._stop_words: npt.NDArray[np.int32] = stop_words.view(np.int32)
        self.quote = self._single(b'"')
        # Preference order of the closing policy outside strings: close, separate, smallest
        # value, open a string; then plain characters.
        prefs = [
            "}",
            "]",
            ", ",
            ",",
            "0",
            "null",
            "true",
            "false",
            '""',
            "[]",
            "{}",
            '"',
            ": ",
            ":",
        ]
        chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
        chars += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        chars += [chr(c) for c in range(ord("0"), ord("9") + 1)]
        chars += [chr(c) for c in range(0x21, 0x7F)] + [" "]
        ordered = list(tag_ids)  # allowed only where nothing else is
        for text in prefs + chars:
            single = self._single(text.encode())
            if single is not None and single not in ordered:
                ordered.append(single)
        self.pref_tokens = ordered
        self._masks: OrderedDict[bytes, _MaskIds | None] = OrderedDict()
        self._mask_ids = 0  # ids held by _masks
        self._mask_lock = threading.Lock()
        self._bit_offsets = torch.arange(32, dtype=torch.int64)
        self._powers = (torch.ones(32, dtype=torch.int64) << self._bit_offsets).to(torch.int32)

    def _single(self, text: bytes) -> int | None:
        ids = self.tokenizer.encode_text(text.decode())
        return ids[0] if len(ids) == 1 and ids[0] < self.vocab_size else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_text(text)

    def only_stop(self, words: npt.NDArray[np.int32]) -> bool:
        """True if a filled bitmask row allows nothing but stop tokens."""
        return not np.any(words & ~self._stop_words)

    def mask_ids(self, bitmask: torch.Tensor, key: bytes, device: torch.device) -> _MaskIds | None:
        """The cached id form of a filled bitmask row; None: apply it with the kernel."""
        with self._mask_lock:
            masks = self._masks
            if key in masks:
                masks.move_to_end(key)
                entry = masks[key]
            else:
                entry = self._convert(bitmask)
                masks[key] = entry
                self._mask_ids += entry.size if entry is not None else 0
                while self._mask_ids > _MASK_CACHE_IDS or len(masks) > 4 * 1024:
                    _, old = masks.popitem(last=False)
                    self._mask_ids -= old.size if old is not None else 0
        if entry is None or device.type == "cpu":
            return entry
        return entry.on(device)

    def _convert(self, bitmask: torch.Tensor) -> _MaskIds | None:
        bits = (bitmask.unsqueeze(1) & self._powers) != 0  # [words, 32]: allowed
        allowed = bits.flatten()[: self.vocab_size]
        n_allowed = int(allowed.sum())
        keep = n_allowed <= self.vocab_size - n_allowed
        ids = torch.nonzero(allowed if keep else ~allowed).flatten()
        if ids.numel() > _MASK_ENTRY_IDS or ids.numel() == 0:
            return None
        return _MaskIds(keep, ids)


class _MaskIds:
    """A mask as the ids it allows (``keep``) or the ids it refuses."""

    __slots__ = ("_on_device", "ids", "keep", "size")

    def __init__(self, keep: bool, ids: torch.Tensor) -> None:
        self.keep = keep
        self.ids = ids
        self.size = int(ids.numel())
        self._on_device: dict[torch.device, _MaskIds] = {}

    def on(self, device: torch.device) -> _MaskIds:
        moved = self._on_device.get(device)
        if moved is None:
            moved = self._on_device[device] = _MaskIds(self.keep, self.ids.to(device))
        return moved


class CompiledGrammar:
    """A compiled grammar ready to constrain sequences; made by :class:`GrammarCompiler`."""

    __slots__ = ("_initial_plan", "_runtime", "_xgr", "description")

    def __init__(self, compiled: xgr.CompiledGrammar, runtime: _Runtime, description: str) -> None:
        self._xgr = compiled
        self._runtime = runtime
        self.description = description
        # The closing policy's path from the start state, shared by every sequence.
        self._initial_plan: tuple[list[int], bool] | None = None

    def __repr__(self) -> str:
        return f"CompiledGrammar({self.description})"


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
        added = dict(tokenizer.added_tokens)
        size = min(tokenizer.vocab_size, model_vocab_size)
        vocab = [tokenizer.token_bytes(i) for i in range(size)]
        self._tag_ids: dict[str, int] = {}
        for text, idx in added.items():
            if idx >= size:
                continue
            if text in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE):
                vocab[idx] = _HIDDEN_PREFIX + text.encode()
                self._tag_ids[text] = idx
            else:
                vocab[idx] = b""
        stop_ids = [t for t in (IM_END_ID, ENDOFTEXT_ID) if t < model_vocab_size]
        if not stop_ids:
            raise ValueError("the model's vocabulary has no end-of-sequence token")
        info = xgr.TokenizerInfo(
            vocab, xgr.VocabType.RAW, vocab_size=model_vocab_size, stop_token_ids=stop_ids
        )
        self._xgr = xgr.GrammarCompiler(info, max_threads=compile_threads, cache_enabled=False)
        self._runtime = _Runtime(
            tokenizer, model_vocab_size, stop_ids, list(self._tag_ids.values())
        )
        self._cache_size = cache_size
        self._timeout = compile_timeout_s
        self._max_abandoned = max_abandoned
        self._max_threads = max_threads
        self._cache: OrderedDict[Hashable, CompiledGrammar] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}  # compilations running, by grammar
        self._lock = threading.Lock()

    @property
    def model_vocab_size(self) -> int:
        return self._runtime.vocab_size

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
        """Output Qwen's Hermes tool calls, one (or, with ``parallel``, one or more separated by
        a newline) of::

            <tool_call>\\n{"name": "<name>", "arguments": <JSON valid for its parameters>}\\n</tool_call>

        ``tools`` are OpenAI function definitions (``{"name", "parameters"}``, optionally inside
        ``{"type": "function", "function": ...}``): the ones the model may call here.
        """
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
        text = _schema_text(schema, param, what)
        return GrammarJob(
            ("json_schema", text),
            "JSON schema",
            param,
            lambda: self._compile_schema(text),
            lambda: _validate_schema(text, param, what),
        )

    def tools_job(
        self, tools: Sequence[Mapping[str, Any]], *, parallel: bool, param: str = "tools"
    ) -> GrammarJob:
        """The job for :meth:`tool_calls` (the tools are checked for size, not compiled)."""
        if not tools:
            raise InvalidRequest("No tool can be called here.", param=param)
        calls: list[tuple[str, str]] = []
        for i, tool in enumerate(tools):
            fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
            name = fn.get("name") if isinstance(fn, Mapping) else None
            if not isinstance(name, str) or not name:
                raise InvalidRequest(f"Tool {i} has no name.", param=param)
            params = fn.get("parameters") if isinstance(fn, Mapping) else None
            if params is None:
                params = {"type": "object", "properties": {}}
            if not isinstance(params, Mapping):
                raise InvalidRequest(
                    f"The parameters of tool {name!r} are not an object.", param=param
                )
            calls.append((name, _schema_text(params, param, f"parameters of tool {name!r}")))
        if sum(len(name) + len(text) for name, text in calls) > MAX_SCHEMA_BYTES:
            raise InvalidRequest("The tool definitions are too large to constrain.", param=param)

        def check() -> None:
            for name, text in calls:
                _validate_schema(text, param, f"parameters of tool {name!r}")

        return GrammarJob(
            ("tools", parallel, tuple(calls)),
            "tool set",
            param,
            lambda: self._compile_tools(calls, parallel),
            check,
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
        return self._xgr.compile_json_schema(
            _length_patterns(text), any_whitespace=False, strict_mode=True
        )

    def _compile_tools(self, calls: list[tuple[str, str]], parallel: bool) -> xgr.CompiledGrammar:
        open_id = self._tag_ids.get(TOOL_CALL_OPEN)
        close_id = self._tag_ids.get(TOOL_CALL_CLOSE)
        begin: Any = {"type": "token", "token": open_id} if open_id is not None else TOOL_CALL_OPEN
        end: Any = {"type": "token", "token": close_id} if close_id is not None else TOOL_CALL_CLOSE
        tags: list[dict[str, Any]] = []
        for name, params in calls:
            arguments = xgr.Grammar.from_json_schema(
                _length_patterns(params), any_whitespace=False, strict_mode=True
            )
            head = '\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
            content = {
                "type": "sequence",
                "elements": [
                    {"type": "const_string", "value": head},
                    {"type": "grammar", "grammar": str(arguments)},
                    {"type": "const_string", "value": "}\n"},
                ],
            }
            tags.append({"type": "tag", "begin": begin, "content": content, "end": end})
        one: dict[str, Any] = tags[0] if len(tags) == 1 else {"type": "or", "elements": tags}
        fmt = one
        if parallel:
            more = {"type": "sequence", "elements": [{"type": "const_string", "value": "\n"}, one]}
            fmt = {"type": "sequence", "elements": [one, {"type": "star", "content": more}]}
        structural = json.dumps({"type": "structural_tag", "format": fmt}, ensure_ascii=False)
        return self._xgr.compile_structural_tag(structural)

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
        from qwen_gateway.engines.transformers.constraint import Constraint

        try:
            grammar = CompiledGrammar(job.build(), self._runtime, job.description)
            Constraint(grammar, 1)  # computes the shared initial plan, within the timeout
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
        if isinstance(error, RecursionError | MemoryError | RuntimeError | ValueError):
            detail = _LOG_PREFIX.sub("", str(error)).strip()
            raise InvalidRequest(
                f"The {job.description} cannot be used to constrain the output: {detail}",
                param=job.param,
            ) from error
        raise error

    def _store(self, key: Hashable, grammar: CompiledGrammar) -> CompiledGrammar:
        self._cache[key] = grammar
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return grammar


def _schema_text(schema: Mapping[str, Any], param: str, what: str) -> str:
    """``schema`` as compact JSON text (the cache key), refusing ones too deep or too large."""
    if not isinstance(schema, Mapping):
        raise InvalidRequest(f"The {what} must be a JSON object.", param=param)
    depth = _depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidRequest(
            f"The {what} is nested more than {MAX_SCHEMA_DEPTH} levels deep.", param=param
        )
    try:
        text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"The {what} is not valid JSON: {exc}", param=param) from exc
    if len(text) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"The {what} is too large to constrain.", param=param)
    return text


def _validate_schema(text: str, param: str, what: str) -> None:
    """Check a schema (as JSON text) against its JSON Schema metaschema (2020-12 by default)."""
    schema = json.loads(text)
    try:
        validator = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise InvalidRequest(
            f"The {what} is not a valid JSON Schema: {exc.message} (at {where})", param=param
        ) from exc
    except RecursionError as exc:
        raise InvalidRequest(f"The {what} cannot be checked: {exc}", param=param) from exc
    _check_refs(schema, param, what)


def _check_refs(schema: object, param: str, what: str) -> None:
    """Refuse a ``$ref`` that is not a JSON pointer (``#`` or ``#/...``) to a schema within
    ``schema``: nothing is fetched, and an unresolved reference would not constrain anything."""
    stack: list[tuple[object, str]] = [(schema, "")]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            at = f"{where}/{key}"
            if key == "$ref":
                if not isinstance(value, str) or not _resolves(schema, value):
                    raise InvalidRequest(
                        f"The {what} has a $ref (at {at}) that is not a JSON pointer ('#/...') "
                        "to a schema within it.",
                        param=param,
                    )
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                stack.extend((v, f"{at}/{k}") for k, v in value.items())
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                stack.extend((v, f"{at}/{i}") for i, v in enumerate(value))
            elif key in _SCHEMA_VALUES:
                stack.append((value, at))


def _resolves(schema: object, ref: str) -> bool:
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False
    node = schema
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isascii() and token.isdigit():
            index = int(token)
            if index >= len(node):
                return False
            node = node[index]
        else:
            return False
    return isinstance(node, dict | bool)


def _length_patterns(text: str) -> str:
    """Rewrite string length bounds as ``pattern``, for xgrammar only.

    xgrammar unrolls ``minLength``/``maxLength`` into one rule per character, and filling a
    mask inside such a string costs milliseconds (every token is checked at runtime); the same
    bound written as the regex ``^[\\s\\S]{min,max}$`` gets precomputed masks (~50 µs).
    Both forms allow the same strings (no escapes inside a bounded string). Compile time grows
    with the bound either way, so bounds above ``_PATTERN_MAX_LENGTH`` are left as they are
    (and to the compile timeout).
    """
    schema = json.loads(text)
    changed = False
    stack: list[object] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key not in _DATA_KEYWORDS:
                stack.append(value)
        if node.get("type") != "string" or any(k in node for k in _STRING_FORMS):
            continue
        low, high = node.get("minLength", 0), node.get("maxLength")
        if "minLength" not in node and high is None:
            continue
        if not isinstance(low, int) or not (high is None or isinstance(high, int)):
            continue
        if low > _PATTERN_MAX_LENGTH or (
            high is not None and not low <= high <= _PATTERN_MAX_LENGTH
        ):
            continue
        node.pop("minLength", None)
        node.pop("maxLength", None)
        node["pattern"] = f"^[\\s\\S]{{{low},{'' if high is None else high}}}$"
        changed = True
    return json.dumps(schema, ensure_ascii=False) if changed else text


def _depth(value: object) -> int:
    """Container nesting depth, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children: Sequence[object] = list(item.values())
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_SCHEMA_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest
