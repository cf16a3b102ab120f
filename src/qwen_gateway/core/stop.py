"""Stop strings over streamed text, also when a stop string is split across tokens."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed output text; get back the text that is safe to emit and whether to stop.

    Text that could still become the start of a stop string is held back until the next
    piece decides it; the stop string itself is never emitted.
    """

    __slots__ = ("_held", "_longest", "_stops", "matched")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        #: the stop string that stopped the output (the first one in the text), once one has
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buf = self._held + text
        found = [(i, s) for s in self._stops if (i := buf.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: f[0])
            self._held = ""
            return buf[:cut], True
        keep = 0
        for n in range(min(self._longest - 1, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self._stops):
                keep = n
                break
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Held-back text, released when the output ends for another reason."""
        held, self._held = self._held, ""
        return held
