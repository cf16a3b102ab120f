"""The composition root: the only module that knows which concrete classes are used.

:func:`assemble` builds every service from Settings (nothing set after construction);
:func:`start` opens them on an ``AsyncExitStack`` that closes them in reverse; :func:`build`
does both as one async context manager. The admin CLI uses the store part
(:func:`build_admin`) of the same path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qwen_gateway import __version__
from qwen_gateway.cache.decision import CacheRules
from qwen_gateway.cache.similar import NearIndex, SimilarIndex
from qwen_gateway.cache.store import CacheStore, LocalStore, RedisStore
from qwen_gateway.config import (
    TINY_EMBED_MODEL_NAME,
    CacheSettings,
    ConfigError,
    DeploymentSettings,
    ModelSettings,
    SafetySettings,
    Settings,
    check_registry,
)
from qwen_gateway.core.normalize import RequestLimits
from qwen_gateway.engines.base import QUIET, Engine, EngineObserver
from qwen_gateway.engines.plugin import EngineContext
from qwen_gateway.engines.registry import PendingEngine, configure
from qwen_gateway.observability.metrics import Metrics, ReviewMetrics
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
from qwen_gateway.routing.retry import TokenCounter
from qwen_gateway.routing.router import RouteObserver, Router
from qwen_gateway.safety.classifier import load_classifier
from qwen_gateway.safety.crypto import ContentCipher, generate_key
from qwen_gateway.service.account import Accounting
from qwen_gateway.service.admin import Actor, AdminService
from qwen_gateway.service.admit import Admit
from qwen_gateway.service.authenticate import Authenticate
from qwen_gateway.service.cache import ResponseCache
from qwen_gateway.service.completions import CompletionService
from qwen_gateway.service.console import ConsoleService
from qwen_gateway.service.embeddings import EmbeddingService
from qwen_gateway.service.fleet import Fleet
from qwen_gateway.service.input_policy import InputPolicy
from qwen_gateway.service.messages import MessagesService
from qwen_gateway.service.normalise import Normalise
from qwen_gateway.service.output_policy import OutputPolicy
from qwen_gateway.service.pipeline import Pipeline, Stage, compose
from qwen_gateway.service.responses import ResponsesService
from qwen_gateway.service.reviews import ReviewService
from qwen_gateway.service.route import Route
from qwen_gateway.service.safety import Reporter, SafetyRuntime
from qwen_gateway.store.audit import AuditEntry, AuditRepository
from qwen_gateway.store.db import Database
from qwen_gateway.store.keys import KeyRepository
from qwen_gateway.store.responses import ResponseRepository
from qwen_gateway.store.reviews import ReviewRepository
from qwen_gateway.store.spill import SpillFile
from qwen_gateway.store.usage import UsageRepository
from qwen_gateway.store.writer import BatchWriter

log = logging.getLogger(__name__)
DRAIN_SECONDS = 10.0  # how long shutdown waits for cut-off requests to account


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
            default_embedding_model=settings.embedding_model_path,
            health_interval=settings.routing.health_interval_seconds,
            observer=observer(d.name if count == 1 else f"{d.name}[{i}]"),
        )
        out.append((name, PendingEngine(plugin, configs[i % len(configs)], ctx)))
    return out


def deployment_specs(settings: Settings) -> list[DeploymentSettings]:
    """The registry: the configured deployments, or one made of the ``model`` section (with
    the tiny embedding model beside it on the embedded default)."""
    if settings.deployments:
        return list(settings.deployments)
    fields = {k: getattr(settings.model, k) for k in type(settings.model).model_fields}
    # constructed, not validated: the served name may be any string, as it always could
    specs = [DeploymentSettings.model_construct(**fields, name=settings.served_model_name)]
    if (
        settings.embedded_model
        and settings.model.task == "generate"
        and settings.served_model_name != TINY_EMBED_MODEL_NAME
    ):
        m = settings.model
        embed = DeploymentSettings(name=TINY_EMBED_MODEL_NAME, task="embed", device=m.device,
                                   dtype=m.dtype, supports_dimensions=True)  # fmt: skip
        specs.append(embed)
    return specs


def build_router(
    settings: Settings,
    engines: Mapping[str, Engine | Sequence[Engine]] | None = None,
    observer: RouteObserver | None = None,
    clock: Callable[[], float] = time.monotonic,
    engine_observer: Callable[[str], EngineObserver] = lambda name: QUIET,
    count_tokens: TokenCounter | None = None,
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
                supports_logprobs=d.capabilities.logprobs,
                supports_echo=d.capabilities.echo,
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
        count_tokens=count_tokens,
    )


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


@dataclass(frozen=True, slots=True)
class Store:
    """The database, the background writer, Redis (if any) and key management, with the admin
    service over them: what the server and the admin CLI commands share."""

    db: Database
    usage: UsageRepository
    audit: AuditRepository
    writer: BatchWriter
    redis: Any  # redis.asyncio.Redis, or None: Redis only swaps implementations, here
    keys: KeyManager
    admin: AdminService
    #: the human review queue: only with a ``safety:`` section
    reviews: ReviewService | None = None


def _redis(settings: Settings) -> Any:
    if settings.redis.url is None:
        return None
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
    return redis.asyncio.Redis.from_pool(pool)  # closed with the client


#: ``create``: the server's (the review key is made at the first start when none is
#: configured); ``existing``: the review CLI's (it never makes one); ``skip``: no review queue
ReviewKey = Literal["create", "existing", "skip"]


def review_cipher(settings: Settings, key: ReviewKey = "create") -> ContentCipher | None:
    """The cipher of review content (None when content is not kept): the configured key, or
    else one made at the first start and kept in ``<data_dir>/review-key`` (0600), which is
    enough on one machine; replicas sharing a database must be given one key in the
    configuration, since each would otherwise make its own."""
    assert settings.safety is not None
    review = settings.safety.review
    if not review.store_content:
        return None
    if review.encryption_key is not None:
        return ContentCipher(review.encryption_key.get_secret_value())
    path = settings.data_dir / "review-key"
    for _ in range(2):
        try:
            return ContentCipher(path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            if key != "create":
                raise ConfigError(
                    f"No review key in {path} yet (the server makes one at its first start); "
                    "or set safety.review.encryption_key"
                ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot use the review key in {path}: {exc}") from None
        if _create_private(path, generate_key() + "\n"):
            log.warning(
                "safety.review.encryption_key is not set: review content is encrypted with a "
                "key made now and kept in %s (readable by this user only); replicas sharing a "
                "database need one key in their configuration (`qwen-gateway reviews keygen`)",
                path,
            )
        # made here, or by a process starting beside this one: read what is there
    raise ConfigError(f"Cannot read the review key in {path}")


def _create_private(path: Path, text: str) -> bool:
    """Create ``path`` (0600) holding ``text``, only if it does not exist: written to a
    temporary file of this process's own, then linked into place, so that two processes
    starting at once end up with the same file. False when another made it first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _reviews(
    settings: Settings,
    db: Database,
    writer: BatchWriter,
    observer: ReviewMetrics | None,
    key: ReviewKey,
) -> ReviewService | None:
    if settings.safety is None or key == "skip":
        return None
    review = settings.safety.review
    return ReviewService(
        ReviewRepository(db),
        review_cipher(settings, key),
        store_content=review.store_content,
        retention_days=review.retention_days,
        notice=review.notice,
        record=writer.put,
        flush=writer.flush,
        observer=observer,
    )


