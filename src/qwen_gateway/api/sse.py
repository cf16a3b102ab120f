"""Server-sent events exactly as each API's clients expect them. The only SSE framing code.

A :class:`Framing` says how an API frames its stream: OpenAI's Chat Completions, Completions
and embeddings send ``data: {json}\\n\\n`` per chunk, ``data: [DONE]\\n\\n`` at the end and
``: keep-alive`` comments when nothing was sent for a while; Anthropic's Messages and OpenAI's
Responses API name each event on an ``event:`` line and send nothing after their last event
(Messages keeps alive with ``ping`` events). Each ends a stream that fails after it started
with its own in-stream error. When the client leaves, the response's task is cancelled where
it waits and the chunk iterator is closed at once, which aborts the generation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from qwen_gateway.api.coalesce import ready_batches
from qwen_gateway.api.disconnect import ClientWatch
from qwen_gateway.api.errors import anthropic_body
from qwen_gateway.core.jsonbytes import dumps
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import EngineUnavailable, GatewayError

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
_CUT_OFF_SEND_SECONDS = 2.0


def frame(obj: Mapping[str, Any] | bytes) -> bytes:
    """One SSE event; ``bytes`` are a chunk's JSON already (relayed unchanged)."""
    data = obj if isinstance(obj, bytes) else dumps(obj)
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


def named_frame(obj: Mapping[str, Any] | bytes) -> bytes:
    """One SSE event with an ``event:`` line naming it by the object's ``type``, as Anthropic's
    streams are framed."""
    if isinstance(obj, bytes):
        return frame(obj)
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + dumps(obj) + b"\n\n"


def anthropic_error_frame(exc: GatewayError) -> bytes:
    return named_frame(dict(anthropic_body(exc.message, exc.status_code, exc.param)))


@dataclass(frozen=True, slots=True)
class Framing:
    """How one API frames its stream: each event, the in-stream error, the end, keep-alives."""

    frame: Callable[[Mapping[str, Any] | bytes], bytes]
    error: Callable[[GatewayError], bytes]
    done: bytes
    keepalive: bytes
    #: When set, the in-stream error is made from the first and the last event sent too
    #: (the Responses API numbers its events and ends a failed stream with a final event).
    stream_error: Callable[[GatewayError, Any, Any], bytes] | None = None


#: OpenAI's: ``data:`` lines, ``data: [DONE]`` at the end, comments to keep alive.
OPENAI = Framing(frame, error_frame, DONE, KEEPALIVE)
#: Anthropic's Messages: ``event:`` + ``data:`` lines, nothing after ``message_stop``, and
#: ``ping`` events to keep alive.
ANTHROPIC = Framing(named_frame, anthropic_error_frame, b"", named_frame({"type": "ping"}))


def responses_error_frame(exc: GatewayError) -> bytes:
    """The Responses API's ``error`` event when nothing is known of the stream."""
    return responses_stream_error(exc, None, None)


def responses_stream_error(exc: GatewayError, first: Any, last: Any) -> bytes:
    """The Responses API's ``error`` then ``response.failed`` events, numbered after the
    ``last`` event sent, for a stream cut off from outside its own events (the service ends its
    own failed streams the same way); ``first`` (``response.created``) gives the response."""
    number = last.get("sequence_number") if isinstance(last, Mapping) else None
    sequence = number + 1 if isinstance(number, int) else 0
    event = {"type": "error", "sequence_number": sequence, "code": exc.code,
             "message": exc.message, "param": exc.param}  # fmt: skip
    tail = named_frame(event)
    shell = first.get("response") if isinstance(first, Mapping) else None
    if isinstance(shell, Mapping):
        code = "rate_limit_exceeded" if exc.status_code == 429 else "server_error"
        failed = {**shell, "status": "failed", "error": {"code": code, "message": exc.message}}
        tail += named_frame(
            {"type": "response.failed", "sequence_number": sequence + 1, "response": failed}
        )
    return tail


#: OpenAI's Responses API: ``event:`` + ``data:`` lines, nothing after the last event (the
#: stream ends with ``response.completed`` or another final event), comments to keep alive.
RESPONSES = Framing(named_frame, responses_error_frame, b"", KEEPALIVE, responses_stream_error)


class EventStreamResponse(Response):
    """An ASGI response streaming SSE frames; the first chunk is already in hand.

    The frames are sent from the request's own task as chunks come; a
    :class:`~qwen_gateway.api.disconnect.ClientWatch` (the caller's, or one of its own) cancels
    that task when the client leaves; a keep-alive comment is sent from a timer only when
    nothing else was sent for ``keepalive`` seconds, so the per-chunk path carries no timer and
    no task switch at all.
    """

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        first: Mapping[str, Any] | bytes,
        chunks: AsyncGenerator[Any, None],
        record: RequestRecord,
        keepalive: float = 15.0,
        headers: Mapping[str, str] | None = None,
        watch: ClientWatch | None = None,
        framing: Framing = OPENAI,
    ) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self._extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self._first = first
        self._chunks = chunks
        self._record = record
        self._keepalive = keepalive
        self._watch = watch  # the caller's, which the caller closes
        self._started = False  # the response head was sent
        self._framing = framing
        self._last: Mapping[str, Any] | bytes = first  # the last event sent

    def _error(self, exc: GatewayError) -> bytes:
        framing = self._framing
        if framing.stream_error is not None:
            return framing.stream_error(exc, self._first, self._last)
        return framing.error(exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        chunks = self._chunks
        last_sent = loop.time()
        finishing = False
        ticker: asyncio.TimerHandle | None = None
        keepalive_tasks: set[asyncio.Task[None]] = set()
        framing = self._framing
        frame = framing.frame

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
                keepalive_tasks.add(task := loop.create_task(send_body(framing.keepalive)))
                task.add_done_callback(keepalive_tasks.discard)
                idle = 0.0
            ticker = loop.call_later(self._keepalive - idle, tick)

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
                async for batch in batches:  # chunks ready together go out in one write
                    await send_body(b"".join([frame(chunk) for chunk in batch]))
                    self._last = batch[-1]
                tail = framing.done
            except GatewayError as exc:
                tail = self._error(exc)
            finishing = True
            ticker.cancel()
            for task in list(keepalive_tasks):  # each removes itself from the set when done
                try:
                    await task
                except OSError:  # the connection broke: the tail's own send fails the same way
                    log.debug("a keep-alive could not be sent")
            await send({"type": "http.response.body", "body": tail, "more_body": False})

        batches = ready_batches(chunks)
        watch = self._watch if self._watch is not None else ClientWatch(receive)
        try:
            await pump()
        except asyncio.CancelledError:
            self._record.cancelled = True
            if watch.caught():  # the client left mid-stream
                return
            if not self._started:  # cut off from outside before anything was sent
                raise
            watch.close()
            await self._cut_off(send)  # the shutdown grace is over
            return  # uvicorn then ends the chunked body properly
        except OSError:  # the connection broke while sending
            self._record.cancelled = True
        finally:
            finishing = True
            if ticker is not None:
                ticker.cancel()
            if self._watch is None:
                watch.close()
            for task in keepalive_tasks:
                task.cancel()
            if keepalive_tasks:
                await asyncio.gather(*keepalive_tasks, return_exceptions=True)
            await batches.aclose()  # first: it may hold a step of ``chunks`` in hand
            await chunks.aclose()

    async def _cut_off(self, send: Send) -> None:
        """End a stream the shutdown cuts off with an in-stream error instead of a bare close."""
        log.info("stream cut off by the server shutting down")
        tail = self._error(
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
