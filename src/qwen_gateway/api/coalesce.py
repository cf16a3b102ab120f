"""Chunks that are ready together, sent together.

An upstream often delivers many SSE events in one read (a burst of tokens, a busy vLLM), and
the chunk iterator then produces them one after the other without waiting. Sending each as
soon as it is made costs one write (a system call) per chunk; :func:`ready_batches` hands
over everything produced without waiting as one batch, and a batch goes out the moment the
iterator would wait. Nothing is ever held back: a chunk that was waited for is sent before
anything else is waited for.

To know whether the iterator would wait, each ``__anext__`` is stepped by hand from the
consumer's task, exactly as that task would step it: when it suspends on a future, the batch
in hand is yielded, then the future is awaited and the step resumed; a cancellation of the
task reaches the iterator as it would without this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from typing import Any, TypeVar

T = TypeVar("T")


async def ready_batches(chunks: AsyncIterator[T]) -> AsyncGenerator[list[T], None]:
    """``chunks`` in batches: a chunk that had to be waited for, and every chunk after it that
    did not. Closing this generator while a step is suspended cancels that step (the chunk
    iterator sees a cancellation, as when its task is cancelled)."""
    batch: list[T] = []
    while True:
        step: Any = chunks.__anext__()
        if not hasattr(step, "send"):  # an awaitable that cannot be stepped: wait as usual
            if batch:
                yield batch
                batch = []
            try:
                batch.append(await step)
            except StopAsyncIteration:
                return
            continue
        try:
            yielded = step.send(None)
        except StopIteration as done:
            batch.append(done.value)
            continue
        except StopAsyncIteration:
            if batch:
                yield batch
            return
        except BaseException:
            if batch:
                yield batch  # what came before the failure, then the failure
            raise
        # the iterator waits for ``yielded``: hand over what is in hand first
        if batch:
            try:
                yield batch
            except BaseException:
                await _cancel(step, yielded)
                raise
            finally:
                batch = []
            # (a close while yielded lands in ``except`` as GeneratorExit)
        try:
            value = await _resume(step, yielded)
        except StopAsyncIteration:
            return
        batch.append(value)


async def _resume(step: Generator[Any, None, Any], yielded: Any) -> Any:
    """Drive ``step``, suspended on ``yielded``, to its end as its task would: wait for the
    future, then resume it; a cancellation of this task is passed in."""
    while True:
        error: BaseException | None = None
        try:
            if yielded is None:  # a bare yield (asyncio.sleep(0)): let the loop run once
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # taken over, as Task.__step does
                await yielded
        except asyncio.CancelledError as exc:
            # the task was cancelled: when that cancelled the future, the step sees it as
            # the future's outcome; otherwise it is thrown in, as the task would
            if yielded is None or not yielded.cancelled():
                error = exc
        except BaseException:
            # the future failed: not an error of this task's, and nothing is lost: the step
            # takes the future's outcome when it is resumed below, and raises it itself
            error = None
        try:
            yielded = step.throw(error) if error is not None else step.send(None)
        except StopIteration as done:
            return done.value


async def _cancel(step: Generator[Any, None, Any], yielded: Any) -> None:
    """End ``step``, suspended on ``yielded``, with a cancellation (it cleans up)."""
    try:
        if yielded is not None:
            yielded.cancel()  # what cancelling the task would do: the step sees it on resuming
        else:
            yielded = step.throw(asyncio.CancelledError())
        await _resume(step, yielded)
    except (StopIteration, StopAsyncIteration, asyncio.CancelledError):
        pass
