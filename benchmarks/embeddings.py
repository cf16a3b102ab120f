"""Throughput of the in-process embedding engine on the tiny embedding model, at 1, 8 and 32
concurrent requests (one short text each), and the batch sizes its worker formed.

Not a test. Engine level (no HTTP): it shows what batching concurrent requests buys. Usage:

    python benchmarks/embeddings.py [--requests 512] [--device cpu]
    python benchmarks/embeddings.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

from qwen_gateway.core.types import EmbeddingRequest
from qwen_gateway.engines.plugin import EngineContext
from qwen_gateway.engines.transformers.embedding import TransformersEmbedder
from qwen_gateway.engines.transformers.engine import TransformersConfig, create_engine
from qwen_gateway.engines.transformers.tiny import build_tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "你好，世界",
    "A somewhat longer sentence, so that inputs differ in length within one batch.",
]


async def run(
    engine: TransformersEmbedder, concurrency: int, requests: int
) -> tuple[float, Counter[int]]:
    """Requests per second with ``concurrency`` clients, and the batch sizes formed."""
    engine.batch_sizes.clear()
    todo = iter(range(requests))

    async def client() -> None:
        for i in todo:
            await engine.embed(EmbeddingRequest("bench", (TEXTS[i % len(TEXTS)],)))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return requests / (time.perf_counter() - start), Counter(engine.batch_sizes)


async def main(requests: int, device: str, smoke: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "embed", seed=1, embedding=True)
        config = TransformersConfig(task="embed", model=str(model), device=device)
        engine = await create_engine(config, EngineContext(served_name="bench"))
        assert isinstance(engine, TransformersEmbedder)
        try:
            await run(engine, 4, 16)  # warm-up
            print(f"# {platform.processor() or platform.machine()}, device={device}, "
                  f"{requests} requests of one text each")  # fmt: skip
            print("| concurrency | requests/s | mean batch | largest batch |")
            print("|---|---|---|---|")
            for concurrency in (1, 8, 32):
                rate, sizes = await run(engine, concurrency, 8 if smoke else requests)
                passes = sum(sizes.values())
                mean = sum(n * c for n, c in sizes.items()) / passes
                print(f"| {concurrency} | {rate:.0f} | {mean:.1f} | {max(sizes)} |")
        finally:
            await engine.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.device, args.smoke))
