"""Chunks ready together are handed over together; nothing ready is held back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from qwen_gateway.api.coalesce import ready_batches
from qwen_gateway.errors import EngineUnavailable


class Source:
    """Chunks in bursts: each burst is released by an event, its chunks come without waiting."""

    def __init__(self, bursts: list[list[int]], fail_after: bool = False) -> None:
        self.bursts = bursts
        self.gates = [asyncio.Event() for _ in bursts]
        self.fail_after = fail_after
        self.waiting = asyncio.Event()
        self.cleaned_up_by: BaseException | None = None
        self.closed = False

    async def chunks(self) -> AsyncGenerator[int, None]:
        try:
            for gate, burst in zip(self.gates, self.bursts, strict=True):
                self.waiting.set()
                await gate.wait()
                self.waiting.clear()
                for chunk in burst:
                    yield chunk
            await asyncio.sleep(0)  # a bare yield to the loop, too
            if self.fail_after:
                raise EngineUnavailable("gone")
        except BaseException as exc:
            self.cleaned_up_by = exc
            raise
        finally:
            self.closed = True


async def test_chunks_that_never_wait_are_one_batch() -> None:
    source = Source([[1, 2, 3], [4], [5, 6]])
    for gate in source.gates:
        gate.set()  # every burst is there already: nothing is waited for
    got = [batch async for batch in ready_batches(source.chunks())]
    assert got == [[1, 2, 3, 4, 5, 6]]


async def test_nothing_in_hand_waits_for_the_next_burst() -> None:
    source = Source([[1, 2], [3]])
    batches = ready_batches(source.chunks())
    source.gates[0].set()
    assert await anext(batches) == [1, 2]  # handed over while the source waits
    assert source.waiting.is_set()
    source.gates[1].set()
    assert await anext(batches) == [3]
    with pytest.raises(StopAsyncIteration):
        await anext(batches)
    assert source.closed


async def test_a_failure_comes_after_the_chunks_before_it() -> None:
    source = Source([[1, 2]], fail_after=True)
    source.gates[0].set()
    batches = ready_batches(source.chunks())
    assert await anext(batches) == [1, 2]
    with pytest.raises(EngineUnavailable):
        await anext(batches)


async def test_a_failed_future_the_source_waits_on_is_raised_in_the_source() -> None:
    """The error of what the source awaits is the source's to handle: it can catch it and go
    on, or let it through to the consumer after the chunks before it."""
    answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    caught: list[BaseException] = []

    async def source() -> AsyncGenerator[int, None]:
        yield 1
        try:
            await answer
        except EngineUnavailable as exc:
            caught.append(exc)
        yield 2
        await answer  # done already: fails again, now to the consumer

    batches = ready_batches(source())
    assert await anext(batches) == [1]
    answer.set_exception(EngineUnavailable("upstream gone"))
    assert await anext(batches) == [2]  # caught by the source, which went on
    assert len(caught) == 1
    with pytest.raises(EngineUnavailable, match="upstream gone"):
        await anext(batches)


async def test_cancelling_the_consumer_cancels_the_waiting_source() -> None:
    source = Source([[1]])
    batches = ready_batches(source.chunks())
    task = asyncio.create_task(anext(batches))
    await source.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert isinstance(source.cleaned_up_by, asyncio.CancelledError)
    assert source.closed


async def test_closing_while_the_source_waits_cancels_it() -> None:
    source = Source([[1, 2], [3]])
    source.gates[0].set()
    batches = ready_batches(source.chunks())
    assert await anext(batches) == [1, 2]  # the source now waits for its next burst
    await batches.aclose()
    assert isinstance(source.cleaned_up_by, asyncio.CancelledError)
    assert source.closed


class FutureIterator:
    """An async iterator whose ``__anext__`` returns futures (not steppable by hand)."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __aiter__(self) -> FutureIterator:
        return self

    def __anext__(self) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.items:
            future.set_result(self.items.pop(0))
        else:
            future.set_exception(StopAsyncIteration())
        return future


async def test_an_iterator_of_plain_awaitables_is_passed_through() -> None:
    got = [batch async for batch in ready_batches(FutureIterator([1, 2, 3]))]
    assert [c for batch in got for c in batch] == [1, 2, 3]
