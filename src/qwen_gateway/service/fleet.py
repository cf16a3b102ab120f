"""The engines of every deployment at run time: built in the background once the store is
open (/ready answers 503 until they are), their health for /health and /ready, their closing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from qwen_gateway.engines.base import Engine
from qwen_gateway.engines.registry import PendingEngine
from qwen_gateway.routing.balancer import Replica
from qwen_gateway.routing.health import engine_down, engine_up
from qwen_gateway.routing.intent import IntentClassifier
from qwen_gateway.routing.router import Router

log = logging.getLogger(__name__)


async def build_engines(router: Router) -> None:
    """Build every replica's pending engine, side by side, each put in its place once built;
    raises the first failure once all have ended (the engines built are in place)."""

    async def build(replica: Replica, pending: PendingEngine) -> None:
        replica.engine = await pending.build()

    builds = [
        build(r, r.engine)
        for d in router.deployments
        for r in d.replicas
        if isinstance(r.engine, PendingEngine)
    ]
    failures = [e for e in await asyncio.gather(*builds, return_exceptions=True) if e]
    if failures:
        raise failures[0]


class Fleet:
    """Loads the router's engines (and the intent classifier, when ``auto`` is configured) in
    the background, and answers for them: ``healthy`` (no scheduler down), ``ready`` (the
    database answers and every deployment has a replica up)."""

    def __init__(
        self,
        router: Router,
        database_reachable: Callable[[], Awaitable[bool]],
        classifier: Callable[[], IntentClassifier],
        health_interval: float,
    ) -> None:
        self.router = router
        self._reachable = database_reachable
        self._classifier = classifier  # blocking (loads a file): run in a worker thread
        self._health_interval = health_interval
        self._loading: asyncio.Task[None] | None = None
        self.load_error: BaseException | None = None
        self.database_up = True  # as /ready last found it

    @property
    def engines(self) -> dict[str, Engine]:
        """Every replica's engine (pending until built), by name (see Router.engines)."""
        return dict(self.router.engines())

    def start(self) -> None:
        """Begin loading the engines."""
        self._loading = asyncio.create_task(self._load())

    def stop_loading(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()

    async def _load(self) -> None:
        try:
            await asyncio.gather(build_engines(self.router), self._load_classifier())
        except Exception as exc:
            self.load_error = exc
            log.error("engine failed to start", exc_info=exc)
            return
        self.router.start_health_checks(self._health_interval)

    async def _load_classifier(self) -> None:
        intent = self.router.intent
        if intent is None or intent.classifier is not None:
            return
        intent.classifier = await asyncio.to_thread(self._classifier)

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def healthy(self) -> bool:
        """False while an engine's scheduler is down (restarting, or down for good)."""
        return not any(await asyncio.gather(*(engine_down(e) for e in self.engines.values())))

    @property
    def loading(self) -> bool:
        return self._loading is None or not self._loading.done()

    async def ready(self) -> bool:
        """The database answers and every deployment has a replica up (``database_up`` and
        ``loading`` tell which is missing)."""
        self.database_up = await self._reachable()
        if not self.database_up or self.loading or self.load_error is not None:
            return False
        for deployment in self.router.deployments:  # each needs one replica up
            states = await asyncio.gather(*(engine_up(r.engine) for r in deployment.replicas))
            if not any(states):
                return False
        return True

    async def aclose(self) -> None:
        await self.router.aclose()
        await asyncio.gather(*(e.aclose() for e in self.engines.values()), return_exceptions=True)
