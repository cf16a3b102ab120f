"""An in-process gateway over a registry of scripted deployments (real pipeline, fixed text)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.base import Engine
from qwen_gateway.engines.scripted import scripted_engine
from support.fixtures import InProcess, open_in_process


def scripted(name: str, context_window: int = 32768) -> Engine:
    """A deployment's engine that answers 'from <name>'."""
    return scripted_engine(name, [f"from {name}"], context_window)


@asynccontextmanager
async def routed(
    tmp_path: Path,
    deployments: Sequence[Mapping[str, Any]],
    engines: Mapping[str, Engine | Sequence[Engine]] | None = None,
    *,
    routing: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    **settings: Any,
) -> AsyncIterator[InProcess]:
    """The gateway with these deployments; each gets a scripted engine unless ``engines``
    names its own. ``settings`` are more sections (``auth`` replaces no-auth, ``limits``)."""
    tree: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "auth": {"enabled": False},
        "deployments": [dict(d) for d in deployments],
        "routing": dict(routing or {}),
        **settings,
    }
    settings = load_settings(tree, env={})
    given = dict(engines or {})
    for d in deployments:
        given.setdefault(d["name"], scripted(d["name"]))
    async with open_in_process(Container(settings, engines=given, clock=clock)) as g:
        yield g
