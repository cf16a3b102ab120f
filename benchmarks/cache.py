"""Response cache: a hit's latency against a miss's, through the API, in-process and on Redis.

The app runs in this process (ASGI transport, the real middleware, hot path and pipeline) over
a scripted engine that answers a fixed reply of about 60 tokens through the real prompt
pipeline (template, tokenizer, parser). Each of ``--requests`` distinct questions is asked
once (a miss: the engine answers and the answer is stored), then again (a hit: replayed from
the cache), streamed and not, with the in-process LRU and with Redis on loopback. A miss here
costs only the gateway and a scripted engine: against a real model the gap is the model's
whole generation time. Not a test. ``--smoke`` runs a few requests of each kind and exits
non-zero if a hit is not a hit. Usage:

    python benchmarks/cache.py [--requests 500] [--redis redis://127.0.0.1:6379/14]
    python benchmarks/cache.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from qwen_gateway.api.app import create_app
from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.scripted import scripted_engine

REPLY = (
    "The Moon is about 384,400 kilometres from the Earth on average; the distance changes "
    "between roughly 363,000 km at perigee and 405,000 km at apogee, because its orbit is an "
    "ellipse rather than a circle."
)


async def _timed(http: httpx.AsyncClient, body: dict[str, Any], expect: str) -> float:
    t0 = time.perf_counter()
    if body.get("stream"):
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            async for _ in r.aiter_bytes():
                pass
    else:
        r = await http.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - t0
    verdict = r.headers.get("x-qwen-gateway-cache")
    if r.status_code != 200 or verdict != expect:
        raise SystemExit(f"expected a {expect}, got {r.status_code} {verdict}")
    return elapsed


async def measure(
    backend: str, redis_url: str | None, requests: int, stream: bool
) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as data:
        cache: dict[str, Any] = {"backend": backend}
        tree: dict[str, Any] = {"data_dir": data, "auth": {"enabled": False}, "cache": cache}
        if redis_url:
            tree["redis"] = {"url": redis_url}
            tree["limits"] = {"backend": "local"}
            cache["redis_prefix"] = f"bench-cache-{secrets.token_hex(4)}"
        engines = {"m": scripted_engine("m", [REPLY])}
        container = Container(load_settings(tree, env={}), engines=engines)  # type: ignore[arg-type]
        app = create_app(container)
        async with app.router.lifespan_context(app):
            await container.wait_loaded()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                out: dict[str, list[float]] = {"miss": [], "hit": []}
                for verdict in ("miss", "hit"):
                    for i in range(requests):
                        body = {
                            "model": "m",
                            "messages": [{"role": "user", "content": f"How far is it? #{i}"}],
                            "temperature": 0,
                            "stream": stream,
                        }
                        out[verdict].append(await _timed(http, body, verdict))
                return out


def _p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a few requests, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.requests = 3
    rows = [
        "| store | request | miss p50 ms | miss p99 ms | hit p50 ms | hit p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for backend, url in (("local", None), ("redis", args.redis)):
        for stream in (False, True):
            t = asyncio.run(measure(backend, url, args.requests, stream))
            name = "in-process LRU" if backend == "local" else "Redis (loopback)"
            rows.append(
                f"| {name} | {'streamed' if stream else 'JSON'} | "
                f"{statistics.median(t['miss']) * 1000:.3f} | {_p(t['miss'], 0.99):.3f} | "
                f"{statistics.median(t['hit']) * 1000:.3f} | {_p(t['hit'], 0.99):.3f} |"
            )
            print(rows[-1], flush=True)
    text = (
        f"\n### Response cache — {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores\n\n"
        f"`python benchmarks/cache.py --requests {args.requests}`: each of {args.requests} "
        "questions asked once (miss) then again (hit), through the in-process app, over a "
        "scripted engine (a ~60-token reply).\n\n" + "\n".join(rows) + "\n"
    )
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
