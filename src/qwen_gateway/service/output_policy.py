"""The output policy stage (slot ``output_policy``): the answer, between the engine and the
cache, while it streams.

One :class:`~qwen_gateway.safety.stream.StreamFilter` per choice holds back only the
tail that could still begin a match (the longest pattern, normalised), so a blocked or
redacted phrase never reaches the client, however the engine splits it. ``block`` ends that
choice with ``finish_reason: "content_filter"`` (the generation stops when every choice has
ended so). The classifier reads each choice as it streams, every 400 new characters with the
last 100 it read; when its verdict can stop the answer (``block``, or a ``review`` that holds),
a streamed choice goes out only as far as the classifier has read (at most 400 characters
behind the engine), so nothing it would stop is delivered.

Review (``review`` actions, keyword or classifier): ``deliver_and_review`` delivers and queues
the answer for a human. ``hold`` withholds it: the client gets the configured notice with the
review id and ``content_filter``; once approved, the same key fetches the answer from
``GET /v1/reviews/{id}``. A held answer is known to need holding:

* when the prompt triggered the review (keyword or classifier): the whole answer is held;
* when a keyword with a ``review`` action appears in the answer: delivery stops before it and
  the rest of the answer is collected for the reviewer;
* when the classifier flags the answer: a non-streamed answer is held whole; a streamed one
  stops before the text that was flagged (what the classifier had passed was delivered).

A released answer is the answer as delivery would have shaped it (blocked phrases cut it,
redactions mask it); only the review's own hold is lifted. A request that ends early (the
client left) is still queued if a review was asked for.

The policies are those in force when the answer began (``service/safety.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field

from qwen_gateway.config import SafetyAction
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    RelayedChunk,
    TextDelta,
    TextRequest,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from qwen_gateway.safety.matcher import Hit
from qwen_gateway.safety.policy import Plan, ReviewMode
from qwen_gateway.safety.stream import StreamFilter, Verdict, filter_text
from qwen_gateway.service.pipeline import Generate, Slot
from qwen_gateway.service.safety import (
    WINDOW_OVERLAP,
    WINDOW_STEP,
    Finding,
    PromptReview,
    Reporter,
    ReviewSink,
    SafetyRuntime,
    principal_of,
    windows,
)

log = logging.getLogger("qwen_gateway.safety")


def _prompt_text(request: GenerationRequest) -> str:
    """The prompt as a reviewer reads it."""
    if isinstance(request, TextRequest):
        return request.prompt if isinstance(request.prompt, str) else "(token ids)"
    return "\n\n".join(f"[{m.role}] {m.content or ''}" for m in request.messages)


@dataclass(slots=True)
class _Choice:
    filter: StreamFilter | None
    text: list[str]  # the answer as the engine gave it (for the classifier's windows)
    ended: bool = False  # its finish was sent, or its delivery stopped
    held: bool = False  # delivery stopped for a review that holds: the notice ends it
    tail: str = ""  # the classifier's next text: the last it read (overlap) and what is new
    fresh: int = 0  # characters of ``tail`` the classifier has not read
    unread: list[EngineEvent] = field(default_factory=list)  # gated: waiting for a verdict
    #: token logprobs of text the filter has not let out yet; they go out with it only while
    #: the filter has changed nothing (after a redaction they are dropped: a masked token's
    #: logprob would tell what it was)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    fed: int = 0  # characters given to the filter
    delivered: int = 0  # characters it let out
    waiting: str = ""  # the text given to the filter that it has not let out yet
    rewritten: bool = False  # the filter let out other text than it was given


class OutputPolicy:
    """Slot ``output_policy``: the answer, between the engine and the cache."""

    slot: Slot = "output_policy"

    def __init__(
        self,
        runtime: SafetyRuntime,
        reporter: Reporter,
        reviews: ReviewSink | None,
    ) -> None:
        self._runtime = runtime
        self._reporter = reporter
        self._reviews = reviews
        self._abandoned: set[asyncio.Task[None]] = set()

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
            principal = principal_of(record)
            plan = self._runtime.policies.plan(
                "output", principal.key_id, principal.tier, record.deployment
            )
            asked = record.review if isinstance(record.review, PromptReview) else None
            if plan is None and asked is None:
                yield first
                async for event in events:
                    yield event
                return
            run = _Run(self, plan, request, record, asked)
            try:
                for out in run.feed(first):
                    yield out
                async for event in events:
                    for out in run.feed(event):
                        yield out
                    if run.done:
                        break  # every choice has ended and nothing more is wanted: stop
                await events.aclose()  # the engine's meter is final once it is closed
                async for out in run.end():
                    yield out
            finally:
                if not run.submitted:
                    self._abandon(run)

    def _abandon(self, run: _Run) -> None:
        """The client left (or the engine failed) before the end: what a reviewer should
        see is still queued, in a task of its own (the request's is being cancelled)."""
        if run.review is None or self._reviews is None:
            return
        task = asyncio.get_running_loop().create_task(run.submit_abandoned())
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)


