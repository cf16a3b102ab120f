"""Per-request cost of authentication plus limit checks (admission and settlement).

Runs the policy path a request takes — Bearer key check (cached lookup, SHA-256, constant-time
compare), model allowlist, rate-limit admission with the prompt counted for TPM, settlement —
against the in-process limiter and against Redis on loopback, and prints p50/p99 per request.
Not a test. ``--smoke`` runs one tiny iteration (a few requests against each limiter) and exits
non-zero on any error, for CI. Usage:

    python benchmarks/auth_overhead.py [--requests 5000] [--redis redis://127.0.0.1:6379/14]
    python benchmarks/auth_overhead.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ChatMessage, ChatRequest
from qwen_gateway.engines.scripted import scripted_engine
from qwen_gateway.policy.auth import check_model
from qwen_gateway.store.keys import KeyLimits


async def measure(
    backend: str, redis_url: str | None, requests: int, warmup: int = 200
) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as data:
        tree: dict[str, object] = {
            "data_dir": data,
            "limits": {"backend": backend, "redis_prefix": f"bench{os.getpid()}"},
        }
        if redis_url:
            tree["redis"] = {"url": redis_url}
        engines = {"m": scripted_engine("m", ["ok"])}
        container = Container(load_settings(tree, env={}), engines=engines)  # type: ignore[arg-type]
        await container.start()
        try:
            services = container.services
            secret, _ = await services.store.keys.create(
                "bench", models=("m",),
                limits=KeyLimits(rpm=10**9, tpm=2**31 - 1, max_concurrency=10**6,
                                 daily_tokens=10**15),  # tpm: the largest a key may have
            )  # fmt: skip
            header = f"Bearer {secret}"
            request = ChatRequest("m", (ChatMessage("user", "How far is the moon?"),))
            info = engines["m"].info
            times = []
            for i in range(requests + warmup):
                t0 = time.perf_counter()
                record = RequestRecord(f"bench-{i}")
                principal = await services.pipeline.authenticate(
                    record, header, set(), "127.0.0.1", "/v1"
                )
                check_model(principal, "m")
                await services.gate.admission(principal, request, record)("m", info)
                if record.permit is None:
                    raise SystemExit("admission charged no limit")
                await services.gate.settle(record.permit, 16)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            times.sort()
            return statistics.median(times) * 1000, times[int(0.99 * len(times))] * 1000
        finally:
            await container.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="one tiny iteration, for CI")
    args = parser.parse_args()
    warmup = 200
    if args.smoke:
        args.requests, warmup = 3, 1
    rows = ["| limiter | p50 ms | p99 ms |", "|---|---:|---:|"]
    for backend, url in (("local", None), ("redis", args.redis)):
        p50, p99 = asyncio.run(measure(backend, url, args.requests, warmup))
        rows.append(
            f"| {'in-process' if backend == 'local' else 'Redis (loopback)'} | {p50:.3f} | {p99:.3f} |"
        )
        print(rows[-1], flush=True)
    text = (
        f"\n### Authentication + limits per request — {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores\n\n"
        f"`python benchmarks/auth_overhead.py --requests {args.requests}`: API key check "
        "(cached), model allowlist, admission against RPM, TPM (prompt counted with the Qwen "
        "tokenizer), concurrency and a daily budget, then settlement.\n\n" + "\n".join(rows) + "\n"
    )
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
