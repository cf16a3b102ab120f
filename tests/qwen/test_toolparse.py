"""The incremental tool-call parser: real-world output shapes, streaming, chunking invariance."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_gateway.qwen.toolparse import Content, ParsedToolCall, ParseEvent, ToolCallParser


@dataclass(frozen=True)
class Result:
    content: str
    calls: list[ParsedToolCall]
    malformed: int


def _collect(events: Iterable[ParseEvent]) -> tuple[str, list[ParsedToolCall]]:
    content: list[str] = []
    calls: list[ParsedToolCall] = []
    for event in events:
        if isinstance(event, Content):
            content.append(event.text)
        else:
            calls.append(event)
    return "".join(content), calls


def parse_chunks(chunks: Iterable[str], tool_names: Collection[str] | None = None) -> Result:
    parser = ToolCallParser(tool_names)
    events: list[ParseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.finish())
    content, calls = _collect(events)
    return Result(content, calls, parser.malformed)


def parse(text: str, tool_names: Collection[str] | None = None) -> Result:
    return parse_chunks([text], tool_names)


def call(name: str, arguments: dict[str, Any]) -> ParsedToolCall:
    return ParsedToolCall(name, json.dumps(arguments, ensure_ascii=False, separators=(",", ":")))


WEATHER = call("get_weather", {"city": "Paris"})
TIME = call("get_time", {"tz": "Europe/Paris"})
HERMES_WEATHER = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)
HERMES_TIME = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>'
TOOLS = ("get_weather", "get_time")


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    content: str
    calls: Sequence[ParsedToolCall] = ()
    malformed: int = 0
    tool_names: Collection[str] | None = field(default=None)


CASES = [
    Case("plain text", "Hello! How can I help you today?", "Hello! How can I help you today?"),
    Case("one call", HERMES_WEATHER, "", [WEATHER]),
    Case("two calls", HERMES_WEATHER + "\n" + HERMES_TIME + "\n", "", [WEATHER, TIME]),
    Case(
        "text before",
        "Let me look that up.\n\n" + HERMES_WEATHER,
        "Let me look that up.\n\n",
        [WEATHER],
    ),
    Case(
        "text after",
        HERMES_WEATHER + "\nI asked for the weather.",
        "I asked for the weather.",
        [WEATHER],
    ),
    Case(
        "text before, between and after",
        "First: " + HERMES_WEATHER + " then " + HERMES_TIME + "\nDone.",
        "First: then Done.",
        [WEATHER, TIME],
    ),
    Case(
        "nested arguments and unicode",
        '<tool_call>\n{"name": "search", "arguments": {"query": {"城市": "北京", '
        '"tags": ["a", {"b": null, "c": [1, 2.5, true]}]}, "emoji": "😀 \\u00e9"}}\n</tool_call>',
        "",
        [
            call(
                "search",
                {
                    "query": {"城市": "北京", "tags": ["a", {"b": None, "c": [1, 2.5, True]}]},
                    "emoji": "😀 é",
                },
            )
        ],
    ),
    Case(
        "arguments double-encoded as a string",
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>',
        "",
        [WEATHER],
    ),
    Case(
        "parameters instead of arguments",
        '<tool_call>\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n</tool_call>',
        "",
        [WEATHER],
    ),
    Case(
        "missing arguments",
        '<tool_call>\n{"name": "list_files"}\n</tool_call>',
        "",
        [call("list_files", {})],
    ),
    Case(
        "OpenAI function shape",
        '<tool_call>\n{"type": "function", "function": {"name": "get_weather", '
        '"arguments": "{\\"city\\":\\"Paris\\"}"}}\n</tool_call>',
        "",
        [WEATHER],
    ),
    Case(
        "list of calls in one block",
        '<tool_call>\n[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}]\n</tool_call>',
        "",
        [WEATHER, TIME],
    ),
    Case(
        "two objects in one block",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>',
        "",
        [WEATHER, TIME],
    ),
    Case(
        "fenced json call",
        'Calling:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n',
        "Calling:\n",
        [WEATHER],
    ),
    Case(
        "fenced call without language",
        '```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        "",
        [WEATHER],
    ),
    Case(
        "fenced tool_call",
        '```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        "",
        [WEATHER],
    ),
    Case(
        "fenced list of calls, known names",
        '```json\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n```',
        "",
        [WEATHER],
        tool_names=TOOLS,
    ),
    Case(
        "fenced json that is not a call",
        'The response looks like:\n```json\n{"city": "Paris", "temp": 21}\n```\nNice.',
        'The response looks like:\n```json\n{"city": "Paris", "temp": 21}\n```\nNice.',
    ),
    Case(
        "fenced json with a name but no arguments (tools unknown)",
        '```json\n{"name": "Alice", "age": 30}\n```',
        '```json\n{"name": "Alice", "age": 30}\n```',
    ),
    Case(
        "fenced call with an unknown name",
        '```json\n{"name": "rm_rf", "arguments": {"path": "/"}}\n```',
        '```json\n{"name": "rm_rf", "arguments": {"path": "/"}}\n```',
        tool_names=TOOLS,
    ),
    Case(
        "fenced python code",
        "Try:\n```python\nif a < b:\n    print(`x`)\n```\nand\n```\nplain\n```\n",
        "Try:\n```python\nif a < b:\n    print(`x`)\n```\nand\n```\nplain\n```\n",
    ),
    Case(
        "tools tag",
        '<tools>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tools>',
        "",
        [WEATHER],
    ),
    Case(
        "unclosed tag parseable at finish",
        'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n',
        "Sure. ",
        [WEATHER],
    ),
    Case(
        "unclosed tag unparseable at finish",
        '<tool_call>\n{"name": "get_weather", "argu',
        '{"name": "get_weather", "argu',
        malformed=1,
    ),
    Case(
        "malformed JSON",
        'Hmm <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>\nok',
        'Hmm {"name": "get_weather", "arguments": {"city": "Paris"}\nok',
        malformed=1,
    ),
    Case(
        "not JSON at all inside the tag",
        '<tool_call>\nget_weather(city="Paris")\n</tool_call>',
        'get_weather(city="Paris")',
        malformed=1,
    ),
    Case(
        "name not in tool_names inside tool_call",
        '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
        '{"name": "rm_rf", "arguments": {}}',
        malformed=1,
        tool_names=TOOLS,
    ),
    Case(
        "one bad call spoils the block",
        '<tool_call>[{"name": "get_weather", "arguments": {}}, {"arguments": {}}]</tool_call>',
        '[{"name": "get_weather", "arguments": {}}, {"arguments": {}}]',
        malformed=1,
    ),
    Case(
        "arguments not an object",
        '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',
        '{"name": "f", "arguments": [1, 2]}',
        malformed=1,
    ),
    Case(
        "NaN is not JSON",
        '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>',
        '{"name": "f", "arguments": {"x": NaN}}',
        malformed=1,
    ),
    Case("empty tool_call", "a<tool_call></tool_call>b", "ab"),
    Case("whitespace-only tool_call", "<tool_call>\n \n</tool_call>", ""),
    Case(
        "angle brackets that are not tags",
        "if a < b and b <tool or <toolbox> or <tool_calls> or </tool>: <",
        "if a < b and b <tool or <toolbox> or <tool_calls> or </tool>: <",
    ),
    Case("text ending in a tag prefix", "the tag is <tool_c", "the tag is <tool_c"),
    Case(
        "backticks that are not fences",
        "use `x` or ``y`` or ```z``` ``",
        "use `x` or ``y`` or ```z``` ``",
    ),
    Case(
        "Chinese text around a call",
        "好的，我来查一下北京的天气。\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n查询完成。',
        "好的，我来查一下北京的天气。\n查询完成。",
        [call("get_weather", {"city": "北京"})],
    ),
    Case("call followed by a trailing newline", HERMES_WEATHER + "\n", "", [WEATHER]),
    Case(
        "new block opened without closing the previous",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' + HERMES_TIME,
        "",
        [WEATHER, TIME],
    ),
    Case("stray closing tags", "done</tool_call> really</tools>", "done really"),
    Case(
        "fence inside the tag",
        '<tool_call>\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n'
        "</tool_call>",
        "",
        [WEATHER],
    ),
    Case(
        "known names accepted",
        HERMES_WEATHER + HERMES_TIME,
        "",
        [WEATHER, TIME],
        tool_names=TOOLS,
    ),
    Case(
        "no tools allowed",
        HERMES_WEATHER,
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        malformed=1,
        tool_names=(),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_real_world_shapes(case: Case) -> None:
    expected = Result(case.content, list(case.calls), case.malformed)
    assert parse(case.text, case.tool_names) == expected
    # The same, streamed one character at a time.
    assert parse_chunks(list(case.text), case.tool_names) == expected


def test_events_keep_their_order() -> None:
    parser = ToolCallParser()
    events = parser.feed("Before " + HERMES_WEATHER + " middle " + HERMES_TIME + " after")
    events += parser.finish()
    assert events == [
        Content("Before "),
        WEATHER,
        Content("middle "),
        TIME,
        Content("after"),
    ]


def test_content_streams_without_delay() -> None:
    parser = ToolCallParser()
    assert parser.feed("Hello wor") == [Content("Hello wor")]
    assert parser.feed("ld <tool_c") == [Content("ld ")]  # "<tool_c" may be a tag
    assert parser.feed('all>\n{"name": "get_weather", ') == []
    assert parser.feed('"arguments": {"city": "Paris"}}\n</tool_') == []
    assert parser.feed("call>\nThen") == [WEATHER, Content("Then")]
    assert parser.feed(" a < b") == [Content(" a < b")]
    assert parser.feed(" ``") == [Content(" ")]  # may become a fence
    assert parser.feed("`python\nx = 1\n") == [Content("```python\nx = 1\n")]
    assert parser.feed("``") == []
    assert parser.feed("`\n") == [Content("```\n")]
    assert parser.finish() == []


def test_malformed_block_text_streams() -> None:
    parser = ToolCallParser()
    assert parser.feed("<tool_call>\n  I cannot ") == [Content("I cannot")]
    assert parser.feed("call tools\n") == [Content(" call tools")]
    assert parser.feed("</tool_call>") == []
    assert parser.finish() == []
    assert parser.malformed == 1


def test_parser_is_reusable_after_finish() -> None:
    parser = ToolCallParser()
    parser.feed("<tool_call>\n{")
    assert parser.finish() == [Content("{")]
    assert parser.feed(HERMES_WEATHER) == [WEATHER]
    assert parser.finish() == []
    assert parser.malformed == 1


def test_closing_tag_inside_a_string_ends_block() -> None:
    # A known limit: the first closing tag ends the block, even inside a JSON string.
    text = '<tool_call>{"name": "f", "arguments": {"s": "</tool_call>"}}</tool_call>'
    assert parse(text) == Result('{"name": "f", "arguments": {"s": ""}}', [], 1)


def test_long_plain_output_fed_one_char_at_a_time() -> None:
    text = ("Qwen says a < b, `code` and 100% plain text. 通义千问。\n" * 2000)[:100_000]
    parser = ToolCallParser()
    pieces: list[str] = []
    started = time.perf_counter()
    for char in text:
        for event in parser.feed(char):
            assert isinstance(event, Content)
            pieces.append(event.text)
    for event in parser.finish():
        assert isinstance(event, Content)
        pieces.append(event.text)
    elapsed = time.perf_counter() - started
    assert "".join(pieces) == text
    print(f"100 kB fed one char at a time: {elapsed:.3f}s")  # measured, not asserted


def test_long_call_fed_one_char_at_a_time() -> None:
    arguments = {"text": "x" * 50_000, "items": list(range(2000))}
    text = "<tool_call>\n" + json.dumps({"name": "save", "arguments": arguments}) + "\n</tool_call>"
    assert parse_chunks(list(text)) == Result("", [call("save", arguments)], 0)


# --- properties -------------------------------------------------------------------------

NAMES = ("get_weather", "get_time", "search")
# Text with every character that matters to the parser, and some that do not.
NOISY_TEXT = st.text(
    alphabet=st.sampled_from([*'ab <>/`{}[]":,\n\t_lotc', "中", "é", "😀", " "]),
    max_size=12,
)
# Text that can never start a tag or a fence.
QUIET_TEXT = st.text(
    alphabet=st.sampled_from([*'ab xyz{}[]":,\n\t.', "中", "é", "😀", "\u3000"]),
    max_size=12,
)
# Strings in arguments: anything but the characters of tags and fences (a closing tag inside
# an argument string ends the block early; see test_closing_tag_inside_a_string_ends_block).
JSON_STRINGS = st.text(alphabet=st.characters(blacklist_characters="<`", codec="utf-8"), max_size=8)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), JSON_STRINGS)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_STRINGS, inner, max_size=3),
    max_leaves=6,
)
ARGUMENTS = st.dictionaries(JSON_STRINGS, JSON_VALUES, max_size=4)
CALLS = st.tuples(st.sampled_from(NAMES), ARGUMENTS)


def _call_json(name: str, arguments: dict[str, Any], style: str) -> str:
    if style == "string":
        return json.dumps({"name": name, "arguments": json.dumps(arguments)})
    key = "parameters" if style == "parameters" else "arguments"
    return json.dumps({"name": name, key: arguments}, ensure_ascii=style == "ascii")


@st.composite
def call_blocks(draw: st.DrawFn) -> tuple[str, list[ParsedToolCall]]:
    """A well-formed block in one of the shapes Qwen emits, and the calls it holds."""
    calls = draw(st.lists(CALLS, min_size=1, max_size=3))
    style = draw(st.sampled_from(["plain", "ascii", "string", "parameters"]))
    expected = [call(name, arguments) for name, arguments in calls]
    objects = [_call_json(name, arguments, style) for name, arguments in calls]
    shape = draw(st.sampled_from(["tag", "tools", "fence", "bare fence", "unclosed"]))
    if len(objects) == 1 and draw(st.booleans()):
        inner = objects[0]
    elif draw(st.booleans()):
        inner = "[" + ", ".join(objects) + "]"
    else:
        inner = "\n".join(objects)
    pad = draw(st.sampled_from(["", "\n", " \n", "\n\n"]))
    if shape == "tag":
        return f"<tool_call>{pad}{inner}{pad}</tool_call>", expected
    if shape == "tools":
        return f"<tools>{pad}{inner}{pad}</tools>", expected
    if shape == "fence":
        return f"```json\n{inner}\n```", expected
    if shape == "bare fence":
        return f"```\n{inner}\n```", expected
    return f"<tool_call>{pad}{inner}{pad}", expected  # only valid as the last piece


BROKEN_BLOCKS = st.sampled_from(
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {</tool_call>',
        "<tool_call>not json</tool_call>",
        "<tool_call></tool_call>",
        '<tools>{"arguments": {}}</tools>',
        '<tool_call>\n{"name": "get_weather"',
        '```json\n{"a": 1}\n```',
        "```python\nprint('<tool_call>')\n```",
        "```\nplain\n```",
        "```json\n{",
        "</tool_call>",
        "<tool_c",
        "``",
    ]
)


@st.composite
def noisy_outputs(draw: st.DrawFn) -> str:
    pieces = draw(
        st.lists(
            st.one_of(NOISY_TEXT, call_blocks().map(lambda block: block[0]), BROKEN_BLOCKS),
            max_size=8,
        )
    )
    return "".join(pieces)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(cut, len(text)) for cut in cuts})
    chunks: list[str] = []
    start = 0
    for point in [*points, len(text)]:
        chunks.append(text[start:point])
        start = point
    return chunks


@settings(max_examples=300)
@given(
    text=noisy_outputs(),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    tool_names=st.sampled_from([None, NAMES, NAMES[:1]]),
)
def test_chunking_never_changes_the_result(
    text: str, cuts: list[int], tool_names: tuple[str, ...] | None
) -> None:
    whole = parse(text, tool_names)
    assert parse_chunks(_split(text, cuts), tool_names) == whole
    assert parse_chunks(list(text), tool_names) == whole


@settings(max_examples=200)
@given(
    pieces=st.lists(st.one_of(QUIET_TEXT, call_blocks()), max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    know_names=st.booleans(),
)
def test_well_formed_calls_are_all_found(
    pieces: list[str | tuple[str, list[ParsedToolCall]]], cuts: list[int], know_names: bool
) -> None:
    text_parts: list[str] = []
    content: list[str] = []
    calls: list[ParsedToolCall] = []
    after_block = False
    for index, piece in enumerate(pieces):
        if isinstance(piece, str):
            text_parts.append(piece)
            # Whitespace right after a call block is dropped.
            shown = piece.lstrip() if after_block else piece
            after_block = after_block and not shown
            content.append(shown)
        else:
            block, block_calls = piece
            if not block.endswith(("</tool_call>", "</tools>", "```")) and index < len(pieces) - 1:
                block += "\n</tool_call>"  # an unclosed block only ends the output
            text_parts.append(block)
            calls.extend(block_calls)
            after_block = True
    text = "".join(text_parts)
    tool_names = NAMES if know_names else None
    expected = Result("".join(content), calls, 0)
    assert parse(text, tool_names) == expected
    assert parse_chunks(_split(text, cuts), tool_names) == expected


@given(text=QUIET_TEXT)
def test_text_without_markup_passes_through(text: str) -> None:
    assert parse(text) == Result(text, [], 0)


def test_numbers_keep_their_exact_text_even_beyond_a_double() -> None:
    text = (
        '<tool_call>\n{"name": "f", "arguments": {"a": 1e+400, "b": 0.10, "c": -12}}\n</tool_call>'
    )
    parser = ToolCallParser(["f"])
    events = [*parser.feed(text), *parser.finish()]
    calls = [e for e in events if isinstance(e, ParsedToolCall)]
    assert calls == [ParsedToolCall("f", '{"a":1e+400,"b":0.10,"c":-12}')]
    assert parser.malformed == 0