def build_store(
    settings: Settings,
    review_observer: ReviewMetrics | None = None,
    review_key: ReviewKey = "skip",
) -> Store:
    """The store part, built (nothing opened: :func:`open_store` does that); the review queue
    as ``review_key`` says (with a ``safety:`` section)."""
    db = Database(settings.database_url)
    usage = UsageRepository(db)
    audit = AuditRepository(db)
    u = settings.usage
    writer = BatchWriter(
        usage, audit, u.queue_size, u.batch_size, u.flush_seconds,
        spill=SpillFile(settings.data_dir / "usage-spill.jsonl"),
    )  # fmt: skip
    client = _redis(settings)
    bus: InvalidationBus = (
        RedisBus(client, settings.limits.redis_prefix) if client is not None else LocalBus()
    )
    keys = KeyManager(KeyRepository(db), bus, settings.auth.key_cache_seconds)
    admin = AdminService(keys, usage, audit, writer.put, writer.flush)
    reviews = _reviews(settings, db, writer, review_observer, review_key)
    return Store(db, usage, audit, writer, client, keys, admin, reviews)


async def open_store(store: Store, stack: AsyncExitStack) -> None:
    """Open the store (migrations, the writer, the key bus); ``stack`` closes it, writing what
    is queued (the usage and audit of the last requests)."""
    stack.push_async_callback(store.db.aclose)
    await store.db.migrate()
    if store.redis is not None:
        stack.push_async_callback(store.redis.aclose)
    store.writer.start()
    stack.push_async_callback(store.writer.aclose)
    await store.keys.start()
    stack.push_async_callback(store.keys.aclose)


