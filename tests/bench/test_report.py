"""The JSON results: written in the schema, read back, combined from several files."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from qwen_gateway.bench import report
from qwen_gateway.bench.runner import Record
from qwen_gateway.bench.stats import summarize

CONFIG = {
    "api": "chat", "stream": True, "requests": 2, "concurrency": 1, "rate": None,
    "duration_s": None, "prompt_tokens": "fixed:8", "output_tokens": "fixed:4",
}  # fmt: skip


def _target(name: str) -> dict[str, object]:
    records = [
        Record(0, 0.0, ok=True, ttft=0.01, e2e=0.05, itl=[0.01] * 3, output_tokens=4),
        Record(1, 0.05, error="429"),
    ]
    return report.target_result(
        name=name, url="http://127.0.0.1:1/v1", model="m", config=CONFIG,
        summary=summarize(records, 0.1), records=records,
    )  # fmt: skip


def test_results_match_the_schema_and_keep_every_request(tmp_path: Path) -> None:
    doc = report.results([_target("a")])
    path = tmp_path / "r.json"
    report.write(doc, path)
    back = json.loads(path.read_text())
    jsonschema.validate(back, report.RESULTS_SCHEMA)
    assert back["schema"] == "qwen-gateway-bench/1"
    requests = back["targets"][0]["requests"]
    assert [r["error"] for r in requests] == [None, "429"]
    assert requests[0]["ttft_ms"] == pytest.approx(10.0)
    assert back["targets"][0]["summary"]["errors"] == {"429": 1}


def test_the_schema_rejects_a_results_file_missing_its_figures(tmp_path: Path) -> None:
    doc = report.results([_target("a")])
    del doc["targets"][0]["summary"]["ttft_ms"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(report.ResultsError, match="ttft_ms"):
        report.read(path)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"schema": "other", "targets": []}'])
def test_files_that_are_not_results_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(report.ResultsError, match=r"x\.json"):
        report.read(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(report.ResultsError, match=r"nope\.json"):
        report.read(tmp_path / "nope.json")


def test_combining_files_keeps_every_target_with_unique_names(tmp_path: Path) -> None:
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    report.write(report.results([_target("gateway"), _target("direct")]), one)
    report.write(report.results([_target("gateway")]), two)
    doc = report.combine([one, two])
    assert [t["name"] for t in doc["targets"]] == ["gateway", "direct", "gateway (two)"]
