"""When to cache: whether a request may read the cache and whether its answer may be stored.

Before the request (:meth:`CacheRules.decide`):

- the caller is excluded (``exclude_principals``, ``exclude_keys``) → bypass;
- ``Cache-Control: no-store`` → bypass (neither read nor stored);
- sampling is not deterministic (temperature above 0 and no seed) → bypass, unless
  ``cache_nondeterministic``;
- ``Cache-Control: no-cache`` → not read, but stored (a miss that refreshes the entry).

After the answer (:meth:`CacheRules.storable`): only an answer that ended cleanly: every choice
finished with ``stop`` or ``length`` (never ``content_filter`` or ``cancelled``), a tool-call
answer only with ``cache_tool_calls``, and nothing held for review.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from qwen_gateway.core.types import (
    ChoiceFinished,
    GenerationRequest,
    TextDelta,
    ToolCallDelta,
)

Billing = Literal["charged", "free"]
Stored = TextDelta | ToolCallDelta | ChoiceFinished


@dataclass(frozen=True, slots=True)
class Decision:
    """What the cache does for one request: ``read`` (look it up), ``write`` (store the
    answer); ``reason`` says why when it does neither (a bypass) or does not read."""

    read: bool
    write: bool
    reason: str | None = None

    @property
    def bypass(self) -> bool:
        return not self.read and not self.write


def cache_directives(header: str | None) -> frozenset[str]:
    """The directives of a ``Cache-Control`` header, lower-cased, without arguments."""
    if not header:
        return frozenset()
    return frozenset(
        part.split("=", 1)[0].strip().lower() for part in header.split(",") if part.strip()
    )


@dataclass(frozen=True, slots=True)
class CacheRules:
    cache_nondeterministic: bool = False
    cache_tool_calls: bool = False
    exclude_keys: frozenset[int] = field(default_factory=frozenset)
    exclude_principals: frozenset[str] = field(default_factory=frozenset)

    def decide(
        self,
        request: GenerationRequest,
        principal_id: str,
        key_id: int | None,
        cache_control: str | None,
    ) -> Decision:
        if principal_id in self.exclude_principals or (
            key_id is not None and key_id in self.exclude_keys
        ):
            return Decision(False, False, "excluded")
        directives = cache_directives(cache_control)
        if "no-store" in directives:
            return Decision(False, False, "no-store")
        s = request.sampling
        if not self.cache_nondeterministic and s.temperature != 0.0 and s.seed is None:
            return Decision(False, False, "nondeterministic")
        if "no-cache" in directives:
            return Decision(False, True, "no-cache")
        return Decision(True, True)

    def storable(self, events: Sequence[Stored], n: int, held: bool = False) -> str | None:
        """Why an answer made of ``events`` (for ``n`` choices) may not be stored; None when it
        may. ``held``: the answer was held or queued for review."""
        if held:
            return "held"
        finished: dict[int, str] = {}
        for event in events:
            if isinstance(event, ToolCallDelta) and not self.cache_tool_calls:
                return "tool_calls"
            if isinstance(event, ChoiceFinished):
                finished[event.index] = event.reason
        if len(finished) != n:
            return "incomplete"
        return _bad_reason(finished.values())


def _bad_reason(reasons: Iterable[str]) -> str | None:
    for reason in reasons:
        if reason == "tool_calls":
            continue  # tool-call events were screened above
        if reason not in ("stop", "length"):
            return reason
    return None
