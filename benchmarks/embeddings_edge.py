"""CPU per request of the embeddings edge against chat completions, engines taken out.

One in-process gateway (authentication on with a database key, usage accounting on), driven
through its ASGI app: ``POST /v1/chat/completions`` answered by a scripted engine (a short
reply) and ``POST /v1/embeddings`` (one short text, 64 float dimensions) answered by a fixed
embedder, in interleaved rounds; the process's CPU time per request of each, and their ratio.
Both carry the client's share (httpx in the same process), so the ratio understates neither.
Not a test. Usage:

    python benchmarks/embeddings_edge.py [--requests 2000] [--rounds 5]
    python benchmarks/embeddings_edge.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from array import array
from collections.abc import AsyncGenerator

import httpx

from qwen_gateway.api.app import create_app
from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineEvent,
    GenerationRequest,
    ModelInfo,
)
from qwen_gateway.engines.base import READY, EngineHealth
from qwen_gateway.engines.scripted import scripted_engine

VECTOR = array("f", [1.0 / 8.0] * 64).tobytes()  # unit length


class FixedEmbedder:
    """An embedding engine that costs nothing: the same unit vector for every input."""

    info = ModelInfo(id="embed", context_window=32768, max_output_tokens=1, task="embed",
                     embedding_dimensions=64)  # fmt: skip

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        return EmbeddingResult((VECTOR,) * len(request.inputs), 3 * len(request.inputs))

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def health(self) -> EngineHealth:
        return READY

    async def aclose(self) -> None:
        return None


async def round_cpu(http: httpx.AsyncClient, path: str, body: object, n: int) -> float:
    """CPU seconds per request over ``n`` sequential requests."""
    start = time.process_time()
    for _ in range(n):
        resp = await http.post(path, json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"{path}: {resp.status_code} {resp.text}")
    return (time.process_time() - start) / n


async def main(requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as data:
        settings = load_settings({"data_dir": data}, env={})
        engines = {"chat": scripted_engine("chat", ["The answer is forty-two."]),
                   "embed": FixedEmbedder()}  # fmt: skip
        container = Container(settings, engines=engines)  # type: ignore[arg-type]
        app = create_app(container)
        async with app.router.lifespan_context(app):
            await container.wait_loaded()
            key, _ = await container.store.keys.create("bench")
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://g",
                                         headers=headers) as http:  # fmt: skip
                chat = ("/v1/chat/completions", {"model": "chat", "max_tokens": 16,
                        "messages": [{"role": "user", "content": "What is the answer?"}]})  # fmt: skip
                embed = ("/v1/embeddings", {"model": "embed", "input": "What is the answer?",
                                            "encoding_format": "float"})  # fmt: skip
                for path, body in (chat, embed):  # warm-up
                    await round_cpu(http, path, body, min(requests, 100))
                per: dict[str, list[float]] = {"chat": [], "embeddings": []}
                for _ in range(rounds):
                    per["chat"].append(await round_cpu(http, *chat, requests))
                    per["embeddings"].append(await round_cpu(http, *embed, requests))
    c, e = statistics.median(per["chat"]), statistics.median(per["embeddings"])
    print(f"CPU per request (median of {rounds} rounds of {requests}): chat completions "
          f"{c * 1e6:.0f} µs, embeddings {e * 1e6:.0f} µs, embeddings/chat {e / c:.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.rounds = 5, 1
    asyncio.run(main(args.requests, args.rounds))
