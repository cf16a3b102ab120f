"""The matcher: one automaton pass over the normalised text, hits in raw offsets."""

from __future__ import annotations

import pytest

from qwen_gateway.safety.matcher import MAX_REGEX_MAX_LENGTH, Hit, Matcher, Rule
from qwen_gateway.safety.rules import default_rule_file, load_rule_file

SHIPPED = load_rule_file(default_rule_file())
#: the shipped lists plus a bare English word, as an operator might add
MATCHER = Matcher([*SHIPPED, Rule("cracking", "extra", keywords=("crack",))])

#: (text, the evading phrase inside it, the category it must hit)
EVASIONS = [
    # Chinese: plain, full-width spaces, separators, zero-width, traditional, combinations
    ("这里讲赌博的事", "赌博", "gambling"),
    ("这里讲赌\u3000博的事", "赌\u3000博", "gambling"),
    ("这里讲赌 博的事", "赌 博", "gambling"),
    ("这里讲赌-博的事", "赌-博", "gambling"),
    ("这里讲赌.博的事", "赌.博", "gambling"),
    ("这里讲赌_博的事", "赌_博", "gambling"),
    ("这里讲赌\u200b博的事", "赌\u200b博", "gambling"),
    ("这里讲赌\u200d博的事", "赌\u200d博", "gambling"),
    ("这里讲賭博的事", "賭博", "gambling"),
    ("这里讲賭 ·\u200b博的事", "賭 ·\u200b博", "gambling"),
    ("小心詐騙电话", "詐騙", "fraud"),
    ("小心诈*骗电话", "诈*骗", "fraud"),
    ("别用盜版", "盜版", "cracking"),
    ("别用盗/版", "盗/版", "cracking"),
    ("一个破解工具", "破解", "cracking"),
    ("一个破、解工具", "破、解", "cracking"),
    ("有人在線賭場开户", "在線賭場", "gambling"),
    ("何谓洗 錢", "洗 錢", "fraud"),
    # English: full-width, case, separators, zero-width, combinations
    ("get ＣＲＡＣＫ here", "ＣＲＡＣＫ", "cracking"),
    ("get CrAcK here", "CrAcK", "cracking"),
    ("get c.r.a.c.k here", "c.r.a.c.k", "cracking"),
    ("get c-r-a-c-k here", "c-r-a-c-k", "cracking"),
    ("get c\u200br\u200ba\u200bc\u200bk here", "c\u200br\u200ba\u200bc\u200bk", "cracking"),
    ("a free ｋ.Ｅ.ｙ-Ｇ ｅ ｎ today", "ｋ.Ｅ.ｙ-Ｇ ｅ ｎ", "cracking"),
    ("visit an Online  Casino now", "Online  Casino", "gambling"),
    ("visit an on-line ca$sino now", "on-line ca$sino", "gambling"),
    ("a PHISHING_KIT for sale", "PHISHING_KIT", "fraud"),
    ("the wáréz scene", "wáréz", "cracking"),
    # mixed languages in one text
    ("中文 and ＷＡＲＥＺ 混合", "ＷＡＲＥＺ", "cracking"),
]


@pytest.mark.parametrize(("text", "phrase", "category"), EVASIONS)
def test_an_evasion_is_found_at_exactly_the_evading_phrase(
    text: str, phrase: str, category: str
) -> None:
    hits = MATCHER.scan(text)
    start = text.index(phrase)
    assert Hit(category, hits[0].rule_set, start, start + len(phrase)) in hits
    assert all(text[hit.start : hit.end] for hit in hits)


NON_MATCHES = [
    "我的博客地址",  # shares 博 with 赌博
    "博士论文",
    "欺诈是违法的",  # shares 诈 with 诈骗
    "版本号是 1.2",  # shares 版 with 盗版
    "解决方案",  # shares 解 with 破解
    "赌 and 博 far apart: 赌x博",
    "track a rack of c r a c",
    "a casino-free online game",
    "",
    "   ...   ",
]


