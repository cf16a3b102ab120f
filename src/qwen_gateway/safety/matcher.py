"""The multi-pattern matcher: every keyword of every rule in one Aho-Corasick pass, plus regexes.

Keywords and regexes are matched over the normalised text (see ``normalize``); hits are
reported in raw offsets. The automaton is ``ahocorasick_rs`` (Python bindings of the Rust
``aho-corasick`` crate): of the candidates measured with 10,000 patterns (see
docs/benchmarks.md, "Content filter") it scans fastest by far, keeps its speed with the large
alphabet of Chinese text, and builds in tens of milliseconds. The streaming filter also asks
"is this text a prefix of some keyword", which it answers by bisecting the sorted keywords.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import ahocorasick_rs

from qwen_gateway.safety.normalize import Normalised, fold_text, normalise, normalise_pattern

__all__ = ["DEFAULT_REGEX_MAX_LENGTH", "MAX_REGEX_MAX_LENGTH", "Hit", "Matcher", "Rule"]

DEFAULT_REGEX_MAX_LENGTH = 64
MAX_REGEX_MAX_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Rule:
    """A keyword list or one regex, under a category of a rule set.

    Keywords are written as people write them; they are normalised like the text. A regex is
    matched against the *normalised* text (case-folded, simplified Chinese, separators removed),
    so it is written in that form, and ``max_length`` bounds the normalised length of its
    matches: the streaming filter holds back that many characters for it.
    """

    category: str
    rule_set: str
    keywords: tuple[str, ...] = ()
    regex: str | None = None
    max_length: int = DEFAULT_REGEX_MAX_LENGTH

    def __post_init__(self) -> None:
        if not self.category:
            raise ValueError("a rule needs a category")
        if (self.regex is None) == (not self.keywords):
            raise ValueError(
                f"rule in category {self.category!r} of {self.rule_set!r}: "
                "give either keywords or a regex"
            )
        if not 1 <= self.max_length <= MAX_REGEX_MAX_LENGTH:
            raise ValueError(
                f"rule in category {self.category!r} of {self.rule_set!r}: max_length must be "
                f"between 1 and {MAX_REGEX_MAX_LENGTH}, got {self.max_length}"
            )


@dataclass(frozen=True, slots=True)
class Hit:
    """A match: its rule's category and rule set, and the raw span ``[start, end)``."""

    category: str
    rule_set: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class NormalisedHit:
    """A match in normalised offsets ``[start, end)``."""

    category: str
    rule_set: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Regex:
    pattern: re.Pattern[str]
    category: str
    rule_set: str


class Matcher:
    """All the rules' keywords in one automaton, and their regexes; immutable once built."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        owners: dict[str, list[tuple[str, str]]] = {}
        regexes: list[_Regex] = []
        categories: set[str] = set()
        keyword_window = 0
        regex_window = 0
        for rule in rules:
            categories.add(rule.category)
            if rule.regex is not None:
                regexes.append(_Regex(_compile(rule), rule.category, rule.rule_set))
                regex_window = max(regex_window, rule.max_length)
                continue
            for keyword in rule.keywords:
                folded = normalise_pattern(keyword)
                if not folded:
                    raise ValueError(
                        f"keyword {keyword!r} in category {rule.category!r} of "
                        f"{rule.rule_set!r} is empty once normalised"
                    )
                pair = (rule.category, rule.rule_set)
                listed = owners.setdefault(folded, [])
                if pair not in listed:
                    listed.append(pair)
                keyword_window = max(keyword_window, len(folded))
        patterns = list(owners)
        self._automaton = ahocorasick_rs.AhoCorasick(patterns, store_patterns=False)
        self._owners = tuple(tuple(owners[pattern]) for pattern in patterns)
        self._sorted = sorted(patterns)
        self._regexes = tuple(regexes)
        self._categories = frozenset(categories)
        self._keyword_window = keyword_window
        self._regex_window = regex_window

    @property
    def window(self) -> int:
        """The longest possible match, in normalised characters (0 with no rules)."""
        return max(self._keyword_window, self._regex_window)

    @property
    def keyword_window(self) -> int:
        """The longest keyword, in normalised characters."""
        return self._keyword_window

    @property
    def regex_window(self) -> int:
        """The largest ``max_length`` of the regexes (0 with none)."""
        return self._regex_window

    @property
    def categories(self) -> frozenset[str]:
        return self._categories

    @property
    def keyword_count(self) -> int:
        """Distinct normalised keywords in the automaton."""
        return len(self._sorted)

    def scan(self, raw: str) -> list[Hit]:
        """Every match in ``raw``, in raw offsets, ordered by start then end."""
        found = list(self.find(fold_text(raw)))
        if not found:
            return []
        normalised = normalise(raw)  # the offset map, only when there is something to map
        hits = [to_raw(normalised, hit) for hit in found]
        hits.sort(key=lambda hit: (hit.start, hit.end, hit.category, hit.rule_set))
        return hits

    def find(self, text: str, min_end: int = 0) -> Iterator[NormalisedHit]:
        """Matches in the normalised ``text`` that end after ``min_end``, normalised offsets.

        Keywords: every occurrence, overlapping ones included. Regexes: ``re.finditer``'s
        non-overlapping matches, longest-leftmost as Python's engine finds them.
        """
        if self._sorted and text:
            begin = max(0, min_end - self._keyword_window + 1)
            window = text[begin:] if begin else text
            for index, start, end in self._automaton.find_matches_as_indexes(window, True):
                if end + begin > min_end:
                    for category, rule_set in self._owners[index]:
                        yield NormalisedHit(category, rule_set, start + begin, end + begin)
        for regex in self._regexes:
            begin = max(0, min_end - self._regex_window + 1)
            for match in regex.pattern.finditer(text, begin):
                if match.end() > min_end and match.end() > match.start():
                    yield NormalisedHit(regex.category, regex.rule_set, *match.span())

    def live_start(self, text: str, begin: int = 0) -> int:
        """The first index ``p >= begin`` where a keyword match could still start.

        That is the first ``p`` such that ``text[p:]`` is a proper prefix of some keyword (a match
        that the next characters could complete); ``len(text)`` when there is none. Regexes are
        not considered: they are covered by holding back ``regex_window - 1`` characters.
        """
        size = len(text)
        keywords = self._sorted
        count = len(keywords)
        for position in range(max(begin, size - self._keyword_window + 1), size):
            tail = text[position:]
            index = bisect_left(keywords, tail)  # keywords starting with tail follow it
            if index < count and keywords[index] == tail:
                index += 1
            if index < count and keywords[index].startswith(tail):
                return position
        return size


def to_raw(normalised: Normalised, hit: NormalisedHit, offset: int = 0) -> Hit:
    """``hit`` in the raw offsets of ``normalised``'s raw text, shifted by ``offset``."""
    start, end = normalised.raw_span(hit.start, hit.end)
    return Hit(hit.category, hit.rule_set, start + offset, end + offset)


def _compile(rule: Rule) -> re.Pattern[str]:
    assert rule.regex is not None
    try:
        pattern = re.compile(rule.regex)
    except re.error as exc:
        raise ValueError(
            f"bad regex {rule.regex!r} in category {rule.category!r} of {rule.rule_set!r}: {exc}"
        ) from exc
    if pattern.fullmatch("") is not None:
        raise ValueError(
            f"regex {rule.regex!r} in category {rule.category!r} of {rule.rule_set!r} "
            "matches the empty string"
        )
    return pattern
