"""Engine kinds -> factories, found through the ``qwen_gateway.engines`` entry point group.

Built-in engines register the same way as third-party ones and are imported lazily, so a
gateway that never serves the in-process engine never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, cast

from qwen_gateway.engines.base import Engine
from qwen_gateway.errors import InvalidRequest

EngineFactory = Callable[[Mapping[str, Any]], Engine]

_BUILTIN = {
    "transformers": "qwen_gateway.engines.transformers.engine:create_engine",
    "scripted": "qwen_gateway.engines.scripted:create_engine",
    "openai": "qwen_gateway.engines.openai_upstream:create_engine",
    "vllm": "qwen_gateway.engines.vllm:create_engine",
}


def _load(target: str) -> EngineFactory:
    module, _, attr = target.partition(":")
    return cast(EngineFactory, getattr(importlib.import_module(module), attr))


def engine_factory(kind: str) -> EngineFactory:
    for ep in entry_points(group="qwen_gateway.engines"):
        if ep.name == kind:
            return cast(EngineFactory, ep.load())
    if kind in _BUILTIN:
        return _load(_BUILTIN[kind])
    known = sorted({ep.name for ep in entry_points(group="qwen_gateway.engines")} | set(_BUILTIN))
    raise InvalidRequest(f"Unknown engine kind {kind!r}; known kinds: {', '.join(known)}.")
