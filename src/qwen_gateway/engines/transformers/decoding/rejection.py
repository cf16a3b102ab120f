"""Where xgrammar refuses a grammar: its own errors, told apart from our bugs by where they
are raised, never by their text.

xgrammar's C++ layer reports a schema, regex or grammar it cannot build as a plain
``RuntimeError`` (through tvm-ffi; ``xgrammar.exception``'s errors subclass it too), with a
log prefix (``[22:48:06] /project/cpp/regex_converter.cc:94: ``) before the reason. Only the
calls that compile a client's schema run inside :func:`xgrammar_refusal`, which turns those
errors into :class:`GrammarRejected`; every other exception (ours included) goes on as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

__all__ = ["GrammarRejected", "xgrammar_refusal"]

_LOG_PREFIX: Final = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class GrammarRejected(Exception):
    """xgrammar refused to compile a client's schema; ``detail`` is its reason."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@contextmanager
def xgrammar_refusal() -> Iterator[None]:
    """Run one xgrammar compile call: its ``RuntimeError`` becomes :class:`GrammarRejected`.

    ``RecursionError`` and ``NotImplementedError`` (builtin subclasses of ``RuntimeError``
    that xgrammar never uses for a refusal) are left alone."""
    try:
        yield
    except (RecursionError, NotImplementedError):
        raise
    except RuntimeError as exc:
        raise GrammarRejected(_LOG_PREFIX.sub("", str(exc)).strip()) from exc
