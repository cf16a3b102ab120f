"""``model: auto`` measured from outside: routing accuracy and the latency ``auto`` adds.

Starts a real ``qwen-gateway serve`` subprocess (one worker, no authentication, on 127.0.0.1)
with three scripted deployments (``qwen-coder``, ``qwen-math``, ``qwen-general``: the real
prompt pipeline, chat template and tokenizer, a fixed one-word reply) behind the intent model
``auto``, then, with one HTTP client at concurrency 1:

* **accuracy**: every prompt of a labelled JSONL set (default: ``benchmarks/data/
  intent_eval.jsonl``, written for this benchmark, neither training data nor the shipped
  held-out split) is sent once to ``auto``; the category is read from the
  ``x-qwen-gateway-route`` response header (``intent=<category> (...)``). Reported overall,
  per class, per language and for the plain and hard prompts;
* **added latency**: the same prompts again, each sent to ``auto`` and directly to the
  deployment ``auto`` chose, alternating which goes first; the p50/p99 of both and of the
  per-prompt difference are reported. Both requests run the same pipeline apart from the
  classification, so the difference is what ``auto`` costs.

* **where the time goes**, in the benchmark's own process: one ``classify()`` call, and the same
  handed to a worker thread (as the gateway did before issue 18) with the GIL free and with a
  thread busy in Python (as an in-process engine's thread is while it decodes).

``--engine transformers`` serves the embedded tiny model in process (an engine thread per
deployment) instead of scripted replies; ``--background N`` keeps N streams running against
``qwen-general`` while the latencies are measured.

Not a test: the latencies depend on the machine. Usage:

    python benchmarks/intent_routing.py [--rounds 3] [--data FILE] [--threshold 0.45]
        [--engine scripted|transformers] [--background N] [--out FILE]
    python benchmarks/intent_routing.py --smoke   # one tiny iteration; exits 1 on any error
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
EVAL = HERE / "data" / "intent_eval.jsonl"
ROUTES = {"code": "qwen-coder", "math": "qwen-math", "general": "qwen-general"}
_INTENT = re.compile(r"intent=(\w+) ")


def config(threshold: float, engine: str) -> str:
    """The gateway's YAML: three deployments and the intent model ``auto``."""
    lines = ["deployments:"]
    for name in ROUTES.values():
        lines.append(f"  - name: {name}")
        if engine == "scripted":
            lines += ["    engine: scripted", "    options:", "      replies: [ok]"]
        else:  # the embedded tiny model, in process (an engine thread each)
            lines += ["    engine: transformers", "    context_window: 4096"]
    lines += [
        "routing:",
        "  intent:",
        "    model: auto",
        "    classifier: learned",
        f"    threshold: {threshold}",
        "    default: general",
        "    routes:",
        *(f"      {c}: {d}" for c, d in ROUTES.items()),
    ]
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass
class Results:
    predicted: list[str] = field(default_factory=list)
    auto: list[float] = field(default_factory=list)  # seconds
    direct: list[float] = field(default_factory=list)
    added: list[float] = field(default_factory=list)
    errors: int = 0


def ask(client: httpx.Client, model: str, text: str) -> tuple[float, str]:
    """(seconds, route header) of one non-streaming chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    start = time.perf_counter()
    resp = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - start
    resp.raise_for_status()
    return elapsed, resp.headers.get("x-qwen-gateway-route", "")


def category(route: str) -> str:
    found = _INTENT.search(route)
    if found is None:
        raise RuntimeError(f"no intent in the route header {route!r}")
    return found.group(1)


def load_in_background(base: str, streams: int, stop: threading.Event) -> list[threading.Thread]:
    """``streams`` clients asking ``qwen-general`` for 64-token streams until ``stop``: the
    deployments' engines (threads, for the in-process engine) are busy while we measure."""

    def loop() -> None:
        body = {"model": "qwen-general", "messages": [{"role": "user", "content": "Tell a story."}],
                "max_tokens": 64, "stream": True}  # fmt: skip
        with httpx.Client(base_url=base, timeout=120) as client:
            while not stop.is_set():
                with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    for _ in resp.iter_bytes():
                        pass

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(streams)]
    for t in threads:
        t.start()
    return threads


def run(client: httpx.Client, rows: list[dict[str, object]], rounds: int,
        background: int = 0) -> Results:  # fmt: skip
    out = Results()
    for row in rows:  # accuracy, and a warm-up of both paths
        _, route = ask(client, "auto", str(row["text"]))
        out.predicted.append(category(route))
    stop = threading.Event()
    threads = load_in_background(str(client.base_url), background, stop)
    try:
        out.auto, out.direct, out.added = latencies(client, rows, out.predicted, rounds)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    return out


