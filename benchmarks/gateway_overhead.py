"""Gateway overhead in front of a zero-latency fake upstream (benchmarks/fast_upstream.py).

Starts the fake upstream and a real ``qwen-gateway serve --engine openai`` (one worker) as
subprocesses on 127.0.0.1, then drives both with the same aiohttp client, interleaving
"direct" and "through the gateway" rounds at each concurrency, and reports:

* non-streaming: p50/p99 latency added by the gateway and requests/s through it;
* streaming (16 content chunks): added time to first token p50/p99, the gap between chunks
  through the gateway, aggregate chunks/s;
* the gateway's CPU time per request and per relayed chunk (from /proc: the figure least
  disturbed by the client sharing the machine), errors, and its peak RSS;
* with ``--soak S``: RSS at the start and end of S seconds of streaming load.

Not a test: the numbers depend on the machine. Usage:

    python benchmarks/gateway_overhead.py [--concurrency 1 16 64 256] [--soak 600] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
BODY = {
    "model": "fake",
    "messages": [{"role": "user", "content": "Say sixteen words."}],
    "max_tokens": 16,
}
TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


@dataclass
class Round:
    latencies: list[float] = field(default_factory=list)  # whole request (non-streaming)
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    errors: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0


async def _one(session: aiohttp.ClientSession, url: str, stream: bool, out: Round) -> None:
    body = {**BODY, "stream": stream}
    start = time.perf_counter()
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                out.errors += 1
                await resp.read()
                return
            if not stream:
                data = await resp.read()
                if b'"finish_reason":"stop"' not in data.replace(b" ", b""):
                    out.errors += 1
                out.latencies.append(time.perf_counter() - start)
                return
            last = None
            content = 0
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                if b'"content":"' not in line or b'"content":""' in line:
                    continue
                now = time.perf_counter()
                if last is None:
                    out.ttfts.append(now - start)
                else:
                    out.gaps.append(now - last)
                last = now
                content += 1
            out.chunks += content
            if content != 16:
                out.errors += 1
            out.latencies.append(time.perf_counter() - start)
    except (TimeoutError, aiohttp.ClientError):
        out.errors += 1


async def run_round(
    url: str, concurrency: int, requests: int, stream: bool, pid: int | None
) -> Round:
    out = Round()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                await _one(session, url, stream, out)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, 8))))  # warm the pool
        queue = iter(range(requests))
        cpu0 = cpu_seconds(pid) if pid else 0.0
        t0 = time.perf_counter()
        out.latencies.clear(), out.ttfts.clear(), out.gaps.clear()
        out.chunks = out.errors = 0
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out.elapsed = time.perf_counter() - t0
        out.cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def merge(rounds: list[Round]) -> Round:
    total = Round()
    for r in rounds:
        total.latencies += r.latencies
        total.ttfts += r.ttfts
        total.gaps += r.gaps
        total.chunks += r.chunks
        total.errors += r.errors
        total.elapsed += r.elapsed
        total.cpu += r.cpu
    return total


def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready")


async def measure(args: argparse.Namespace, upstream: str, gateway: str, pid: int) -> list[str]:
    rows = [
        "| mode | concurrency | requests | added p50 ms | added p99 ms | gateway req/s | "
        "direct req/s | gateway CPU ms/request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    srows = [
        "| concurrency | streams | added TTFT p50 ms | added TTFT p99 ms | chunk gap p50 ms | "
        "chunk gap p99 ms | chunks/s via gateway | gateway CPU ms/stream | "
        "CPU ms/chunk (over non-streaming) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in args.concurrency:
        n = max(args.requests, c * 4)
        per_stream: dict[bool, float] = {}
        for stream in (False, True):
            direct: list[Round] = []
            via: list[Round] = []
            for _ in range(args.rounds):
                direct.append(await run_round(upstream, c, n, stream, None))
                via.append(await run_round(gateway, c, n, stream, pid))
            d, g = merge(direct), merge(via)
            requests = len(g.latencies) + g.errors
            cpu_ms = 1000 * g.cpu / max(1, requests)
            per_stream[stream] = cpu_ms
            if not stream:
                rows.append(
                    f"| non-streaming | {c} | {requests} | "
                    f"{1000 * (pct(g.latencies, 0.5) - pct(d.latencies, 0.5)):.2f} | "
                    f"{1000 * (pct(g.latencies, 0.99) - pct(d.latencies, 0.99)):.2f} | "
                    f"{len(g.latencies) / g.elapsed:.0f} | {len(d.latencies) / d.elapsed:.0f} | "
                    f"{cpu_ms:.3f} | {g.errors} |"
                )
            else:
                chunk_cpu = (per_stream[True] - per_stream[False]) / 16
                srows.append(
                    f"| {c} | {requests} | "
                    f"{1000 * (pct(g.ttfts, 0.5) - pct(d.ttfts, 0.5)):.2f} | "
                    f"{1000 * (pct(g.ttfts, 0.99) - pct(d.ttfts, 0.99)):.2f} | "
                    f"{1000 * pct(g.gaps, 0.5):.3f} | {1000 * pct(g.gaps, 0.99):.3f} | "
                    f"{g.chunks / g.elapsed:.0f} | {cpu_ms:.3f} | {chunk_cpu:.4f} | {g.errors} |"
                )
            print(rows[-1] if not stream else srows[-1], flush=True)
    rss, peak = memory_mb(pid)
    lines = [
        *rows,
        "",
        *srows,
        "",
        f"Gateway RSS after the runs: {rss:.0f} MB (peak {peak:.0f} MB).",
    ]
    if args.soak:
        start_rss, _ = memory_mb(pid)
        t_end = time.monotonic() + args.soak
        served = 0
        errors = 0
        while time.monotonic() < t_end:
            r = await run_round(gateway, 16, 800, True, None)
            served += len(r.latencies)
            errors += r.errors
        end_rss, peak = memory_mb(pid)
        lines.append(
            f"Soak: {args.soak:.0f} s of streaming at concurrency 16, {served} streams, "
            f"{errors} errors; RSS {start_rss:.0f} MB at the start, {end_rss:.0f} MB at the end "
            f"(peak {peak:.0f} MB)."
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--requests", type=int, default=400, help="per round (at least 4×c)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per target")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak at the end")
    parser.add_argument("--out", type=Path, help="append the tables to this file")
    args = parser.parse_args()

    up_port, gw_port = _free_port(), _free_port()
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as data:
        try:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)]
                )
            )
            wait_ready(f"http://127.0.0.1:{up_port}/health", procs[0])
            env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_GATEWAY_")}
            gateway = subprocess.Popen(
                [
                    str(bin_dir / "qwen-gateway"), "serve", "--engine", "openai",
                    "--upstream-url", f"http://127.0.0.1:{up_port}/v1",
                    "--served-name", "fake", "--port", str(gw_port), "--data-dir", data,
                    "--no-auth",  # relay overhead only: see auth_overhead.py for auth + limits
                ],
                env=env,
            )  # fmt: skip
            procs.append(gateway)
            wait_ready(f"http://127.0.0.1:{gw_port}/ready", gateway)
            lines = asyncio.run(
                measure(
                    args,
                    f"http://127.0.0.1:{up_port}/v1/chat/completions",
                    f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                    gateway.pid,
                )
            )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    header = (
        f"\n### Gateway overhead — {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}\n\n"
        f"`python benchmarks/gateway_overhead.py {' '.join(sys.argv[1:])}`: one gateway worker "
        "in front of benchmarks/fast_upstream.py (zero latency, 16 content chunks); client, "
        "gateway and upstream share the machine.\n\n"
    )
    text = header + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
