"""FaultyUpstream: a deliberately misbehaving OpenAI-compatible server, for fault injection.

Runs a real uvicorn server on 127.0.0.1 in a background thread. The request's ``model`` picks
the behaviour (see ``BEHAVIOURS``); ``attempts`` counts requests per model, ``disconnected``
records streams whose client went away, and ``open_connections()`` counts the TCP connections
the server holds. Streamed and non-streamed requests are both served: a non-streamed answer
is assembled from the same script of chunks.
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
    "ok", "no-usage", "429-then-ok", "502-then-ok", "503-always", "429-always",
    "503-retry-later", "500", "400-context", "404", "slow-first", "stall", "reset",
    "truncated", "garbage", "bad-json-mid", "huge", "endless", "raw-tool-call",
    "native-tool-call", "cut-tool-call", "echo", "large-split",
)  # fmt: skip
HUGE_BYTES = 3 * 1024 * 1024  # more than the test engines' max_response_bytes
LARGE_BYTES = 512 * 1024  # under it; "large-split" sends it whole in 16 KiB writes


def _chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    d: dict[str, Any] = dict(delta)
    if content is not None:
        d["content"] = content
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
USAGE_CHUNK = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [], "usage": USAGE}  # fmt: skip


def _script(model: str, echo: str = "") -> list[dict[str, Any]]:
    """The chunks a behaviour sends (before any fault it injects)."""
    if model == "echo":  # the last user message back, word by word
        words = [w + " " for w in echo.split()] or [""]
        return [_chunk(role="assistant", content=""), *(_chunk(w) for w in words),
                _chunk(finish="stop"), USAGE_CHUNK]  # fmt: skip
    if model == "raw-tool-call":
        return [
            _chunk(role="assistant", content=""),
            _chunk('<tool_call>\n{"name": "get_weather", '),
            _chunk('"arguments": {"city": "Paris"}}\n</tool_call>'),
            _chunk(finish="stop"),
            USAGE_CHUNK,
        ]
    if model in ("native-tool-call", "cut-tool-call"):
        call = {"index": 0, "id": "call_up", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
        cut = model == "cut-tool-call"  # stopped by max_tokens in the middle of the arguments
        return [
            _chunk(role="assistant", tool_calls=[call]),
            _chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
            *([] if cut else [_chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}])]),
            _chunk(finish="length" if cut else "tool_calls"),
        ]  # fmt: skip
    chunks = [_chunk(role="assistant", content=""), _chunk("Hello"), _chunk(" world")]
    chunks.append(_chunk(finish="stop"))
    if model != "no-usage":
        chunks.append(USAGE_CHUNK)
    return chunks


def _assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A non-streamed chat.completion with the same content as ``chunks``."""
    content = ""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    for c in chunks:
        usage = c.get("usage") or usage
        for choice in c["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call["index"], {"id": call.get("id"), "type": "function",
                                                        "function": {"name": "", "arguments": ""}})  # fmt: skip
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish = choice["finish_reason"] or finish
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    body: dict[str, Any] = {
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1, "model": "upstream",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }  # fmt: skip
    if usage:
        body["usage"] = usage
    return body


def _last_user(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages") or () if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else ""


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class FaultyUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.attempts: Counter[str] = Counter()
        self.max_tokens: dict[str, int | None] = {}  # what each model was last asked for
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

    def open_connections(self) -> int:
        return len(self._server.server_state.connections)

    async def _health(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _wait_release(self) -> None:
        await asyncio.to_thread(self.release.wait)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        model = body["model"]
        stream = bool(body.get("stream"))
        self.attempts[model] += 1
        self.max_tokens[model] = body.get("max_tokens")
        first = self.attempts[model] % 2 == 1  # the "-then-ok" faults hit every other try
        if model == "429-then-ok" and first:
            return JSONResponse(
                {"error": {"message": "slow down", "type": "rate_limit_error", "code": None}},
                status_code=429,
                headers={"Retry-After": "0"},
            )
        if model == "502-then-ok" and first:
            return Response("bad gateway", status_code=502)
        if model == "503-always":
            return JSONResponse({"error": {"message": "busy", "type": "server_error"}}, 503)
        if model == "429-always":
            return JSONResponse({"error": {"message": "quota", "type": "rate_limit_error",
                                           "code": "rate_limit_exceeded"}}, 429)  # fmt: skip
        if model == "503-retry-later":  # longer than the gateway waits: passed on, not retried
            return JSONResponse(
                {"error": {"message": "maintenance", "type": "server_error"}}, 503,
                headers={"Retry-After": "120"},
            )  # fmt: skip
        if model == "500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)
        if model == "400-context":
            return JSONResponse(
                {"object": "error", "message": "too long", "type": "BadRequestError",
                 "param": None, "code": "context_length_exceeded"}, status_code=400,
            )  # fmt: skip
        if model == "404":
            return JSONResponse({"error": {"message": "no model", "type": "not_found"}}, 404)
        if model == "slow-first":
            await self._wait_release()
        if model == "huge" and not stream:
            return JSONResponse(_assemble([_chunk("x" * HUGE_BYTES, finish="stop")]))
        if model == "large-split" and not stream:
            whole = json.dumps(_assemble([_chunk("y" * LARGE_BYTES, finish="stop")])).encode()

            async def pieces() -> AsyncIterator[bytes]:
                for at in range(0, len(whole), 16 * 1024):
                    yield whole[at : at + 16 * 1024]

            return StreamingResponse(pieces(), media_type="application/json")
        if model == "garbage" and not stream:
            return Response("{not json", media_type="application/json")
        if not stream:
            if model in ("stall", "endless"):
                await self._wait_release()
            if model in ("reset", "truncated", "bad-json-mid"):
                return Response('{"id": "chatcmpl-upstream", "choi', media_type="application/json")
            return JSONResponse(_assemble(_script(model, _last_user(body))))
        return StreamingResponse(
            self._stream(model, _last_user(body)), media_type="text/event-stream"
        )

    async def _stream(self, model: str, echo: str = "") -> AsyncIterator[str]:
        try:
            if model == "garbage":
                yield "data: {not json\n\n"
                return
            if model == "huge":
                yield _sse(_chunk(role="assistant", content=""))
                for _ in range(HUGE_BYTES // 65536 + 1):
                    yield _sse(_chunk("x" * 65536))
                return
            chunks = _script(model, echo)
            if model in ("stall", "reset", "truncated", "bad-json-mid", "endless"):
                chunks = chunks[:2]  # the role chunk and "Hello"
            for chunk in chunks:
                yield _sse(chunk)
            if model == "stall":
                await self._wait_release()
            if model == "reset":
                raise RuntimeError("FaultyUpstream: connection reset mid-stream")
            if model == "truncated":
                return  # no finish, no [DONE]: the stream just ends
            if model == "bad-json-mid":
                yield 'data: {"id": "chatcmpl-upstream", "choi\n\n'
                return
            if model == "endless":
                while True:
                    yield _sse(_chunk(" more"))
                    await asyncio.sleep(0.01)
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
