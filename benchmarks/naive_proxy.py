"""The baseline for gateway_overhead.py: a plain FastAPI + httpx pass-through.

What a Python developer writes in a few minutes to put something in front of an
OpenAI-compatible server: no authentication, no limits, no accounting, no metrics. The
gateway's CPU per request is compared with this one's, in the same run.

    python benchmarks/naive_proxy.py --port 8102 --upstream http://127.0.0.1:8101
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse


def create_app(upstream: str) -> FastAPI:
    app = FastAPI()
    client = httpx.AsyncClient(
        base_url=upstream,
        timeout=60,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
    )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        upstream_request = client.build_request("POST", "/v1/chat/completions", json=body)
        reply = await client.send(upstream_request, stream=True)
        if body.get("stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for piece in reply.aiter_raw():
                        yield piece
                finally:
                    await reply.aclose()

            return StreamingResponse(relay(), reply.status_code, media_type="text/event-stream")
        content = await reply.aread()
        return Response(content, reply.status_code, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8101")
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
