"""Text normalisation for the content filter, with a map back to the raw text.

Matching runs over a folded form of the text so that cosmetic variants of a phrase match the
phrase: compatibility forms (full-width letters, ligatures, circled digits), case, accents,
zero-width and control characters, traditional Chinese characters, and separators put between
the characters of a word ("赌 博", "赌-博", "c.r.a.c.k").

The fold is applied to each raw character on its own, so it is a homomorphism over
concatenation: ``normalise(a + b).text == normalise(a).text + normalise(b).text``. That is what
lets the streaming filter normalise each chunk as it arrives and still see exactly what a
one-shot scan of the whole answer sees, and it gives every normalised character exactly one raw
character that produced it. Per character this means:

1. compatibility decomposition (NFKD), combining marks, format characters (zero-width space,
   joiners, BOM) and control characters dropped, case-folded, recomposed (NFKC): a superset of
   NFKC plus case-folding that also folds accents, so "é" and "e" + U+0301 both give "e";
2. traditional to simplified Chinese, one character at a time with OpenCC's ``t2s`` tables
   (phrase-level conversion depends on the neighbouring characters, which would break both the
   homomorphism and the offset map);
3. separators dropped: every character whose Unicode category is a separator (Z*), punctuation
   (P*), symbol (S*), mark (M*) or other (C*).

The fold of each character is remembered: every Basic Multilingual Plane character once seen
(at most 65,536 entries), and the most recent other ones in a bounded cache, so text made of
many rare code points cannot grow memory without bound.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache

import opencc

__all__ = ["Normalised", "fold_char", "fold_text", "normalise", "normalise_pattern"]

_DROPPED_CATEGORIES = frozenset("ZPSMC")


@dataclass(frozen=True, slots=True)
class Normalised:
    """A normalised text and, for each of its characters, the raw character that produced it.

    ``origin[i]`` is the index in the raw text of the character that produced ``text[i]``;
    ``origin[len(text)]`` is ``len(raw)``. Because each normalised character comes from a single
    raw character, a normalised span ``[a, b)`` (``a < b``) covers the raw span
    ``[origin[a], origin[b - 1] + 1)``: every raw character that produced it, separators and
    zero-width characters inside it included, and nothing after its last character.
    """

    text: str
    origin: tuple[int, ...]

    def raw_span(self, start: int, end: int) -> tuple[int, int]:
        """The raw span ``[s, e)`` covering the normalised span ``[start, end)``."""
        if not 0 <= start < end <= len(self.text):
            raise ValueError(f"bad normalised span [{start}, {end}) of {len(self.text)} chars")
        return self.origin[start], self.origin[end - 1] + 1


@cache
def _t2s() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


def _keep(char: str) -> bool:
    return unicodedata.category(char)[0] not in _DROPPED_CATEGORIES


@lru_cache(maxsize=1 << 16)
def fold_char(char: str) -> str:
    """The normalised form of one raw character (often ``""``, sometimes several characters)."""
    decomposed = unicodedata.normalize("NFKD", char)
    bare = "".join(c for c in decomposed if unicodedata.category(c)[0] not in "MC")
    folded = unicodedata.normalize("NFKC", bare.casefold())
    if not folded:
        return ""
    if folded.isascii():
        return "".join(c for c in folded if c.isalnum())
    converter = _t2s()
    simplified = "".join(converter.convert(c) if ord(c) >= 0x2E80 else c for c in folded)
    return "".join(c for c in simplified if _keep(c))


class _FoldTable(dict[int, str]):
    """``str.translate``'s table: each code point's fold, computed on first sight."""

    def __missing__(self, code: int) -> str:
        folded = fold_char(chr(code))
        if code <= 0xFFFF:
            self[code] = folded
        return folded


_FOLD_TABLE = _FoldTable()


def fold_text(raw: str) -> str:
    """``normalise(raw).text`` without the offset map, at ``str.translate``'s speed."""
    return raw.translate(_FOLD_TABLE)


def normalise(raw: str) -> Normalised:
    """Fold ``raw`` for matching and keep the map from normalised to raw offsets."""
    parts: list[str] = []
    origin: list[int] = []
    table = _FOLD_TABLE
    for index, char in enumerate(raw):
        folded = table[ord(char)]
        if folded:
            parts.append(folded)
            if len(folded) == 1:
                origin.append(index)
            else:
                origin.extend([index] * len(folded))
    origin.append(len(raw))
    return Normalised("".join(parts), tuple(origin))


def normalise_pattern(pattern: str) -> str:
    """The form a list entry is matched in: the same fold as the text's."""
    return fold_text(pattern)
