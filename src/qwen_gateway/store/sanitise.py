"""One sanitiser for every string the store writes, applied by the repositories.

PostgreSQL refuses NUL in text (one such value fails its whole statement); control, C1 and
bidi-override characters forge lines in terminals, logs and CSV exports; lone surrogates
cannot be encoded; and a value longer than its column fails the statement on PostgreSQL.
Unsafe characters are escaped as visible text (``\\x00``, ``\\u202e``), then the value is cut
to its column's length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON
from sqlalchemy.orm import DeclarativeBase

# C0, DEL, C1, the bidi controls (Arabic letter mark, LRM/RLM, embeddings, overrides,
# isolates) and the surrogates
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean_text(value: str, limit: int | None = None) -> str:
    """``value`` with unsafe characters escaped, at most ``limit`` characters long."""
    value = _UNSAFE.sub(_escape, value)
    return value if limit is None else value[:limit]


def clean_json(value: Any) -> Any:
    """A JSON value with every string in it (keys too) cleaned."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def clean_row(table: type[DeclarativeBase], row: Mapping[str, Any]) -> dict[str, Any]:
    """A row for ``table`` with its text cleaned and cut to each column's length."""
    columns = table.__table__.columns
    out: dict[str, Any] = {}
    for name, value in row.items():
        kind = columns[name].type
        if isinstance(value, str):
            out[name] = clean_text(value, getattr(kind, "length", None))
        elif isinstance(kind, JSON):
            out[name] = clean_json(value)
        else:
            out[name] = value
    return out
