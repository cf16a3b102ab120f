"""Server-sent events exactly as OpenAI clients expect them. The only SSE framing code.

``data: {json}\\n\\n`` per chunk, ``data: [DONE]\\n\\n`` at the end, ``: keep-alive`` comments
when nothing was sent for a while, and an in-stream error frame when the stream fails after
it started. The response watches for the client leaving and then closes the chunk iterator
at once, which aborts the generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import suppress
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import GatewayError

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def frame(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def error_frame(exc: GatewayError) -> bytes:
    return frame(
        {
            "error": {
                "message": exc.message,
                "type": exc.error_type,
                "param": exc.param,
                "code": exc.code,
            }
        }
    )


async def _frames(
    first: Mapping[str, Any],
    chunks: AsyncIterator[Any],
    keepalive: float,
) -> AsyncGenerator[bytes, None]:
    yield frame(first)
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks))
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield KEEPALIVE
                continue
            future, pending = pending, None
            try:
                chunk = future.result()
            except StopAsyncIteration:
                break
            except GatewayError as exc:
                yield error_frame(exc)
                return
            yield frame(chunk)
        yield DONE
    finally:
        if pending is not None:
            pending.cancel()
            with suppress(BaseException):
                await pending


class EventStreamResponse(Response):
    """An ASGI response streaming SSE frames; the first chunk is already in hand."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        first: Mapping[str, Any],
        chunks: AsyncGenerator[Any, None],
        record: RequestRecord,
        keepalive: float = 15.0,
    ) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self._first = first
        self._chunks = chunks
        self._record = record
        self._keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        frames = _frames(self._first, self._chunks, self._keepalive)

        async def pump() -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", self.media_type.encode()),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            async for data in frames:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pump_task = asyncio.ensure_future(pump())
        watch_task = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            if not pump_task.done():
                self._record.cancelled = True  # the client left mid-stream
                pump_task.cancel()
            watch_task.cancel()
            with suppress(asyncio.CancelledError):
                await watch_task
            try:
                await pump_task
            except asyncio.CancelledError:
                pass
            except OSError:  # the connection broke while sending
                self._record.cancelled = True
        finally:
            for task in (pump_task, watch_task):
                task.cancel()
            await frames.aclose()
            await self._chunks.aclose()
