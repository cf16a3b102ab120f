"""The SSE framing: keep-alive comments on long gaps, error frames after the stream started."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

from qwen_gateway.api.sse import DONE, KEEPALIVE, RESPONSES, EventStreamResponse
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import EngineUnavailable


async def run(response: EventStreamResponse, on_body: Any = None) -> list[bytes]:
    """Drive the ASGI response with a client that stays; return the body parts sent."""
    bodies: list[bytes] = []
    stay = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await stay.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if on_body is not None:
                on_body(message["body"])

    await response({"type": "http"}, receive, send)
    return bodies


async def test_keepalive_comment_is_sent_while_the_next_chunk_is_late() -> None:
    release = asyncio.Event()

    async def slow() -> AsyncGenerator[dict[str, int], None]:
        await release.wait()
        yield {"n": 2}

    def on_body(body: bytes) -> None:
        if body == KEEPALIVE:
            release.set()  # the comment came while the chunk was late: now let it come

    response = EventStreamResponse({"n": 1}, slow(), RequestRecord("r"), keepalive=0.01)
    bodies = await run(response, on_body)
    assert bodies[0] == b'data: {"n":1}\n\n'
    assert KEEPALIVE in bodies[1:-2]
    assert bodies[-2:] == [b'data: {"n":2}\n\n', DONE]


async def test_relayed_bytes_are_framed_as_they_are() -> None:
    async def chunks() -> AsyncGenerator[bytes, None]:
        yield b'{"id":"up","choices":[]}'

    response = EventStreamResponse({"n": 1}, chunks(), RequestRecord("r"), keepalive=5)
    assert (await run(response))[1] == b'data: {"id":"up","choices":[]}\n\n'


async def test_error_after_the_first_chunk_becomes_an_error_frame() -> None:
    async def failing() -> AsyncGenerator[dict[str, int], None]:
        yield {"n": 2}
        raise EngineUnavailable("engine went away")

    response = EventStreamResponse({"n": 1}, failing(), RequestRecord("r"), keepalive=5)
    frames = await run(response)
    assert frames[1] == b'data: {"n":2}\n\n'
    assert frames[-1].startswith(b'data: {"error":{"message":"engine went away"')
    assert DONE not in frames


async def test_a_stream_cut_off_by_the_shutdown_ends_with_an_error_event() -> None:
    first_sent = asyncio.Event()

    async def endless() -> AsyncGenerator[dict[str, int], None]:
        await asyncio.Event().wait()  # never produces another chunk
        yield {"n": 2}

    def on_body(body: bytes) -> None:
        first_sent.set()

    record = RequestRecord("r")
    response = EventStreamResponse({"n": 1}, endless(), record, keepalive=5)
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        on_body(message.get("body", b""))

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}

    task = asyncio.create_task(response({"type": "http"}, receive, send))
    await first_sent.wait()
    task.cancel()  # what uvicorn does at the end of the shutdown grace period
    await task  # ends normally: the server then closes the chunked body properly
    last = messages[-1]
    assert last["more_body"] is False
    assert last["body"].startswith(b'data: {"error":')
    assert b'"code":"server_shutting_down"' in last["body"]
    assert record.cancelled


async def test_a_responses_stream_cut_off_ends_numbered_with_error_and_response_failed() -> None:
    """The Responses API's cut-off tail continues the sequence numbers and ends the stream with
    ``response.failed``, as the SDK expects of a failed stream."""
    first_sent = asyncio.Event()  # the second event went out
    shell = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}

    async def endless() -> AsyncGenerator[dict[str, Any], None]:
        yield {"type": "response.in_progress", "sequence_number": 1, "response": shell}
        await asyncio.Event().wait()  # never produces another event
        yield {"type": "never"}

    created = {"type": "response.created", "sequence_number": 0, "response": shell}
    record = RequestRecord("r")
    response = EventStreamResponse(created, endless(), record, keepalive=5, framing=RESPONSES)
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if b"response.in_progress" in message.get("body", b""):
            first_sent.set()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}

    task = asyncio.create_task(response({"type": "http"}, receive, send))
    await first_sent.wait()
    task.cancel()  # the end of the shutdown grace period
    await task
    body = b"".join(m.get("body", b"") for m in messages).decode()
    events = [json.loads(block.split("\ndata: ")[1]) for block in body.strip().split("\n\n")]
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "error", "response.failed"
    ]  # fmt: skip
    assert [e["sequence_number"] for e in events] == [0, 1, 2, 3]
    assert events[2]["code"] == "server_shutting_down"
    failed = events[3]["response"]
    assert failed["id"] == "resp_1" and failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
