"""Percentiles and rates from the records of a run."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from qwen_gateway.bench.runner import Record

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between the two nearest
    ranks (NumPy's default method); None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must lie within 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """count, mean, min, max and the :data:`PERCENTILES` of ``values`` times ``scale``
    (None where there are no values)."""
    scaled = [v * scale for v in values]
    out: dict[str, Any] = {
        "count": len(scaled),
        "mean": sum(scaled) / len(scaled) if scaled else None,
        "min": min(scaled) if scaled else None,
        "max": max(scaled) if scaled else None,
    }
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(scaled, q)
    return out


def summarize(records: Sequence[Record], elapsed: float) -> dict[str, Any]:
    """The figures of one target: latencies in milliseconds, rates per second of ``elapsed``
    (the run's wall time). TPOT is each streamed request's (e2e - ttft) / (tokens - 1)."""
    ok = [r for r in records if r.ok]
    errors = Counter(r.error for r in records if r.error and r.error != "cancelled")
    cancelled = sum(1 for r in records if r.error == "cancelled")
    output = sum(r.output_tokens for r in ok)
    tpot = [
        (r.e2e - r.ttft) / (r.output_tokens - 1)
        for r in ok
        if r.e2e is not None and r.ttft is not None and r.output_tokens > 1
    ]
    ms = 1000.0
    return {
        "requests": len(records),
        "succeeded": len(ok),
        "failed": sum(errors.values()),
        "cancelled": cancelled,
        "errors": dict(sorted(errors.items())),
        "elapsed_s": elapsed,
        "requests_per_s": len(ok) / elapsed if elapsed > 0 else 0.0,
        "output_tokens": output,
        "output_tokens_per_s": output / elapsed if elapsed > 0 else 0.0,
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "usage_reported": sum(1 for r in ok if r.usage_reported),
        "ttft_ms": distribution([r.ttft for r in ok if r.ttft is not None], ms),
        "itl_ms": distribution([gap for r in ok for gap in r.itl], ms),
        "tpot_ms": distribution(tpot, ms),
        "e2e_ms": distribution([r.e2e for r in ok if r.e2e is not None], ms),
    }
