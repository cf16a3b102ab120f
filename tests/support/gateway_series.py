"""Every series name the gateway exposes on /metrics, with its label names: the reference
that dashboards, alert rules and autoscaler metrics shipped in deploy/ are checked against."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from qwen_gateway.observability.metrics import Metrics

#: labels Prometheus adds to every scraped series; ``up`` is its own per-target series
TARGET_LABELS = frozenset({"instance", "job"})
PROMETHEUS_SERIES = {"up": set(TARGET_LABELS)}


def gateway_series() -> dict[str, set[str]]:
    """Series name -> label names, from a registry whose metrics each have a child."""
    m = Metrics()
    m.observe_request(model="m", deployment="d", status=200, duration=0.1, ttft=0.05,
                      prompt_tokens=3, completion_tokens=2)  # fmt: skip
    m.cache_request("hit")
    m.cache_near_lookup("miss")
    m.deferred_settle("queued")
    m.route_attempt("d", "0", "ok")
    m.engine("m").watch_load(lambda: (1, 2))
    m.watch_replicas(lambda: [("d", "0", 0, True, 1)])
    m.watch_writer(lambda: {"queued": 0, "database_up": 1})
    series: dict[str, set[str]] = {k: set(v) for k, v in PROMETHEUS_SERIES.items()}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels, TARGET_LABELS)
    return series
