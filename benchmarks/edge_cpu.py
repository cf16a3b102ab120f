"""The gateway's CPU per request for each API edge, against chat completions.

Starts a real ``qwen-gateway serve`` (one worker, authentication off, usage accounting on) with
a scripted deployment (a fixed 16-word reply, so the engine costs the same for every edge),
then drives it with the same aiohttp client over each edge in interleaved rounds, streamed and
not, and reads the server's CPU time from /proc (its threads' schedstat run time) around each round. The table gives the median
over rounds of CPU ms per request and each edge's ratio to chat completions.

Not a test: the numbers depend on the machine. Usage:

    python benchmarks/edge_cpu.py [--requests 400] [--rounds 5] [--concurrency 1 8] [--out FILE]
    python benchmarks/edge_cpu.py --smoke   # one tiny iteration; non-zero on any error
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

MODEL = "scripted"
REPLY = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
ASK = [{"role": "user", "content": "Say sixteen words."}]
TICKS = os.sysconf("SC_CLK_TCK")

#: edge -> (path, body for a non-streamed request); ``stream: true`` is added for streams
EDGES: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "chat completions": (
        "/v1/chat/completions",
        lambda: {"model": MODEL, "messages": ASK, "max_tokens": 32},
    ),
    "messages (Anthropic)": (
        "/v1/messages",
        lambda: {"model": MODEL, "messages": ASK, "max_tokens": 32},
    ),
    "responses": (
        "/v1/responses",
        lambda: {"model": MODEL, "input": ASK, "max_output_tokens": 32},
    ),
}
#: what the end of a complete stream looks like, per API
STREAM_ENDS = (b"[DONE]", b"message_stop", b"response.completed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """The process's CPU time: its threads' run time in ns where the kernel keeps schedstats
    (finer than /proc/PID/stat's clock ticks), else utime + stime."""
    try:
        return (
            sum(
                int(t.joinpath("schedstat").read_text().split()[0])
                for t in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


@contextlib.contextmanager
def gateway(workdir: Path) -> Iterator[tuple[str, int]]:
    port = _free_port()
    config = workdir / "config.json"
    config.write_text(
        json.dumps(
            {
                "deployments": [
                    {"name": MODEL, "engine": "scripted", "options": {"replies": [REPLY]}}
                ]
            }
        )
    )
    env = {**os.environ, "QWEN_GATEWAY_DATA_DIR": str(workdir / "data")}
    cmd = [sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--config", str(config),
           "--port", str(port), "--no-auth"]  # fmt: skip
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError((workdir / "server.log").read_text())
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(base + "/ready", timeout=2) as resp,
            ):
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not get ready")
            time.sleep(0.2)  # polling for readiness
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def one(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url, json=body) as resp:
        data = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status} {data[:300]!r}")
        if body.get("stream") and not any(end in data for end in STREAM_ENDS):
            raise RuntimeError(f"{url}: the stream did not end properly")


async def round_cpu(
    session: aiohttp.ClientSession, base: str, pid: int, edge: str, stream: bool, n: int, c: int
) -> float:
    """Server CPU ms per request over ``n`` requests, ``c`` at a time."""
    path, make = EDGES[edge]
    body = {**make(), "stream": True} if stream else make()
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            await one(session, base + path, body)

    start = cpu_seconds(pid)
    await asyncio.gather(*(worker() for _ in range(c)))
    return (cpu_seconds(pid) - start) * 1000 / n


async def measure(
    base: str, pid: int, n: int, rounds: int, c: int
) -> dict[tuple[str, bool], float]:
    out: dict[tuple[str, bool], list[float]] = {}
    async with aiohttp.ClientSession() as session:
        for edge in EDGES:  # warm up each edge once
            for stream in (False, True):
                await round_cpu(session, base, pid, edge, stream, min(n, 20), c)
        for _ in range(rounds):
            for stream in (False, True):
                for edge in EDGES:
                    ms = await round_cpu(session, base, pid, edge, stream, n, c)
                    out.setdefault((edge, stream), []).append(ms)
    return {k: statistics.median(v) for k, v in out.items()}


def table(result: dict[tuple[str, bool], float], n: int, rounds: int, c: int) -> str:
    lines = [
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{n} requests × {rounds} rounds, concurrency {c}, median of rounds:",
        "",
        "| edge | mode | gateway CPU ms/request | vs chat completions |",
        "|---|---|---:|---:|",
    ]
    for stream in (False, True):
        chat = result[("chat completions", stream)]
        for edge in EDGES:
            ms = result[(edge, stream)]
            mode = "streamed" if stream else "non-streaming"
            ratio = f"{ms / chat - 1:+.1%}" if chat else "n/a"
            lines.append(f"| {edge} | {mode} | {ms:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.rounds, args.concurrency = 2, 1, [1]
    text = ""
    with tempfile.TemporaryDirectory() as tmp, gateway(Path(tmp)) as (base, pid):
        for c in args.concurrency:
            result = asyncio.run(measure(base, pid, args.requests, args.rounds, c))
            text += table(result, args.requests, args.rounds, c) + "\n"
    print(text)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
