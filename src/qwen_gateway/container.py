"""The composition root: the only module that knows which concrete classes are used."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qwen_gateway.config import (
    ConfigError,
    DeploymentSettings,
    ModelSettings,
    Settings,
    check_registry,
)
from qwen_gateway.core.normalize import RequestLimits
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.engines.base import QUIET, Engine, EngineObserver
from qwen_gateway.engines.plugin import EngineContext
from qwen_gateway.engines.registry import PendingEngine, configure
from qwen_gateway.observability.metrics import Metrics
from qwen_gateway.policy.auth import Authenticator, FailureThrottle
from qwen_gateway.policy.gate import Gate
from qwen_gateway.policy.jwt import JWTConfig, JWTVerifier
from qwen_gateway.policy.keys import InvalidationBus, KeyManager, LocalBus, RedisBus
from qwen_gateway.policy.leases import LeaseKeeper
from qwen_gateway.policy.principal import Principal
from qwen_gateway.policy.ratelimit import Limiter, LocalLimiter, RedisLimiter
from qwen_gateway.routing.balancer import Balancer, Replica
from qwen_gateway.routing.breaker import CircuitBreaker
from qwen_gateway.routing.intent import (
    IntentClassifier,
    RuleClassifier,
    default_classifier,
    load_saved,
)
from qwen_gateway.routing.registry import Deployment, IntentRoute, Split
from qwen_gateway.routing.router import RouteObserver, Router
from qwen_gateway.service.completions import CompletionService
from qwen_gateway.store.audit import AuditRepository
from qwen_gateway.store.db import Database
from qwen_gateway.store.keys import KeyRepository
from qwen_gateway.store.spill import SpillFile
from qwen_gateway.store.usage import UsageEntry, UsageRepository
from qwen_gateway.store.writer import BatchWriter

log = logging.getLogger(__name__)


def _replica_options(
    d: DeploymentSettings,
    key: str,
    settings: Settings,
    observer: Callable[[str], EngineObserver] = lambda name: QUIET,
) -> list[tuple[str, Engine]]:
    """(replica name, engine still to build) for each replica of a deployment, validated by
    its engine kind's plug-in (errors name ``key``, where the deployment is configured). The
    name (shown in the route header) is the operator's label or the index, never the URL;
    metrics name the engine after the deployment, or ``deployment[i]`` with several."""
    urls, count = (
        (d.replicas, len(d.replicas)) if isinstance(d.replicas, list) else ([], d.replicas)
    )
    plugin, configs = configure(d.engine, d.model_dump(), key, urls)
    names = list(d.replica_labels) or [str(i) for i in range(count)]
    out: list[tuple[str, Engine]] = []
    for i, name in enumerate(names):
        ctx = EngineContext(
            served_name=d.name,
            replica=i,
            replicas=count,
            data_dir=settings.data_dir,
            default_model=settings.model_path,
            health_interval=settings.routing.health_interval_seconds,
            observer=observer(d.name if count == 1 else f"{d.name}[{i}]"),
        )
        out.append((name, PendingEngine(plugin, configs[i % len(configs)], ctx)))
    return out


def deployment_specs(settings: Settings) -> list[DeploymentSettings]:
    """The registry: the configured deployments, or one made of the ``model`` section."""
    if settings.deployments:
        return list(settings.deployments)
    fields = {k: getattr(settings.model, k) for k in type(settings.model).model_fields}
    # constructed, not validated: the served name may be any string, as it always could
    return [DeploymentSettings.model_construct(**fields, name=settings.served_model_name)]


def build_router(
    settings: Settings,
    engines: Mapping[str, Engine | Sequence[Engine]] | None = None,
    observer: RouteObserver | None = None,
    clock: Callable[[], float] = time.monotonic,
    engine_observer: Callable[[str], EngineObserver] = lambda name: QUIET,
) -> Router:
    """Deployments, replicas, splits and intent routing from the settings; ``engines`` (by
    deployment name, started) replaces the engines that would be built, for tests and
    embedding. Other replicas get a :class:`PendingEngine` (answering 503 "loading") until
    :func:`build_engines` has built them."""
    check_registry(settings)
    r = settings.routing
    given = dict(engines or {})
    specs: list[DeploymentSettings]
    if given and not settings.deployments:
        specs = [DeploymentSettings.model_construct(name=name) for name in given]
    else:
        specs = deployment_specs(settings)
    deployments = []
    aliases: dict[str, str] = {}
    for n, d in enumerate(specs):
        provided = given.get(d.name)
        if provided is not None:
            built = [provided] if not isinstance(provided, Sequence) else list(provided)
            replicas = [(str(i), e) for i, e in enumerate(built)]
        else:
            key = f"deployments.{n}" if settings.deployments else "model"
            replicas = _replica_options(d, key, settings, engine_observer)
        balancer = Balancer(
            [
                Replica(name, engine, CircuitBreaker(r.breaker.failures, r.breaker.cooldown_seconds, clock))
                for name, engine in replicas
            ],
            r.strategy,
        )  # fmt: skip
        deployments.append(
            Deployment(
                d.name,
                balancer,
                fallbacks=tuple(d.fallbacks),
                supports_tools=d.capabilities.tools,
                supports_json_schema=d.capabilities.json_schema,
                max_concurrency=d.max_concurrency,
                default_max_tokens=d.default_max_tokens,
            )
        )
        aliases.update({a: d.name for a in d.aliases})
    splits = [Split(name, tuple(s.arms.items()), s.sticky) for name, s in r.splits.items()]
    i = r.intent
    intent = IntentRoute(i.model, dict(i.routes), i.default) if i.routes else None
    return Router(
        deployments,
        aliases,
        splits,
        intent,
        affinity=r.affinity,
        max_attempts=r.max_attempts,
        observer=observer,
    )


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


def intent_classifier(settings: Settings) -> IntentClassifier:
    """The configured classifier; the learned one is loaded or trained (seconds: call it in a
    worker thread)."""
    i = settings.routing.intent
    if i.classifier == "rules":
        return RuleClassifier(i.rules, fallback=i.default)
    try:
        learned = load_saved(settings.intent_model_file)
    except ValueError as exc:  # the file is not a model `intent train` wrote
        raise ConfigError(f"Invalid intent model for 'routing.intent.classifier': {exc}") from None
    if learned is not None:
        learned.threshold = i.threshold
        learned.fallback = i.default
        return learned
    # the shipped model is shared by the process: a copy with this configuration's fallback
    return dataclasses.replace(default_classifier(i.threshold), fallback=i.default)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (the directory made 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    tmp.replace(path)


def _jwt(settings: Settings) -> JWTVerifier | None:
    j = settings.auth.jwt
    if j.secret is None and j.public_key is None:
        return None
    public_key = j.public_key
    if public_key is not None and not public_key.lstrip().startswith("-----BEGIN"):
        public_key = Path(public_key).expanduser().read_text(encoding="utf-8")
    return JWTVerifier(
        JWTConfig(
            secret=j.secret.get_secret_value() if j.secret else None,
            public_key=public_key,
            algorithms=tuple(j.algorithms),
            issuer=j.issuer,
            audience=None if j.audience == "none" else j.audience,  # "none": any audience
            leeway=j.leeway_seconds,
            max_lifetime=j.max_lifetime_seconds,
            models_claim=j.models_claim,
            tier_claim=j.tier_claim,
            admin_claim=j.admin_claim,
            tiers=settings.auth.tiers,
            default_tier=j.default_tier,
        )
    )


class Tenancy:
    """The store and key management: what the server and the admin CLI commands share."""

    def __init__(self, settings: Settings) -> None:
        self.db = Database(settings.database_url)
        self.usage = UsageRepository(self.db)
        self.audit = AuditRepository(self.db)
        u = settings.usage
        self.writer = BatchWriter(
            self.usage, self.audit, u.queue_size, u.batch_size, u.flush_seconds,
            spill=SpillFile(settings.data_dir / "usage-spill.jsonl"),
        )  # fmt: skip
        self.redis: Any = None  # Redis only swaps implementations, here and in Container
        if settings.redis.url is not None:
            import redis.asyncio

            # a Redis that stops answering fails calls (503, queued settles) instead of hanging;
            # a burst beyond the pool waits for a connection instead of failing
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                settings.redis.url.get_secret_value(),
                max_connections=settings.redis.max_connections,
                timeout=5,
                socket_connect_timeout=5,
                socket_timeout=5,
            )
            self.redis = redis.asyncio.Redis.from_pool(pool)  # closed with the client
        bus: InvalidationBus = (
            RedisBus(self.redis, settings.limits.redis_prefix)
            if self.redis is not None
            else LocalBus()
        )
        self.keys = KeyManager(
            KeyRepository(self.db), self.writer.put, bus, settings.auth.key_cache_seconds
        )

    async def start(self) -> None:
        await self.db.migrate()
        self.writer.start()
        await self.keys.start()

    async def aclose(self) -> None:
        await self.writer.aclose()
        await self.keys.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.aclose()


class Container:
    """Everything one gateway process needs, built from Settings."""

    def __init__(
        self,
        settings: Settings,
        engines: Mapping[str, Engine | Sequence[Engine]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.router = build_router(settings, engines, self.metrics, clock, self.metrics.engine)
        specs: Sequence[ModelSettings] = settings.deployments or [settings.model]
        self.tenancy = Tenancy(settings)
        self.db, self.usage, self.audit = self.tenancy.db, self.tenancy.usage, self.tenancy.audit
        self.writer, self.redis, self.keys = (
            self.tenancy.writer,
            self.tenancy.redis,
            self.tenancy.keys,
        )
        static = settings.server.api_key
        self.auth = Authenticator(
            enabled=settings.auth.enabled,
            keys=self.keys,
            jwt=_jwt(settings),
            static_key=static.get_secret_value() if static is not None else None,
            audit=self.writer.put,
            throttle=FailureThrottle(settings.auth.failure_limit),
        )
        backend = settings.limits.backend
        if backend == "redis" and self.redis is None:
            raise ConfigError("limits.backend is 'redis' but redis.url is not set")
        limiter: Limiter = (
            RedisLimiter(self.redis, settings.limits.lease_seconds, settings.limits.redis_prefix)
            if self.redis is not None and backend != "local"
            else LocalLimiter(settings.limits.lease_seconds)
        )
        self.leases = LeaseKeeper(limiter, settings.limits.lease_seconds, observer=self.metrics)
        self.metrics.watch_pending_settles(lambda: self.leases.pending)
        self.gate = Gate(self.leases, settings.limits.models)
        self.router.count_tokens = self.gate.prompt_tokens
        self.gate.context_window = lambda: max(
            d.info.context_window for d in self.router.deployments
        )
        self.bootstrap_key: str | None = None  # the first admin key, to show once
        #: where the first admin key is written (0600), so that it survives a failed start
        self.bootstrap_key_file = settings.data_dir / "admin-key"
        self.service = CompletionService(
            self.router,
            RequestLimits(
                max_output_tokens=max(d.max_output_tokens for d in specs),
                max_n=max(d.max_n for d in specs),
            ),
            gate=self.gate,
        )
        self.metrics.watch_writer(self.writer.counts)
        self.metrics.watch_replicas(
            lambda: (
                (s.deployment, s.replica, int(s.breaker), s.healthy, s.outstanding)
                for s in self.router.replica_states()
            )
        )
        self._loading: asyncio.Task[None] | None = None
        self.load_error: BaseException | None = None
        self.database_up = True  # as /ready last found it
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def engines(self) -> dict[str, Engine]:
        """Every replica's engine (pending until built), by name (see Router.engines)."""
        return dict(self.router.engines())

    async def start(self) -> None:
        """Open the store (migrations), then begin loading the engines; /ready answers 503
        until they are loaded."""
        await self.tenancy.start()
        await self.gate.start()
        if self.settings.auth.enabled and await self.keys.count() == 0:
            self.bootstrap_key, _ = await self.keys.create(
                "admin (created at first start)", role="admin", actor="bootstrap"
            )
            write_private(self.bootstrap_key_file, self.bootstrap_key + "\n")
            log.warning(
                "first start: an admin key was created and written to %s (readable by this "
                "user only); keep it somewhere safe and delete the file",
                self.bootstrap_key_file,
            )
        self._loading = asyncio.create_task(self._load())

    def request_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    async def finish(
        self, record: RequestRecord, endpoint: str | None, method: str, status: int
    ) -> None:
        """When a request has ended, however it ended: record usage, settle its limits.
        ``endpoint`` is the path template of the route that took it (None: no route did)."""
        try:
            await self._account(record, endpoint, method, status)
        finally:
            self._in_flight -= 1
            if self._in_flight <= 0:
                self._idle.set()

    async def _account(
        self, record: RequestRecord, endpoint: str | None, method: str, status: int
    ) -> None:
        if method == "POST" and endpoint is not None and endpoint.startswith("/v1/"):
            principal = record.principal if isinstance(record.principal, Principal) else None
            ttft = record.ttft
            self.writer.put(
                UsageEntry(
                    ts=datetime.now(UTC),
                    request_id=record.request_id,
                    principal=principal.id if principal is not None else "anonymous",
                    key_id=principal.key_id if principal is not None else None,
                    model=record.model,
                    deployment=record.deployment,
                    path=endpoint,
                    status=status,
                    prompt_tokens=record.prompt_tokens,
                    completion_tokens=record.completion_tokens,
                    latency_ms=round((time.perf_counter() - record.started) * 1000, 3),
                    ttft_ms=None if ttft is None else round(ttft * 1000, 3),
                    cancelled=record.cancelled,
                    stream=record.stream,
                    arm=record.arm,
                )
            )
        permit, record.permit = record.permit, None
        if permit is not None:
            try:
                await self.gate.settle(permit, record.completion_tokens)
            except Exception:
                log.exception("settling rate limits failed")

    async def _load(self) -> None:
        try:
            await asyncio.gather(build_engines(self.router), self._load_classifier())
        except Exception as exc:
            self.load_error = exc
            log.error("engine failed to start", exc_info=exc)
            return
        self.router.start_health_checks(self.settings.routing.health_interval_seconds)

    async def _load_classifier(self) -> None:
        intent = self.router.intent
        if intent is None or intent.classifier is not None:
            return
        classifier = await asyncio.to_thread(intent_classifier, self.settings)
        intent.classifier = classifier

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def healthy(self) -> bool:
        """False while an engine's scheduler is down (restarting, or down for good)."""
        states = await asyncio.gather(*(e.health() for e in self.engines.values()))
        return not any(state.down for state in states)

    @property
    def loading(self) -> bool:
        return self._loading is None or not self._loading.done()

    async def ready(self) -> bool:
        """The database answers and every deployment has a replica up (``database_up`` and
        ``loading`` tell which is missing)."""
        self.database_up = await self.db.reachable()
        if not self.database_up or self.loading or self.load_error is not None:
            return False
        for deployment in self.router.deployments:  # each needs one replica up
            states = await asyncio.gather(*(r.engine.health() for r in deployment.replicas))
            if not any(state.ready for state in states):
                return False
        return True

    async def aclose(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        # requests cut off by the shutdown are still running their clean-up: let them account
        with suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._idle.wait()
        await self.router.aclose()
        await asyncio.gather(*(e.aclose() for e in self.engines.values()), return_exceptions=True)
        await self.gate.aclose()
        await self.tenancy.aclose()  # writes what is queued: usage of the last requests
