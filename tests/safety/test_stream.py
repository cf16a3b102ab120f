"""The streaming filter: nothing of a blocked or redacted phrase reaches the client, whatever the
chunking, and everything else is delivered, as early as a possible match allows."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from functools import cache

import opencc
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qwen_gateway.safety.matcher import Hit, Matcher, Rule
from qwen_gateway.safety.normalize import normalise, normalise_pattern
from qwen_gateway.safety.rules import default_rule_file, load_rule_file
from qwen_gateway.safety.stream import Action, StreamFilter, Verdict, filter_text

SHIPPED = load_rule_file(default_rule_file())
SHIPPED_KEYWORDS = sorted({normalise_pattern(k) for rule in SHIPPED for k in rule.keywords})
CATEGORIES = sorted({rule.category for rule in SHIPPED} | {"extra"})


def actions(action: Action) -> dict[str, Action]:
    return dict.fromkeys(CATEGORIES, action)


BLOCK = actions("block")
REDACT = actions("redact")
MIXED: dict[str, Action] = {
    "violence": "block",
    "pornography": "redact",
    "gambling": "block",
    "fraud": "flag",
    "cracking": "redact",
    "extra": "review",
}
SHIPPED_MATCHER = Matcher(SHIPPED)

#: characters random phrases are made of, and characters of text that cannot be in any match
PHRASE_CHARS = "赌博诈骗盗版破解网站发后台xyzqk"
SEPARATORS = [" ", "-", ".", "_", "·", "，", "\u3000", "\u200b", "\u200d", "\u2060", "*/"]
_USED = set("".join(SHIPPED_KEYWORDS)) | set(PHRASE_CHARS)
FREE_CHARS = "".join(
    c for c in "的是了在我有他这个们中来上大为和国到以说时要就出会可也你对生能" if c not in _USED
) + "".join(c for c in "0123456789fjmvw" if c not in _USED)
FILLER = st.lists(st.sampled_from([*FREE_CHARS, *SEPARATORS, "\n", "!"]), max_size=12).map("".join)


def run(
    matcher: Matcher,
    acts: Mapping[str, Action],
    chunks: Sequence[str],
    *,
    window_check: bool = False,
) -> tuple[str, list[Verdict]]:
    stream = StreamFilter(matcher, acts)
    verdicts: list[Verdict] = []
    seen = ""
    for chunk in chunks:
        verdicts.append(stream.feed(chunk))
        seen += chunk
        if window_check and stream.blocked is None and stream.held:
            held = normalise(seen[len(seen) - stream.held :]).text
            assert len(held) <= matcher.window - 1
    verdicts.append(stream.close())
    return "".join(v.deliver for v in verdicts), verdicts


def split(text: str, cuts: Sequence[int]) -> list[str]:
    points = sorted({min(max(c, 0), len(text)) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@cache
def _s2t() -> opencc.OpenCC:
    return opencc.OpenCC("s2t")


@st.composite
def evasions(draw: st.DrawFn, phrase: str) -> str:
    """``phrase`` (normalised) written so that it still normalises to itself."""
    out: list[str] = []
    for index, char in enumerate(phrase):
        if index:
            out.extend(draw(st.lists(st.sampled_from(SEPARATORS), max_size=2)))
        variants = [char]
        if char.isascii():
            variants += [char.upper(), chr(ord(char) + 0xFEE0), chr(ord(char.upper()) + 0xFEE0)]
        else:
            variants.append(_s2t().convert(char))
        out.append(draw(st.sampled_from(variants)))
    raw = "".join(out)
    assert normalise(raw).text == phrase
    return raw


@st.composite
def cases(draw: st.DrawFn) -> tuple[Matcher, str, str, str, list[int]]:
    """(matcher, prefix, evaded phrase, suffix, cut points): the phrase is a keyword."""
    if draw(st.booleans()):
        keyword = draw(st.sampled_from(SHIPPED_KEYWORDS))
        matcher = SHIPPED_MATCHER
    else:
        keyword = draw(st.text(alphabet=st.sampled_from(PHRASE_CHARS), min_size=1, max_size=8))
        matcher = Matcher([*SHIPPED, Rule("extra", "random", keywords=(keyword,))])
    phrase = draw(evasions(keyword))
    prefix, suffix = draw(FILLER), draw(FILLER)
    size = len(prefix) + len(phrase) + len(suffix)
    cuts = draw(st.lists(st.integers(0, size), max_size=12))
    return matcher, prefix, phrase, suffix, cuts


@settings(max_examples=250)
@given(cases())
def test_no_character_of_a_blocked_phrase_reaches_the_client(
    case: tuple[Matcher, str, str, str, list[int]],
) -> None:
    matcher, prefix, phrase, suffix, cuts = case
    text = prefix + phrase + suffix
    delivered, verdicts = run(matcher, BLOCK, split(text, cuts), window_check=True)
    assert delivered == prefix
    blocked = [v.blocked for v in verdicts if v.blocked is not None]
    assert blocked and blocked[0].start == len(prefix)
    assert all(
        v.deliver == ""
        for v in verdicts[verdicts.index(next(v for v in verdicts if v.blocked)) + 1 :]
    )


@settings(max_examples=250)
@given(cases())
def test_a_redacted_phrase_is_masked_whatever_the_chunking(
    case: tuple[Matcher, str, str, str, list[int]],
) -> None:
    matcher, prefix, phrase, suffix, cuts = case
    text = prefix + phrase + suffix
    delivered, _ = run(matcher, REDACT, split(text, cuts), window_check=True)
    assert delivered == filter_text(matcher, REDACT, text).deliver
    assert delivered == prefix + "*" * len(phrase) + suffix


ANY_TEXT = st.lists(
    st.sampled_from([*PHRASE_CHARS, *FREE_CHARS, *SEPARATORS, "賭", "Ｘ", "ß"]), max_size=40
).map("".join)


@settings(max_examples=250)
@given(ANY_TEXT, st.lists(st.integers(0, 40), max_size=12), st.sampled_from([BLOCK, REDACT, MIXED]))
def test_any_chunking_delivers_what_the_one_shot_filter_does(
    text: str, cuts: list[int], acts: dict[str, Action]
) -> None:
    matcher = Matcher([*SHIPPED, Rule("extra", "r", keywords=("博网", "xzq", "发后台"))])
    whole = filter_text(matcher, acts, text)
    delivered, verdicts = run(matcher, acts, split(text, cuts), window_check=True)
    assert delivered == whole.deliver
    assert (verdicts[-1].blocked or None) == whole.blocked
    if not matcher.scan(text):
        assert delivered == text  # nothing lost at close, nothing altered


@settings(max_examples=150)
@given(st.text(max_size=60), st.lists(st.integers(0, 60), max_size=20))
def test_text_without_a_match_is_delivered_unchanged(text: str, cuts: list[int]) -> None:
    assume(not SHIPPED_MATCHER.scan(text))
    delivered, _ = run(SHIPPED_MATCHER, BLOCK, split(text, cuts))
    assert delivered == text


@pytest.mark.parametrize("keyword", SHIPPED_KEYWORDS)
def test_each_shipped_keyword_split_at_every_position_is_withheld(keyword: str) -> None:
    phrase = "\u200b ".join(keyword.upper())
    text = "好的：" + phrase + "。完"
    for cut in range(len(text) + 1):
        delivered, _ = run(SHIPPED_MATCHER, BLOCK, [text[:cut], text[cut:]])
        assert delivered == "好的："
    delivered, _ = run(SHIPPED_MATCHER, BLOCK, list(text))
    assert delivered == "好的："
    delivered, _ = run(SHIPPED_MATCHER, REDACT, list(text))
    assert delivered == "好的：" + "*" * len(phrase) + "。完"


def test_text_before_a_block_is_delivered_at_once_and_nothing_after() -> None:
    stream = StreamFilter(SHIPPED_MATCHER, BLOCK)
    first = stream.feed("今天天气很好。")
    assert first.deliver == "今天天气很好。"  # nothing here could start a keyword
    second = stream.feed("我们去賭")
    third = stream.feed(" 博吧，然后")
    assert second.deliver + third.deliver == "我们去"
    assert third.blocked == Hit("gambling", "default", 10, 13)
    assert third.hits == (third.blocked,)
    assert stream.feed("更多文字").deliver == ""
    assert stream.close() == Verdict("", (), third.blocked)


def test_a_longer_phrase_containing_a_blocked_word_is_withheld_from_its_start() -> None:
    matcher = Matcher([Rule("gambling", "s", keywords=("赌博", "在线赌博网站大全"))])
    acts: dict[str, Action] = {"gambling": "block"}
    delivered, verdicts = run(matcher, acts, list("看看在线赌博网站大全吧"))
    assert delivered == "看看"
    assert next(v.blocked for v in verdicts if v.blocked) == Hit("gambling", "s", 2, 10)
    delivered, _ = run(matcher, acts, list("看看在线赌博吧"))
    assert delivered == "看看在线"  # the long phrase did not complete: block at 赌博


def test_flag_and_review_deliver_and_report() -> None:
    matcher = Matcher(
        [Rule("fraud", "s", keywords=("诈骗",)), Rule("advice", "s", keywords=("x",))]
    )
    acts: dict[str, Action] = {"fraud": "flag", "advice": "review"}
    verdict = filter_text(matcher, acts, "a 詐-騙 x")
    assert verdict.deliver == "a 詐-騙 x"
    assert verdict.hits == (Hit("fraud", "s", 2, 5), Hit("advice", "s", 6, 7))
    assert verdict.blocked is None


def test_redaction_masks_each_raw_character_of_the_span_with_the_given_mask() -> None:
    matcher = Matcher([Rule("c", "s", keywords=("破解",))])
    stream = StreamFilter(matcher, {"c": "redact"}, mask="#")
    out = stream.feed("用破\u200b 解版").deliver + stream.close().deliver
    assert out == "用####版"


def test_regex_rules_hold_back_their_max_length() -> None:
    matcher = Matcher([Rule("id", "s", regex=r"\d{6}", max_length=6)])
    acts: dict[str, Action] = {"id": "redact"}
    stream = StreamFilter(matcher, acts)
    # the last max_length - 1 = 5 normalised characters are held: a match may still end later
    assert stream.feed("code 12").deliver == "c"
    assert stream.feed("3-456 ok").deliver == "ode ****"
    assert stream.close().deliver == "*** ok"
    assert filter_text(matcher, acts, "code 123-456 ok").deliver == "code ******* ok"


def test_several_choices_use_several_filters() -> None:
    one, two = StreamFilter(SHIPPED_MATCHER, BLOCK), StreamFilter(SHIPPED_MATCHER, BLOCK)
    assert one.feed("诈").deliver == ""
    assert two.feed("你好").deliver == "你好"
    assert one.feed("骗").blocked is not None
    assert two.feed("朋友").blocked is None


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no action for categories \['cracking'"):
        StreamFilter(SHIPPED_MATCHER, {"gambling": "block"})
    with pytest.raises(ValueError, match="unknown actions"):
        StreamFilter(SHIPPED_MATCHER, {**BLOCK, "fraud": "drop"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="one character"):
        StreamFilter(SHIPPED_MATCHER, BLOCK, mask="**")
    stream = StreamFilter(SHIPPED_MATCHER, BLOCK)
    stream.close()
    with pytest.raises(RuntimeError):
        stream.feed("x")
    with pytest.raises(RuntimeError):
        stream.close()
