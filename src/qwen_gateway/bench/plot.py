"""Plots of bench results, targets side by side: a PNG and a self-contained HTML page (the
same figure inlined as a data URI, a table of the figures, and the results as inline JSON; no
external resource). matplotlib (Agg) is imported only here, only when a plot is drawn."""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
from pathlib import Path
from typing import Any

SHOWN = (50, 90, 99)
PANELS = (
    ("ttft_ms", "Time to first token (ms)"),
    ("itl_ms", "Inter-token latency (ms)"),
    ("e2e_ms", "End-to-end latency (ms)"),
)


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:  # by name: an optional dependency (the `bench` extra), typed here as Any
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(
            "plots need matplotlib: pip install 'qwen-gateway[bench]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def figure_png(doc: dict[str, Any]) -> bytes:
    """The comparison figure as PNG bytes."""
    plt = _pyplot()
    targets = doc["targets"]
    names = [t["name"] for t in targets]
    colours = [f"C{i % 10}" for i in range(len(targets))]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    width = 0.8 / max(1, len(targets))
    for ax, (key, title) in zip(axes[0], PANELS, strict=True):
        drawn = False
        shown = [v for t in targets for q in SHOWN if (v := t["summary"][key][f"p{q}"]) is not None]
        if shown and min(shown) > 0 and max(shown) / min(shown) > 100:
            ax.set_yscale("log")  # targets far apart: keep the small bars readable
            title += ", log scale"
        for i, target in enumerate(targets):
            dist = target["summary"][key]
            values = [dist[f"p{q}"] for q in SHOWN]
            if any(v is None for v in values):
                continue
            xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(SHOWN))]
            bars = ax.bar(xs, values, width, label=target["name"], color=colours[i])
            ax.bar_label(bars, fmt="%.3g", fontsize=6)
            drawn = True
        ax.set_xticks(range(len(SHOWN)), [f"p{q}" for q in SHOWN])
        ax.set_title(title)
        if not drawn:
            ax.text(0.5, 0.5, "not streamed", ha="center", va="center", transform=ax.transAxes)
    for ax, key, title in (
        (axes[1][0], "output_tokens_per_s", "Output tokens/s"),
        (axes[1][1], "requests_per_s", "Requests/s (succeeded)"),
    ):
        values = [t["summary"][key] for t in targets]
        bars = ax.bar(range(len(targets)), values, color=colours)
        ax.bar_label(bars, fmt="%.4g", fontsize=8)
        ax.set_xticks(range(len(targets)), names, rotation=15)
        ax.set_title(title)
    ax = axes[1][2]
    codes = sorted({c for t in targets for c in t["summary"]["errors"]})
    bottom = [0] * len(targets)
    for j, code in enumerate(codes):
        counts = [t["summary"]["errors"].get(code, 0) for t in targets]
        ax.bar(range(len(targets)), counts, bottom=bottom, label=code, color=f"C{(j + 3) % 10}")
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_xticks(range(len(targets)), names, rotation=15)
    ax.set_title("Errors by code")
    if codes:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no errors", ha="center", va="center", transform=ax.transAxes)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(_subtitle(targets), fontsize=10)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def _subtitle(targets: list[dict[str, Any]]) -> str:
    parts = []
    for t in targets:
        c = t["config"]
        load = f"rate {c['rate']}/s" if c.get("rate") else f"concurrency {c.get('concurrency')}"
        mode = "streamed" if c["stream"] else "not streamed"
        parts.append(
            f"{t['name']}: {c['api']}, {mode}, {load}, prompt {c['prompt_tokens']}, "
            f"output {c['output_tokens']}, {t['summary']['requests']} requests"
        )
    return "\n".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def page_html(doc: dict[str, Any], png: bytes) -> str:
    """A self-contained HTML page: the figure, a table per target and the data inline."""
    rows = []
    for t in doc["targets"]:
        s = t["summary"]
        cells = [
            t["name"], t["model"], s["requests"], s["succeeded"], s["failed"], s["cancelled"],
            s["requests_per_s"], s["output_tokens_per_s"],
            *(s[k][f"p{q}"] for k, _ in PANELS for q in SHOWN),
            ", ".join(f"{code}: {n}" for code, n in s["errors"].items()) or "none",
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    heads = [
        "target", "model", "requests", "ok", "errors", "cancelled", "req/s", "output tok/s",
        *(f"{label.split(' (')[0]} p{q}" for _, label in PANELS for q in SHOWN), "errors by code",
    ]  # fmt: skip
    # no "<" at all in the script element: it can neither close it nor open a comment
    data = json.dumps(doc).replace("<", "\\u003c")
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qwen-gateway bench</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
th {{ background: #f2f2f2; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>qwen-gateway bench</h1>
<p>{html.escape(doc["created"])}; latencies in milliseconds.</p>
<img alt="bench comparison" src="data:image/png;base64,{image}">
<table><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in heads)}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<script type="application/json" id="bench-data">{data}</script>
</body></html>
"""


def write_plots(doc: dict[str, Any], png_path: Path | None, html_path: Path | None) -> None:
    png = figure_png(doc)
    if png_path is not None:
        png_path.parent.mkdir(parents=True, exist_ok=True)
        png_path.write_bytes(png)
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(page_html(doc, png), encoding="utf-8")
