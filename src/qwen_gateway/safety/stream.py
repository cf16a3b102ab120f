"""The streaming output filter: deliver text as it comes, holding back only a possible match.

A ``StreamFilter`` sees one choice's text chunk by chunk. After each chunk it delivers every
character that can no longer be part of a match and holds back the rest: the raw text from the
first normalised position where a keyword could still start (the text from there on is a prefix
of some keyword), or, when the rules have regexes, from ``regex_window - 1`` normalised
characters before the end, whichever is earlier. At most ``window - 1`` normalised characters
(plus the separators and zero-width characters among and after them) are ever held, and usually
far fewer: ordinary text is not the start of any keyword.

Actions, per category:

- ``block``: the text before the match is delivered, nothing of the match, and nothing after it;
  the filter is then blocked and every later call delivers ``""``. A block is decided at the
  first point where no match starting earlier can still complete, so a longer phrase that
  contains a blocked word is withheld from its own start.
- ``redact``: the match's raw span is delivered with each raw character (separators and
  zero-width characters inside the span included) replaced by the mask character, so the
  delivered text keeps its length in characters.
- ``flag`` and ``review``: the text is delivered unchanged and the hit is reported.

Chunking never changes the outcome: the concatenated delivered text, for any split of the same
text, equals what ``filter_text`` returns for it in one piece. Several choices in one response
use several filters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from qwen_gateway.safety.matcher import Hit, Matcher
from qwen_gateway.safety.normalize import fold_char

__all__ = ["Action", "StreamFilter", "Verdict", "filter_text"]

Action = Literal["block", "redact", "flag", "review"]
_ACTIONS: frozenset[str] = frozenset(get_args(Action))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to send now, the hits found in this step, and the blocking hit once blocked."""

    deliver: str
    hits: tuple[Hit, ...] = ()
    blocked: Hit | None = None


class StreamFilter:
    """Filters one stream of text (one choice) against a matcher's rules."""

    def __init__(self, matcher: Matcher, actions: Mapping[str, Action], mask: str = "*") -> None:
        missing = sorted(matcher.categories - actions.keys())
        if missing:
            raise ValueError(f"no action for categories {missing}")
        unknown = sorted(str(action) for action in actions.values() if action not in _ACTIONS)
        if unknown:
            raise ValueError(f"unknown actions {unknown}; expected one of {sorted(_ACTIONS)}")
        if len(mask) != 1:
            raise ValueError(f"the mask must be one character, got {mask!r}")
        self._matcher = matcher
        self._actions = dict(actions)
        self._mask = mask
        self._raw = ""  # raw text received and not yet delivered
        self._raw_base = 0  # stream offset of self._raw[0]
        self._norm = ""  # normalised form of self._raw
        self._origin: list[int] = []  # stream offset of the raw char behind each of self._norm
        self._masks: list[tuple[int, int]] = []  # redacted stream spans not yet delivered
        self._pending_block: Hit | None = None
        self._blocked: Hit | None = None
        self._closed = False

    @property
    def blocked(self) -> Hit | None:
        return self._blocked

    @property
    def held(self) -> int:
        """Raw characters received and not yet delivered."""
        return len(self._raw)

    def feed(self, text: str) -> Verdict:
        """Take the next chunk; return what can be delivered now."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        if self._blocked is not None:
            return Verdict("", (), self._blocked)
        scanned = len(self._norm)
        base = self._raw_base + len(self._raw)
        self._raw += text
        parts: list[str] = []
        origin = self._origin
        for index, char in enumerate(text):
            folded = fold_char(char)
            if folded:
                parts.append(folded)
                origin.extend([base + index] * len(folded))
        if parts:
            self._norm += "".join(parts)
        hits = self._collect(scanned) if len(self._norm) > scanned else ()
        return self._advance(hits, final=False)

    def close(self) -> Verdict:
        """The stream ended: deliver what was held back (or decide a pending block)."""
        if self._closed:
            raise RuntimeError("close() called twice")
        self._closed = True
        if self._blocked is not None:
            return Verdict("", (), self._blocked)
        return self._advance((), final=True)

    def _collect(self, scanned: int) -> tuple[Hit, ...]:
        hits: list[Hit] = []
        origin = self._origin
        for found in self._matcher.find(self._norm, scanned):
            hit = Hit(
                found.category, found.rule_set, origin[found.start], origin[found.end - 1] + 1
            )
            hits.append(hit)
            action = self._actions[hit.category]
            if action == "block":
                if self._pending_block is None or hit.start < self._pending_block.start:
                    self._pending_block = hit
            elif action == "redact":
                self._masks.append((hit.start, hit.end))
        hits.sort(key=lambda hit: (hit.start, hit.end))
        return tuple(hits)

    def _hold_point(self) -> int:
        """Stream offset of the first raw character that must still be held back."""
        norm = self._norm
        size = len(norm)
        hold = self._matcher.live_start(norm)
        if self._matcher.regex_window:
            hold = min(hold, max(0, size - self._matcher.regex_window + 1))
        return self._origin[hold] if hold < size else self._raw_base + len(self._raw)

    def _advance(self, hits: tuple[Hit, ...], *, final: bool) -> Verdict:
        end = self._raw_base + len(self._raw) if final else self._hold_point()
        block = self._pending_block
        if block is not None and block.start <= end:
            delivered = self._deliver(block.start)
            self._blocked = block
            self._raw, self._norm, self._origin, self._masks = "", "", [], []
            kept = tuple(hit for hit in hits if hit.start < block.start or hit == block)
            return Verdict(delivered, kept, block)
        return Verdict(self._deliver(end), hits, None)

    def _deliver(self, upto: int) -> str:
        """Release the raw text before stream offset ``upto``, masks applied."""
        count = upto - self._raw_base
        if count <= 0:
            return ""
        segment = self._raw[:count]
        base = self._raw_base
        if self._masks:
            chars = list(segment)
            for start, stop in self._masks:
                for position in range(max(start, base), min(stop, upto)):
                    chars[position - base] = self._mask
            segment = "".join(chars)
            self._masks = [span for span in self._masks if span[1] > upto]
        self._raw = self._raw[count:]
        self._raw_base = upto
        dropped = bisect_left(self._origin, upto)
        if dropped:
            self._norm = self._norm[dropped:]
            del self._origin[:dropped]
        return segment


def filter_text(
    matcher: Matcher, actions: Mapping[str, Action], text: str, mask: str = "*"
) -> Verdict:
    """Filter a whole (non-streamed) text: exactly what a stream of it would deliver."""
    stream = StreamFilter(matcher, actions, mask)
    first = stream.feed(text)
    last = stream.close()
    return Verdict(first.deliver + last.deliver, first.hits + last.hits, last.blocked)
