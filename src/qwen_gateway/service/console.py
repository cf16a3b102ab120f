"""What the admin console shows besides keys, usage, audit and reviews: a live snapshot of the
gateway (the same numbers as ``/metrics``, read from the app's metrics registry, and the
router's replica states) and the effective configuration with its secrets masked."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from qwen_gateway.config import Settings, redacted
from qwen_gateway.observability.metrics import Metrics
from qwen_gateway.routing.breaker import BreakerState
from qwen_gateway.routing.registry import ReplicaState
from qwen_gateway.service.admin import Actor
from qwen_gateway.store.audit import AuditEntry

_BREAKER = {
    BreakerState.CLOSED: "closed",
    BreakerState.HALF_OPEN: "half_open",
    BreakerState.OPEN: "open",
}
#: engine samples by metric name → the field of the snapshot's ``engines`` rows
_ENGINE_FIELDS = {
    "qwen_gateway_engine_running_sequences": "running",
    "qwen_gateway_engine_queue_depth": "queue_depth",
    "qwen_gateway_engine_batch_size": "batch_size",
    "qwen_gateway_engine_max_batch_size": "max_batch_size",
    "qwen_gateway_engine_decode_steps_total": "decode_steps",
    "qwen_gateway_engine_aborted_requests_total": "aborted",
}


class ConsoleService:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        replicas: Callable[[], Iterable[ReplicaState]],
        record: Callable[[AuditEntry], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._replicas = replicas
        self._record = record
        self._clock = clock

    def stats(self) -> dict[str, Any]:
        """Counters as totals since the start (the console turns two snapshots into rates):
        per model and deployment requests, errors, tokens, the sums and counts of latency and
        time to first token; per engine its running batch, queue and decode steps; per replica
        its health, breaker and outstanding requests; whether the review queue exists."""
        models: dict[tuple[str, str], dict[str, Any]] = {}
        engines: dict[str, dict[str, Any]] = {}
        in_flight = 0.0

        def row(labels: dict[str, str]) -> dict[str, Any]:
            key = (labels.get("model", "-"), labels.get("deployment", "-"))
            found = models.get(key)
            if found is None:
                found = models[key] = {
                    "model": key[0], "deployment": key[1], "requests": 0, "errors": 0,
                    "prompt_tokens": 0, "completion_tokens": 0, "latency_sum": 0.0,
                    "latency_count": 0, "ttft_sum": 0.0, "ttft_count": 0,
                }  # fmt: skip
            return found

        for family in self._metrics.registry.collect():
            for s in family.samples:
                name, labels, value = s.name, s.labels, s.value
                if name == "qwen_gateway_requests_in_flight":
                    in_flight = value
                elif name == "qwen_gateway_requests_total":
                    r = row(labels)
                    r["requests"] += int(value)
                    if labels.get("status", "").startswith(("4", "5")):
                        r["errors"] += int(value)
                elif name == "qwen_gateway_tokens_total":
                    row(labels)[f"{labels.get('kind')}_tokens"] = int(value)
                elif name in (
                    "qwen_gateway_request_duration_seconds_sum",
                    "qwen_gateway_time_to_first_token_seconds_sum",
                    "qwen_gateway_request_duration_seconds_count",
                    "qwen_gateway_time_to_first_token_seconds_count",
                ):
                    stem = "latency" if "duration" in name else "ttft"
                    if name.endswith("_sum"):
                        row(labels)[f"{stem}_sum"] = value
                    else:
                        row(labels)[f"{stem}_count"] = int(value)
                elif name in _ENGINE_FIELDS and "model" in labels:
                    engine = engines.setdefault(labels["model"], {"engine": labels["model"]})
                    engine[_ENGINE_FIELDS[name]] = int(value)
        replicas = [
            {
                "deployment": r.deployment,
                "replica": r.replica,
                "healthy": r.healthy,
                "breaker": _BREAKER.get(r.breaker, str(r.breaker)),
                "outstanding": r.outstanding,
            }
            for r in self._replicas()
        ]
        return {
            "object": "stats",
            "time": self._clock(),
            # the review queue (and its /admin/reviews routes) exist with a safety: section
            "reviews": self._settings.safety is not None,
            "in_flight": int(in_flight),
            "models": [models[k] for k in sorted(models)],
            "engines": [engines[k] for k in sorted(engines)],
            "replicas": replicas,
        }

    def config(self, actor: Actor) -> dict[str, Any]:
        """The settings in force, secrets masked as ``config show`` masks them; audited."""
        self._record(AuditEntry(datetime.now(UTC), "config.show", actor.id, None, actor.client, {}))
        return redacted(self._settings)