@asynccontextmanager
async def build_admin(settings: Settings) -> AsyncIterator[AdminService]:
    """The admin service on an open store, for the CLI's key and usage commands: the same
    build path as the server's, without the engines."""
    store = build_store(settings)
    async with AsyncExitStack() as stack:
        await open_store(store, stack)
        yield store.admin


async def bootstrap_admin_key(settings: Settings) -> tuple[str | None, Path]:
    """Migrate the database and, with authentication on and no key yet, create the first
    admin key and write it to its file: what the parent of several workers does once, before
    they start. The key (``None``: none was created) and the file."""
    path = settings.data_dir / "admin-key"
    async with build_admin(settings) as admin:  # opening the store migrates
        if not settings.auth.enabled or await admin.count_keys() > 0:
            return None, path
        key, _ = await admin.create_key(
            "admin (created at first start)", Actor("bootstrap"), role="admin"
        )
    write_private(path, key + "\n")
    return key, path


@asynccontextmanager
async def build_reviews(settings: Settings) -> AsyncIterator[ReviewService]:
    """The review service on an open store, for the CLI's review commands."""
    store = build_store(settings, review_key="existing")
    if store.reviews is None:
        raise ConfigError(
            "the review queue is off: the configuration has no 'safety:' section "
            "(pass the server's config file with --config)"
        )
    async with AsyncExitStack() as stack:
        await open_store(store, stack)
        yield store.reviews


@dataclass(slots=True)
class Services:
    """What one gateway process serves with, built from Settings by :func:`assemble`."""

    settings: Settings
    metrics: Metrics
    store: Store
    router: Router
    gate: Gate
    leases: LeaseKeeper
    fleet: Fleet
    pipeline: Pipeline
    completions: CompletionService
    #: the admin console's live stats and effective configuration
    console: ConsoleService
    #: the Anthropic Messages edge (/v1/messages)
    messages: MessagesService
    #: the content-safety policies in force (None: no ``safety:`` section)
    safety: SafetyRuntime | None = None
    #: the first admin key, created at the first start with authentication on, to show once
    bootstrap_key: str | None = None
    #: the /v1/embeddings edge
    embeddings: EmbeddingService | None = None
    #: the Responses API edge (stored responses with ``responses.store`` on)
    responses: ResponsesService | None = None

    @property
    def reviews(self) -> ReviewService | None:
        """The human review queue (with a ``safety:`` section; else None)."""
        return self.store.reviews

    @property
    def bootstrap_key_file(self) -> Path:
        """Where the first admin key is written (0600), so that it survives a failed start."""
        return self.settings.data_dir / "admin-key"  # as bootstrap_admin_key writes it