@pytest.mark.parametrize("text", NON_MATCHES)
def test_words_that_merely_share_characters_do_not_match(text: str) -> None:
    assert MATCHER.scan(text) == []


def test_every_occurrence_is_reported_in_text_order_overlaps_included() -> None:
    text = "網絡賭博和赌博"
    hits = MATCHER.scan(text)
    spans = [(hit.start, hit.end, hit.category) for hit in hits]
    assert spans == [(0, 4, "gambling"), (2, 4, "gambling"), (5, 7, "gambling")]


def test_the_same_keyword_in_two_rules_reports_both() -> None:
    matcher = Matcher(
        [Rule("gambling", "a", keywords=("赌博",)), Rule("fraud", "b", keywords=("賭博",))]
    )
    assert matcher.scan("x赌博") == [Hit("fraud", "b", 1, 3), Hit("gambling", "a", 1, 3)]
    assert matcher.keyword_count == 1


def test_regexes_run_over_the_normalised_text() -> None:
    matcher = Matcher([Rule("fraud", "r", regex=r"代开[a-z]*发票", max_length=12)])
    text = "可以代 开 VAT 發票吗"
    (hit,) = matcher.scan(text)
    assert text[hit.start : hit.end] == "代 开 VAT 發票"
    assert matcher.window == 12
    assert matcher.regex_window == 12
    assert matcher.keyword_window == 0


def test_window_is_the_longest_pattern_in_normalised_characters() -> None:
    matcher = Matcher(
        [Rule("a", "s", keywords=("赌 博", "Ｏｎｌｉｎｅ Casino")), Rule("b", "s", regex="x+")]
    )
    assert matcher.keyword_window == len("onlinecasino")
    assert matcher.window == 64  # the regex's default max_length
    assert Matcher([]).window == 0
    assert Matcher([]).scan("anything") == []


def test_live_start_is_where_a_keyword_could_still_start() -> None:
    matcher = Matcher([Rule("a", "s", keywords=("abcd", "cx"))])
    assert matcher.live_start("zzab") == 2
    assert matcher.live_start("zzabc") == 2
    assert matcher.live_start("zzc") == 2
    assert matcher.live_start("zzz") == 3
    assert matcher.live_start("abcd") == 4  # complete: nothing more can extend it
    longer = Matcher([Rule("a", "s", keywords=("ab", "abc"))])
    assert longer.live_start("zab") == 1  # complete, and "abc" could still follow
    assert longer.live_start("zabc") == 4
    assert longer.live_start("zzab", begin=3) == 4


def test_the_shipped_lists_cover_the_required_categories_and_words() -> None:
    categories = {rule.category for rule in SHIPPED}
    assert categories == {"violence", "pornography", "gambling", "fraud", "cracking"}
    words = {word for rule in SHIPPED for word in rule.keywords}
    assert {"破解", "盗版", "赌博", "诈骗"} <= words
    for category in categories:
        listed = [w for rule in SHIPPED if rule.category == category for w in rule.keywords]
        assert any(w.isascii() for w in listed) and any(not w.isascii() for w in listed)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (lambda: Rule("", "s", keywords=("a",)), "needs a category"),
        (lambda: Rule("c", "s"), "either keywords or a regex"),
        (lambda: Rule("c", "s", keywords=("a",), regex="b"), "either keywords or a regex"),
        (lambda: Rule("c", "s", regex="a", max_length=0), "max_length"),
        (
            lambda: Rule("c", "s", regex="a", max_length=MAX_REGEX_MAX_LENGTH + 1),
            "max_length",
        ),
        (lambda: Matcher([Rule("c", "s", keywords=("-·-",))]), "empty once normalised"),
        (lambda: Matcher([Rule("c", "s", regex="(")]), "bad regex"),
        (lambda: Matcher([Rule("c", "s", regex="a*")]), "matches the empty string"),
    ],
)
def test_bad_rules_are_refused_with_a_clear_message(rule: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule()  # type: ignore[operator]
