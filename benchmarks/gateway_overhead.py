"""Gateway overhead in front of a zero-latency fake upstream (benchmarks/fast_upstream.py).

Starts the fake upstream, a real ``qwen-gateway serve --engine openai`` (one worker, a
database API key made with ``qwen-gateway keys create``, usage accounting on) and the naive
FastAPI + httpx proxy (benchmarks/naive_proxy.py, the baseline) as subprocesses on 127.0.0.1,
then drives them with the same aiohttp client, interleaving "direct", "through the gateway"
and "through the naive proxy" rounds at each concurrency, and reports:

* non-streaming: p50/p99 latency added by the gateway and requests/s through it;
* streaming (16 content chunks): added time to first token p50/p99, the gap between chunks
  through the gateway, aggregate chunks/s;
* the gateway's and the naive proxy's CPU time per request and per stream (from /proc: the
  figure least disturbed by the client sharing the machine) and their ratio, errors, RSS;
* with ``--soak S``: RSS at the start and end of S seconds of streaming load.

Not a test: the numbers depend on the machine. Usage:

    python benchmarks/gateway_overhead.py [--concurrency 1 16 64 256] [--soak 600] [--out FILE]
    python benchmarks/gateway_overhead.py --smoke   # one tiny iteration; non-zero on any error
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    stream: bool,
    out: Round,
    headers: dict[str, str] | None = None,
) -> None:
    body = {**BODY, "stream": stream}
    start = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as resp:
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
    url: str,
    concurrency: int,
    requests: int,
    stream: bool,
    pid: int | None,
    headers: dict[str, str] | None = None,
) -> Round:
    out = Round()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                await _one(session, url, stream, out, headers)

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


@dataclass
class Target:
    """A server measured through its URL; ``pid`` for its CPU time and RSS (None: direct)."""

    name: str
    url: str
    pid: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _per_request_cpu(r: Round) -> float:
    return 1000 * r.cpu / max(1, len(r.latencies) + r.errors)


def _ratio(naive: float, gateway: float) -> str:
    return f"{naive / gateway:.2f}×" if gateway > 0 else "-"


async def measure(args: argparse.Namespace, direct: Target, via: list[Target]) -> list[str]:
    """Interleaved rounds: direct, then each server in ``via`` (the gateway first, then the
    naive proxy), at each concurrency, non-streaming then streaming."""
    gateway = via[0]
    naive = next((t for t in via if t.name == "naive"), None)
    compare = next((t for t in via if t.name == "compare"), None)
    rows = [
        "| mode | concurrency | requests | added p50 ms | added p99 ms | gateway req/s | "
        "direct req/s | gateway CPU ms/request | naive CPU ms/request | naive ÷ gateway | "
        "errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    srows = [
        "| concurrency | streams | added TTFT p50 ms | chunk gap p50 µs direct / gateway / "
        "naive | chunk gap p99 ms | chunks/s via gateway | gateway CPU ms/stream | "
        "naive CPU ms/stream | naive ÷ gateway | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    failures = 0
    for c in args.concurrency:
        n = max(args.requests, c * 4)
        for stream in (False, True):
            results: dict[str, list[Round]] = {t.name: [] for t in (direct, *via)}
            for _ in range(args.rounds):
                for t in (direct, *via):
                    results[t.name].append(await run_round(t.url, c, n, stream, t.pid, t.headers))
            d, g = merge(results[direct.name]), merge(results[gateway.name])
            nv = merge(results[naive.name]) if naive is not None else None
            failures += g.errors + d.errors + (nv.errors if nv is not None else 0)
            if compare is not None:
                cmp = merge(results[compare.name])
                failures += cmp.errors
                print(
                    f"  compare ({'stream' if stream else 'non-streaming'}, c={c}): "
                    f"CPU ms/request {_per_request_cpu(cmp):.3f} (this tree "
                    f"{_per_request_cpu(g):.3f}), chunk gap p50 {1e6 * pct(cmp.gaps, 0.5):.0f} µs",
                    flush=True,
                )
            requests = len(g.latencies) + g.errors
            cpu_ms = _per_request_cpu(g)
            naive_ms = _per_request_cpu(nv) if nv is not None else float("nan")
            errors = f"{g.errors}" + (f" (naive {nv.errors})" if nv is not None else "")
            if not stream:
                rows.append(
                    f"| non-streaming | {c} | {requests} | "
                    f"{1000 * (pct(g.latencies, 0.5) - pct(d.latencies, 0.5)):.2f} | "
                    f"{1000 * (pct(g.latencies, 0.99) - pct(d.latencies, 0.99)):.2f} | "
                    f"{len(g.latencies) / g.elapsed:.0f} | {len(d.latencies) / d.elapsed:.0f} | "
                    f"{cpu_ms:.3f} | {naive_ms:.3f} | {_ratio(naive_ms, cpu_ms)} | {errors} |"
                )
            else:
                naive_gap = 1e6 * pct(nv.gaps, 0.5) if nv is not None else float("nan")
                srows.append(
                    f"| {c} | {requests} | "
                    f"{1000 * (pct(g.ttfts, 0.5) - pct(d.ttfts, 0.5)):.2f} | "
                    f"{1e6 * pct(d.gaps, 0.5):.0f} / {1e6 * pct(g.gaps, 0.5):.0f} / "
                    f"{naive_gap:.0f} | {1000 * pct(g.gaps, 0.99):.3f} | "
                    f"{g.chunks / g.elapsed:.0f} | {cpu_ms:.3f} | {naive_ms:.3f} | "
                    f"{_ratio(naive_ms, cpu_ms)} | {errors} |"
                )
            print(rows[-1] if not stream else srows[-1], flush=True)
    assert gateway.pid is not None
    rss, peak = memory_mb(gateway.pid)
    memory = f"Gateway RSS after the runs: {rss:.0f} MB (peak {peak:.0f} MB)"
    if naive is not None and naive.pid is not None:
        nrss, npeak = memory_mb(naive.pid)
        memory += f"; naive proxy {nrss:.0f} MB (peak {npeak:.0f} MB)"
    lines = [*rows, "", *srows, "", memory + "."]
    if args.soak:
        start_rss, _ = memory_mb(gateway.pid)
        t_end = time.monotonic() + args.soak
        served = 0
        errors_soak = 0
        while time.monotonic() < t_end:
            r = await run_round(gateway.url, 16, 800, True, None, gateway.headers)
            served += len(r.latencies)
            errors_soak += r.errors
        failures += errors_soak
        end_rss, peak = memory_mb(gateway.pid)
        lines.append(
            f"Soak: {args.soak:.0f} s of streaming at concurrency 16, {served} streams, "
            f"{errors_soak} errors; RSS {start_rss:.0f} MB at the start, {end_rss:.0f} MB at "
            f"the end (peak {peak:.0f} MB)."
        )
        print(lines[-1], flush=True)
    if failures:
        lines.append(f"FAILED: {failures} requests failed.")
    return lines


def create_key(bin_dir: Path, data: str, env: dict[str, str]) -> str:
    """A database API key (inference role, no limits), made with the CLI before serving."""
    out = subprocess.run(
        [str(bin_dir / "qwen-gateway"), "keys", "create", "--name", "bench", "--json",
         "--data-dir", data],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return str(json.loads(out.stdout)["key"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--requests", type=int, default=400, help="per round (at least 4×c)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per target")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak at the end")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive proxy baseline")
    parser.add_argument(
        "--compare-src",
        type=Path,
        help="also run a second gateway from this source tree (e.g. an earlier commit's src/, "
        "from `git archive`), interleaved: before and after in one run on a noisy machine",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="a config file for the gateway under test (not the --compare-src one): e.g. "
        "benchmarks/data/safety_overhead.yaml, to measure the content-safety stages",
    )
    parser.add_argument("--out", type=Path, help="append the tables to this file")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one tiny iteration (concurrency 1, a few requests, one round): exits non-zero "
        "on any error",
    )
    args = parser.parse_args()
    if args.smoke:
        args.concurrency, args.requests, args.rounds, args.soak = [1], 4, 1, 0.0

    up_port, gw_port, naive_port = _free_port(), _free_port(), _free_port()
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as data, contextlib.ExitStack() as stack:
        try:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)]
                )
            )
            wait_ready(f"http://127.0.0.1:{up_port}/health", procs[0])
            env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_GATEWAY_")}
            key = create_key(bin_dir, data, env)
            log = stack.enter_context((Path(data) / "gateway.log").open("wb"))
            gateway = subprocess.Popen(
                [
                    str(bin_dir / "qwen-gateway"), "serve", "--engine", "openai",
                    "--upstream-url", f"http://127.0.0.1:{up_port}/v1",
                    "--served-name", "fake", "--port", str(gw_port), "--data-dir", data,
                    *(["--config", str(args.config.resolve())] if args.config else []),
                ],
                env=env,
                stderr=log,  # its JSON log lines (the access log is on, as in production)
            )  # fmt: skip
            procs.append(gateway)
            via = [
                Target(
                    "gateway",
                    f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                    gateway.pid,
                    {"Authorization": f"Bearer {key}"},
                )
            ]
            if args.compare_src is not None:
                other_port = _free_port()
                other_data = Path(data) / "compare"
                other_env = {**env, "PYTHONPATH": str(args.compare_src.resolve())}
                other_key = create_key(bin_dir, str(other_data), other_env)
                other = subprocess.Popen(
                    [
                        str(bin_dir / "qwen-gateway"), "serve", "--engine", "openai",
                        "--upstream-url", f"http://127.0.0.1:{up_port}/v1",
                        "--served-name", "fake", "--port", str(other_port),
                        "--data-dir", str(other_data),
                    ],
                    env=other_env,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                procs.append(other)
                wait_ready(f"http://127.0.0.1:{other_port}/ready", other)
                compare = Target(
                    "compare",
                    f"http://127.0.0.1:{other_port}/v1/chat/completions",
                    other.pid,
                    {"Authorization": f"Bearer {other_key}"},
                )
            if not args.no_naive:
                naive = subprocess.Popen(
                    [sys.executable, str(HERE / "naive_proxy.py"), "--port", str(naive_port),
                     "--upstream", f"http://127.0.0.1:{up_port}"],
                )  # fmt: skip
                procs.append(naive)
                via.append(
                    Target("naive", f"http://127.0.0.1:{naive_port}/v1/chat/completions", naive.pid)
                )
                wait_ready(f"http://127.0.0.1:{naive_port}/health", naive)
            try:
                wait_ready(f"http://127.0.0.1:{gw_port}/ready", gateway)
            except SystemExit:
                sys.stderr.write((Path(data) / "gateway.log").read_text()[-4000:])
                raise
            direct = Target("direct", f"http://127.0.0.1:{up_port}/v1/chat/completions")
            if args.compare_src is not None:
                via.append(compare)
            lines = asyncio.run(measure(args, direct, via))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    header = (
        f"\n### Gateway overhead — {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}\n\n"
        f"`python benchmarks/gateway_overhead.py {' '.join(sys.argv[1:])}`: one gateway worker "
        "(a database API key, usage accounting on) in front of benchmarks/fast_upstream.py "
        "(zero latency, 16 content chunks), interleaved with the naive FastAPI + httpx proxy "
        "(benchmarks/naive_proxy.py) in front of the same upstream; client, servers and "
        "upstream share the machine.\n\n"
    )
    text = header + "\n".join(lines) + "\n"
    print(text)
    if args.out and not args.smoke:
        with args.out.open("a") as f:
            f.write(text)
    if lines[-1].startswith("FAILED"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
