"""Decode throughput: the in-process engine through the HTTP API vs ``model.generate``.

Runs, in one process tree and one sitting:

1. ``model.generate`` on a static batch of B identical prompts (greedy, exactly N new tokens);
2. a real ``qwen-gateway serve --no-auth`` subprocess on 127.0.0.1 with the same model, driven
   by B concurrent streaming chat requests of N tokens each. Authentication is off (loopback
   only) because this measures the engine; ``auth_overhead.py`` measures authentication and
   limits, ``gateway_overhead.py`` the relay.

Prints a Markdown table (aggregate completion tokens per second) and optionally appends it to a
file. Not a test: numbers depend on the machine. ``--smoke`` runs one tiny iteration (1 stream,
4 tokens) and exits non-zero on any error, for CI. Usage:

    python benchmarks/throughput.py [--model DIR] [--tokens 128] [--batches 1 8 32] [--out FILE]
    python benchmarks/throughput.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPT = "Tell me a long story about a lighthouse keeper."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def static_generate(model_dir: Path, batch: int, tokens: int, repeats: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    ids = tok([text] * batch, return_tensors="pt")
    best = 0.0
    with torch.inference_mode():
        model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(
                **ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
            )
            elapsed = time.perf_counter() - start
            produced = (out.shape[1] - ids["input_ids"].shape[1]) * batch
            best = max(best, produced / elapsed)
    return best


async def _stream_one(http: httpx.AsyncClient, tokens: int) -> int:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage = 0
    done = False
    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise SystemExit(f"HTTP {resp.status_code}: {(await resp.aread()).decode()[:500]}")
        async for line in resp.aiter_lines():
            if line.startswith('data: {"id"') and '"usage":{' in line:
                usage = json.loads(line[6:])["usage"]["completion_tokens"]
            elif line.startswith('data: {"error"'):
                raise SystemExit(f"in-stream error: {line[6:500]}")
            done = done or line == "data: [DONE]"
    if not done or usage <= 0:
        raise SystemExit(f"stream ended without [DONE] or usage ({usage} tokens)")
    return usage


async def api_streams(base_url: str, streams: int, tokens: int, repeats: int) -> float:
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    best = 0.0
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as http:
        await _stream_one(http, 8)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            counts = await asyncio.gather(*(_stream_one(http, tokens) for _ in range(streams)))
            elapsed = time.perf_counter() - start
            best = max(best, sum(counts) / elapsed)
    return best


def start_server(model_dir: Path, port: int, max_batch: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--model", str(model_dir),
        "--served-name", "bench", "--port", str(port), "--max-batch-size", str(max_batch),
        "--log-level", "warning", "--data-dir", str(log.parent / "data"),
        "--no-auth",  # loopback only: this measures the engine, not authentication
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: build the tiny one)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per stream")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; the best counts")
    parser.add_argument("--out", type=Path, help="append the Markdown table to this file")
    parser.add_argument("--smoke", action="store_true", help="one tiny iteration, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.batches, args.repeats = 4, [1], 1

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from qwen_gateway.engines.transformers.tiny import build_tiny_model

            model_dir = build_tiny_model(Path(tmp) / "tiny")
        baseline = {
            b: static_generate(model_dir, b, args.tokens, args.repeats) for b in args.batches
        }
        port = _free_port()
        log = Path(tmp) / "server.log"
        proc = start_server(model_dir, port, max(args.batches), log)
        try:
            api = {
                b: asyncio.run(
                    api_streams(f"http://127.0.0.1:{port}", b, args.tokens, args.repeats)
                )
                for b in args.batches
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if proc.returncode != 0:
            raise SystemExit(f"server exited {proc.returncode}:\n{log.read_text()}")

    import torch

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.tokens} new tokens per stream, best of {args.repeats}, greedy.",
        "",
        "| streams | `model.generate` static batch (tok/s) | HTTP API, concurrent streams (tok/s) | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for b in args.batches:
        lines.append(f"| {b} | {baseline[b]:.0f} | {api[b]:.0f} | {api[b] / baseline[b]:.2f}× |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