def _limiter(settings: Settings, client: Any) -> Limiter:
    backend = settings.limits.backend
    if backend == "redis" and client is None:
        raise ConfigError("limits.backend is 'redis' but redis.url is not set")
    if client is not None and backend != "local":
        return RedisLimiter(client, settings.limits.lease_seconds, settings.limits.redis_prefix)
    return LocalLimiter(settings.limits.lease_seconds)


def _response_cache(
    cache: CacheSettings,
    client: Any,
    router: Router,
    gate: Gate,
    metrics: Metrics,
    version: Callable[[Principal, str], str] | None = None,
) -> ResponseCache:
    """The ``cache:`` section's stage: its store (this process's LRU, or Redis) and rules."""
    store: CacheStore
    if cache.backend == "redis":
        if client is None:
            raise ConfigError("cache.backend is 'redis' but redis.url is not set")
        store = RedisStore(client, cache.redis_prefix, cache.ttl_seconds, cache.max_entry_bytes,
                           observer=metrics)  # fmt: skip
    else:
        local = LocalStore(cache.max_bytes, cache.ttl_seconds, cache.max_entry_bytes, metrics)
        metrics.watch_cache_bytes(lambda: local.bytes)
        store = local
    rules = CacheRules(
        cache_nondeterministic=cache.cache_nondeterministic,
        cache_tool_calls=cache.cache_tool_calls,
        exclude_keys=frozenset(cache.exclude_keys),
        exclude_principals=frozenset(cache.exclude_principals),
    )
    near = None
    if cache.similar is not None:
        if cache.scope != "tenant":
            raise ConfigError("cache.similar needs cache.scope: tenant (a near hit never "
                              "crosses callers)")  # fmt: skip
        index = SimilarIndex(cache.similar.threshold, cache.similar.max_entries)
        near = NearIndex(index, metrics)
    return ResponseCache(store, rules, router, gate, shared=cache.scope == "shared",
                         billing=cache.billing, observer=metrics, similar=near,
                         max_entry_chars=cache.max_entry_bytes, version=version)  # fmt: skip


