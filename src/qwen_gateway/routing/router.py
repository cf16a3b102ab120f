"""From the model a client names to the engine that answers it.

A public name is a deployment, one of its aliases, a weighted split across deployments, or the
virtual intent model (``auto``), whose requests are classified offline and sent on by category.
The chosen deployment comes first in the plan, then its fallbacks (and theirs) in order, less
the deployments the caller may not use. The plan is then tried by the retry loop
(:mod:`qwen_gateway.routing.retry`): until the first event, a failing replica hands the request
to the next replica, then to the next deployment of the plan; after it, errors end the stream
as they are. Every request's route is noted on its record (``deployment`` and a ``route``
trace for the response header). :meth:`Router.check_health` is one round of replica health
checks, which the background loop repeats.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import replace
from functools import partial
from typing import Protocol

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import EngineEvent, ModelInfo
from qwen_gateway.engines.base import Engine
from qwen_gateway.errors import InternalError, ModelNotFound, PermissionDenied
from qwen_gateway.routing.health import probe
from qwen_gateway.routing.registry import (
    Deployment,
    IntentRoute,
    ReplicaState,
    RouteContext,
    Split,
    Sticky,
)
from qwen_gateway.routing.retry import (
    Admit,
    AttemptObserver,
    Retry,
    Routable,
    TokenCounter,
    Trace,
)


class RouteObserver(AttemptObserver, Protocol):
    """Where routing decisions are counted (the metrics)."""

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
        count_tokens: TokenCounter | None = None,
    ) -> None:
        self._deployments = {d.name: d for d in deployments}
        self._names = {d.name: d.name for d in deployments}
        for alias, target in (aliases or {}).items():
            self._names[alias] = target
        self._splits = {s.name: s for s in splits}
        self._intent = intent
        self._affinity = affinity
        self._observer: RouteObserver = observer or _Quiet()
        self._retry = Retry(self._observer, max_attempts, count_tokens)
        self._rng = rng or random.Random()
        self._health: asyncio.Task[None] | None = None

    @property
    def max_attempts(self) -> int:
        """The most engine streams one request starts."""
        return self._retry.max_attempts

    @property
    def count_tokens(self) -> TokenCounter | None:
        """The prompt's length in tokens, to skip deployments whose window it does not fit."""
        return self._retry.count_tokens

    @count_tokens.setter
    def count_tokens(self, counter: TokenCounter | None) -> None:
        self._retry.count_tokens = counter

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
                # a split can do what every arm can
                supports_tools=all(c.supports_tools for c in cards),
                supports_json_schema=all(c.supports_json_schema for c in cards),
                supports_logprobs=all(c.supports_logprobs for c in cards),
                supports_echo=all(c.supports_echo for c in cards),
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

    def keyed_target(self, name: str, ctx: RouteContext) -> str | None:
        """What a request for ``name`` is sent to, when that follows from the request and its
        caller alone (for a response cache's key): the deployment of a deployment or alias;
        the arm's deployment for a sticky split (picked as the route would); the intent
        model's own name (its choice is a function of the messages), unless a route of it
        leads to a split that picks at random. None: a random pick (or an unknown name)."""
        if self._intent is not None and name == self._intent.model:
            for target in self._intent.routes.values():
                if target in self._splits and self.keyed_target(target, ctx) is None:
                    return None
            return name
        split = self._splits.get(name)
        if split is not None:
            if split.sticky == "none":
                return None
            name = split.pick(ctx, self._rng)  # sticky: a hash of the caller, not the rng
        return self._names.get(name)

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

    async def check_health(self, probe_seconds: float = 5.0) -> None:
        """One round of health checks over every replica (a replica found down is tried
        last). The background checks run it every interval; tests call it directly."""
        for d in self._deployments.values():
            for r in d.replicas:  # one after another, in this task: no task per probe
                r.healthy = await probe(d.name, r, probe_seconds)

    def start_health_checks(self, interval: float, probe_seconds: float = 5.0) -> None:
        """Run :meth:`check_health` every ``interval`` seconds in the background (only where
        some deployment has replicas to choose between)."""
        replicas = sum(len(d.replicas) for d in self._deployments.values())
        if replicas > 1 and self._health is None:
            self._health = asyncio.create_task(self._check_loop(interval, probe_seconds))

    async def _check_loop(self, interval: float, probe_seconds: float) -> None:
        while True:
            await self.check_health(probe_seconds)
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with suppress(asyncio.CancelledError):
                await self._health
            self._health = None

    # ---- routing -----------------------------------------------------------

    async def _plan(
        self, request: Routable, ctx: RouteContext, trace: Trace, record: RequestRecord
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
        request: Routable,
        ctx: RouteContext,
        record: RequestRecord,
        admit: Admit | None = None,
    ) -> AsyncGenerator[EngineEvent, None]:
        """The events of the deployment (and replica) that takes the request."""
        trace = Trace()
        return self._retry.stream(
            request,
            partial(self._plan, request, ctx, trace, record),
            trace=trace,
            record=record,
            affinity=self._affinity_key(ctx),
            admit=admit,
        )

    def _affinity_key(self, ctx: RouteContext) -> str | None:
        if self._affinity == "user":
            return ctx.user or ctx.caller
        if self._affinity == "key":
            return ctx.caller
        return None
