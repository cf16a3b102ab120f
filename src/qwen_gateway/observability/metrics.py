"""Every Prometheus metric of the gateway, on a registry owned by the app (no globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

#: (model, stats) pairs; stats keys: running, waiting, last_batch_size, max_batch_size,
#: decode_steps, aborted.
EngineStatsSource = Callable[[], Iterable[tuple[str, Mapping[str, float]]]]


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
        for model, s in self._source():
            running.add_metric([model], s.get("running", 0))
            waiting.add_metric([model], s.get("waiting", 0))
            batch.add_metric([model], s.get("last_batch_size", 0))
            peak.add_metric([model], s.get("max_batch_size", 0))
            steps.add_metric([model], s.get("decode_steps", 0))
            aborted.add_metric([model], s.get("aborted", 0))
            delay.add_metric([model], s.get("max_abort_delay_steps", 0))
            malformed.add_metric([model], s.get("malformed_tool_calls", 0))
        yield from (running, waiting, batch, peak, steps, aborted, delay, malformed)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "qwen_gateway_requests",
            "HTTP requests by model and status",
            ["model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "qwen_gateway_request_duration_seconds",
            "Request latency",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "qwen_gateway_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "qwen_gateway_tokens", "Tokens processed", ["model", "kind"], registry=r
        )
        self.in_flight = Gauge(
            "qwen_gateway_requests_in_flight", "Requests being served", registry=r
        )

    def watch_engines(self, source: EngineStatsSource) -> None:
        self.registry.register(_EngineCollector(source))

    def observe_request(
        self,
        *,
        model: str | None,
        status: int,
        duration: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        label = model or "-"
        self.requests.labels(label, str(status)).inc()
        if model is None:
            return
        self.latency.labels(label).observe(duration)
        if ttft is not None:
            self.ttft.labels(label).observe(ttft)
        if prompt_tokens:
            self.tokens.labels(label, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(label, "completion").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
