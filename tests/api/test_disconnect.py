"""ClientWatch: the client leaving cancels the watched work; closing stops the watch; a
cancellation from outside is never taken for the client leaving.

The client is a queue of ASGI messages; its events tell when the watcher has read everything
sent so far, or stopped reading, so no test waits on time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from starlette.types import Message

from qwen_gateway.api.disconnect import ClientWatch

T = TypeVar("T")


class FakeClient:
    """``receive`` for a ClientWatch, fed by :meth:`send`."""

    def __init__(self) -> None:
        self._messages: asyncio.Queue[Message] = asyncio.Queue()
        self.waiting = asyncio.Event()  # a receive() is blocked on an empty queue
        self.abandoned = asyncio.Event()  # a receive() was cancelled: nobody reads any more
        self.received = 0

    def send(self, kind: str) -> None:
        self.waiting.clear()
        self._messages.put_nowait({"type": kind})

    def pending(self) -> int:
        return self._messages.qsize()

    async def receive(self) -> Message:
        if self._messages.empty():
            self.waiting.set()
        try:
            message = await self._messages.get()
        except asyncio.CancelledError:
            self.abandoned.set()
            raise
        self.received += 1
        return message


async def in_task(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in a task of its own (the task a ClientWatch cancels)."""

    async def run() -> T:
        return await work()

    return await asyncio.create_task(run())


async def test_client_leaving_cancels_the_work_and_is_caught() -> None:
    client = FakeClient()

    async def work() -> tuple[bool, int]:
        watch = ClientWatch(client.receive)
        client.send("http.disconnect")
        try:
            await asyncio.Event().wait()  # never set: only a cancellation ends it
        except asyncio.CancelledError:
            caught = watch.caught()
        finally:
            watch.close()
        assert watch.left
        task = asyncio.current_task()
        assert task is not None
        return caught, task.cancelling()

    caught, cancelling = await in_task(work)
    assert caught
    assert cancelling == 0  # withdrawn: the task may go on


async def test_other_messages_do_not_cancel() -> None:
    client = FakeClient()

    async def work() -> str:
        watch = ClientWatch(client.receive)
        client.send("http.request")
        client.send("http.request")
        await client.waiting.wait()  # the watcher read both and waits for more
        watch.close()
        assert not watch.left
        return "finished"

    assert await in_task(work) == "finished"
    assert client.received == 2


async def test_disconnect_after_close_is_not_read_and_cancels_nothing() -> None:
    client = FakeClient()

    async def work() -> str:
        watch = ClientWatch(client.receive)
        await client.waiting.wait()
        watch.close()
        client.send("http.disconnect")
        await client.abandoned.wait()  # the watcher stopped reading
        assert not watch.left
        return "finished"

    assert await in_task(work) == "finished"
    assert client.pending() == 1  # the disconnect is left for whoever reads next
    assert client.received == 0


async def test_close_withdraws_a_cancel_the_work_swallowed() -> None:
    client = FakeClient()

    async def work() -> int:
        watch = ClientWatch(client.receive)
        client.send("http.disconnect")
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, caught() not asked
            await asyncio.Event().wait()
        watch.close()
        assert watch.left
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert await in_task(work) == 0


async def test_cancel_from_outside_is_not_the_client_leaving() -> None:
    client = FakeClient()
    started = asyncio.Event()
    answers: list[bool] = []

    async def work() -> None:
        watch = ClientWatch(client.receive)
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            answers.append(watch.caught())
            raise
        finally:
            watch.close()
            answers.append(watch.left)

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert answers == [False, False]


async def test_cancel_from_outside_wins_over_the_client_leaving() -> None:
    client = FakeClient()
    started = asyncio.Event()
    answers: list[bool] = []

    async def work() -> None:
        watch = ClientWatch(client.receive)
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            answers.append(watch.caught())
            raise
        finally:
            watch.close()
            answers.append(watch.left)

    task = asyncio.create_task(work())
    await started.wait()
    client.send("http.disconnect")  # both cancel before the task runs again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert answers == [False, True]  # the client left, but the outside cancel stands


async def test_needs_a_task() -> None:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[BaseException | None] = loop.create_future()
    client = FakeClient()

    def outside_any_task() -> None:
        try:
            ClientWatch(client.receive)
        except RuntimeError as error:
            outcome.set_result(error)
        else:
            outcome.set_result(None)

    loop.call_soon(outside_any_task)
    error = await outcome
    assert isinstance(error, RuntimeError)
    assert "inside a task" in str(error)
