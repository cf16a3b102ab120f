"""JSON bytes for anything a client may have sent: orjson, or the standard library's encoder
when a value is beyond orjson's reach (an integer beyond 64 bits, as in a tool's schema)."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON; exact for integers of any size."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson refuses integers beyond 64 bits
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    """The inverse of :func:`dumps`, exact for integers of any size (orjson reads those as
    floats)."""
    return json.loads(data)
