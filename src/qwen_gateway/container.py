"""The composition root: the only module that knows which concrete classes are used."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from qwen_gateway.config import Settings
from qwen_gateway.core.normalize import RequestLimits
from qwen_gateway.engines.base import Engine
from qwen_gateway.engines.registry import engine_factory
from qwen_gateway.observability.metrics import Metrics
from qwen_gateway.service.completions import CompletionService

log = logging.getLogger(__name__)


def _engine_options(settings: Settings) -> dict[str, Any]:
    """The options the configured engine kind's factory takes."""
    m = settings.model
    if m.engine == "openai":
        up = m.upstream
        return {
            "base_url": up.base_url,
            "served_name": settings.served_model_name,
            "model": up.model or m.model,
            "api_key": up.api_key.get_secret_value() if up.api_key else None,
            "connect_timeout": up.connect_timeout,
            "first_token_timeout": up.first_token_timeout,
            "idle_timeout": up.idle_timeout,
            "total_timeout": up.total_timeout,
            "max_retries": up.max_retries,
            "context_window": m.context_window or 131072,
            "max_output_tokens": m.max_output_tokens,
        }
    if m.engine == "vllm":
        v = m.vllm
        options: dict[str, Any] = {
            "model": settings.model_path,
            "served_name": settings.served_model_name,
            "remote_url": v.remote_url,
            "port": v.port,
            "max_model_len": v.max_model_len or m.context_window,
            "gpu_memory_utilization": v.gpu_memory_utilization,
            "tensor_parallel_size": v.tensor_parallel_size,
            "quantization": v.quantization,
            "enable_prefix_caching": v.enable_prefix_caching,
            "extra_args": tuple(v.extra_args),
            "env": dict(v.env),
            "log_path": str(settings.data_dir / "vllm.log"),
            "startup_timeout": v.startup_timeout,
            "upstream": {"max_output_tokens": m.max_output_tokens},
        }
        if v.python:
            options["python"] = v.python
        return options
    return {
        "model": settings.model_path,
        "served_name": settings.served_model_name,
        "device": m.device,
        "dtype": m.dtype,
        "max_batch_size": m.max_batch_size,
        "max_waiting": m.max_waiting,
        "context_window": m.context_window,
        "max_output_tokens": m.max_output_tokens,
    }


def build_engine(settings: Settings) -> Engine:
    return engine_factory(settings.model.engine)(_engine_options(settings))


class Container:
    """Everything one gateway process needs, built from Settings."""

    def __init__(self, settings: Settings, engines: Mapping[str, Engine] | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        if engines is None:
            engines = {settings.served_model_name: build_engine(settings)}
        self.engines = dict(engines)
        self.service = CompletionService(
            self.engines,
            RequestLimits(
                max_output_tokens=settings.model.max_output_tokens, max_n=settings.model.max_n
            ),
        )
        self.metrics.watch_engines(self._engine_stats)
        self._loading: asyncio.Task[None] | None = None
        self.load_error: BaseException | None = None

    def _engine_stats(self) -> Iterable[tuple[str, Mapping[str, float]]]:
        for name, engine in self.engines.items():
            yield name, {k: float(v) for k, v in dataclasses.asdict(engine.stats()).items()}

    async def start(self) -> None:
        """Begin loading the engines; /ready answers 503 until they are loaded."""
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            await asyncio.gather(*(e.start() for e in self.engines.values()))
        except Exception as exc:
            self.load_error = exc
            log.error("engine failed to start", exc_info=exc)

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def ready(self) -> bool:
        if self._loading is None or not self._loading.done() or self.load_error is not None:
            return False
        results = await asyncio.gather(*(e.ready() for e in self.engines.values()))
        return all(results)

    async def aclose(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await asyncio.gather(*(e.aclose() for e in self.engines.values()), return_exceptions=True)
