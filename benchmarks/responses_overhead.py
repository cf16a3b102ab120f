"""CPU per request of the Responses edge against chat completions, on one gateway.

Starts benchmarks/fast_upstream.py (a zero-latency fake upstream) and a real
``qwen-gateway serve --engine openai`` in front of it (a database API key, usage accounting
on), then sends the same conversation as ``POST /v1/chat/completions`` and as
``POST /v1/responses``, interleaved round by round, non-streamed and streamed (16 content
chunks or 16 ``response.output_text.delta`` events), and reports the gateway's CPU time per
request of each (from /proc) and the Responses edge's added CPU in percent.

Not a test: the numbers depend on the machine. Usage:

    python benchmarks/responses_overhead.py [--concurrency 1 16] [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import _free_port, cpu_seconds, create_key, wait_ready  # noqa: E402

HERE = Path(__file__).resolve().parent
ASK = "Say sixteen words."
CHAT = {"model": "fake", "messages": [{"role": "user", "content": ASK}], "max_tokens": 16}
RESPONSES = {"model": "fake", "input": ASK, "max_output_tokens": 16}


async def _one(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], stream: bool
) -> bool:
    """One request; whether it came back whole (16 chunks when streamed)."""
    async with session.post(url, json={**body, "stream": stream}) as resp:
        if resp.status != 200:
            await resp.read()
            return False
        if not stream:
            data = await resp.read()
            return b"w15" in data
        deltas = 0
        async for line in resp.content:
            if line.startswith(b"data: ") and (
                b'"response.output_text.delta"' in line
                or (b'"content":"' in line and b'"content":""' not in line)
            ):
                deltas += 1
        return deltas == 16


async def run_round(
    url: str, body: dict[str, object], headers: dict[str, str], concurrency: int,
    requests: int, stream: bool, pid: int,
) -> tuple[float, int]:  # fmt: skip
    """(gateway CPU seconds, errors) for ``requests`` requests at ``concurrency``."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        await asyncio.gather(*(_one(session, url, body, stream) for _ in range(concurrency)))
        queue = iter(range(requests))
        errors = 0

        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                if not await _one(session, url, body, stream):
                    errors += 1

        cpu0 = cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return cpu_seconds(pid) - cpu0, errors


async def measure(args: argparse.Namespace, base: str, key: str, pid: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    edges = {
        "chat": (f"{base}/v1/chat/completions", CHAT),
        "responses": (f"{base}/v1/responses", RESPONSES),
    }
    lines = [
        "| concurrency | mode | chat CPU ms/request | responses CPU ms/request | added | errors |",
        "|---|---|---|---|---|---|",
    ]
    for concurrency in args.concurrency:
        for stream in (False, True):
            cpu = dict.fromkeys(edges, 0.0)
            errors = 0
            for _ in range(args.rounds):
                for name, (url, body) in edges.items():
                    spent, failed = await run_round(
                        url, body, headers, concurrency, args.requests, stream, pid
                    )
                    cpu[name] += spent
                    errors += failed
            per = {n: 1000 * c / (args.rounds * args.requests) for n, c in cpu.items()}
            added = 100 * (per["responses"] / per["chat"] - 1)
            mode = "streamed" if stream else "non-streamed"
            lines.append(
                f"| {concurrency} | {mode} | {per['chat']:.2f} | {per['responses']:.2f} | "
                f"{added:+.1f} % | {errors} |"
            )
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=300, help="per round and edge")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per edge")
    parser.add_argument("--out", type=Path, help="append the table to this file")
    args = parser.parse_args()

    up_port, gw_port = _free_port(), _free_port()
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as data, contextlib.ExitStack() as stack:
        try:
            upstream = [sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)]
            procs.append(subprocess.Popen(upstream))
            wait_ready(f"http://127.0.0.1:{up_port}/health", procs[0])
            env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_GATEWAY_")}
            key = create_key(bin_dir, data, env)
            log = stack.enter_context((Path(data) / "gateway.log").open("wb"))
            gateway = subprocess.Popen(
                [
                    str(bin_dir / "qwen-gateway"), "serve", "--engine", "openai",
                    "--upstream-url", f"http://127.0.0.1:{up_port}/v1",
                    "--served-name", "fake", "--port", str(gw_port), "--data-dir", data,
                ],
                env=env,
                stderr=log,
            )  # fmt: skip
            procs.append(gateway)
            wait_ready(f"http://127.0.0.1:{gw_port}/ready", gateway)
            lines = asyncio.run(measure(args, f"http://127.0.0.1:{gw_port}", key, gateway.pid))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    header = (
        f"\n### Responses edge vs chat completions — {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n\n"
        f"`python benchmarks/responses_overhead.py {' '.join(sys.argv[1:])}`: gateway CPU per "
        "request (from /proc), the same conversation through each edge, interleaved rounds.\n\n"
    )
    table = header + "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as out:
            out.write(table)


if __name__ == "__main__":
    main()
