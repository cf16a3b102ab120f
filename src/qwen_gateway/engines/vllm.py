"""The vLLM engine: a remote vLLM URL, or a managed ``vllm.entrypoints.openai.api_server`` child.

Requests are relayed by the OpenAI-upstream engine; the managed child is started with
Qwen-right flags (hermes tool parser, prefix caching) and supervised (health wait, log file,
restart with backoff on crash, clean stop of its whole process group). It listens on loopback
behind a random API key made at each gateway start, which only the gateway knows; the child gets
it in ``VLLM_API_KEY`` (vLLM's equivalent of ``--api-key``), as a command line is visible to
every local user.
"""

from __future__ import annotations

import secrets
import socket
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from qwen_gateway.core.types import EngineEvent, GenerationRequest, ModelInfo
from qwen_gateway.engines.base import UNREADY, EngineHealth
from qwen_gateway.engines.openai_upstream import OpenAIUpstreamEngine, UpstreamConfig
from qwen_gateway.engines.plugin import (
    DEFAULT_CONTEXT_WINDOW,
    EngineConfig,
    EngineContext,
    EnginePlugin,
)
from qwen_gateway.engines.supervisor import ProcessSupervisor


class VLLMConfig(EngineConfig):
    """An ``engine: vllm`` deployment: its ``vllm`` section, with the deployment's ``model``,
    ``context_window`` and ``max_output_tokens``."""

    model: str | None = None  # None: the gateway's default model (the embedded tiny one)
    remote_url: str | None = None  # set: use this running vLLM, start nothing
    python: str | None = None  # the interpreter of the environment vLLM is installed in
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)  # 0: pick a free port
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    quantization: Literal["awq", "gptq"] | None = None
    enable_prefix_caching: bool = True
    tool_call_parser: str = "hermes"
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout: float = Field(default=900.0, gt=0)
    command: tuple[str, ...] = ()  # replaces the whole command line; ``{port}`` is replaced
    context_window: int | None = Field(default=None, ge=16)
    max_output_tokens: int = Field(default=8192, ge=1)

    @property
    def window(self) -> int:
        """The context window the child serves."""
        return self.max_model_len or self.context_window or DEFAULT_CONTEXT_WINDOW

    def expected_info(self, ctx: EngineContext) -> ModelInfo:
        return ModelInfo(
            id=ctx.served_name, context_window=self.window,
            max_output_tokens=self.max_output_tokens, owned_by="upstream",
            created=int(time.time()), supports_logprobs=True, supports_echo=True,
        )  # fmt: skip


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def vllm_command(cfg: VLLMConfig, model: str, served_name: str, port: int) -> list[str]:
    cmd = [
        cfg.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--served-model-name", served_name,
        "--host", cfg.host, "--port", str(port),
        "--enable-auto-tool-choice", "--tool-call-parser", cfg.tool_call_parser,
    ]  # fmt: skip
    if cfg.enable_prefix_caching:
        cmd.append("--enable-prefix-caching")
    max_model_len = cfg.max_model_len or cfg.context_window
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    if cfg.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.tensor_parallel_size is not None:
        cmd += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.quantization is not None:
        cmd += ["--quantization", cfg.quantization]
    return [*cmd, *cfg.extra_args]


def log_path(ctx: EngineContext) -> Path:
    """The managed child's log: ``vllm.log``, or one per replica."""
    if ctx.replicas == 1:
        return ctx.data_dir / "vllm.log"
    return ctx.data_dir / f"vllm-{ctx.served_name}-{ctx.replica}.log"


class VLLMEngine:
    """Implements :class:`~qwen_gateway.engines.base.Engine`: the upstream engine over the
    vLLM server, and the supervisor of its process when the gateway manages it."""

    def __init__(self, upstream: OpenAIUpstreamEngine, supervisor: ProcessSupervisor | None):
        self.upstream = upstream
        self.supervisor = supervisor

    @property
    def info(self) -> ModelInfo:
        return self.upstream.info

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        return self.upstream.stream(request)

    async def health(self) -> EngineHealth:
        if self.supervisor is not None and not self.supervisor.healthy():
            return UNREADY
        return await self.upstream.health()

    async def aclose(self) -> None:
        await self.upstream.aclose()
        if self.supervisor is not None:
            await self.supervisor.stop()


async def create_engine(cfg: VLLMConfig, ctx: EngineContext) -> VLLMEngine:
    """The engine over ``remote_url``, or over a child started here and healthy."""
    supervisor: ProcessSupervisor | None = None
    api_key: SecretStr | None = None
    if cfg.remote_url:
        base_url = cfg.remote_url.rstrip("/")
    else:
        port = cfg.port or _free_port(cfg.host)
        base_url = f"http://{cfg.host}:{port}/v1"
        api_key = SecretStr("sk-vllm-" + secrets.token_urlsafe(32))
        model = cfg.model or ctx.default_model
        command = [part.replace("{port}", str(port)) for part in cfg.command] or vllm_command(
            cfg, model, ctx.served_name, port
        )
        supervisor = ProcessSupervisor(
            command,
            health_url=f"http://{cfg.host}:{port}/health",
            log_path=log_path(ctx),
            env={**cfg.env, "VLLM_API_KEY": api_key.get_secret_value()},
            startup_timeout=cfg.startup_timeout,
        )
    upstream_config = UpstreamConfig(
        base_url=base_url, model=ctx.served_name, api_key=api_key,
        context_window=cfg.window, max_output_tokens=cfg.max_output_tokens,
        logprobs=True, echo=True,  # vLLM serves both, for chat and completions
    )  # fmt: skip
    try:
        if supervisor is not None:
            await supervisor.start()
        upstream = await OpenAIUpstreamEngine.open(
            upstream_config, ctx.served_name, health_interval=ctx.health_interval,
            observer=ctx.observer,
        )  # fmt: skip
    except BaseException:
        if supervisor is not None:
            await supervisor.stop()
        raise
    return VLLMEngine(upstream, supervisor)


PLUGIN = EnginePlugin("vllm", VLLMConfig, create_engine, section="vllm", url_field="remote_url")
