"""The content-safety stages of the pipeline: the input policy (the prompt) and the output
policy (the answer, while it streams), over the compiled policies of ``safety/policy.py``.

Input: each message is scanned on its own (a phrase never spans two messages); ``block`` →
400 ``content_filter`` naming the category (never the matched text) and nothing reaches the
engine; ``redact`` masks the span before the engine sees it; ``flag`` records; ``review``
queues the request with its answer. The high-risk classifier looks at the last user message.

Output: one :class:`~qwen_gateway.safety.stream.StreamFilter` per choice holds back only the
tail that could still begin a match (the longest pattern, normalised), so a blocked or
redacted phrase never reaches the client, however the engine splits it. ``block`` ends that
choice with ``finish_reason: "content_filter"`` (the generation stops when every choice has
ended so). The classifier reads the whole answer at its end.

Review (``review`` actions, keyword or classifier): ``deliver_and_review`` delivers and queues
the answer for a human. ``hold`` withholds it: the client gets the configured notice with the
review id and ``content_filter``; once approved, the same key fetches the answer from
``GET /v1/reviews/{id}``. A held answer is known to need holding:

* when the prompt triggered the review (keyword or classifier): the whole answer is held;
* when a keyword with a ``review`` action appears in the answer: delivery stops before it and
  the rest of the answer is collected for the reviewer;
* when only the classifier, reading the finished answer, asks for a review: a non-streamed
  answer is held; a streamed one has been delivered already, so it is queued as
  ``deliver_and_review`` (and a ``block`` verdict is recorded as the category it found).

The policies are swapped whole on a reload (:class:`SafetyRuntime`); a request keeps the
ones it started with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from qwen_gateway.config import ConfigError, SafetyAction, SafetySettings
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChatMessage,
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    RelayedChunk,
    TextDelta,
    TextRequest,
    ToolCallDelta,
    Usage,
)
from qwen_gateway.errors import ContentFiltered
from qwen_gateway.policy.principal import ANONYMOUS, Principal
from qwen_gateway.safety.matcher import Hit
from qwen_gateway.safety.policy import Direction, Plan, ReviewMode, SafetyPolicies
from qwen_gateway.safety.stream import StreamFilter, Verdict, filter_text
from qwen_gateway.service.pipeline import Generate, Slot
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
    ) -> None:
        self.policies = policies
        self.classifier = classifier
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
    ) -> SafetyRuntime:
        """Compiled from ``initial`` now; a reload compiles what ``load`` reads then."""
        categories = tuple(classifier.categories) if classifier is not None else ()
        return cls(
            SafetyPolicies.compile(initial, categories),
            classifier,
            lambda: SafetyPolicies.compile(load(), categories),
            observer,
            audit,
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
        """A digest of the policies in force (the response cache keys on it)."""
        return self.policies.fingerprint

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


def _principal(record: RequestRecord) -> Principal:
    return record.principal if isinstance(record.principal, Principal) else ANONYMOUS


@dataclass(slots=True)
class _Review:
    """A review the prompt asked for, carried to the output stage on the record."""

    category: str
    mode: ReviewMode


class _Reporter:
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
                actor=_principal(record).id,
                target=record.request_id,
                details={
                    "direction": finding.direction,
                    "category": finding.category,
                    "deployment": record.deployment or record.model,
                },
            )
        )


class InputPolicy:
    """Slot ``input_policy``: the prompt, before the cache and the engine."""

    slot: Slot = "input_policy"

    def __init__(
        self,
        runtime: SafetyRuntime,
        canonical: Callable[[str], str],
        reporter: _Reporter,
    ) -> None:
        self._runtime = runtime
        self._canonical = canonical
        self._reporter = reporter

    def wrap(self, inner: Generate) -> Generate:
        def guarded(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            return inner(self.check(request, record), record, user)

        return guarded

    def check(self, request: GenerationRequest, record: RequestRecord) -> GenerationRequest:
        """The request as the engine may see it (redacted), or ContentFiltered."""
        runtime = self._runtime
        principal = _principal(record)
        plan = runtime.policies.plan(
            "input", principal.key_id, principal.tier, self._canonical(request.model)
        )
        if plan is None:
            return request
        findings: list[Finding] = []
        if plan.matcher is not None:
            request = self._scan(request, plan, findings)
        if plan.risk and runtime.classifier is not None:
            category = runtime.classifier.category(_last_user_text(request))
            if category is not None and category in plan.risk:
                findings.append(Finding("input", category, plan.risk[category]))
        for finding in findings:
            self._reporter.report(finding, record)
        for finding in findings:
            if finding.action == "block":
                raise ContentFiltered(
                    f"The request was refused by the content policy (category: {finding.category})."
                )
        for finding in findings:
            if finding.action == "review":
                record.review = _Review(finding.category, plan.review)
                break
        return request

    def _scan(
        self, request: GenerationRequest, plan: Plan, findings: list[Finding]
    ) -> GenerationRequest:
        assert plan.matcher is not None
        mask = self._runtime.policies.mask

        def one(text: str) -> str:
            verdict = filter_text(plan.matcher, plan.actions, text, mask)  # type: ignore[arg-type]
            for hit in verdict.hits:
                findings.append(Finding("input", hit.category, plan.actions[hit.category]))
            return verdict.deliver if verdict.blocked is None else text

        if isinstance(request, TextRequest):
            if isinstance(request.prompt, str):
                prompt = one(request.prompt)
                if prompt != request.prompt:
                    return replace(request, prompt=prompt)
            return request
        messages: list[ChatMessage] = []
        changed = False
        for m in request.messages:
            content = one(m.content) if m.content else m.content
            calls = m.tool_calls
            for call in calls:
                args = call.arguments if isinstance(call.arguments, str) else str(call.arguments)
                one(args)  # scanned (a block refuses); tool arguments are never rewritten
            if content != m.content:
                changed = True
                m = replace(m, content=content)
            messages.append(m)
        return replace(request, messages=tuple(messages)) if changed else request


def _last_user_text(request: GenerationRequest) -> str:
    if isinstance(request, TextRequest):
        return request.prompt if isinstance(request.prompt, str) else ""
    for m in reversed(request.messages):
        if m.role == "user" and m.content:
            return m.content
    return ""


def _prompt_text(request: GenerationRequest) -> str:
    """The prompt as a reviewer reads it."""
    if isinstance(request, TextRequest):
        return request.prompt if isinstance(request.prompt, str) else "(token ids)"
    return "\n\n".join(f"[{m.role}] {m.content or ''}" for m in request.messages)


@dataclass(slots=True)
class _Choice:
    filter: StreamFilter | None
    text: list[str]
    ended: bool = False  # its finish was sent, or its delivery stopped
    held: bool = False  # delivery stopped at a phrase to review (hold): the notice ends it


class OutputPolicy:
    """Slot ``output_policy``: the answer, between the engine and the cache."""

    slot: Slot = "output_policy"

    def __init__(
        self,
        runtime: SafetyRuntime,
        reporter: _Reporter,
        reviews: ReviewSink | None,
    ) -> None:
        self._runtime = runtime
        self._reporter = reporter
        self._reviews = reviews

    def wrap(self, inner: Generate) -> Generate:
        def guarded(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            return self._guard(inner(request, record, user), request, record)

        return guarded

    async def _guard(
        self,
        events: AsyncGenerator[EngineEvent, None],
        request: GenerationRequest,
        record: RequestRecord,
    ) -> AsyncGenerator[EngineEvent, None]:
        async with aclosing(events):
            first = await anext(events, None)  # routed: the deployment is known
            if first is None:
                return
            principal = _principal(record)
            plan = self._runtime.policies.plan(
                "output", principal.key_id, principal.tier, record.deployment
            )
            asked = record.review if isinstance(record.review, _Review) else None
            if plan is None and asked is None:
                yield first
                async for event in events:
                    yield event
                return
            run = _Run(self, plan, request, record, asked)
            for out in run.feed(first):
                yield out
            async for event in events:
                for out in run.feed(event):
                    yield out
                if run.done:
                    break  # every choice has ended and nothing more is wanted: stop
            async for out in run.end():
                yield out


class _Run:
    """One request's pass through the output policy."""

    def __init__(
        self,
        stage: OutputPolicy,
        plan: Plan | None,
        request: GenerationRequest,
        record: RequestRecord,
        asked: _Review | None,
    ) -> None:
        self.stage = stage
        self.plan = plan
        self.request = request
        self.record = record
        self.asked = asked
        runtime = stage._runtime
        self.mask = runtime.policies.mask
        self.classifier = runtime.classifier if plan is not None and plan.risk else None
        # with a holding policy a phrase to review stops delivery, as a block does; the rest
        # of the answer is still collected for the reviewer
        self.filter_actions: Mapping[str, SafetyAction] = {}
        if plan is not None:
            self.filter_actions = {
                c: ("block" if a == "review" and plan.review == "hold" else a)
                for c, a in plan.actions.items()
            }
        # nothing is delivered before the end: the prompt asked for a hold, or the answer is
        # not streamed and the classifier reads it whole first
        self.buffered = (asked is not None and asked.mode == "hold") or (
            not request.stream and self.classifier is not None
        )
        self.pending: list[EngineEvent] = []
        self.choices = [_Choice(self._filter(), []) for _ in range(max(1, request.n))]
        self.review: tuple[str, ReviewMode] | None = (
            (asked.category, asked.mode) if asked is not None else None
        )
        self.usage: Usage | None = None

    def _filter(self) -> StreamFilter | None:
        plan = self.plan
        if plan is None or plan.matcher is None:
            return None
        return StreamFilter(plan.matcher, self.filter_actions, self.mask)

    @property
    def done(self) -> bool:
        """Every choice has ended and no reviewer wants the rest of the answer."""
        return all(c.ended for c in self.choices) and self.review is None

    def _finding(self, hit: Hit) -> None:
        assert self.plan is not None
        action = self.plan.actions[hit.category]
        self.stage._reporter.report(Finding("output", hit.category, action), self.record)
        if action == "review" and (self.review is None or self.plan.review == "hold"):
            self.review = (hit.category, self.plan.review)

    def feed(self, event: EngineEvent) -> list[EngineEvent]:
        """What to send now for one engine event (nothing while buffering)."""
        if isinstance(event, RelayedChunk):  # the relay fast path: unpacked, then filtered
            return [out for inner in event.events for out in self.feed(inner)]
        if isinstance(event, Usage):
            self.usage = event
            return []
        out = self._handle(event)
        if self.buffered:
            self.pending.extend(out)
            return []
        return out

    def _handle(self, event: EngineEvent) -> list[EngineEvent]:
        if isinstance(event, TextDelta):
            c = self.choices[event.index]
            c.text.append(event.text)
            if c.ended:
                return []
            if c.filter is None:
                return [event]
            return self._verdict(event.index, c, c.filter.feed(event.text))
        if isinstance(event, ToolCallDelta):
            c = self.choices[event.index]
            c.text.append(f"\n<tool_call>{event.name} {event.arguments}</tool_call>")
            if c.ended:
                return []
            if self.plan is None or self.plan.matcher is None:
                return [event]
            verdict = filter_text(
                self.plan.matcher, self.filter_actions, f"{event.name} {event.arguments}",
                self.mask,
            )  # fmt: skip
            for hit in verdict.hits:
                self._finding(hit)
            if verdict.blocked is not None:
                return self._stop(event.index, c, verdict.blocked)
            if verdict.hits and verdict.deliver != f"{event.name} {event.arguments}":
                # a redaction inside a call's arguments would break them: the call is withheld
                return self._stop(event.index, c, verdict.hits[0])
            return [event]
        if isinstance(event, ChoiceFinished):
            c = self.choices[event.index]
            if c.ended:
                return []
            out: list[EngineEvent] = []
            if c.filter is not None:
                out = self._verdict(event.index, c, c.filter.close())
                if c.ended:
                    return out
            c.ended = True
            return [*out, event]
        return [event]

    def _verdict(self, index: int, c: _Choice, verdict: Verdict) -> list[EngineEvent]:
        for hit in verdict.hits:
            self._finding(hit)
        out: list[EngineEvent] = [TextDelta(index, verdict.deliver)] if verdict.deliver else []
        if verdict.blocked is not None:
            out.extend(self._stop(index, c, verdict.blocked))
        return out

    def _stop(self, index: int, c: _Choice, hit: Hit) -> list[EngineEvent]:
        assert self.plan is not None
        c.ended = True
        if self.plan.actions.get(hit.category) == "review":
            c.held = True  # the notice (at the end, with the review id) ends it
            return []
        return [ChoiceFinished(index, "content_filter")]

    async def end(self) -> AsyncGenerator[EngineEvent, None]:
        """After the last engine event: the classifier's verdict on the whole answer, the
        review item, what was held back, and the usage."""
        answer = "\n\n".join("".join(c.text) for c in self.choices)
        late_block = False
        if self.classifier is not None and self.plan is not None:
            category = self.classifier.category(answer)
            action = self.plan.risk.get(category) if category is not None else None
            if category is not None and action is not None:
                self.stage._reporter.report(Finding("output", category, action), self.record)
                if action == "review" and self.review is None:
                    self.review = (category, self.plan.review)
                late_block = action == "block" and self.buffered
        mode: ReviewMode | None = None
        review_id: str | None = None
        if self.review is not None:
            category, mode = self.review
            if mode == "hold" and not self.buffered and not any(c.held for c in self.choices):
                mode = "deliver_and_review"  # streamed out already: a human looks afterwards
            review_id = await self._submit(category, mode, answer)
        reviews = self.stage._reviews
        notice = reviews.notice(review_id) if review_id is not None and reviews else None
        if self.buffered and (mode == "hold" or late_block):
            # nothing of the answer goes out: the notice (hold) and content_filter
            if mode == "hold" and notice is not None:
                yield TextDelta(0, notice)
            for i in range(len(self.choices)):
                yield ChoiceFinished(i, "content_filter")
        else:
            for event in self.pending:
                yield event
            for i, c in enumerate(self.choices):
                if c.held:
                    if notice is not None:
                        yield TextDelta(i, ("\n\n" if c.text and not self.buffered else "")
                                        + notice)  # fmt: skip
                    yield ChoiceFinished(i, "content_filter")
        self.pending.clear()
        meter = self.request.meter
        yield self.usage or Usage(meter.prompt_tokens, meter.completion_tokens)

    async def _submit(self, category: str, mode: ReviewMode, answer: str) -> str | None:
        reviews = self.stage._reviews
        if reviews is None:
            log.warning("a review was asked for but no review queue is configured")
            return None
        record = self.record
        principal = _principal(record)
        review_id = await reviews.submit(
            mode=mode,
            direction="input" if self.asked is not None else "output",
            category=category,
            principal_id=principal.id,
            key_id=principal.key_id,
            deployment=record.deployment,
            request_id=record.request_id,
            prompt=_prompt_text(self.request),
            answer=answer,
        )
        record.review_id = review_id
        return review_id


Stages = tuple[InputPolicy, OutputPolicy]


def safety_stages(
    runtime: SafetyRuntime,
    canonical: Callable[[str], str],
    audit: Callable[[AuditEntry], None],
    reviews: ReviewSink | None,
    observer: SafetyObserver | None = None,
) -> Stages:
    reporter = _Reporter(audit, observer)
    return InputPolicy(runtime, canonical, reporter), OutputPolicy(runtime, reporter, reviews)


__all__ = [
    "Finding",
    "InputPolicy",
    "OutputPolicy",
    "ReviewSink",
    "RiskModel",
    "SafetyObserver",
    "SafetyRuntime",
    "Stages",
    "safety_stages",
]
