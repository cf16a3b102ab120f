"""Structured JSON logs. Access lines carry metadata only, never prompt or output text.

Records are formatted and written by a background thread (a queue handler in front), so a
request pays only for putting its record on the queue.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

import orjson

ACCESS_LOGGER = "qwen_gateway.access"


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


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str = "info") -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    atexit.register(flush_logs)  # writes what is queued before the process ends
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


def access_log(fields: dict[str, Any]) -> None:
    logging.getLogger(ACCESS_LOGGER).info("access", extra={"fields": {"event": "access", **fields}})
