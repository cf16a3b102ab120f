"""From the model a client names to the engine that answers it.

A public name is a deployment, one of its aliases, a weighted split across deployments, or the
virtual intent model (``auto``), whose requests are classified offline and sent on by category.
The chosen deployment comes first in the plan, then its fallbacks (and theirs) in order, less
the deployments the caller may not use. Until the first event, a failing replica hands the
request to the next replica, then to the next deployment of the plan; after it, errors end the
stream as they are. Before a deployment's replicas are tried, the request is admitted for it
(its limits). Every request's route is noted on its record (``deployment`` and a ``route``
trace for the response header).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Protocol

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import EngineEvent, GenerationRequest, ModelInfo
from qwen_gateway.engines.base import Engine
from qwen_gateway.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    EngineOverloaded,
    EngineUnavailable,
    GatewayError,
    InternalError,
    InvalidModelOutput,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
)
from qwen_gateway.routing.balancer import Replica
from qwen_gateway.routing.breaker import Ticket
from qwen_gateway.routing.registry import (
    Deployment,
    IntentRoute,
    ReplicaState,
    RouteContext,
    Split,
    Sticky,
)

log = logging.getLogger(__name__)
#: Errors from an engine that say the replica is misconfigured (its key, its model), not the
#: client: the next replica is tried.
_REPLICA_FAULTS = (AuthenticationFailed, PermissionDenied, ModelNotFound)
TokenCounter = Callable[[GenerationRequest], Awaitable[int]]
#: Admits the request for a deployment before its replicas are tried (raises to refuse).
Admit = Callable[[str, ModelInfo], Awaitable[None]]


class RouteObserver(Protocol):
    """Where routing decisions are counted (the metrics)."""

    def route_attempt(self, deployment: str, replica: str, outcome: str) -> None: ...

    def route_fallback(self, deployment: str, reason: str) -> None: ...

    def route_intent(self, model: str, category: str) -> None: ...

    def route_split(self, model: str, arm: str) -> None: ...


class _Quiet:
    def route_attempt(self, deployment: str, replica: str, outcome: str) -> None:
        return None

    def route_fallback(self, deployment: str, reason: str) -> None:
        return None

    def route_intent(self, model: str, category: str) -> None:
        return None

    def route_split(self, model: str, arm: str) -> None:
        return None


@dataclass
class _Trace:
    steps: list[str] = field(default_factory=list)

    def add(self, step: str) -> None:
        self.steps.append(step)

    def __str__(self) -> str:
        return "; ".join(self.steps)


class Router:
    def __init__(
        self,
        deployments: Sequence[Deployment],
        aliases: Mapping[str, str] | None = None,
        splits: Sequence[Split] = (),
        intent: IntentRoute | None = None,
        *,
        affinity: Sticky = "none",
        max_attempts: int = 4,
        observer: RouteObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._deployments = {d.name: d for d in deployments}
        self._names = {d.name: d.name for d in deployments}
        for alias, target in (aliases or {}).items():
            self._names[alias] = target
        self._splits = {s.name: s for s in splits}
        self._intent = intent
        self._affinity = affinity
        self.max_attempts = max_attempts
        self._observer: RouteObserver = observer or _Quiet()
        self._rng = rng or random.Random()
        self._health: asyncio.Task[None] | None = None
        #: The prompt's length in tokens, to skip deployments whose window it does not fit.
        self.count_tokens: TokenCounter | None = None

    # ---- the registry ------------------------------------------------------

    @property
    def deployments(self) -> list[Deployment]:
        return list(self._deployments.values())

    @property
    def intent(self) -> IntentRoute | None:
        return self._intent

    def engines(self) -> Iterator[tuple[str, Engine]]:
        """Every engine, named ``deployment`` (one replica) or ``deployment[i]``."""
        for d in self._deployments.values():
            for i, r in enumerate(d.replicas):
                yield (d.name if len(d.replicas) == 1 else f"{d.name}[{i}]"), r.engine

    def public_names(self) -> list[str]:
        names = list(self._names)
        names += list(self._splits)
        if self._intent is not None:
            names.append(self._intent.model)
        return names

    def info(self, name: str) -> ModelInfo:
        """The model card for a public name."""
        if self._intent is not None and name == self._intent.model:
            return replace(self.info(self._intent.target(self._intent.default)), id=name)
        split = self._splits.get(name)
        if split is not None:
            cards = [self.info(arm) for arm, _ in split.arms]
            return replace(
                cards[0],
                id=name,
                context_window=min(c.context_window for c in cards),
                max_output_tokens=min(c.max_output_tokens for c in cards),
                default_max_tokens=min(c.default_max_tokens or c.max_output_tokens for c in cards),
            )
        target = self._names.get(name)
        if target is None:
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
            )
        return replace(self._deployments[target].info, id=name)

    def canonical(self, name: str) -> str:
        """The deployment an alias stands for; other names as they are."""
        return self._names.get(name, name)

    def virtual(self, name: str) -> bool:
        """Whether ``name`` is a split or the intent model (not a deployment or an alias)."""
        return name in self._splits or (self._intent is not None and name == self._intent.model)

    def reachable(self, names: Iterable[str]) -> frozenset[str]:
        """The deployments that asking for ``names`` leads to without a fallback: a deployment
        or an alias its deployment, a split its arms, the intent model its routes' targets."""
        out: set[str] = set()
        todo, seen = list(names), set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if self._intent is not None and name == self._intent.model:
                todo += self._intent.routes.values()
            elif name in self._splits:
                todo += [arm for arm, _ in self._splits[name].arms]
            elif name in self._names:
                out.add(self._names[name])
        return frozenset(out)

    def check(self, name: str) -> None:
        """Raise ModelNotFound unless ``name`` is served."""
        if name in self._names or name in self._splits:
            return
        if self._intent is not None and name == self._intent.model:
            return
        self.info(name)

    def replica_states(self) -> Iterator[ReplicaState]:
        for d in self._deployments.values():
            for r in d.replicas:
                yield ReplicaState(d.name, r.name, r.breaker.state, r.healthy, r.outstanding)

    # ---- health ------------------------------------------------------------

    def start_health_checks(self, interval: float, probe_seconds: float = 5.0) -> None:
        replicas = [r for d in self._deployments.values() for r in d.replicas]
        if len(replicas) > 1 and self._health is None:
            self._health = asyncio.create_task(self._check_loop(replicas, interval, probe_seconds))

    async def _check_loop(
        self, replicas: list[Replica], interval: float, probe_seconds: float
    ) -> None:
        while True:
            for r in replicas:
                r.healthy = await _probe(r, probe_seconds)
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with suppress(asyncio.CancelledError):
                await self._health
            self._health = None

    # ---- routing -----------------------------------------------------------

    async def _plan(
        self, request: GenerationRequest, ctx: RouteContext, trace: _Trace, record: RequestRecord
    ) -> list[Deployment]:
        name = request.model
        if self._intent is not None and name == self._intent.model:
            intent = await self._intent.classify(request)
            self._observer.route_intent(name, intent.category)
            trace.add(f"intent={intent.category} ({intent.classifier} {intent.confidence:.2f})")
            name = self._intent.target(intent.category)
        split = self._splits.get(name)
        if split is not None:
            arm = split.pick(ctx, self._rng)
            self._observer.route_split(split.name, arm)
            trace.add(f"split={split.name}:{arm}")
            record.arm = arm
            name = arm
        target = self._names.get(name)
        if target is None:
            self.check(name)  # raises ModelNotFound
            raise InternalError(f"The route for '{name}' leads nowhere.")
        plan = [self._deployments[target]]
        seen = {target}
        i = 0
        while i < len(plan):  # fallbacks in order, then their fallbacks
            for fallback in plan[i].fallbacks:
                dep = self._names.get(fallback)
                if dep is not None and dep not in seen:
                    seen.add(dep)
                    plan.append(self._deployments[dep])
            i += 1
        if ctx.models is not None:  # a fallback serves only a caller allowed to reach it
            allowed = self.reachable(ctx.models)
            plan = [d for d in plan if d.name in allowed]
            if not plan:
                raise PermissionDenied(
                    f"Your credential is not allowed to use the model '{request.model}'.",
                    param="model",
                    code="model_not_allowed",
                )
        return plan

    def stream(
        self,
        request: GenerationRequest,
        ctx: RouteContext,
        record: RequestRecord,
        admit: Admit | None = None,
    ) -> AsyncGenerator[EngineEvent, None]:
        return self._stream(request, ctx, record, admit)

    async def _stream(
        self,
        request: GenerationRequest,
        ctx: RouteContext,
        record: RequestRecord,
        admit: Admit | None,
    ) -> AsyncGenerator[EngineEvent, None]:
        trace = _Trace()
        plan = await self._plan(request, ctx, trace, record)
        events, first, dep, replica = await self._open(request, ctx, plan, trace, admit)
        record.deployment = dep.name
        record.route = str(trace)
        ticket = Ticket(probe=False)  # a probe was settled by its first event
        try:
            yield first
            async for event in events:
                yield event
            replica.breaker.success(ticket)
        except GatewayError as exc:
            if exc.status_code >= 500 and not isinstance(exc, InvalidModelOutput):
                # the replica failed mid-stream
                replica.breaker.failure(ticket)
                self._observer.route_attempt(dep.name, replica.name, "stream_error")
            raise
        except Exception:
            replica.breaker.failure(ticket)
            self._observer.route_attempt(dep.name, replica.name, "stream_error")
            raise
        finally:
            replica.outstanding -= 1
            dep.outstanding -= 1
            await _close(events)

    async def _too_long(
        self, request: GenerationRequest, plan: list[Deployment], step: int, window: int
    ) -> bool:
        """Whether the prompt cannot fit ``window`` while a later deployment's window is
        larger: then that one is tried instead, whatever error this engine would give."""
        if self.count_tokens is None or not any(
            d.info.context_window > window for d in plan[step + 1 :]
        ):
            return False
        tokens = await self.count_tokens(request)
        return tokens + (request.sampling.max_tokens or 1) > window

    async def _open(
        self,
        request: GenerationRequest,
        ctx: RouteContext,
        plan: list[Deployment],
        trace: _Trace,
        admit: Admit | None,
    ) -> tuple[AsyncGenerator[EngineEvent, None], EngineEvent, Deployment, Replica]:
        """Start the request on the first replica (of the plan's deployments) that takes it."""
        affinity = None
        if self._affinity == "user":
            affinity = ctx.user or ctx.caller
        elif self._affinity == "key":
            affinity = ctx.caller
        attempts = 0
        last: GatewayError | None = None
        reason = ""
        too_long_for: int | None = None
        wanted = request.sampling.max_tokens
        for step, dep in enumerate(plan):
            if attempts >= self.max_attempts:
                break
            if step > 0:
                trace.add(f"fallback={dep.name} ({reason})")
            info = dep.info
            if (too_long_for is not None and info.context_window <= too_long_for) or (
                await self._too_long(request, plan, step, info.context_window)
            ):
                too_long_for = max(too_long_for or 0, info.context_window)
                reason = f"{dep.name}: context window"
                last = ContextLengthExceeded(
                    f"The model '{dep.name}' has a context window of {info.context_window} "
                    "tokens, which the request does not fit; nor does any fallback's.",
                    param="messages",
                )
                continue
            missing = dep.missing_capability(request)
            if missing is not None:
                reason = f"{dep.name}: no {missing}"
                last = last or InvalidRequest(
                    f"The model '{request.model}' does not support {missing}.", param=missing
                )
                continue
            if wanted is not None and info.max_output_tokens < wanted < info.context_window:
                reason = f"{dep.name}: max_tokens"
                last = last or InvalidRequest(
                    f"max_tokens is too large: {wanted}. The model '{dep.name}' generates at "
                    f"most {info.max_output_tokens} tokens.",
                    param="max_tokens",
                    code="invalid_value",
                )
                continue
            if dep.max_concurrency is not None and dep.outstanding >= dep.max_concurrency:
                reason = f"{dep.name}: at capacity"
                last = EngineOverloaded(
                    f"The model '{request.model}' is at capacity; retry shortly.",
                    headers={"Retry-After": "1"},
                )
                continue
            replicas = dep.balancer.order(affinity)
            if not replicas:
                wait = min(r.breaker.retry_after() for r in dep.replicas)
                reason = f"{dep.name}: circuit open"
                last = EngineUnavailable(
                    f"The model '{request.model}' is unavailable; retry shortly.",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
                continue
            if admit is not None:
                await admit(dep.name, info)
            routed = replace(request, model=dep.name)
            for replica in replicas:
                if attempts >= self.max_attempts:
                    break
                ticket = replica.breaker.acquire()
                if ticket is None:
                    continue
                attempts += 1
                replica.outstanding += 1
                dep.outstanding += 1
                events: AsyncGenerator[EngineEvent, None] | None = None
                failed: GatewayError | None = None
                try:
                    events = replica.engine.stream(routed)
                    first = await anext(events)
                except ContextLengthExceeded as exc:
                    await self._release(dep, replica, events)
                    replica.breaker.release(ticket)
                    too_long_for = max(too_long_for or 0, info.context_window)
                    reason = f"{dep.name}: context window"
                    last = exc
                    break
                except GatewayError as exc:
                    await self._release(dep, replica, events)
                    if isinstance(exc, InvalidModelOutput) or not (
                        exc.retryable or isinstance(exc, _REPLICA_FAULTS)
                    ):
                        # the client's mistake, or the model's answer: not the replica's fault
                        replica.breaker.release(ticket)
                        raise
                    failed = exc
                except StopAsyncIteration:
                    await self._release(dep, replica, events)
                    failed = UpstreamError("The engine's stream ended without any event.")
                except Exception as exc:
                    await self._release(dep, replica, events)
                    log.warning("replica %s of %s failed", replica.name, dep.name, exc_info=exc)
                    failed = InternalError(f"The engine failed ({type(exc).__name__}).")
                except BaseException:  # cancelled: the client went away
                    await self._release(dep, replica, events)
                    replica.breaker.release(ticket)
                    raise
                if failed is not None:
                    if isinstance(failed, RateLimited | EngineOverloaded):
                        replica.breaker.release(ticket)  # busy, not broken
                    else:
                        replica.breaker.failure(ticket)
                    self._observer.route_attempt(dep.name, replica.name, "error")
                    code = failed.code or type(failed).__name__
                    reason = f"{dep.name}: {code}"
                    trace.add(f"retry={dep.name}@{replica.name} ({code})")
                    last = failed
                    continue
                assert events is not None  # it gave an event
                replica.breaker.answered(ticket)
                self._observer.route_attempt(dep.name, replica.name, "ok")
                if step > 0:
                    self._observer.route_fallback(dep.name, reason.partition(": ")[2])
                trace.add(f"deployment={dep.name}")
                if len(dep.replicas) > 1:
                    trace.add(f"replica={replica.name}")
                return events, first, dep, replica
        if last is not None:
            raise last
        raise EngineUnavailable(
            f"No replica of the model '{request.model}' could take the request.",
            headers={"Retry-After": "1"},
        )

    @staticmethod
    async def _release(
        dep: Deployment, replica: Replica, events: AsyncGenerator[EngineEvent, None] | None
    ) -> None:
        replica.outstanding -= 1
        dep.outstanding -= 1
        if events is not None:
            await _close(events)


async def _close(events: AsyncGenerator[EngineEvent, None]) -> None:
    """Close an engine stream; a failure to clean up is logged, not raised over the answer."""
    try:
        await events.aclose()
    except Exception:
        log.exception("closing an engine stream failed")


async def _probe(replica: Replica, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return (await replica.engine.health()).ready
    except Exception:
        return False
