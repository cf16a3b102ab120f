"""The plots: a real PNG, and an HTML page that carries its data and fetches nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qwen_gateway.bench import report
from qwen_gateway.bench.runner import Record
from qwen_gateway.bench.stats import summarize

pytest.importorskip("matplotlib", reason="plots need the bench extra (matplotlib)")

from qwen_gateway.bench.plot import write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _doc() -> dict[str, object]:
    targets = []
    for name, stream, error in (
        ("direct", True, None),
        ("gateway", True, "503"),
        ("plain", False, None),
    ):
        records = [
            Record(i, i * 0.01, ok=True, ttft=0.002 * (i + 1) if stream else None, e2e=0.01 * (i + 1),
                   itl=[0.001] * 3 if stream else [], output_tokens=4)
            for i in range(5)
        ] + ([Record(5, 0.05, error=error)] if error else [])  # fmt: skip
        config = {"api": "chat", "stream": stream, "requests": 6, "concurrency": 2,
                  "prompt_tokens": "fixed:8", "output_tokens": "fixed:4"}  # fmt: skip
        targets.append(
            report.target_result(
                name=name,
                url="http://127.0.0.1:9/v1",
                model="m",
                config=config,
                summary=summarize(records, 0.1),
                records=records,
            )
        )
    return report.results(targets)


def test_png_and_html_are_written_and_self_contained(tmp_path: Path) -> None:
    doc = _doc()
    png, page = tmp_path / "out" / "bench.png", tmp_path / "out" / "bench.html"
    write_plots(doc, png, page)
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    data = re.search(r'<script type="application/json" id="bench-data">(.*?)</script>', html, re.S)
    assert data is not None
    assert json.loads(data.group(1)) == doc  # the data inline, whole
    assert 'src="data:image/png;base64,' in html  # the figure inline too
    # nothing is fetched from elsewhere: no external script, stylesheet, image or font
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    for name in ("direct", "gateway", "plain"):
        assert f"<td>{name}</td>" in html
    assert "503: 1" in html


def test_data_cannot_close_the_script_element(tmp_path: Path) -> None:
    doc = _doc()
    doc["targets"][0]["name"] = "</script><script>alert(1)</script>"  # type: ignore[index]
    page = tmp_path / "bench.html"
    write_plots(doc, None, page)
    html = page.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html
    assert html.count("</script>") == 1
