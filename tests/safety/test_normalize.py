"""The fold the content filter matches over, and its map back to the raw text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_gateway.safety.normalize import (
    Normalised,
    fold_char,
    fold_text,
    normalise,
    normalise_pattern,
)

FOLDS = [
    # compatibility forms: full-width letters and spaces, ligatures, circled digits
    ("ＣＲＡＣＫ", "crack"),
    ("ｋｅｙｇｅｎ", "keygen"),
    ("赌\u3000博", "赌博"),
    ("ﬁle", "file"),
    ("①②③", "123"),
    # case-folding, including folds that change the length
    ("CrAcK", "crack"),
    ("Straße", "strasse"),
    ("ΣΊΣΥΦΟΣ", "σισυφοσ"),
    # accents: precomposed and combining alike
    ("café", "cafe"),
    ("cafe\u0301", "cafe"),
    # zero-width and control characters
    ("c\u200br\u200ca\u200dc\u2060k\ufeff", "crack"),
    ("赌\x00博\x1f", "赌博"),
    # traditional to simplified Chinese
    ("賭博", "赌博"),
    ("詐騙", "诈骗"),
    ("盜版", "盗版"),
    ("破解", "破解"),
    ("後臺髮", "后台发"),
    # separators: whitespace, punctuation, symbols
    ("赌 博", "赌博"),
    ("赌-博", "赌博"),
    ("赌.博", "赌博"),
    ("赌_博", "赌博"),
    ("赌·博", "赌博"),
    ("赌，博！", "赌博"),
    ("c.r.a.c.k", "crack"),
    ("c-r-a-c-k", "crack"),
    ("c★r♥a$c+k", "crack"),
    ("", ""),
    ("  ..--  ", ""),
]


@pytest.mark.parametrize(("raw", "folded"), FOLDS)
def test_normalise_folds_each_evasion(raw: str, folded: str) -> None:
    assert normalise(raw).text == folded
    assert normalise_pattern(raw) == folded


def test_letters_digits_and_chinese_are_kept() -> None:
    assert normalise("博客 abc 123 日本語 한국어").text == "博客abc123日本语한국어"


@pytest.mark.parametrize(
    ("raw", "origin"),
    [
        ("abc", (0, 1, 2, 3)),
        ("c.r.a.c.k", (0, 2, 4, 6, 8, 9)),
        ("ﬁx", (0, 0, 1, 2)),
        ("ßa", (0, 0, 1, 2)),
        (" 赌\u200b博 ", (1, 3, 5)),
        ("", (0,)),
    ],
)
def test_origin_points_at_the_raw_character_of_each_folded_one(
    raw: str, origin: tuple[int, ...]
) -> None:
    assert normalise(raw).origin == origin


@pytest.mark.parametrize(
    ("raw", "needle", "span"),
    [
        ("xx 賭 - 博 yy", "赌博", "賭 - 博"),
        ("say ＣＲ.ＡＣＫ now", "crack", "ＣＲ.ＡＣＫ"),
        ("große Straße!", "strasse", "Straße"),
        ("a ﬁle", "file", "ﬁle"),
        ("x ßs", "ss", "ß"),
        ("x ßs", "sss", "ßs"),
        ("x ßs", "s", "ß"),
    ],
)
def test_a_normalised_span_maps_to_exactly_the_raw_phrase(raw: str, needle: str, span: str) -> None:
    normalised = normalise(raw)
    start = normalised.text.index(needle)
    raw_start, raw_end = normalised.raw_span(start, start + len(needle))
    assert raw[raw_start:raw_end] == span


def test_a_span_inside_one_raw_character_maps_to_that_character() -> None:
    normalised = normalise("ß")  # "ss": the second "s" alone still comes from "ß"
    assert normalised.raw_span(1, 2) == (0, 1)


def test_raw_span_rejects_empty_and_out_of_range_spans() -> None:
    normalised = normalise("abc")
    for start, end in [(1, 1), (2, 1), (-1, 2), (0, 4)]:
        with pytest.raises(ValueError, match="bad normalised span"):
            normalised.raw_span(start, end)


def test_normalised_is_frozen() -> None:
    normalised = Normalised("a", (0, 1))
    with pytest.raises(AttributeError):
        normalised.text = "b"  # type: ignore[misc]


TEXT = st.text(
    alphabet=st.sampled_from(
        list("abcXYZ 01.-_赌博賭詐騙盜版破解ＣＲＡ\u3000\u200b\u200dßﬁé\u0301ΣÅ①,。！")
    ),
    max_size=30,
) | st.text(max_size=30)


@settings(max_examples=300)
@given(TEXT, TEXT)
def test_normalising_commutes_with_concatenation(left: str, right: str) -> None:
    whole = normalise(left + right)
    a, b = normalise(left), normalise(right)
    assert whole.text == a.text + b.text == fold_text(left + right)
    assert whole.origin == a.origin[:-1] + tuple(len(left) + i for i in b.origin)


@settings(max_examples=300)
@given(TEXT)
def test_origin_is_monotone_and_ends_at_the_raw_length(raw: str) -> None:
    normalised = normalise(raw)
    assert len(normalised.origin) == len(normalised.text) + 1
    assert list(normalised.origin) == sorted(normalised.origin)
    assert normalised.origin[-1] == len(raw)
    for index, char in enumerate(normalised.text):
        assert char in fold_char(raw[normalised.origin[index]])


@settings(max_examples=200)
@given(TEXT)
def test_normalising_twice_changes_nothing(raw: str) -> None:
    once = normalise(raw).text
    assert normalise(once).text == once
