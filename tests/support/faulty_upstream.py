"""FaultyUpstream: a deliberately misbehaving OpenAI-compatible server, for fault injection.

Runs a real uvicorn server on 127.0.0.1 in a background thread. The request's ``model`` picks
the behaviour (see ``BEHAVIOURS``); ``attempts`` counts requests per model and
``disconnected`` records streams whose client went away.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from support.server import free_port

BEHAVIOURS = (
    "ok", "no-usage", "429-then-ok", "503-always", "400-context", "404", "slow-first", "stall",
    "reset", "garbage", "endless", "raw-tool-call", "native-tool-call",
)  # fmt: skip


def _chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> str:
    d: dict[str, Any] = dict(delta)
    if content is not None:
        d["content"] = content
    body = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


USAGE = 'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'


class FaultyUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.attempts: Counter[str] = Counter()
        self.disconnected = threading.Event()
        self.release = threading.Event()  # lets 'stall' and 'slow-first' finish when the test ends
        app = Starlette(
            routes=[
                Route("/health", self._health),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        )

    async def _health(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _wait_release(self) -> None:
        await asyncio.to_thread(self.release.wait)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        model = body["model"]
        self.attempts[model] += 1
        if model == "429-then-ok" and self.attempts[model] == 1:
            return JSONResponse(
                {"error": {"message": "slow down", "type": "rate_limit_error", "code": None}},
                status_code=429,
                headers={"Retry-After": "0"},
            )
        if model == "503-always":
            return JSONResponse({"error": {"message": "busy", "type": "server_error"}}, 503)
        if model == "400-context":
            return JSONResponse(
                {"object": "error", "message": "too long", "type": "BadRequestError",
                 "param": None, "code": "context_length_exceeded"}, status_code=400,
            )  # fmt: skip
        if model == "404":
            return JSONResponse({"error": {"message": "no model", "type": "not_found"}}, 404)
        if model == "slow-first":
            await self._wait_release()
        return StreamingResponse(self._stream(model), media_type="text/event-stream")

    async def _stream(self, model: str) -> AsyncIterator[str]:
        try:
            if model == "garbage":
                yield "data: {not json\n\n"
                return
            if model == "raw-tool-call":
                yield _chunk(role="assistant", content="")
                yield _chunk('<tool_call>\n{"name": "get_weather", ')
                yield _chunk('"arguments": {"city": "Paris"}}\n</tool_call>')
                yield _chunk(finish="stop")
                yield USAGE
                yield "data: [DONE]\n\n"
                return
            if model == "native-tool-call":
                call = {"index": 0, "id": "call_up", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
                yield _chunk(role="assistant", tool_calls=[call])
                yield _chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}])
                yield _chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}])
                yield _chunk(finish="tool_calls")
                yield "data: [DONE]\n\n"
                return
            yield _chunk(role="assistant", content="")
            yield _chunk("Hello")
            if model == "stall":
                await self._wait_release()
            if model == "reset":
                raise RuntimeError("FaultyUpstream: connection reset mid-stream")
            if model == "endless":
                while True:
                    yield _chunk(" more")
                    await asyncio.sleep(0.01)
            yield _chunk(" world")
            yield _chunk(finish="stop")
            if model != "no-usage":
                yield USAGE
            yield "data: [DONE]\n\n"
        finally:
            if model == "endless":
                self.disconnected.set()

    @contextmanager
    def running(self) -> Iterator[FaultyUpstream]:
        thread = threading.Thread(target=self._server.run, daemon=True)
        thread.start()
        try:
            while not self._server.started:
                if not thread.is_alive():
                    raise RuntimeError("FaultyUpstream failed to start")
                threading.Event().wait(0.02)
            yield self
        finally:
            self.release.set()
            self._server.should_exit = True
            thread.join(timeout=10)
