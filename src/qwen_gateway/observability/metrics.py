"""Every Prometheus metric of the gateway, on a registry owned by the app (no globals)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

#: An engine's (running, waiting) requests, read at collection time.
EngineLoadSource = Callable[[], tuple[int, int]]
#: (deployment, replica, breaker state 0/1/2, healthy, outstanding) per replica.
ReplicaSource = Callable[[], Iterable[tuple[str, str, int, bool, int]]]
#: The usage/audit writer: keys written, replayed, spilled, dropped, failed_batches (counts),
#: queued and database_up (1 when its last attempt reached the database).
WriterStatsSource = Callable[[], Mapping[str, float]]
WRITER_OUTCOMES = ("written", "replayed", "spilled", "dropped")
M = TypeVar("M", Counter, Gauge, Histogram)


class _Children(Generic[M]):
    """A labelled metric's children, each looked up once: ``labels()`` validates and locks
    on every call, which costs more than the update itself on the request path. The label
    values are the metric's own (bounded by the configuration), so the cache is too."""

    __slots__ = ("_children", "_metric")
    _metric: M
    _children: dict[tuple[str, ...], M]

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children = {}

    def __call__(self, *labels: str) -> M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class _WriterCollector(Collector):
    def __init__(self, source: WriterStatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        s = self._source()
        entries = CounterMetricFamily(
            "qwen_gateway_store_entries",
            "Usage and audit entries by outcome: written from the queue, replayed from the "
            "spill file, spilled (queue full during an outage), dropped (refused or no room)",
            labels=["outcome"],
        )
        for outcome in WRITER_OUTCOMES:
            entries.add_metric([outcome], s.get(outcome, 0))
        failed = CounterMetricFamily(
            "qwen_gateway_store_failed_batches",
            "Background write attempts that failed (the database unreachable) and were retried",
            value=s.get("failed_batches", 0),
        )
        queued = GaugeMetricFamily(
            "qwen_gateway_store_queue_depth",
            "Entries waiting to be written",
            value=s.get("queued", 0),
        )
        up = GaugeMetricFamily(
            "qwen_gateway_store_database_up",
            "1 when the writer's last attempt reached the database",
            value=s.get("database_up", 1),
        )
        yield from (entries, failed, queued, up)


class _ReplicaCollector(Collector):
    def __init__(self, source: ReplicaSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        labels = ["deployment", "replica"]
        breaker = GaugeMetricFamily(
            "qwen_gateway_replica_breaker_state",
            "Circuit breaker of a replica: 0 closed, 1 half-open, 2 open",
            labels=labels,
        )
        healthy = GaugeMetricFamily(
            "qwen_gateway_replica_healthy", "1 when the last health check passed", labels=labels
        )
        outstanding = GaugeMetricFamily(
            "qwen_gateway_replica_outstanding_requests",
            "Requests a replica is serving now",
            labels=labels,
        )
        for deployment, replica, state, up, busy in self._source():
            breaker.add_metric([deployment, replica], state)
            healthy.add_metric([deployment, replica], 1.0 if up else 0.0)
            outstanding.add_metric([deployment, replica], busy)
        yield from (breaker, healthy, outstanding)


class _EngineLoadCollector(Collector):
    def __init__(self) -> None:
        self.sources: dict[str, EngineLoadSource] = {}

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "qwen_gateway_engine_running_sequences",
            "Sequences in the running batch",
            labels=["model"],
        )
        waiting = GaugeMetricFamily(
            "qwen_gateway_engine_queue_depth", "Requests waiting for a batch slot", labels=["model"]
        )
        for model, source in list(self.sources.items()):
            busy, queued = source()
            running.add_metric([model], busy)
            waiting.add_metric([model], queued)
        yield from (running, waiting)


class EngineMetrics:
    """One engine's metrics, labelled with its name (``engines.base.EngineObserver``).
    Called from the engine's own thread too: each update is one child's (locked) update."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._model = model
        self._loads = metrics.engine_loads
        self._steps = metrics.engine_steps.labels(model)
        self._batch = metrics.engine_batch.labels(model)
        self._peak = metrics.engine_peak_batch.labels(model)
        self._aborted = metrics.engine_aborted.labels(model)
        self._delay = metrics.engine_abort_delay.labels(model)
        self._malformed = metrics.engine_malformed.labels(model)
        self._restarts = metrics.engine_restarts.labels(model)
        self._max_batch = 0
        self._max_delay = 0

    def watch_load(self, load: EngineLoadSource) -> None:
        self._loads.sources[self._model] = load

    def decode_step(self, batch_size: int) -> None:
        self._steps.inc()
        self._batch.set(batch_size)
        if batch_size > self._max_batch:
            self._max_batch = batch_size
            self._peak.set(batch_size)

    def aborted(self, delay_steps: int = 0) -> None:
        self._aborted.inc()
        if delay_steps > self._max_delay:
            self._max_delay = delay_steps
            self._delay.set(delay_steps)

    def malformed_tool_calls(self, count: int) -> None:
        self._malformed.inc(count)

    def restarted(self) -> None:
        self._restarts.inc()


class ReviewMetrics:
    """The human review queue's metrics, registered only when content safety is configured.
    The depth and the oldest pending item come from the database (every replica reports the
    shared queue), refreshed by the queue's maintenance task and after each submission and
    decision; the oldest item's age is computed at scrape time."""

    def __init__(self, r: CollectorRegistry, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._oldest: float | None = None  # unix time of the oldest pending item
        self.depth = Gauge(
            "qwen_gateway_review_queue_depth", "Review items waiting for a decision", registry=r
        )
        Gauge(
            "qwen_gateway_review_oldest_pending_seconds",
            "Age of the oldest review item waiting for a decision (0: none waits)",
            registry=r,
        ).set_function(self._oldest_age)
        self.decisions = Counter(
            "qwen_gateway_review_decisions",
            "Review decisions, by decision (approved, rejected)",
            ["decision"],
            registry=r,
        )
        self.submissions = Counter(
            "qwen_gateway_review_submitted",
            "Items sent for review, by category and mode (hold, deliver_and_review)",
            ["category", "mode"],
            registry=r,
        )

    def _oldest_age(self) -> float:
        return 0.0 if self._oldest is None else max(0.0, self._clock() - self._oldest)

    # service.reviews.ReviewObserver
    def submitted(self, category: str, mode: str) -> None:
        self.submissions.labels(category, mode).inc()

    def decided(self, decision: str) -> None:
        self.decisions.labels(decision).inc()

    def queue(self, depth: int, oldest: datetime | None) -> None:
        self.depth.set(depth)
        self._oldest = oldest.timestamp() if oldest is not None else None


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "qwen_gateway_requests",
            "HTTP requests by model (as asked for), deployment (that answered) and status",
            ["model", "deployment", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "qwen_gateway_request_duration_seconds",
            "Request latency",
            ["model", "deployment"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "qwen_gateway_time_to_first_token_seconds",
            "Time to first token",
            ["model", "deployment"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "qwen_gateway_tokens",
            "Tokens processed",
            ["model", "deployment", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "qwen_gateway_requests_in_flight", "Requests being served", registry=r
        )
        self.attempts = Counter(
            "qwen_gateway_replica_attempts",
            "Requests started on a replica, by outcome (ok, error before the first token, "
            "stream_error after it)",
            ["deployment", "replica", "outcome"],
            registry=r,
        )
        self.fallbacks = Counter(
            "qwen_gateway_route_fallbacks",
            "Requests answered by a fallback deployment, by why the plan moved on",
            ["deployment", "reason"],
            registry=r,
        )
        self.intents = Counter(
            "qwen_gateway_route_intent",
            "Requests to the intent model, by category",
            ["model", "category"],
            registry=r,
        )
        self.splits = Counter(
            "qwen_gateway_route_split",
            "Requests to a split model, by arm",
            ["model", "arm"],
            registry=r,
        )
        self.deferred_settles = Counter(
            "qwen_gateway_limiter_deferred_settles",
            "Rate-limit settles that failed (limiter unreachable), by outcome: queued, "
            "retried (went through later), dropped (queue full or failed for good)",
            ["outcome"],
            registry=r,
        )
        self.safety_actions = Counter(
            "qwen_gateway_safety_actions",
            "Content-safety findings by direction (input, output), category and the action "
            "taken (block, redact, flag, review); once per request and category",
            ["direction", "category", "action"],
            registry=r,
        )
        self.safety_reloads = Counter(
            "qwen_gateway_safety_reloads",
            "Content-safety policy reloads by result (ok, error: the old policies stay)",
            ["result"],
            registry=r,
        )
        self.embedding_requests = Counter(
            "qwen_gateway_embedding_requests",
            "Embeddings requests by model (as asked for), once past validation",
            ["model"],
            registry=r,
        )
        self.embedding_inputs = Counter(
            "qwen_gateway_embedding_inputs",
            "Inputs (texts or token lists) of embeddings requests, by model",
            ["model"],
            registry=r,
        )
        self._engine_metrics(r)
        self._safety = _Children(self.safety_actions)
        self._cache_metrics(r)
        self._requests = _Children(self.requests)
        self._latency = _Children(self.latency)
        self._ttft = _Children(self.ttft)
        self._tokens = _Children(self.tokens)
        self._attempts = _Children(self.attempts)

    def _engine_metrics(self, r: CollectorRegistry) -> None:
        self.engine_loads = _EngineLoadCollector()
        r.register(self.engine_loads)
        model = ["model"]
        self.engine_batch = Gauge("qwen_gateway_engine_batch_size",
                                  "Sequences in the last decode step", model, registry=r)  # fmt: skip
        self.engine_peak_batch = Gauge("qwen_gateway_engine_max_batch_size",
                                       "Largest decode batch so far", model, registry=r)  # fmt: skip
        self.engine_steps = Counter("qwen_gateway_engine_decode_steps", "Decode steps run",
                                    model, registry=r)  # fmt: skip
        self.engine_aborted = Counter("qwen_gateway_engine_aborted_requests",
                                      "Generations aborted early", model, registry=r)  # fmt: skip
        self.engine_abort_delay = Gauge(
            "qwen_gateway_engine_abort_delay_steps_max",
            "Most decode steps a generation ran after its client left", model, registry=r,
        )  # fmt: skip
        self.engine_malformed = Counter(
            "qwen_gateway_engine_malformed_tool_calls",
            "Tool-call blocks in model output that could not be parsed", model, registry=r,
        )  # fmt: skip
        self.engine_restarts = Counter(
            "qwen_gateway_engine_restarts",
            "Times an engine's scheduler crashed and was restarted", model, registry=r,
        )  # fmt: skip

    def _cache_metrics(self, r: CollectorRegistry) -> None:
        self.cache_near = Counter(
            "qwen_gateway_cache_near_lookups",
            "Near-duplicate lookups after an exact miss, by result: hit (an entry for a "
            "near-identical last user message was found), miss",
            ["result"],
            registry=r,
        )
        self.cache_requests = Counter(
            "qwen_gateway_cache_requests",
            "Requests the response cache saw, by result: hit, miss, bypass",
            ["result"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "qwen_gateway_cache_evictions",
            "Entries the in-process response cache dropped to make room",
            registry=r,
        )
        self.cache_errors = Counter(
            "qwen_gateway_cache_errors",
            "Response cache operations that failed (Redis unreachable): served as misses",
            ["operation"],
            registry=r,
        )
        self._cache_requests = _Children(self.cache_requests)

    # service.cache.CacheObserver, cache.store.StoreObserver
    def cache_request(self, result: str) -> None:
        self._cache_requests(result).inc()

    def cache_evicted(self, count: int) -> None:
        self.cache_evictions.inc(count)

    def cache_error(self, operation: str) -> None:
        self.cache_errors.labels(operation).inc()

    def cache_near_lookup(self, result: str) -> None:
        self.cache_near.labels(result).inc()

    def watch_cache_bytes(self, source: Callable[[], int]) -> None:
        Gauge(
            "qwen_gateway_cache_bytes",
            "Bytes held by the in-process response cache (keys, answers, overhead)",
            registry=self.registry,
        ).set_function(source)

    def engine(self, model: str) -> EngineMetrics:
        """The observer for the engine named ``model`` (a deployment, or ``name[i]``)."""
        return EngineMetrics(self, model)

    def reviews(self, clock: Callable[[], float] = time.time) -> ReviewMetrics:
        """The review queue's metrics (call once: they are registered on this registry)."""
        return ReviewMetrics(self.registry, clock)

    def watch_pending_settles(self, source: Callable[[], int]) -> None:
        Gauge(
            "qwen_gateway_limiter_pending_settles",
            "Settles waiting for the rate limiter to be reachable again",
            registry=self.registry,
        ).set_function(source)

    # policy.leases.SettleObserver
    def deferred_settle(self, outcome: str) -> None:
        self.deferred_settles.labels(outcome).inc()

    def watch_replicas(self, source: ReplicaSource) -> None:
        self.registry.register(_ReplicaCollector(source))

    def watch_writer(self, source: WriterStatsSource) -> None:
        self.registry.register(_WriterCollector(source))

    # routing.router.RouteObserver
    def route_attempt(self, deployment: str, replica: str, outcome: str) -> None:
        self._attempts(deployment, replica, outcome).inc()

    def route_fallback(self, deployment: str, reason: str) -> None:
        self.fallbacks.labels(deployment, reason).inc()

    def route_intent(self, model: str, category: str) -> None:
        self.intents.labels(model, category).inc()

    def route_split(self, model: str, arm: str) -> None:
        self.splits.labels(model, arm).inc()

    # service.safety.SafetyObserver
    def safety_action(self, direction: str, category: str, action: str) -> None:
        self._safety(direction, category, action).inc()

    def safety_reload(self, result: str) -> None:
        self.safety_reloads.labels(result).inc()

    # service.embeddings.EmbeddingObserver
    def embedding_request(self, model: str, inputs: int) -> None:
        self.embedding_requests.labels(model).inc()
        self.embedding_inputs.labels(model).inc(inputs)

    def observe_request(
        self,
        *,
        model: str | None,
        deployment: str | None = None,
        status: int,
        duration: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        label = model or "-"
        answered = deployment or "-"
        self._requests(label, answered, str(status)).inc()
        if model is None:
            return
        self._latency(label, answered).observe(duration)
        if ttft is not None:
            self._ttft(label, answered).observe(ttft)
        if prompt_tokens:
            self._tokens(label, answered, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self._tokens(label, answered, "completion").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
