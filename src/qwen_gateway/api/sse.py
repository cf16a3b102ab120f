"""Server-sent events exactly as OpenAI clients expect them. The only SSE framing code.

``data: {json}\\n\\n`` per chunk, ``data: [DONE]\\n\\n`` at the end, ``: keep-alive`` comments
when nothing was sent for a while, and an in-stream error frame when the stream fails after
it started. The response watches for the client leaving and then closes the chunk iterator
at once, which aborts the generation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping
from contextlib import suppress
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import EngineUnavailable, GatewayError

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
_CUT_OFF_SEND_SECONDS = 2.0


def frame(obj: Mapping[str, Any] | bytes) -> bytes:
    """One SSE event; ``bytes`` are a chunk's JSON already (relayed unchanged)."""
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return b"data: " + data + b"\n\n"


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


class EventStreamResponse(Response):
    """An ASGI response streaming SSE frames; the first chunk is already in hand.

    Three concerns, two tasks: ``pump`` sends frames as chunks come; ``watch`` waits for the
    client to leave; a keep-alive comment is sent from a timer only when nothing else was sent
    for ``keepalive`` seconds, so the per-chunk path carries no timer at all.
    """

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        first: Mapping[str, Any] | bytes,
        chunks: AsyncGenerator[Any, None],
        record: RequestRecord,
        keepalive: float = 15.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self._extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self._first = first
        self._chunks = chunks
        self._record = record
        self._keepalive = keepalive
        self._started = False  # the response head was sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        chunks = self._chunks
        last_sent = loop.time()
        finishing = False
        ticker: asyncio.TimerHandle | None = None

        async def send_body(data: bytes) -> None:
            nonlocal last_sent
            await send({"type": "http.response.body", "body": data, "more_body": True})
            last_sent = loop.time()

        def tick() -> None:
            nonlocal ticker
            idle = loop.time() - last_sent
            if finishing:
                return
            if idle >= self._keepalive:
                keepalive_tasks.add(task := loop.create_task(send_body(KEEPALIVE)))
                task.add_done_callback(keepalive_tasks.discard)
                idle = 0.0
            ticker = loop.call_later(self._keepalive - idle, tick)

        keepalive_tasks: set[asyncio.Task[None]] = set()

        async def pump() -> None:
            nonlocal finishing, ticker
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", self.media_type.encode()),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                        *self._extra,
                    ],
                }
            )
            self._started = True
            await send_body(frame(self._first))
            ticker = loop.call_later(self._keepalive, tick)
            try:
                async for chunk in chunks:
                    await send_body(frame(chunk))
                tail = DONE
            except GatewayError as exc:
                tail = error_frame(exc)
            finishing = True
            ticker.cancel()
            for task in list(keepalive_tasks):  # each removes itself from the set when done
                try:
                    await task
                except OSError:  # the connection broke: the tail's own send fails the same way
                    log.debug("a keep-alive could not be sent")
            await send({"type": "http.response.body", "body": tail, "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pump_task = asyncio.ensure_future(pump())
        watch_task = asyncio.ensure_future(watch())
        try:
            try:
                await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # cut off from outside: the shutdown grace is over
                self._record.cancelled = True
                if pump_task.done() or not self._started:
                    raise
                await self._cut_off(pump_task, send)
                return  # uvicorn then ends the chunked body properly
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
            finishing = True
            if ticker is not None:
                ticker.cancel()
            tasks = (pump_task, watch_task, *keepalive_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # none is inside chunks now
            await chunks.aclose()

    async def _cut_off(self, pump: asyncio.Future[None], send: Send) -> None:
        """End a stream the shutdown cuts off with an in-stream error instead of a bare close."""
        pump.cancel()
        await asyncio.wait({pump})
        log.info("stream cut off by the server shutting down")
        tail = error_frame(
            EngineUnavailable(
                "The server is shutting down; the stream was cut off. Retry the request.",
                code="server_shutting_down",
            )
        )
        try:
            async with asyncio.timeout(_CUT_OFF_SEND_SECONDS):  # a client that does not read
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except (TimeoutError, OSError) as exc:
            log.info("could not send the shutdown error to the client: %r", exc)
