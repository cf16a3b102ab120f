"""``supervise``: a worker that dies before it serves stops the server; one that keeps dying
while serving is restarted with pauses, then the server stops; SIGTERM during start-up."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from qwen_gateway.api import workers
from qwen_gateway.config import ServerSettings
from support.server import free_port
from support.worker_targets import crash_at_start, crash_once_serving


def test_a_worker_that_keeps_dying_stops_the_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(workers, "_RESTART_PAUSE", (0.01, 0.04))
    settings = ServerSettings(host="127.0.0.1", port=free_port(), workers=2)
    with caplog.at_level(logging.INFO, logger=workers.__name__):
        assert workers.supervise(settings, crash_once_serving) == 1
    restarts = [r.getMessage() for r in caplog.records if "restarting it in" in r.getMessage()]
    # a worker is restarted _RESTART_LIMIT times, with doubling pauses; at its next death the
    # server gives up (the other worker, dying at its own pace, may be behind: never ahead)
    per_worker = [sum(m.startswith(f"worker {i} ") for m in restarts) for i in range(2)]
    assert max(per_worker) == workers._RESTART_LIMIT, restarts
    assert min(per_worker) >= 1, restarts  # both were restarted
    pauses = sorted({float(m.rsplit(" in ", 1)[1].split()[0]) for m in restarts})
    assert pauses == [0.01, 0.02, 0.04]  # doubling, up to the cap
    assert any("times within" in r.getMessage() for r in caplog.records)


def test_sigterm_while_a_worker_starts_stops_it_and_starts_no_other() -> None:
    script = (
        "import sys; from support.worker_targets import supervise_with_a_signal_during_start"
        f" as run; sys.exit(run({free_port()}))"
    )
    # before the fix the parent waited forever for a worker it never signalled
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        check=False, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert done.stdout.split() == ["worker-0"], done.stderr  # worker-1 was not started
    assert done.returncode == 1  # the worker ended by SIGTERM before it could drain


def test_a_worker_that_dies_before_it_serves_stops_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = ServerSettings(host="127.0.0.1", port=free_port(), workers=2)
    with caplog.at_level(logging.INFO, logger=workers.__name__):
        assert workers.supervise(settings, crash_at_start) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("died before it served (exit 1); stopping" in m for m in messages)
    assert not any("restarting" in m for m in messages)  # not restarted: it would fail again