def latencies(
    client: httpx.Client, rows: list[dict[str, object]], predicted: list[str], rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """(auto, direct, auto − direct) for each prompt in each round, in seconds."""
    out = Results()
    for r in range(rounds):
        for i, (row, chosen) in enumerate(zip(rows, predicted, strict=True)):
            text = str(row["text"])
            if (i + r) % 2:
                direct, _ = ask(client, ROUTES[chosen], text)
                auto, _ = ask(client, "auto", text)
            else:
                auto, _ = ask(client, "auto", text)
                direct, _ = ask(client, ROUTES[chosen], text)
            out.auto.append(auto)
            out.direct.append(direct)
            out.added.append(auto - direct)
    return out.auto, out.direct, out.added


def where_the_time_goes(rows: list[dict[str, object]], threshold: float) -> str:
    """In this process: one classification, and the same handed to a worker thread (as the
    gateway did before) with the GIL free and with another thread busy in Python (as an
    in-process engine thread is while it decodes)."""
    from qwen_gateway.routing.intent import default_classifier

    classifier = default_classifier(threshold)
    texts = [str(r["text"]) for r in rows]

    def timed(call: Callable[[str], object]) -> list[float]:
        out = []
        for text in texts:
            start = time.perf_counter()
            call(text)
            out.append(time.perf_counter() - start)
        return out

    async def hop(text: str) -> object:
        return await asyncio.to_thread(classifier.classify, text)

    def in_thread(loop: asyncio.AbstractEventLoop) -> list[float]:
        return timed(lambda text: loop.run_until_complete(hop(text)))

    timed(classifier.classify)  # warm-up
    inline = timed(classifier.classify)
    loop = asyncio.new_event_loop()
    try:
        idle = in_thread(loop)
        stop = threading.Event()

        def spin() -> None:  # pure Python: holds the GIL until the interpreter switches
            while not stop.is_set():
                sum(range(1000))

        busy_thread = threading.Thread(target=spin, daemon=True)
        busy_thread.start()
        try:
            busy = in_thread(loop)
        finally:
            stop.set()
            busy_thread.join()
    finally:
        loop.close()
    ms = 1000.0
    lines = ["| in this process (ms) | p50 | p99 |", "|---|---:|---:|"]
    for name, values in (
        ("classify() inline", inline),
        ("to_thread(classify), GIL free", idle),
        ("to_thread(classify), a thread busy in Python", busy),
    ):
        lines.append(
            f"| {name} | {percentile(values, 0.5) * ms:.3f} | {percentile(values, 0.99) * ms:.3f} |"
        )
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def accuracy_table(rows: list[dict[str, object]], predicted: list[str]) -> str:
    """Right/total per class (and all), by language and by plain or hard prompts."""
    columns = ["en", "zh", "mixed", "plain", "hard", "all"]
    cells: dict[tuple[str, str], Counter[bool]] = {}
    for row, p in zip(rows, predicted, strict=True):
        right = p == row["label"]
        keys = [str(row.get("lang", "en")), "hard" if row.get("hard") else "plain", "all"]
        for label in (str(row["label"]), "all"):
            for key in keys:
                cells.setdefault((label, key), Counter())[right] += 1

    def cell(label: str, key: str) -> str:
        c = cells.get((label, key))
        if not c:
            return "–"
        return f"{100 * c[True] / (c[True] + c[False]):.1f}% ({c[True]}/{c[True] + c[False]})"

    lines = ["| class | " + " | ".join(columns) + " |", "|---" + "|---:" * len(columns) + "|"]
    for label in [*sorted({str(r["label"]) for r in rows}), "all"]:
        lines.append(f"| {label} | " + " | ".join(cell(label, k) for k in columns) + " |")
    confusion = Counter((str(row["label"]), p) for row, p in zip(rows, predicted, strict=True))
    mistakes = [f"{t} → {p}: {n}" for (t, p), n in sorted(confusion.items()) if t != p]
    lines += ["", "Mistakes (label → routed): " + (", ".join(mistakes) or "none") + "."]
    return "\n".join(lines)


def latency_table(res: Results) -> str:
    ms = 1000.0
    lines = ["| latency (ms) | p50 | p99 |", "|---|---:|---:|"]
    for name, values in (("auto", res.auto), ("direct", res.direct), ("auto − direct", res.added)):
        lines.append(
            f"| {name} | {percentile(values, 0.5) * ms:.2f} | {percentile(values, 0.99) * ms:.2f} |"
        )
    lines.append(
        f"\nAdded p50 from the two p50s: "
        f"{(statistics.median(res.auto) - statistics.median(res.direct)) * ms:.2f} ms "
        f"({len(res.added)} pairs)."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=EVAL, help="labelled JSONL prompts")
    parser.add_argument("--rounds", type=int, default=3, help="latency passes over the prompts")
    parser.add_argument("--threshold", type=float, default=0.45, help="the confidence floor")
    parser.add_argument(
        "--engine", choices=["scripted", "transformers"], default="scripted",
        help="scripted replies, or the embedded tiny model in process (an engine thread each)",
    )  # fmt: skip
    parser.add_argument(
        "--background", type=int, default=0,
        help="streams kept running against qwen-general while the latencies are measured",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="one tiny iteration")
    parser.add_argument("--out", type=Path, help="append the markdown tables to this file")
    args = parser.parse_args()
    rows = load(args.data)
    if args.smoke:
        rows = [next(r for r in rows if r["label"] == c) for c in ROUTES]
        args.rounds = 1
        args.background = min(args.background, 1)
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gateway.yaml"
        cfg.write_text(config(args.threshold, args.engine), encoding="utf-8")
        cmd = [sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--config", str(cfg),
               "--port", str(port), "--no-auth", "--log-level", "warning"]  # fmt: skip
        env = {**os.environ, "QWEN_GATEWAY_DATA_DIR": str(Path(tmp) / "data")}
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=60) as client:
                wait_ready(client, proc, log_path)
                res = run(client, rows, args.rounds, args.background)
        except Exception:
            sys.stderr.write(log_path.read_text(encoding="utf-8", errors="replace"))
            raise
        finally:
            proc.terminate()
            proc.wait(30)
    report = "\n".join([
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.data.name}: {len(rows)} prompts, "
        f"threshold {args.threshold}, {args.engine} deployments, {args.rounds} latency rounds, "
        f"{args.background} background streams",
        "",
        accuracy_table(rows, res.predicted),
        "",
        latency_table(res),
        "",
        where_the_time_goes(rows, args.threshold),
        "",
    ])  # fmt: skip
    sys.stdout.write(report)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(report)
    return 0


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{log.read_text()}")
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway did not become ready in 120 s")


if __name__ == "__main__":
    sys.exit(main())
