"""Every Prometheus metric of the gateway, on a registry owned by the app (no globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

#: (model, stats) pairs; stats keys: running, waiting, last_batch_size, max_batch_size,
#: decode_steps, aborted, restarts.
EngineStatsSource = Callable[[], Iterable[tuple[str, Mapping[str, float]]]]
#: (deployment, replica, breaker state 0/1/2, healthy, outstanding) per replica.
ReplicaSource = Callable[[], Iterable[tuple[str, str, int, bool, int]]]
#: The usage/audit writer: keys written, replayed, spilled, dropped, failed_batches (counts),
#: queued and database_up (1 when its last attempt reached the database).
WriterStatsSource = Callable[[], Mapping[str, float]]
WRITER_OUTCOMES = ("written", "replayed", "spilled", "dropped")


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


class _EngineCollector(Collector):
    def __init__(self, source: EngineStatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "qwen_gateway_engine_running_sequences",
            "Sequences in the running batch",
            labels=["model"],
        )
        waiting = GaugeMetricFamily(
            "qwen_gateway_engine_queue_depth", "Requests waiting for a batch slot", labels=["model"]
        )
        batch = GaugeMetricFamily(
            "qwen_gateway_engine_batch_size", "Sequences in the last decode step", labels=["model"]
        )
        peak = GaugeMetricFamily(
            "qwen_gateway_engine_max_batch_size", "Largest decode batch so far", labels=["model"]
        )
        steps = CounterMetricFamily(
            "qwen_gateway_engine_decode_steps", "Decode steps run", labels=["model"]
        )
        aborted = CounterMetricFamily(
            "qwen_gateway_engine_aborted_requests", "Generations aborted early", labels=["model"]
        )
        delay = GaugeMetricFamily(
            "qwen_gateway_engine_abort_delay_steps_max",
            "Most decode steps a generation ran after its client left",
            labels=["model"],
        )
        malformed = CounterMetricFamily(
            "qwen_gateway_engine_malformed_tool_calls",
            "Tool-call blocks in model output that could not be parsed",
            labels=["model"],
        )
        restarts = CounterMetricFamily(
            "qwen_gateway_engine_restarts",
            "Times an engine's scheduler crashed and was restarted",
            labels=["model"],
        )
        for model, s in self._source():
            running.add_metric([model], s.get("running", 0))
            waiting.add_metric([model], s.get("waiting", 0))
            batch.add_metric([model], s.get("last_batch_size", 0))
            peak.add_metric([model], s.get("max_batch_size", 0))
            steps.add_metric([model], s.get("decode_steps", 0))
            aborted.add_metric([model], s.get("aborted", 0))
            delay.add_metric([model], s.get("max_abort_delay_steps", 0))
            malformed.add_metric([model], s.get("malformed_tool_calls", 0))
            restarts.add_metric([model], s.get("restarts", 0))
        yield from (running, waiting, batch, peak, steps, aborted, delay, malformed, restarts)


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

    def watch_pending_settles(self, source: Callable[[], int]) -> None:
        Gauge(
            "qwen_gateway_limiter_pending_settles",
            "Settles waiting for the rate limiter to be reachable again",
            registry=self.registry,
        ).set_function(source)

    # policy.leases.SettleObserver
    def deferred_settle(self, outcome: str) -> None:
        self.deferred_settles.labels(outcome).inc()

    def watch_engines(self, source: EngineStatsSource) -> None:
        self.registry.register(_EngineCollector(source))

    def watch_replicas(self, source: ReplicaSource) -> None:
        self.registry.register(_ReplicaCollector(source))

    def watch_writer(self, source: WriterStatsSource) -> None:
        self.registry.register(_WriterCollector(source))

    # routing.router.RouteObserver
    def route_attempt(self, deployment: str, replica: str, outcome: str) -> None:
        self.attempts.labels(deployment, replica, outcome).inc()

    def route_fallback(self, deployment: str, reason: str) -> None:
        self.fallbacks.labels(deployment, reason).inc()

    def route_intent(self, model: str, category: str) -> None:
        self.intents.labels(model, category).inc()

    def route_split(self, model: str, arm: str) -> None:
        self.splits.labels(model, arm).inc()

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
        self.requests.labels(label, answered, str(status)).inc()
        if model is None:
            return
        self.latency.labels(label, answered).observe(duration)
        if ttft is not None:
            self.ttft.labels(label, answered).observe(ttft)
        if prompt_tokens:
            self.tokens.labels(label, answered, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(label, answered, "completion").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
