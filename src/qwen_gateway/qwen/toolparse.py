"""Incremental parser for Qwen2.5 output that may hold tool calls.

Qwen2.5 is trained on the Hermes format::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

In practice the models also emit a few variants, all handled here:

* a JSON list of call objects, or several call objects one after another, in one block;
* ``<tools>...</tools>`` instead of ``<tool_call>...</tool_call>``;
* a Markdown fence (```` ```json ````, ```` ``` ```` or ```` ```tool_call ````) holding a call
  object; such a fence is a call only if its JSON really is a call object (and its name is
  one of the declared tools, when they are known), otherwise it stays content, verbatim;
* ``arguments`` double-encoded as a JSON string, ``parameters`` instead of ``arguments``,
  the OpenAI shape ``{"type": "function", "function": {...}}``;
* a ``<tool_call>`` left open when generation stops.

The parser is fed text as it is generated and hands back :class:`Content` and
:class:`ParsedToolCall` events. Only text that might still turn out to be a tag or a fence
opener is held back; everything else comes out at once. The result never depends on how the
output was split into chunks. Nothing here raises on bad model output: a block that cannot be
parsed comes back as content and is counted in :attr:`ToolCallParser.malformed`.

Whitespace rules: whitespace directly inside the tags is insignificant, and whitespace right
after a block that was replaced by calls (or was empty) is dropped, so that the newlines
between and after calls do not turn into content. Text before the first call is emitted as
it comes, trailing whitespace included; a caller that wants tidy content may strip it.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ["Content", "ParseEvent", "ParsedToolCall", "ToolCallParser"]


@dataclass(frozen=True, slots=True)
class Content:
    """Plain assistant text."""

    text: str


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    """One complete, valid tool call.

    ``arguments`` is a JSON object serialised compactly (``separators=(",", ":")``, non-ASCII
    characters kept as they are).
    """

    name: str
    arguments: str


ParseEvent: TypeAlias = Content | ParsedToolCall

# --- tokens -------------------------------------------------------------------------------

_OPEN_TAGS = ("<tool_call>", "<tools>")
_CLOSE_TAGS = ("</tool_call>", "</tools>")
_ALL_TAGS = _OPEN_TAGS + _CLOSE_TAGS
_FENCE = "```"
# Fence info strings whose fenced block may hold a call; any other fence is ordinary code.
_CALL_FENCE_LANGS = frozenset({"", "json", "tool_call", "tool_calls"})
# Longest fence opener (backticks, info string, spaces, line break) we wait for.
_MAX_FENCE_OPENER = 40
_FENCE_INFO_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+.-")

_MAX_TAG = max(len(tag) for tag in _ALL_TAGS)

_SPECIAL = re.compile(r"[<`]")
_JSON_WS = " \t\n\r"
# Keys a fenced call object may carry; anything else means the fence shows some other JSON.
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "type", "id"})
_WRAPPER_KEYS = frozenset({"type", "function", "id"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _Number(str):
    """A JSON number kept as its exact text (no float rounding, no overflow to infinity)."""

    __slots__ = ()


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_Number, parse_int=_Number)


def _dump(value: Any) -> str:
    """Compact JSON, numbers written exactly as the model wrote them."""
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, dict):
        items = (json.dumps(k, ensure_ascii=False) + ":" + _dump(v) for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


# --- block content --------------------------------------------------------------------------


def _decode_values(text: str) -> list[Any] | None:
    """Decode a run of JSON values separated by whitespace (or a comma); None if it is not one."""
    values: list[Any] = []
    pos = _skip_json_ws(text, 0)
    while pos < len(text):
        if values and text[pos] == ",":
            pos = _skip_json_ws(text, pos + 1)
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return None
        values.append(value)
        pos = _skip_json_ws(text, pos)
    return values or None


def _skip_json_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _JSON_WS:
        pos += 1
    return pos


def _normalise_arguments(raw: Any) -> dict[str, Any] | None:
    """The arguments as a JSON object, undoing string encoding; None if they are not one."""
    for _ in range(3):
        if raw is None:
            return {}
        if isinstance(raw, dict):
            return raw
        if not isinstance(raw, str):
            return None
        if not raw.strip():
            return {}
        try:
            raw = _DECODER.decode(raw.strip())
        except (ValueError, RecursionError):
            return None
    return None


def _to_call(obj: Any, tool_names: frozenset[str] | None, *, strict: bool) -> ParsedToolCall | None:
    """Turn one decoded JSON value into a call, or None if it is not a valid call object.

    ``strict`` (used for fenced blocks, which may just be JSON shown to the user) rejects
    objects with keys a call object does not have and, when the tools are unknown, objects
    without arguments.
    """
    if not isinstance(obj, dict):
        return None
    if "name" not in obj and isinstance(obj.get("function"), dict):
        if strict and not obj.keys() <= _WRAPPER_KEYS:
            return None
        obj = obj["function"]
    if strict:
        if not obj.keys() <= _CALL_KEYS:
            return None
        if tool_names is None and "arguments" not in obj and "parameters" not in obj:
            return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    if tool_names is not None and name not in tool_names:
        return None
    if "arguments" in obj:
        raw = obj["arguments"]
    elif "parameters" in obj:
        raw = obj["parameters"]
    else:
        raw = {}
    arguments = _normalise_arguments(raw)
    if arguments is None:
        return None
    try:
        serialised = _dump(arguments)
    except (ValueError, TypeError, RecursionError):
        return None
    return ParsedToolCall(name=name, arguments=serialised)


def _unfence(text: str) -> str:
    """Drop a Markdown fence wrapped around the whole text, if there is one."""
    if not text.startswith(_FENCE):
        return text
    newline = text.find("\n")
    if newline < 0:
        return text
    body = text[newline + 1 :].rstrip()
    if body.endswith(_FENCE):
        body = body[: -len(_FENCE)]
    return body


def _parse_calls(
    text: str, tool_names: frozenset[str] | None, *, strict: bool
) -> list[ParsedToolCall] | None:
    """All the calls a block holds, or None unless every value in it is a valid call."""
    values = _decode_values(text)
    if values is None:
        return None
    calls: list[ParsedToolCall] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        if not items:
            return None
        for item in items:
            call = _to_call(item, tool_names, strict=strict)
            if call is None:
                return None
            calls.append(call)
    return calls


# --- fence openers --------------------------------------------------------------------------


class _Match(enum.Enum):
    NO = enum.auto()
    NEED_MORE = enum.auto()
    YES = enum.auto()


def _match_fence_opener(s: str, k: int) -> tuple[_Match, int, str]:
    """Whether a fence opener (```` ```lang ```` + line break) starts at ``s[k]``.

    Returns the verdict, the index just past the opener and the info string. NEED_MORE means
    the text ends before the question can be decided.
    """
    n = len(s)
    limit = min(n, k + _MAX_FENCE_OPENER + 1)
    j = k
    for _ in range(len(_FENCE)):
        if j >= n:
            return _Match.NEED_MORE, j, ""
        if s[j] != "`":
            return _Match.NO, j, ""
        j += 1
    while j < limit and s[j] in " \t":
        j += 1
    start = j
    while j < limit and s[j] in _FENCE_INFO_CHARS:
        j += 1
    info = s[start:j]
    while j < limit and s[j] in " \t":
        j += 1
    if j < limit and s[j] == "\r":
        j += 1
    if j - k > _MAX_FENCE_OPENER:
        return _Match.NO, j, ""
    if j >= n:
        return _Match.NEED_MORE, j, ""
    if s[j] == "\n":
        return _Match.YES, j + 1, info
    return _Match.NO, j, ""


# --- the parser -----------------------------------------------------------------------------


class _State(enum.Enum):
    TEXT = enum.auto()  # ordinary text (possibly inside a non-call code fence)
    TAG = enum.auto()  # inside <tool_call> / <tools>
    FENCE = enum.auto()  # inside a fence that may hold a call


class _TagMode(enum.Enum):
    UNDECIDED = enum.auto()  # only whitespace seen so far
    JSON = enum.auto()  # looks like JSON: buffer it until the block ends
    TEXT = enum.auto()  # cannot be a call: stream it out as content


class ToolCallParser:
    """Splits streamed Qwen output into content and tool calls.

    Call :meth:`feed` with each piece of generated text and :meth:`finish` once at the end;
    both return the events that became certain. After :meth:`finish` the parser is ready for
    a new output (``malformed`` keeps counting).
    """

    malformed: int

    def __init__(self, tool_names: Collection[str] | None = None) -> None:
        self._tool_names = frozenset(tool_names) if tool_names is not None else None
        self.malformed = 0
        self._events: list[ParseEvent] = []
        self._parts: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self._state = _State.TEXT
        self._pending = ""  # held back: a possible tag, fence or terminator prefix
        self._in_code = False  # inside a fence that is ordinary content
        self._skip_ws = False  # drop whitespace after a block replaced by calls
        self._body: list[str] = []  # text of the current tag or fence block
        self._tag_mode = _TagMode.UNDECIDED
        self._tag_ws: list[str] = []  # trailing whitespace held in _TagMode.TEXT
        self._fence_opener = ""
        self._fence_json = False

    # --- public ---------------------------------------------------------------------------

    def feed(self, text: str) -> list[ParseEvent]:
        """Consume the next piece of output; return the events it made certain."""
        s = self._pending + text
        self._pending = ""
        self._process(s)
        return self._take_events()

    def finish(self) -> list[ParseEvent]:
        """Signal the end of the output; return the remaining events."""
        rest = self._pending
        self._pending = ""
        if self._state is _State.TEXT:
            # Whatever was held is a token prefix that never completed: plain text.
            self._emit(rest)
        elif self._state is _State.TAG:
            self._tag_text(rest)
            self._end_tag_block()
        else:
            self._emit(self._fence_opener + "".join(self._body) + rest)
        events = self._take_events()
        self._reset()
        return events

    # --- output ---------------------------------------------------------------------------

    def _emit(self, text: str) -> None:
        if text:
            self._parts.append(text)

    def _flush_content(self) -> None:
        if self._parts:
            self._events.append(Content("".join(self._parts)))
            self._parts.clear()

    def _emit_calls(self, calls: list[ParsedToolCall]) -> None:
        self._flush_content()
        self._events.extend(calls)

    def _take_events(self) -> list[ParseEvent]:
        self._flush_content()
        events = self._events
        self._events = []
        return events

    # --- scanning -------------------------------------------------------------------------

    def _process(self, s: str) -> None:
        i = 0
        n = len(s)
        while i < n:
            if self._state is _State.TEXT:
                i = self._step_text(s, i)
            elif self._state is _State.TAG:
                i = self._step_tag(s, i)
            else:
                i = self._step_fence(s, i)

    def _hold(self, s: str, k: int) -> int:
        self._pending = s[k:]
        return len(s)

    def _step_text(self, s: str, i: int) -> int:
        n = len(s)
        if self._skip_ws:
            while i < n and s[i].isspace():
                i += 1
            if i >= n:
                return n
            self._skip_ws = False
        m = _SPECIAL.search(s, i)
        if m is None:
            self._emit(s[i:])
            return n
        k = m.start()
        self._emit(s[i:k])
        if s[k] == "<":
            for tag in _OPEN_TAGS:
                if s.startswith(tag, k):
                    self._state = _State.TAG
                    self._tag_mode = _TagMode.UNDECIDED
                    return k + len(tag)
            for tag in _CLOSE_TAGS:
                if s.startswith(tag, k):
                    return k + len(tag)  # a stray closing tag: dropped
            if n - k < _MAX_TAG and any(tag.startswith(s[k:]) for tag in _ALL_TAGS):
                return self._hold(s, k)
            self._emit("<")
            return k + 1
        # a backtick
        if self._in_code:
            if s.startswith(_FENCE, k):
                self._emit(_FENCE)
                self._in_code = False
                return k + len(_FENCE)
            if _FENCE.startswith(s[k : k + len(_FENCE)]) and n - k < len(_FENCE):
                return self._hold(s, k)
            self._emit("`")
            return k + 1
        verdict, end, info = _match_fence_opener(s, k)
        if verdict is _Match.NEED_MORE:
            return self._hold(s, k)
        if verdict is _Match.NO:
            self._emit("`")
            return k + 1
        if info.lower() in _CALL_FENCE_LANGS:
            self._state = _State.FENCE
            self._fence_opener = s[k:end]
            self._fence_json = False
            self._body = []
        else:
            self._emit(s[k:end])
            self._in_code = True
        return end

    def _step_tag(self, s: str, i: int) -> int:
        n = len(s)
        while True:
            p = s.find("<", i)
            if p < 0:
                self._tag_text(s[i:])
                return n
            self._tag_text(s[i:p])
            for tag in _CLOSE_TAGS:
                if s.startswith(tag, p):
                    self._end_tag_block()
                    return p + len(tag)
            for tag in _OPEN_TAGS:
                if s.startswith(tag, p):
                    # The model opened a new block without closing this one.
                    self._end_tag_block()
                    self._state = _State.TAG
                    return p + len(tag)
            if n - p < _MAX_TAG and any(tag.startswith(s[p:]) for tag in _ALL_TAGS):
                return self._hold(s, p)
            self._tag_text("<")
            i = p + 1

    def _tag_text(self, text: str) -> None:
        """Take in text from inside a tag block (never a terminator)."""
        if self._tag_mode is _TagMode.UNDECIDED:
            text = text.lstrip()
            if not text:
                return
            self._tag_mode = _TagMode.JSON if text[0] in "{[`" else _TagMode.TEXT
        if self._tag_mode is _TagMode.JSON:
            self._body.append(text)
            return
        # Not a call: stream it, holding trailing whitespace (the block's text is stripped).
        stripped = text.rstrip()
        if stripped:
            self._emit("".join(self._tag_ws))
            self._tag_ws.clear()
            self._emit(stripped)
        if len(stripped) < len(text):
            self._tag_ws.append(text[len(stripped) :])

    def _end_tag_block(self) -> None:
        mode = self._tag_mode
        body = "".join(self._body)
        self._body = []
        self._tag_ws.clear()
        self._tag_mode = _TagMode.UNDECIDED
        self._state = _State.TEXT
        # After a block that left no text behind, the whitespace that follows is dropped.
        self._skip_ws = True
        if mode is _TagMode.UNDECIDED:
            return  # an empty block: nothing to say
        if mode is _TagMode.JSON:
            inner = body.strip()
            calls = _parse_calls(_unfence(inner), self._tool_names, strict=False)
            if calls is not None:
                self._emit_calls(calls)
                return
            self._emit(inner)
        self._skip_ws = False
        self.malformed += 1

    def _step_fence(self, s: str, i: int) -> int:
        n = len(s)
        if not self._fence_json:
            j = i
            while j < n and s[j].isspace():
                j += 1
            self._body.append(s[i:j])
            if j >= n:
                return n
            if s[j] not in "{[":
                # Not JSON: an ordinary code block, shown as it is.
                self._emit(self._fence_opener + "".join(self._body))
                self._body = []
                self._in_code = True
                self._state = _State.TEXT
                return j
            self._fence_json = True
            i = j
        p = s.find(_FENCE, i)
        if p < 0:
            end = n
            while end > i and n - end < len(_FENCE) - 1 and s[end - 1] == "`":
                end -= 1
            self._body.append(s[i:end])
            return self._hold(s, end)
        self._body.append(s[i:p])
        body = "".join(self._body)
        self._body = []
        self._state = _State.TEXT
        calls = _parse_calls(body, self._tool_names, strict=True)
        if calls is not None:
            self._emit_calls(calls)
            self._skip_ws = True
        else:
            self._emit(self._fence_opener + body + _FENCE)
        return p + len(_FENCE)
