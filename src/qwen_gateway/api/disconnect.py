"""Noticing that the client left: one watcher task per request, which cancels the request's
own task, so that the work in hand (routing, generation, streaming) is cancelled at once and
cleans up in its ``finally`` blocks (aborting the generation).

The request's task runs the work itself: no task per stage. ``caught`` tells a cancellation
by the client leaving from one from outside (the server shutting down), which is left alone.
"""

from __future__ import annotations

import asyncio

from starlette.types import Receive


class ClientWatch:
    """Watches ``receive`` for ``http.disconnect`` from the moment it is made until
    :meth:`close`; the task that made it is cancelled if the client leaves in between.

    Every ``await`` between making it and :meth:`close` may raise ``CancelledError``; the
    code catching it asks :meth:`caught` whether that was the client leaving."""

    __slots__ = ("_cancelled", "_open", "_task", "_watcher", "left")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("ClientWatch needs to be made inside a task")
        self._task = task
        self._open = True
        self._cancelled = False  # this watch cancelled the task and has not withdrawn it
        self.left = False  # the client disconnected while watched
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if self._open:  # the task is suspended inside the watched work: it gets the cancel
            self.left = self._cancelled = True
            self._task.cancel()

    def caught(self) -> bool:
        """For a ``CancelledError`` in the task: True when it came from the client leaving
        and from nowhere else (the cancellation is then withdrawn, and the task may go on)."""
        if not self._cancelled:
            return False
        self._cancelled = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        """Stop watching (no ``await`` may lie between the watched work and this call)."""
        self._open = False
        if self._cancelled:  # the work swallowed the cancellation and returned all the same
            self._cancelled = False
            self._task.uncancel()
        self._watcher.cancel()