class _Run:
    """One request's pass through the output policy."""

    def __init__(
        self,
        stage: OutputPolicy,
        plan: Plan | None,
        request: GenerationRequest,
        record: RequestRecord,
        asked: PromptReview | None,
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
        #: what a released answer may hold: blocks and redactions apply, reviews do not
        self.release_actions: Mapping[str, SafetyAction] = {}
        if plan is not None:
            self.filter_actions = {
                c: ("block" if a == "review" and plan.review == "hold" else a)
                for c, a in plan.actions.items()
            }
            self.release_actions = {
                c: ("flag" if a == "review" else a) for c, a in plan.actions.items()
            }
        # nothing is delivered before the end: the prompt asked for a hold, or the answer is
        # not streamed and the classifier may still flag it
        self.buffered = (asked is not None and asked.mode == "hold") or (
            not request.stream and self.classifier is not None
        )
        self.pending: list[EngineEvent] = []
        self.choices = [_Choice(self._filter(), []) for _ in range(max(1, request.n))]
        self.review: tuple[str, ReviewMode] | None = (
            (asked.category, asked.mode) if asked is not None else None
        )
        self.blocked_by_classifier = False
        self.usage: Usage | None = None
        self.submitted = False
        # a streamed answer the classifier may stop (block, or a review that holds) goes out
        # only as the classifier reads it: at most WINDOW_STEP characters behind the engine
        self.gated = (
            not self.buffered
            and self.classifier is not None
            and plan is not None
            and any(
                a == "block" or (a == "review" and plan.review == "hold")
                for a in plan.risk.values()
            )
        )
        self._judged = False

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
        """What one event lets out; when the classifier gates the stream, only text it has
        read (a choice's output waits until the next window is judged)."""
        self._judged = False
        out = self._shape(event)
        if not self.gated or not isinstance(event, TextDelta | ToolCallDelta | ChoiceFinished):
            return out
        c = self.choices[event.index]
        if self._judged or c.ended:
            out, c.unread = [*c.unread, *out], []
            return out
        c.unread.extend(out)
        return []

    def _shape(self, event: EngineEvent) -> list[EngineEvent]:
        if isinstance(event, TextDelta):
            c = self.choices[event.index]
            c.text.append(event.text)
            stop = self._read(c, event.text)
            if stop is not None:
                return self._stop(event.index, c, held=stop == "hold")
            if c.ended:
                return []
            if c.filter is None:
                return [event]
            c.logprobs.extend(event.logprobs)
            c.fed += len(event.text)
            if not c.rewritten:
                c.waiting += event.text
            return self._verdict(event.index, c, c.filter.feed(event.text))
        if isinstance(event, ToolCallDelta):
            c = self.choices[event.index]
            call = f"{event.name} {event.arguments}"
            c.text.append(f"\n<tool_call>{call}</tool_call>")
            stop = self._read(c, call)
            if stop is not None:
                return self._stop(event.index, c, held=stop == "hold")
            if c.ended:
                return []
            if self.plan is None or self.plan.matcher is None:
                return [event]
            verdict = filter_text(self.plan.matcher, self.filter_actions, call, self.mask)
            for hit in verdict.hits:
                self._finding(hit)
            if verdict.blocked is not None:
                return self._stop(event.index, c, held=self._holds(verdict.blocked))
            if verdict.hits and verdict.deliver != call:
                # a redaction inside a call's arguments would break them: the call is withheld
                return self._stop(event.index, c)
            return [event]
        if isinstance(event, ChoiceFinished):
            c = self.choices[event.index]
            if c.ended:
                return []
            out: list[EngineEvent] = []
            stop = self._read(c, "", final=True)
            if stop is not None:
                return self._stop(event.index, c, held=stop == "hold")
            if c.filter is not None:
                out = self._verdict(event.index, c, c.filter.close(), final=True)
                if c.ended:
                    return out
            c.ended = True
            return [*out, event]
        return [event]

    def _read(self, c: _Choice, text: str, *, final: bool = False) -> str | None:
        """Feed the classifier the choice's text; it reads once :data:`WINDOW_STEP` new
        characters are in (and what is left at the end), with :data:`WINDOW_OVERLAP` of what it
        read before. "block" or "hold" when a verdict stops the choice's delivery."""
        if self.classifier is None:
            return None
        c.tail += text
        c.fresh += len(text)
        if c.fresh == 0 or (c.fresh < WINDOW_STEP and not final):
            return None
        stop: str | None = None
        for part in windows(c.tail):
            stop = self._judge(self.classifier.category(part)) or stop
        c.tail, c.fresh = c.tail[-WINDOW_OVERLAP:], 0
        self._judged = True
        return None if c.ended else stop

    def _judge(self, category: str | None) -> str | None:
        """Act on a classifier verdict: "block", "hold" (delivery stops) or None."""
        assert self.plan is not None
        action = self.plan.risk.get(category) if category is not None else None
        if category is None or action is None:
            return None
        self.stage._reporter.report(Finding("output", category, action), self.record)
        if action == "block":
            self.blocked_by_classifier = True
            return "block"
        if action == "review":
            if self.review is None or (self.plan.review == "hold" and self.review[1] != "hold"):
                self.review = (category, self.plan.review)
            return "hold" if self.plan.review == "hold" else None
        return None

    def _holds(self, hit: Hit) -> bool:
        """A phrase stopped delivery for a review that holds (not for a block)."""
        return self.plan is not None and self.plan.actions.get(hit.category) == "review"

    def _verdict(
        self, index: int, c: _Choice, verdict: Verdict, *, final: bool = False
    ) -> list[EngineEvent]:
        for hit in verdict.hits:
            self._finding(hit)
        deliver = verdict.deliver
        c.delivered += len(deliver)
        if not c.rewritten:  # a flag or review changes nothing: the logprobs still fit
            c.rewritten = not c.waiting.startswith(deliver)
            c.waiting = "" if c.rewritten else c.waiting[len(deliver) :]
        logprobs: tuple[TokenLogprob, ...] = ()
        if c.rewritten:
            c.logprobs.clear()
        elif c.delivered == c.fed and (deliver or final):  # every waiting token's text is out
            logprobs, c.logprobs = tuple(c.logprobs), []
        out: list[EngineEvent] = (
            [TextDelta(index, deliver, logprobs)] if deliver or logprobs else []
        )
        if verdict.blocked is not None:
            out.extend(self._stop(index, c, held=self._holds(verdict.blocked)))
        return out

    def _stop(self, index: int, c: _Choice, *, held: bool = False) -> list[EngineEvent]:
        """End choice ``index``'s delivery: ``content_filter`` now, or (``held``) the notice
        with the review id at the end."""
        if c.ended:
            return []
        c.ended = True
        c.unread.clear()  # not read by the classifier, or after the stop: withheld
        if held:
            c.held = True
            return []
        return [ChoiceFinished(index, "content_filter")]

    def _answer(self) -> str:
        """The answer as it may be released: blocks cut it and redactions mask it, choice by
        choice, as they would have been delivered; only reviews do not apply."""
        texts = ["".join(c.text) for c in self.choices]
        plan = self.plan
        if plan is not None and plan.matcher is not None:
            matcher = plan.matcher
            texts = [filter_text(matcher, self.release_actions, t, self.mask).deliver
                     for t in texts]  # fmt: skip
        return "\n\n".join(texts)

    async def end(self) -> AsyncGenerator[EngineEvent, None]:
        """After the last engine event: the review item, what was held back, the usage."""
        mode: ReviewMode | None = None
        review_id: str | None = None
        if self.review is not None:
            category, mode = self.review
            if mode == "hold" and not self.buffered and not any(c.held for c in self.choices):
                mode = "deliver_and_review"  # streamed out already: a human looks afterwards
            review_id = await self._submit(category, mode)
        self.submitted = True
        reviews = self.stage._reviews
        notice = reviews.notice(review_id) if review_id is not None and reviews else None
        if self.buffered and (mode == "hold" or self.blocked_by_classifier):
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

    async def submit_abandoned(self) -> None:
        """The review of a request that ended early (what it had generated)."""
        if self.review is None or self.submitted:
            return
        self.submitted = True
        category, mode = self.review
        try:
            await self._submit(category, mode)
        except Exception:  # the request is gone: nobody else would hear of it
            log.exception("queueing the review of an abandoned request failed")

    async def _submit(self, category: str, mode: ReviewMode) -> str | None:
        reviews = self.stage._reviews
        if reviews is None:
            log.warning("a review was asked for but no review queue is configured")
            return None
        record = self.record
        principal = principal_of(record)
        review_id = await reviews.submit(
            mode=mode,
            direction="input" if self.asked is not None else "output",
            category=category,
            principal_id=principal.id,
            key_id=principal.key_id,
            deployment=record.deployment,
            request_id=record.request_id,
            prompt=_prompt_text(self.request),
            answer=self._answer(),
        )
        record.review_id = review_id
        return review_id
