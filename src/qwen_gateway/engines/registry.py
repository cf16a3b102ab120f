"""Engine kinds -> plug-ins, found through the ``qwen_gateway.engines`` entry point group,
and a deployment's engine settings validated against the kind's config model.

Built-in kinds are entry points too (listed here, so that they need no installed metadata)
and are loaded by the same code, lazily: a gateway that never serves the in-process engine
never imports torch. A built-in kind cannot be replaced by an installed plug-in.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import ValidationError

from qwen_gateway.config import ConfigError
from qwen_gateway.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineEvent,
    GenerationRequest,
    ModelInfo,
)
from qwen_gateway.engines.base import UNREADY, Engine, EngineHealth
from qwen_gateway.engines.plugin import EngineConfig, EngineContext, EnginePlugin
from qwen_gateway.errors import EngineUnavailable

log = logging.getLogger(__name__)

GROUP = "qwen_gateway.engines"
_BUILTIN = {
    "transformers": "qwen_gateway.engines.transformers.engine:PLUGIN",
    "scripted": "qwen_gateway.engines.scripted:PLUGIN",
    "openai": "qwen_gateway.engines.openai_upstream:PLUGIN",
    "vllm": "qwen_gateway.engines.vllm:PLUGIN",
}
#: Settings of a deployment (besides its kind's section and ``options``) that an engine
#: kind reads when its config model has a field of that name.
ENGINE_FIELDS = (
    "model", "context_window", "max_output_tokens", "device", "dtype", "max_batch_size",
    "max_waiting", "task", "supports_dimensions", "max_embedding_tokens",
)  # fmt: skip


def _entry_points() -> list[EntryPoint]:
    builtin = [EntryPoint(name, target, GROUP) for name, target in _BUILTIN.items()]
    return builtin + [ep for ep in entry_points(group=GROUP) if ep.name not in _BUILTIN]


def find_plugin(kind: str, key: str = "engine") -> EnginePlugin[Any]:
    """The plug-in of engine ``kind``; a :class:`ConfigError` naming ``key`` when there is
    none, or when it cannot be loaded."""
    available = _entry_points()
    for ep in available:
        if ep.name != kind:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party package: the operator's to fix
            log.exception("loading the engine plug-in %r (%s) failed", kind, ep.value)
            raise ConfigError(f"Invalid config value for '{key}' ({kind!r}): its plug-in "
                              f"{ep.value} cannot be loaded ({type(exc).__name__})") from exc  # fmt: skip
        if not isinstance(plugin, EnginePlugin) or plugin.kind != kind:
            raise ConfigError(f"Invalid config value for '{key}' ({kind!r}): {ep.value} is "
                              f"not an EnginePlugin of kind {kind!r}")  # fmt: skip
        return plugin
    known = ", ".join(sorted({ep.name for ep in available}))
    raise ConfigError(
        f"Invalid config value for '{key}' ({kind!r}): Unknown engine kind {kind!r}; "
        f"known kinds: {known}."
    )


def configure(
    kind: str, settings: Mapping[str, Any], key: str, urls: Sequence[str] = ()
) -> tuple[EnginePlugin[Any], list[EngineConfig]]:
    """The plug-in of ``kind`` and its validated config: one per replica URL in ``urls``, or
    one for every replica. ``settings`` is the deployment's settings as a mapping, ``key``
    where they are (``deployments.0``, ``model``): errors name the key at fault."""
    plugin = find_plugin(kind, f"{key}.engine")
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}  # config field -> the settings key it came from
    declared = plugin.config_model.model_fields
    if settings.get("task") not in (None, "generate") and "task" not in declared:
        raise ConfigError(f"Invalid config value for '{key}.task' ({settings['task']!r}): "
                          f"engine {kind!r} cannot embed")  # fmt: skip
    for name in ENGINE_FIELDS:
        if name in declared and settings.get(name) is not None:
            raw[name], origin[name] = settings[name], f"{key}.{name}"
    sections = [plugin.section] if plugin.section else []
    for section in [*sections, "options"]:
        for name, value in (settings.get(section) or {}).items():
            if value is not None:
                raw[name], origin[name] = value, f"{key}.{section}.{name}"
    home = f"{key}.{plugin.section or 'options'}"
    if not urls:
        return plugin, [_validate(plugin, raw, origin, home)]
    if plugin.url_field is None:
        raise ConfigError(f"Invalid config value for '{key}.replicas' (value not shown): "
                          f"engine {kind!r} takes no replica URLs")  # fmt: skip
    configs = []
    for j, url in enumerate(urls):
        here = {**origin, plugin.url_field: f"{key}.replicas.{j}"}
        configs.append(_validate(plugin, {**raw, plugin.url_field: url}, here, home))
    return plugin, configs


def _validate(
    plugin: EnginePlugin[Any], raw: Mapping[str, Any], origin: Mapping[str, str], home: str
) -> EngineConfig:
    try:
        config: EngineConfig = plugin.config_model.model_validate(raw)
        return config
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"]]
        head = loc[0] if loc else ""
        path = ".".join([origin.get(head, f"{home}.{head}"), *loc[1:]])
        value = err["input"]
        # only plain numbers are shown: any text may be a credential or a URL holding one
        shown = repr(value) if isinstance(value, bool | int | float) else "value not shown"
        raise ConfigError(f"Invalid config value for '{path}' ({shown}): {err['msg']}") from None


class PendingEngine:
    """A replica's engine until it is built: its expected model card, and a 503 "still
    loading" for every request. The container builds it (``build``) in the background and
    puts the result in its place."""

    def __init__(self, plugin: EnginePlugin[Any], config: EngineConfig, ctx: EngineContext):
        self.plugin = plugin
        self.config = config
        self.ctx = ctx
        self._info = config.expected_info(ctx)

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        raise EngineUnavailable("The model is still loading.", headers={"Retry-After": "5"})
        yield  # pragma: no cover - makes this an async generator

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        raise EngineUnavailable("The model is still loading.", headers={"Retry-After": "5"})

    async def health(self) -> EngineHealth:
        return UNREADY

    async def aclose(self) -> None:
        return None

    async def build(self) -> Engine:
        """The started engine (seconds to minutes: models load, children start)."""
        return await self.plugin.create(self.config, self.ctx)
