"""Content safety in the pipeline: what both policy stages share. The stages themselves are
``service/input_policy.py`` (the prompt) and ``service/output_policy.py`` (the answer, while it
streams); this module holds the policies in force (:class:`SafetyRuntime`, which a reload swaps
whole: a request keeps the ones it started with), how findings are reported (metrics and audit
rows: category and action, never text), and how the high-risk classifier reads a long text
(overlapping windows)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from qwen_gateway.config import ConfigError, SafetyAction, SafetySettings
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.policy.principal import ANONYMOUS, Principal
from qwen_gateway.safety.policy import Direction, ReviewMode, SafetyPolicies
from qwen_gateway.store.audit import AuditEntry

log = logging.getLogger("qwen_gateway.safety")


class RiskModel(Protocol):
    """The high-risk classifier: a category (financial_advice, …) or None."""

    @property
    def categories(self) -> Sequence[str]: ...

    def category(self, text: str) -> str | None: ...


class ReviewSink(Protocol):
    """Where review items go (the review service)."""

    async def submit(
        self,
        *,
        mode: ReviewMode,
        direction: Direction,
        category: str,
        principal_id: str,
        key_id: int | None,
        deployment: str | None,
        request_id: str,
        prompt: str | None,
        answer: str | None,
    ) -> str: ...

    def notice(self, review_id: str) -> str: ...


class SafetyObserver(Protocol):
    def safety_action(self, direction: str, category: str, action: str) -> None: ...

    def safety_reload(self, result: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """A category that matched, what it does, where."""

    direction: Direction
    category: str
    action: SafetyAction


class SafetyRuntime:
    """The compiled policies in force and the classifier; :meth:`reload` swaps them."""

    def __init__(
        self,
        policies: SafetyPolicies,
        classifier: RiskModel | None,
        compile_policies: Callable[[], SafetyPolicies],
        observer: SafetyObserver | None = None,
        audit: Callable[[AuditEntry], None] | None = None,
        classifier_id: str = "",
    ) -> None:
        self.policies = policies
        self.classifier = classifier
        self._classifier_id = classifier_id
        self._compile = compile_policies
        self._observer = observer
        self._audit = audit
        self._lock = asyncio.Lock()
        self.generation = 1

    @classmethod
    def build(
        cls,
        initial: SafetySettings,
        load: Callable[[], SafetySettings],
        classifier: RiskModel | None,
        observer: SafetyObserver | None = None,
        audit: Callable[[AuditEntry], None] | None = None,
        classifier_id: str = "",
    ) -> SafetyRuntime:
        """Compiled from ``initial`` now; a reload compiles what ``load`` reads then.
        ``classifier_id`` names the classifier's model (a digest), for :meth:`fingerprint`."""
        categories = tuple(classifier.categories) if classifier is not None else ()
        return cls(
            SafetyPolicies.compile(initial, categories),
            classifier,
            lambda: SafetyPolicies.compile(load(), categories),
            observer,
            audit,
            classifier_id,
        )

    async def reload(self, actor: str = "signal", client: str | None = None) -> int:
        """Read and compile the policies again (in a thread: large lists take a while) and
        swap them in; requests already running finish under the old ones. A bad config keeps
        the old policies and raises ConfigError. Recorded in the audit trail."""
        async with self._lock:
            try:
                policies = await asyncio.to_thread(self._compile)
            except ConfigError as exc:
                self._record("error", actor, client, str(exc)[:500])
                raise
            except Exception as exc:  # reading the configuration failed some other way
                log.exception("reloading the safety policies failed")
                self._record("error", actor, client, type(exc).__name__)
                raise ConfigError(f"reading the configuration failed: {exc!r}") from exc
            self.policies = policies
            self.generation += 1
            self._record("ok", actor, client)
            log.info("content-safety policies reloaded (generation %d)", self.generation)
            return self.generation

    def _record(self, result: str, actor: str, client: str | None, error: str = "") -> None:
        if self._observer is not None:
            self._observer.safety_reload(result)
        if self._audit is not None:
            details: dict[str, object] = {"result": result, "generation": self.generation}
            if error:
                details["error"] = error
            self._audit(
                AuditEntry(datetime.now(UTC), "safety.reload", actor, None, client, details)
            )

    def fingerprint(self) -> str:
        """A digest of the policies in force and the classifier's model."""
        return f"{self.policies.fingerprint}.{self._classifier_id}"

    def cache_version(self, principal: Principal, target: str) -> str:
        """What a cached answer for this caller and target depends on (the response cache keys
        on it): the policies in force and which of them apply to the answer, so that a hit is
        never an answer another caller's or an older policy let through."""
        plan = self.policies.plan("output", principal.key_id, principal.tier, target)
        return f"{self.fingerprint()}:{','.join(plan.policies) if plan else '-'}"

    def describe(self) -> dict[str, object]:
        """What is in force, for the admin API: policies and rule counts, never the rules."""
        p = self.policies
        return {
            "generation": self.generation,
            "rule_sets": {name: len(rules) for name, rules in p.rules.items()},
            "policies": [
                {
                    "name": x.name,
                    "rule_sets": list(x.rule_sets),
                    "keys": sorted(x.keys),
                    "tiers": sorted(x.tiers),
                    "deployments": sorted(x.deployments),
                    "review": x.review,
                }
                for x in p.policies
            ],
            "classifier": list(self.classifier.categories) if self.classifier else [],
        }


