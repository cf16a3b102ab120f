"""The response cache stage (slot ``cache``): look the request up before it is routed, replay a
hit, and store a miss's answer once it has ended cleanly.

- **Verdict** (``record.cache``, the ``x-qwen-gateway-cache`` header, the usage row): ``hit``
  (answered from the cache), ``miss`` (asked the model; its answer may be stored: also for
  ``Cache-Control: no-cache``, which skips the lookup only), ``bypass`` (the cache was not
  used: the rules of :mod:`qwen_gateway.cache.decision`, ``no-store``, or a split that picks
  its arm at random).
- **A hit is admitted like any request**: the caller's allowlist, then its limits and the
  shared ones of the model asked for and of the deployment that served the answer (rpm and
  concurrency always; tokens as the billing policy says: ``charged``, the answer's prompt and
  completion tokens; ``free``, none, and the replayed usage says 0 tokens, which is what the
  usage row records). The permit is settled by the account stage as for any request.
- **Replay**: the stored events (text, tool calls, finishes) then the usage, so the edges
  render the same shape as the original answer, streamed or not.
- **Store**: only when the stream reached its usage event (not cut off), every choice finished
  cleanly, nothing was held for review, and the deployment that answered is the one keyed on
  (a fallback's answer is not stored under the primary's key). The events stored are those
  the client received (this stage sits outside the output policy).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Protocol

from qwen_gateway.cache.decision import Billing, CacheRules, Stored
from qwen_gateway.cache.key import NearDuplicates, last_user_message, request_key, scope_of
from qwen_gateway.cache.store import CachedAnswer, CacheStore
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChatRequest,
    EmbeddingResult,
    EngineEvent,
    GenerationRequest,
    PromptLogprobs,
    RelayedChunk,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from qwen_gateway.policy.auth import check_model
from qwen_gateway.policy.gate import Gate
from qwen_gateway.policy.principal import ANONYMOUS, Principal
from qwen_gateway.routing.registry import RouteContext
from qwen_gateway.routing.router import Router
from qwen_gateway.service.pipeline import Generate, Slot


class CacheObserver(Protocol):
    """Where the verdicts are counted (the metrics)."""

    def cache_request(self, result: str) -> None: ...


class _Quiet:
    def cache_request(self, result: str) -> None:
        return None


class ResponseCache:
    """The exact response cache as a pipeline stage. ``similar``: the near-duplicate lookup,
    asked after an exact miss (chat requests without tools only). ``version``: what the
    answers depend on besides the request (the content-safety policies that apply to this
    caller and target), part of every key, so that an answer stored under other policies (an
    older configuration, another caller's tier) is never served."""

    def __init__(
        self,
        store: CacheStore,
        rules: CacheRules,
        router: Router,
        gate: Gate,
        *,
        shared: bool = False,
        billing: Billing = "charged",
        observer: CacheObserver | None = None,
        similar: NearDuplicates | None = None,
        max_entry_chars: int = 1024 * 1024,
        version: Callable[[Principal, str], str] | None = None,
    ) -> None:
        self.store = store
        self._rules = rules
        self._router = router
        self._gate = gate
        self._shared = shared
        self._billing = billing
        self._observer: CacheObserver = observer or _Quiet()
        self._similar = similar
        #: a miss whose output grows past this stops being collected (it could not be kept)
        self._max_chars = max_entry_chars
        self._version = version

    @property
    def slot(self) -> Slot:
        return "cache"

    def wrap(self, inner: Generate) -> Generate:
        def generate(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            return self._generate(inner, request, record, user)

        return generate

    async def _generate(
        self, inner: Generate, request: GenerationRequest, record: RequestRecord, user: str | None
    ) -> AsyncGenerator[EngineEvent, None]:
        principal = record.principal if isinstance(record.principal, Principal) else ANONYMOUS
        decision = self._rules.decide(request, principal.id, principal.key_id, record.cache_control)
        target = None
        # a prompt the input policy sent for review is answered afresh (and never stored)
        # answers with logprobs are not cached: a stored answer keeps only its text
        wants_logprobs = request.sampling.logprobs is not None
        if not decision.bypass and record.review is None and not wants_logprobs:
            ctx = RouteContext(principal.id, user, principal.models)
            target = self._router.keyed_target(request.model, ctx)
        if target is None:
            self._verdict(record, "bypass")
            async with aclosing(inner(request, record, user)) as events:
                async for event in events:
                    yield event
            return
        scope = scope_of(principal.id, self._shared)
        if self._version is not None:
            scope = f"{scope}|{self._version(principal, target)}"
        key = request_key(request, target, scope)
        if decision.read:
            answer = await self._lookup(key, request, scope, target)
            if answer is not None:
                await self._admit(answer, request, record, principal, target)
                self._verdict(record, "hit")
                for stored in answer.events:
                    yield stored
                usage = answer.usage if self._billing == "charged" else Usage(0, 0)
                yield usage
                return
        self._verdict(record, "miss")
        collected: list[Stored] = []
        chars, keep = 0, decision.write
        async with aclosing(inner(request, record, user)) as events:
            async for event in events:
                if isinstance(event, Usage):
                    if keep:  # stored before the usage goes out: the edge stops there
                        await self._store(key, collected, event, request, record, scope, target)
                elif isinstance(event, PromptLogprobs):
                    keep, collected = False, []  # logprobs are never cached (see above)
                elif keep and not isinstance(event, EmbeddingResult):  # (not on this path)
                    found = event.events if isinstance(event, RelayedChunk) else (event,)
                    collected.extend(found)
                    chars += sum(_chars(e) for e in found)
                    if chars > self._max_chars:
                        keep, collected = False, []  # too large to keep: stop collecting
                yield event

    def _verdict(self, record: RequestRecord, result: str) -> None:
        record.cache = result
        self._observer.cache_request(result)

    async def _lookup(
        self, key: str, request: GenerationRequest, scope: str, target: str
    ) -> CachedAnswer | None:
        answer = await self.store.get(key)
        if answer is not None or self._similar is None:
            return answer
        text = _near_text(request)
        if text is None:
            return None
        near = await self._similar.lookup(_near_scope(request, scope, target), text)
        if near is None:
            return None
        found = await self.store.get(near)
        if found is None:
            await self._similar.forget(near)
        return found

    async def _admit(
        self,
        answer: CachedAnswer,
        request: GenerationRequest,
        record: RequestRecord,
        principal: Principal,
        target: str,
    ) -> None:
        """What the route stage would check and charge, for an answer from the cache."""
        router = self._router
        record.model = request.model
        canonical = router.canonical(request.model)
        if canonical == request.model or not principal.allows(canonical):
            check_model(principal, request.model)
        deployment = answer.deployment or target
        asked = canonical if router.virtual(canonical) else None
        subjects = self._gate.subjects(principal, deployment, asked)
        if subjects:
            charged = self._billing == "charged"
            prompt = answer.usage.prompt_tokens if charged else 0
            reserve = answer.usage.completion_tokens if charged else 0
            record.permit = await self._gate.limiter.acquire(subjects, prompt, reserve, request.n)
        record.deployment = deployment
        record.route = f"cache=hit; deployment={deployment}"

    async def _store(
        self,
        key: str,
        events: list[Stored],
        usage: Usage,
        request: GenerationRequest,
        record: RequestRecord,
        scope: str,
        target: str,
    ) -> None:
        if self._rules.storable(events, request.n, held=record.review_id is not None):
            return
        if not self._router.virtual(target) and record.deployment != target:
            return  # a fallback answered: not the answer keyed on
        answer = CachedAnswer(tuple(events), usage, record.deployment)
        if not await self.store.put(key, answer) or self._similar is None:
            return
        text = _near_text(request)
        if text is not None:
            await self._similar.remember(_near_scope(request, scope, target), text, key)


def _chars(event: Stored) -> int:
    if isinstance(event, TextDelta):
        return len(event.text)
    if isinstance(event, ToolCallDelta):
        return len(event.arguments) + len(event.name)
    return 0


def _near_text(request: GenerationRequest) -> str | None:
    """What a near-duplicate lookup compares: a tool-less chat's last user message."""
    if not isinstance(request, ChatRequest) or request.tools:
        return None
    return last_user_message(request)


def _near_scope(request: GenerationRequest, scope: str, target: str) -> str:
    """Near duplicates are looked up within the scope, for the same target, and among requests
    equal in everything but their last user message (system prompt, history, sampling): the
    exact key of the request with that message left empty."""
    assert isinstance(request, ChatRequest)  # _near_text said so
    messages = list(request.messages)
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            messages[i] = replace(messages[i], content="")
            break
    return request_key(replace(request, messages=tuple(messages)), target, scope)