def assemble(
    settings: Settings,
    engines: Mapping[str, Engine | Sequence[Engine]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    stages: Sequence[Stage] = (),
    reload: Callable[[], Settings] | None = None,
) -> Services:
    """Every service, wired: nothing is opened or started (:func:`run` does that).
    ``engines`` (by deployment name) replaces the engines that would be built; ``stages`` are
    optional pipeline stages (input policy, cache, output policy) besides those the settings
    configure; ``reload`` reads the settings again (a hot reload of the safety policies)."""
    metrics = Metrics()
    store = build_store(
        settings, metrics.reviews() if settings.safety is not None else None, "create"
    )
    leases = LeaseKeeper(_limiter(settings, store.redis), settings.limits.lease_seconds,
                         observer=metrics)  # fmt: skip
    metrics.watch_pending_settles(lambda: leases.pending)

    def largest_window() -> int:
        return max(d.info.context_window for d in router.deployments)

    gate = Gate(leases, settings.limits.models, context_window=largest_window)
    router = build_router(
        settings, engines, metrics, clock, metrics.engine, count_tokens=gate.prompt_tokens
    )
    fleet = Fleet(
        router,
        store.db.reachable,
        functools.partial(intent_classifier, settings),
        settings.routing.health_interval_seconds,
    )
    static = settings.server.api_key
    authenticator = Authenticator(
        enabled=settings.auth.enabled,
        keys=store.keys,
        jwt=_jwt(settings),
        static_key=static.get_secret_value() if static is not None else None,
        audit=store.writer.put,
        throttle=FailureThrottle(settings.auth.failure_limit),
    )
    specs: Sequence[ModelSettings] = settings.deployments or [settings.model]
    limits = RequestLimits(
        max_output_tokens=max(d.max_output_tokens for d in specs),
        max_n=max(d.max_n for d in specs),
    )
    normalise = Normalise(router, limits)
    accounting = Accounting(store.writer.put, gate.settle)
    safety = _safety(settings, reload, metrics, store.writer.put)
    if safety is not None:
        reporter = Reporter(store.writer.put, metrics)
        stages = [
            *stages,
            InputPolicy(safety, router.canonical, reporter),
            OutputPolicy(safety, reporter, store.reviews),
        ]
    if settings.cache is not None:
        # entries depend on the safety policies that apply to them: a reload changes the keys
        version = safety.cache_version if safety is not None else None
        cache = _response_cache(settings.cache, store.redis, router, gate, metrics, version)
        stages = [*stages, cache]
    route = Route(router, Admit(gate))
    pipeline = Pipeline(
        authenticate=Authenticate(authenticator),
        normalise=normalise,
        generate=compose(route, stages),
        account=accounting,
        stages=tuple(stages),
    )
    metrics.in_flight.set_function(lambda: accounting.in_flight)
    metrics.watch_writer(store.writer.counts)
    metrics.watch_replicas(
        lambda: (
            (s.deployment, s.replica, int(s.breaker), s.healthy, s.outstanding)
            for s in router.replica_states()
        )
    )
    completions = CompletionService(router, normalise, pipeline.generate)
    policy = next((s for s in stages if isinstance(s, InputPolicy)), None)
    embeddings = EmbeddingService(route, policy.check if policy else None, metrics)
    console = ConsoleService(settings, metrics, router.replica_states, store.writer.put)
    messages = MessagesService(router, limits, pipeline.generate, gate.prompt_tokens)
    r = settings.responses
    responses = ResponsesService(
        normalise,
        limits,
        pipeline.generate,
        ResponseRepository(store.db) if r.store else None,
        r.retention_days,
    )
    return Services(
        settings,
        metrics,
        store,
        router,
        gate,
        leases,
        fleet,
        pipeline,
        completions,
        console,
        messages,
        safety,
        embeddings=embeddings,
        responses=responses,
    )


def _safety(
    settings: Settings,
    reload: Callable[[], Settings] | None,
    metrics: Metrics,
    audit: Callable[[AuditEntry], None],
) -> SafetyRuntime | None:
    """The safety policies, compiled (a mistake in them is a ConfigError now, not on a
    request), with the high-risk classifier (a retrained one in the data directory or
    ``safety.classifier.model_file``, else the shipped one); None without a ``safety:`` section.
    A reload reads the section again; turning safety on or off takes a restart."""
    if settings.safety is None:
        return None

    def load() -> SafetySettings:
        fresh = reload() if reload is not None else settings
        if fresh.safety is None:
            raise ConfigError(
                "the configuration no longer has a 'safety:' section: the policies in force "
                "stay (turning content safety off takes a restart)"
            )
        return fresh.safety

    chosen = settings.safety.classifier
    if chosen.model_file is not None and not chosen.model_file.is_file():
        raise ConfigError(
            f"Invalid config value for 'safety.classifier.model_file': {chosen.model_file}: "
            "no such file (write one with `qwen-gateway safety train`)"
        )
    try:
        classifier = load_classifier(settings.risk_model_file, chosen.threshold)
    except ValueError as exc:
        raise ConfigError(f"Invalid high-risk model for 'safety.classifier': {exc}") from None
    model = settings.risk_model_file
    digest = hashlib.blake2b(model.read_bytes(), digest_size=8).hexdigest() if model.is_file() else (
        f"shipped-{__version__}"
    )  # fmt: skip
    return SafetyRuntime.build(
        settings.safety, load, classifier, metrics, audit, f"{digest}-{classifier.threshold}"
    )


async def _bootstrap(services: Services) -> None:
    """With authentication on and no key yet: an admin key, written to a file for the
    operator."""
    if not services.settings.auth.enabled or await services.store.admin.count_keys() > 0:
        return
    key, _ = await services.store.admin.create_key(
        "admin (created at first start)", Actor("bootstrap"), role="admin"
    )
    services.bootstrap_key = key
    path = services.bootstrap_key_file
    write_private(path, key + "\n")
    log.warning(
        "first start: an admin key was created and written to %s (readable by this "
        "user only); keep it somewhere safe and delete the file",
        path,
    )


async def start(services: Services, stack: AsyncExitStack) -> None:
    """Open the store (migrations), then begin loading the engines (/ready answers 503 until
    they are loaded); ``stack`` closes everything in the reverse order."""
    await open_store(services.store, stack)
    await services.gate.start()
    stack.push_async_callback(services.gate.aclose)
    await _bootstrap(services)
    reviews, safety = services.reviews, services.settings.safety
    if reviews is not None and safety is not None:  # retention and queue gauges, each replica
        _every(stack, "review-maintenance", safety.review.maintenance_seconds,
               reviews.maintain_once)  # fmt: skip
    responses = services.responses
    if responses is not None and responses.storing:  # retention of stored responses
        _every(stack, "responses-purge", services.settings.responses.purge_seconds,
               functools.partial(_purge_responses, responses))  # fmt: skip
    stack.push_async_callback(services.fleet.aclose)
    stack.push_async_callback(_drain, services.pipeline.account)
    services.fleet.start()
    stack.callback(services.fleet.stop_loading)


async def _purge_responses(responses: ResponsesService) -> None:
    """Delete expired stored responses (reads never return them in between rounds)."""
    try:
        await responses.purge()
    except Exception:
        log.exception("purging expired responses failed")


#: how long a periodic round in progress at shutdown may take to finish before it is cancelled
ROUND_GRACE_SECONDS = 10.0


def _every(
    stack: AsyncExitStack, name: str, seconds: float, round_: Callable[[], Awaitable[None]]
) -> None:
    """Run ``round_`` now and every ``seconds`` in a background task until ``stack`` closes.
    Shutdown waits for a round in progress (up to :data:`ROUND_GRACE_SECONDS`) instead of
    cancelling it in the middle of a database statement, which could leave a connection
    neither returned nor closed."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await round_()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

    task = asyncio.create_task(loop(), name=name)

    async def finish() -> None:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), ROUND_GRACE_SECONDS)
        except TimeoutError:
            log.warning("%s: the round in progress did not finish; cancelled", name)
            await _cancel(task)

    stack.push_async_callback(finish)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def _drain(accounting: Accounting) -> None:
    """Requests cut off by the shutdown are still running their clean-up: let them account."""
    with suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await accounting.idle()


@asynccontextmanager
async def build(
    settings: Settings,
    engines: Mapping[str, Engine | Sequence[Engine]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    stages: Sequence[Stage] = (),
    reload: Callable[[], Settings] | None = None,
) -> AsyncIterator[Services]:
    """The services, started; closed on exit."""
    services = assemble(settings, engines, clock, stages, reload)
    async with AsyncExitStack() as stack:
        await start(services, stack)
        yield services


class Container:
    """The services of one gateway process, for an app whose lifespan starts and stops them
    (``create_app``): :func:`assemble` now, :func:`start` at start-up, closed at shutdown."""

    def __init__(
        self,
        settings: Settings,
        engines: Mapping[str, Engine | Sequence[Engine]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        stages: Sequence[Stage] = (),
        reload: Callable[[], Settings] | None = None,
    ) -> None:
        self.services = assemble(settings, engines, clock, stages, reload)
        self._stack: AsyncExitStack | None = None

    async def start(self) -> None:
        stack = AsyncExitStack()
        try:
            await start(self.services, stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    # what tests and the CLI read

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def router(self) -> Router:
        return self.services.router

    @property
    def engines(self) -> dict[str, Engine]:
        return self.services.fleet.engines

    @property
    def leases(self) -> LeaseKeeper:
        return self.services.leases

    @property
    def bootstrap_key(self) -> str | None:
        return self.services.bootstrap_key

    @property
    def bootstrap_key_file(self) -> Path:
        return self.services.bootstrap_key_file

    @property
    def load_error(self) -> BaseException | None:
        return self.services.fleet.load_error

    async def wait_loaded(self) -> None:
        await self.services.fleet.wait_loaded()

    async def ready(self) -> bool:
        return await self.services.fleet.ready()
