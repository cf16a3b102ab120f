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
import fcntl
import io
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import orjson

ACCESS_LOGGER = "qwen_gateway.access"
NATIVE_LOGGER = "qwen_gateway.native"
#: Characters of a native stderr line kept in its log record.
NATIVE_LINE_CHARS: Final = 300
_NATIVE_READ: Final = 64 * 1024  # longest piece of a line read at once


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``static`` fields (e.g. which worker) go on every line."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **self.static,
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


_LEVEL_STYLE: Final = {
    "DEBUG": "\x1b[2m", "INFO": "\x1b[32m", "WARNING": "\x1b[33m", "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}  # fmt: skip


class ConsoleFormatter(logging.Formatter):
    """One human-readable line per record, for a terminal: time, level, logger, message,
    then the structured fields as ``key=value``. Control characters are escaped, so that no
    field can move the cursor or forge a line. ``static`` fields (a worker's ``worker`` and
    ``pid``) end every line."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = "".join(f" {k}={_plain(v)}" for k, v in (static or {}).items())

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        style = _LEVEL_STYLE.get(record.levelname, "")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            rest = dict(fields)
            message = str(rest.pop("event", rest.pop("message", "")))
            message += "".join(f" {k}={_plain(v)}" for k, v in rest.items())
        else:
            message = record.getMessage()
        message += self.static
        line = (
            f"{when} {style}{record.levelname.lower():<7}\x1b[0m "
            f"\x1b[2m{record.name}\x1b[0m {_escape(message)}"
        )
        exc = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        return f"{line}\n{exc}" if exc else line


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


def _escape(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SharedRotatingFileHandler(logging.Handler):
    """Appends lines to a file, rotated at ``max_bytes`` keeping ``backups`` old files
    (``gateway.log.1`` is the newest), safely from several processes (``--workers``): each write
    and each rotation happens under an exclusive lock on ``<file>.lock``, and a process whose
    file was rotated by another reopens the new one before writing."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__()
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._fd = -1
        self._ino = -1

    def _open(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._ino = os.fstat(self._fd).st_ino

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                if self._fd < 0 or current is None or current.st_ino != self._ino:
                    self._open()  # first write, or another process rotated the file
                    current = os.fstat(self._fd)
                if current.st_size and current.st_size + len(data) > self.max_bytes:
                    self._rotate()
                os.write(self._fd, data)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        except Exception:
            self.handleError(record)

    def _rotate(self) -> None:
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                older = Path(f"{self.path}.{n}")
                if older.exists():
                    os.replace(older, f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.truncate(self.path, 0)
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        super().close()


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


def configure_logging(
    level: str = "info",
    *,
    log_file: Path | None = None,
    max_bytes: int = 50 * 1024 * 1024,
    backups: int = 5,
    console: bool | None = None,
    static: dict[str, Any] | None = None,
    native: bool = True,
) -> None:
    """Logs to stderr (human-readable when ``console``; ``None``: when stderr is a terminal;
    JSON lines otherwise) and, with ``log_file``, as JSON lines to that file, rotated.
    ``native``: take over fd 2 (see the module docstring); false for a process whose children
    inherit fd 2 and log on it themselves (the parent of several workers)."""
    global _listener, _native
    if _listener is not None:
        _listener.stop()
        for previous in _listener.handlers:
            previous.close()  # the log file's descriptor, not leaked on each reconfiguration
    if _native is None and native:
        _native = _NativeStderr()
    stream = _native.stream if _native is not None else sys.stderr
    if console is None:
        console = stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter(static) if console else JsonFormatter(static))
    handlers: list[logging.Handler] = [handler]
    if log_file is not None:
        to_file = SharedRotatingFileHandler(log_file, max_bytes, backups)
        to_file.setFormatter(JsonFormatter(static))
        handlers.append(to_file)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, *handlers)
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
        for previous in _listener.handlers:
            previous.close()  # the log file's descriptor, not leaked on each reconfiguration
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
