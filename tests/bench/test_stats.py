"""Percentiles and rates computed right, on inputs whose answers are known."""

from __future__ import annotations

import pytest

from qwen_gateway.bench.runner import Record
from qwen_gateway.bench.stats import distribution, percentile, summarize


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    values = [float(v) for v in range(10, 0, -1)]  # 10..1, unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile(values, 100) == 10.0


def test_percentile_of_one_value_and_of_none() -> None:
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_distribution_scales_and_reports_every_percentile() -> None:
    d = distribution([0.001, 0.002, 0.003, 0.004], scale=1000.0)
    assert d["count"] == 4
    assert d["mean"] == pytest.approx(2.5)
    assert (d["min"], d["max"]) == (pytest.approx(1.0), pytest.approx(4.0))
    assert d["p50"] == pytest.approx(2.5)
    assert d["p95"] == pytest.approx(3.85)
    empty = distribution([])
    assert empty["count"] == 0
    assert empty["p99"] is None and empty["mean"] is None


def test_summary_counts_errors_by_code_apart_from_cancelled_requests() -> None:
    records = [
        Record(0, 0.0, ok=True, ttft=0.1, e2e=0.5, itl=[0.1, 0.1, 0.2], output_tokens=5),
        Record(1, 0.1, ok=True, ttft=0.3, e2e=0.7, itl=[0.2], output_tokens=3),
        Record(2, 0.2, error="429"),
        Record(3, 0.3, error="429"),
        Record(4, 0.4, error="500"),
        Record(5, 0.5, error="cancelled"),
    ]
    s = summarize(records, elapsed=2.0)
    assert (s["requests"], s["succeeded"], s["failed"], s["cancelled"]) == (6, 2, 3, 1)
    assert s["errors"] == {"429": 2, "500": 1}
    assert s["output_tokens"] == 8
    assert s["output_tokens_per_s"] == pytest.approx(4.0)
    assert s["requests_per_s"] == pytest.approx(1.0)
    assert s["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert s["e2e_ms"]["max"] == pytest.approx(700.0)
    assert s["itl_ms"]["count"] == 4  # the gaps of every request pooled
    assert s["itl_ms"]["p50"] == pytest.approx(150.0)
    # TPOT: (0.5 - 0.1) / 4 and (0.7 - 0.3) / 2
    assert s["tpot_ms"]["min"] == pytest.approx(100.0)
    assert s["tpot_ms"]["max"] == pytest.approx(200.0)


def test_summary_of_a_run_with_no_time_has_no_rates() -> None:
    s = summarize([], elapsed=0.0)
    assert s["requests_per_s"] == 0.0 and s["ttft_ms"]["p50"] is None
