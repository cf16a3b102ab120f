"""Structured JSON logs. Access lines carry metadata only, never prompt or output text.

Records are formatted and written by a background thread (a queue handler in front), so a
request pays only for putting its record on the queue.

Native libraries (xgrammar's C++ warnings, which quote client schema text) write straight to
file descriptor 2. :func:`configure_logging` makes fd 2 a pipe whose lines are logged on
``qwen_gateway.native`` (warning level, truncated), so every line of stderr is a JSON log line
and client text cannot forge one; Python's own stderr moves to a copy of the original fd 2.
"""

from __future__ import annotations

import atexit
import io
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from typing import Any, Final

import orjson

ACCESS_LOGGER = "qwen_gateway.access"
NATIVE_LOGGER = "qwen_gateway.native"
#: Characters of a native stderr line kept in its log record.
NATIVE_LINE_CHARS: Final = 300
_NATIVE_READ: Final = 64 * 1024  # longest piece of a line read at once


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class _QueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are; only tracebacks become text here."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.args:  # resolve %-style arguments while they are still what they were
            record.msg = record.getMessage()
            record.args = None
        return record


class _NativeStderr:
    """fd 2 as a pipe read by a thread that logs each line (see the module docstring)."""

    def __init__(self) -> None:
        sys.stderr.flush()
        #: The original stderr, where Python writes from now on (sys.stderr, log handlers).
        self.stream = io.TextIOWrapper(
            open(os.dup(2), "wb", buffering=0),  # noqa: SIM115 - lives as long as the process
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=True,
            write_through=True,
        )
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        sys.stderr = self.stream
        threading.Thread(
            target=self._pump, args=(read_fd,), name="native-stderr", daemon=True
        ).start()

    @staticmethod
    def _pump(read_fd: int) -> None:
        log = logging.getLogger(NATIVE_LOGGER)
        rest_of_line = False  # the line being read was logged already (it was too long)
        with open(read_fd, "rb", buffering=0) as pipe, io.BufferedReader(pipe) as lines:
            while piece := lines.readline(_NATIVE_READ):
                whole = piece.endswith(b"\n")
                text = piece.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
                if not rest_of_line and text.strip():
                    log.warning("%s", text[:NATIVE_LINE_CHARS])
                rest_of_line = not whole


_listener: logging.handlers.QueueListener | None = None
_native: _NativeStderr | None = None


def configure_logging(level: str = "info") -> None:
    global _listener, _native
    if _listener is not None:
        _listener.stop()
    if _native is None:
        _native = _NativeStderr()
    handler = logging.StreamHandler(_native.stream)
    handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    atexit.register(flush_logs)  # writes what is queued before the process ends
    # the JSON lines show no thread or process: records need not look them up, every time
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [_QueueHandler(records)]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def flush_logs() -> None:
    """Write every queued record now (before the process ends)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


_access = logging.getLogger(ACCESS_LOGGER)


def access_log(fields: dict[str, Any]) -> None:
    """One access line. The record is made directly: ``Logger.info`` would also look up the
    caller's file and line by walking the stack, which no access line shows."""
    if _access.isEnabledFor(logging.INFO):
        extra = {"fields": {"event": "access", **fields}}
        _access.handle(
            _access.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "access", (), None,
                               extra=extra)
        )  # fmt: skip
