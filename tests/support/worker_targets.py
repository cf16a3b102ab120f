"""Worker targets for :func:`qwen_gateway.api.workers.supervise` in tests (module-level, so
that a spawned interpreter can import them)."""

from __future__ import annotations

import os
import socket
from multiprocessing.synchronize import Event


def crash_at_start(sock: socket.socket, index: int, ready: Event) -> None:
    """A worker that dies with exit 1 before it serves (as one failing to start would)."""
    sock.close()
    os._exit(1)


def crash_once_serving(sock: socket.socket, index: int, ready: Event) -> None:
    """A worker that serves (says it is ready), then dies with exit 1."""
    sock.close()
    ready.set()
    os._exit(1)


def wait_for_signal(sock: socket.socket, index: int, ready: Event) -> None:
    """A worker that runs until a signal ends it."""
    import signal

    sock.close()
    while True:
        signal.pause()


def supervise_with_a_signal_during_start(port: int) -> int:
    """``supervise`` two waiting workers, SIGTERM arriving while the first one starts."""
    import multiprocessing.context
    import signal

    from qwen_gateway.api.workers import supervise
    from qwen_gateway.config import ServerSettings

    original = multiprocessing.context.SpawnProcess.start
    starts: list[str] = []

    def start(self: multiprocessing.context.SpawnProcess) -> None:
        starts.append(self.name)
        if len(starts) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled here, before the process exists
        original(self)

    multiprocessing.context.SpawnProcess.start = start  # type: ignore[method-assign]
    code = supervise(ServerSettings(port=port, workers=2), wait_for_signal)
    print(" ".join(starts))
    return code
