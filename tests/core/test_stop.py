"""Stop strings are cut out of streamed text, wherever the chunk boundaries fall."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from qwen_gateway.core.stop import StopMatcher


def _run(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for chunk in chunks:
        text, stopped = matcher.feed(chunk)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_chunks() -> None:
    assert _run(["END"], ["hello E", "N", "D more"]) == ("hello ", True)


def test_partial_match_is_released_when_it_does_not_complete() -> None:
    assert _run(["END"], ["hello EN", "x"]) == ("hello ENx", False)
    assert _run(["END"], ["tail EN"]) == ("tail EN", False)


def test_earliest_of_several_stops_wins() -> None:
    assert _run(["b", "abc"], ["xxab", "c"]) == ("xxa", True)


def test_no_stops_passes_through() -> None:
    assert _run([], ["a", "b"]) == ("ab", False)


@given(
    text=st.text(alphabet="abcXY", max_size=30),
    stop=st.text(alphabet="abcXY", min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6),
)
def test_any_chunking_gives_the_same_result(text: str, stop: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    expected = (text[: text.index(stop)], True) if stop in text else (text, False)
    assert _run([stop], chunks) == expected


def test_the_matched_stop_is_the_first_in_the_text() -> None:
    matcher = StopMatcher(["cd", "b"])
    assert matcher.matched is None
    assert matcher.feed("a") == ("a", False)
    assert matcher.feed("bcd") == ("", True)
    assert matcher.matched == "b"
