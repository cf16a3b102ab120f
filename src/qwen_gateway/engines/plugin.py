"""What an engine kind is to the gateway: a typed config model and an async factory.

Built-in kinds and third-party ones (entry point group ``qwen_gateway.engines``, each entry
naming an :class:`EnginePlugin`) are found and configured the same way (engines.registry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from qwen_gateway.core.types import ModelInfo
from qwen_gateway.engines.base import QUIET, Engine, EngineObserver

DEFAULT_CONTEXT_WINDOW = 131072


@dataclass(frozen=True, slots=True)
class EngineContext:
    """What the gateway gives every engine besides its own config."""

    #: The deployment's name: the model name clients use.
    served_name: str
    #: This replica's index among the deployment's ``replicas`` copies of the engine.
    replica: int = 0
    replicas: int = 1
    #: Where an engine may keep files (logs).
    data_dir: Path = field(default_factory=Path.cwd)
    #: The model to serve when the config names none (the embedded tiny model's directory).
    default_model: str = ""
    #: The embedding model to serve when an ``embed`` deployment names none (the embedded
    #: tiny embedding model's directory).
    default_embedding_model: str = ""
    #: How often an engine that probes something (an upstream) should probe it.
    health_interval: float = 5.0
    observer: EngineObserver = QUIET


class EngineConfig(BaseModel):
    """Base of every engine kind's config model: frozen, and an unknown key is a mistake."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def expected_info(self, ctx: EngineContext) -> ModelInfo:
        """The model card shown while the engine is being built (a loaded model may correct
        its window)."""
        return ModelInfo(id=ctx.served_name, context_window=DEFAULT_CONTEXT_WINDOW,
                         max_output_tokens=8192)  # fmt: skip


C = TypeVar("C", bound=EngineConfig)


@dataclass(frozen=True, slots=True)
class EnginePlugin(Generic[C]):
    """An engine kind: its config model and the factory that builds a started engine."""

    kind: str
    config_model: type[C]
    #: Builds the engine, started (models loaded, children healthy); on failure or
    #: cancellation it releases whatever it had started.
    create: Callable[[C, EngineContext], Awaitable[Engine]]
    #: The deployment settings section holding this kind's options (e.g. ``upstream``), read
    #: before ``options``, which every kind reads.
    section: str | None = None
    #: The config field a replica URL sets (``replicas: [url, ...]``); None: URLs are refused.
    url_field: str | None = None
