"""Several server processes on one port (``server.workers``).

The parent binds the listening socket, then starts each worker in a fresh interpreter
(multiprocessing's ``spawn``: nothing of the parent's state, threads or torch is inherited);
the workers accept connections from the one socket. The parent forwards SIGTERM/SIGINT as
SIGTERM to every worker (each drains: :mod:`qwen_gateway.api.drain`), replaces a worker that
dies while serving (after a pause; too many deaths in a row stop everything), stops
everything if one dies before it serves, and exits 0 when every worker stopped cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event as Ready
from types import FrameType

from qwen_gateway.config import ServerSettings

log = logging.getLogger(__name__)

#: A worker: ``target(listening_socket, index, ready)``, which sets ``ready`` once it serves;
#: picklable (a module-level function or a ``functools.partial`` of one).
Worker = Callable[[socket.socket, int, Ready], None]
#: exit codes after which a worker is not restarted (it would fail the same way again)
_NO_RESTART = frozenset({2, 3})  # a configuration error; uvicorn's STARTUP_FAILURE


def bind(settings: ServerSettings) -> socket.socket:
    """The listening socket every worker accepts on."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    return sock


#: restarts of one worker: the pause before the n-th in a row doubles from the first up to
#: the last; a worker that crashes more than the limit within the window stops the server
_RESTART_PAUSE = (0.5, 30.0)
_RESTART_LIMIT = 5
_RESTART_WINDOW = 60.0


def supervise(settings: ServerSettings, target: Worker) -> int:
    """Run ``settings.workers`` workers until a signal stops them; the exit code."""
    sock = bind(settings)
    spawn = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    signalled: set[int] = set()  # the pids sent SIGTERM since stopping began
    crashes: dict[int, list[float]] = {}  # per worker: when it died, within the window
    pending: dict[int, float] = {}  # worker -> when to start it again
    ready: dict[int, Ready] = {}  # worker -> set by it once it serves
    stopping = False
    failed = False

    def start(index: int) -> None:
        if stopping:
            return
        ready[index] = spawn.Event()
        proc = spawn.Process(
            target=target, args=(sock, index, ready[index]), name=f"worker-{index}"
        )
        procs[index] = proc  # before start: a signal arriving meanwhile finds it next pass
        proc.start()
        log.info("worker %d started (pid %s)", index, proc.pid)

    def terminate(proc: multiprocessing.process.BaseProcess) -> None:
        if proc.pid is not None and proc.exitcode is None:
            os.kill(proc.pid, signal.SIGTERM)
            signalled.add(proc.pid)

    def stop_all(sig: int, _: FrameType | None = None) -> None:
        """SIGTERM to every worker: the first makes each drain, a second ends its drain."""
        nonlocal stopping
        stopping = True
        pending.clear()
        log.info("stopping %d worker(s) (signal %d)", len(procs), sig)
        for proc in list(procs.values()):
            terminate(proc)

    previous = {s: signal.signal(s, stop_all) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(settings.workers):
            start(index)
        while True:
            if stopping:  # a worker started while the signal arrived has not been told yet
                for proc in list(procs.values()):
                    if proc.pid not in signalled:
                        terminate(proc)
            alive = [p.sentinel for p in procs.values() if p.exitcode is None and p.pid]
            if not alive and not pending:
                break
            now = time.monotonic()
            timeout = min([1.0, *(max(0.0, at - now) for at in pending.values())])
            if alive:
                multiprocessing.connection.wait(alive, timeout=timeout)
            else:
                time.sleep(timeout)  # only pauses before restarts are left: wait for them
            if stopping:
                continue
            now = time.monotonic()
            for index, at in list(pending.items()):
                if at <= now:
                    del pending[index]
                    start(index)
            for index, proc in list(procs.items()):
                if proc.exitcode is None or index in pending:
                    continue
                if proc.exitcode in _NO_RESTART:
                    log.error("worker %d could not start (exit %d); stopping", index, proc.exitcode)
                    failed = True
                    stop_all(signal.SIGTERM)
                    break
                if not ready[index].is_set():
                    log.error("worker %d died before it served (exit %s); stopping",
                              index, proc.exitcode)  # fmt: skip
                    failed = True
                    stop_all(signal.SIGTERM)
                    break
                recent = [t for t in crashes.get(index, []) if now - t < _RESTART_WINDOW]
                crashes[index] = [*recent, now]
                if len(recent) >= _RESTART_LIMIT:
                    log.error("worker %d died %d times within %.0f s (exit %s); stopping",
                              index, len(recent) + 1, _RESTART_WINDOW, proc.exitcode)  # fmt: skip
                    failed = True
                    stop_all(signal.SIGTERM)
                    break
                pause = min(_RESTART_PAUSE[0] * 2 ** len(recent), _RESTART_PAUSE[1])
                log.error("worker %d (pid %s) died (exit %s); restarting it in %.2f s",
                          index, proc.pid, proc.exitcode, pause)  # fmt: skip
                pending[index] = now + pause
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    codes = {i: p.exitcode for i, p in procs.items()}
    log.info("workers stopped: %s", codes)
    return 1 if failed or any(code != 0 for code in codes.values()) else 0
