"""Request bodies as JSON, strictly: numbers a request field could take, nothing else.

Python's parser takes integers of any length (and refuses past 4,300 digits with an error of
its own), ``NaN`` and ``Infinity``; a body may hold none of them. Both API edges (the framework
routes and the raw ASGI fast path) parse with :func:`parse_json`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from qwen_gateway.errors import InvalidRequest

_MAX_INT_DIGITS = 100  # far more than any field needs; Python refuses above 4300


class _BadNumber(ValueError):
    """A number in a JSON body that no request field could take."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:32]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise _BadNumber(f"an integer has more than {_MAX_INT_DIGITS} digits")
    return int(text)


def _no_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not a JSON number")


def parse_json(body: bytes) -> Any:
    """``body`` as JSON; :class:`InvalidRequest` (400, ``invalid_json``) when it is not JSON,
    is nested too deeply, or holds a number no field could take."""
    try:
        return json.loads(
            body, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constant
        )
    except (json.JSONDecodeError, UnicodeDecodeError, _BadNumber) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from None
    except RecursionError:
        raise InvalidRequest(
            "The JSON body of your request is nested too deeply.", code="invalid_json"
        ) from None
