"""The SSE framing: keep-alive comments on long gaps, error frames after the stream started."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from qwen_gateway.api.sse import DONE, KEEPALIVE, _frames
from qwen_gateway.errors import EngineUnavailable


async def test_keepalive_comment_is_sent_while_the_next_chunk_is_late() -> None:
    release = asyncio.Event()

    async def slow() -> AsyncIterator[dict[str, int]]:
        await release.wait()
        yield {"n": 2}

    frames = _frames({"n": 1}, slow(), keepalive=0.01)
    assert await anext(frames) == b'data: {"n":1}\n\n'
    assert await anext(frames) == KEEPALIVE
    release.set()
    rest = [f async for f in frames]
    assert rest[-2:] == [b'data: {"n":2}\n\n', DONE]


async def test_error_after_the_first_chunk_becomes_an_error_frame() -> None:
    async def failing() -> AsyncIterator[dict[str, int]]:
        yield {"n": 2}
        raise EngineUnavailable("engine went away")

    frames = [f async for f in _frames({"n": 1}, failing(), keepalive=5)]
    assert frames[1] == b'data: {"n":2}\n\n'
    assert frames[-1].startswith(b'data: {"error":{"message":"engine went away"')
    assert DONE not in frames