def principal_of(record: RequestRecord) -> Principal:
    return record.principal if isinstance(record.principal, Principal) else ANONYMOUS


@dataclass(slots=True)
class PromptReview:
    """A review the prompt asked for, carried to the output stage on the record."""

    category: str
    mode: ReviewMode


class Reporter:
    """Metrics and audit rows for findings (category and action, never text)."""

    def __init__(
        self, audit: Callable[[AuditEntry], None], observer: SafetyObserver | None
    ) -> None:
        self._audit = audit
        self._observer = observer

    def report(self, finding: Finding, record: RequestRecord) -> None:
        tag = f"{finding.direction}:{finding.category}"
        if record.safety is None:
            record.safety = [tag]
        elif tag in record.safety:
            return  # once per request and category
        else:
            record.safety.append(tag)
        if self._observer is not None:
            self._observer.safety_action(finding.direction, finding.category, finding.action)
        self._audit(
            AuditEntry(
                ts=datetime.now(UTC),
                action=f"safety.{finding.action}",
                actor=principal_of(record).id,
                target=record.request_id,
                details={
                    "direction": finding.direction,
                    "category": finding.category,
                    "deployment": record.deployment or record.model,
                },
            )
        )


#: The classifier reads at most this many characters at once (under a millisecond a call);
#: longer texts are read as overlapping windows, and the first flagged window decides.
WINDOW = 500
WINDOW_STEP = 400
WINDOW_OVERLAP = WINDOW - WINDOW_STEP
#: windows read of a prompt (its system messages first, then the end of its last user
#: message, where the question usually is): about 8,000 characters, a few milliseconds
INPUT_WINDOWS = 20


def windows(text: str) -> list[str]:
    """``text`` as overlapping windows of at most :data:`WINDOW` characters."""
    if len(text) <= WINDOW:
        return [text] if text else []
    last = len(text) - WINDOW
    starts = [*range(0, last, WINDOW_STEP), last]
    return [text[i : i + WINDOW] for i in starts]


def classify(classifier: RiskModel, texts: Sequence[str], budget: int) -> str | None:
    """The first category any window of ``texts`` is flagged with, reading at most ``budget``
    windows (the ends of long texts first: a question is usually at the end)."""
    for text in texts:
        parts = windows(text)
        for part in reversed(parts[-budget:]):
            category = classifier.category(part)
            if category is not None:
                return category
        budget -= min(budget, len(parts))
        if budget == 0:
            break
    return None
