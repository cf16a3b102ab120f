"""Several server processes on one port (``server.workers``).

The parent binds the listening socket, then starts each worker in a fresh interpreter
(multiprocessing's ``spawn``: nothing of the parent's state, threads or torch is inherited);
the workers accept connections from the one socket. The parent forwards SIGTERM/SIGINT as
SIGTERM to every worker (each drains: :mod:`qwen_gateway.api.drain`), replaces a worker that
dies while serving, stops everything if one cannot start, and exits 0 when every worker
stopped cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType

from qwen_gateway.config import ServerSettings

log = logging.getLogger(__name__)

#: A worker: ``target(listening_socket, index)``; picklable (a module-level function or a
#: ``functools.partial`` of one).
Worker = Callable[[socket.socket, int], None]
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


def supervise(settings: ServerSettings, target: Worker) -> int:
    """Run ``settings.workers`` workers until a signal stops them; the exit code."""
    sock = bind(settings)
    spawn = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False
    failed = False

    def start(index: int) -> None:
        proc = spawn.Process(target=target, args=(sock, index), name=f"worker-{index}")
        proc.start()
        procs[index] = proc
        log.info("worker %d started (pid %s)", index, proc.pid)

    def stop_all(sig: int, _: FrameType | None = None) -> None:
        """SIGTERM to every worker: the first makes each drain, a second ends its drain."""
        nonlocal stopping
        stopping = True
        log.info("stopping %d worker(s) (signal %d)", len(procs), sig)
        for proc in procs.values():
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop_all) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(settings.workers):
            start(index)
        while True:
            alive = [p.sentinel for p in procs.values() if p.exitcode is None]
            if not alive:
                break
            multiprocessing.connection.wait(alive, timeout=1.0)
            if stopping:
                continue
            for index, proc in list(procs.items()):
                if proc.exitcode is None:
                    continue
                if proc.exitcode in _NO_RESTART:
                    log.error("worker %d could not start (exit %d); stopping", index, proc.exitcode)
                    failed = True
                    stop_all(signal.SIGTERM)
                    break
                log.error("worker %d (pid %s) died (exit %s); restarting it",
                          index, proc.pid, proc.exitcode)  # fmt: skip
                start(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    codes = {i: p.exitcode for i, p in procs.items()}
    log.info("workers stopped: %s", codes)
    return 1 if failed or any(code != 0 for code in codes.values()) else 0
