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
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_gateway.core.types import EngineEvent, GenerationRequest, ModelInfo
from qwen_gateway.engines.base import EngineStats
from qwen_gateway.engines.openai_upstream import OpenAIUpstreamEngine, UpstreamConfig
from qwen_gateway.engines.supervisor import ProcessSupervisor


@dataclass(frozen=True, slots=True)
class VLLMConfig:
    model: str
    served_name: str
    remote_url: str | None = None  # set: use this running vLLM, start nothing
    python: str = sys.executable  # the interpreter of the environment vLLM is installed in
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    quantization: str | None = None  # awq | gptq
    enable_prefix_caching: bool = True
    tool_call_parser: str = "hermes"
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: str = "vllm.log"
    startup_timeout: float = 900.0
    command: tuple[str, ...] = ()  # replaces the whole command line; ``{port}`` is replaced
    upstream: Mapping[str, Any] = field(default_factory=dict)  # UpstreamConfig overrides


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def vllm_command(cfg: VLLMConfig, port: int) -> list[str]:
    cmd = [
        cfg.python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", cfg.model, "--served-model-name", cfg.served_name,
        "--host", cfg.host, "--port", str(port),
        "--enable-auto-tool-choice", "--tool-call-parser", cfg.tool_call_parser,
    ]  # fmt: skip
    if cfg.enable_prefix_caching:
        cmd.append("--enable-prefix-caching")
    if cfg.max_model_len is not None:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.tensor_parallel_size is not None:
        cmd += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.quantization is not None:
        cmd += ["--quantization", cfg.quantization]
    return [*cmd, *cfg.extra_args]


class VLLMEngine:
    """Implements :class:`~qwen_gateway.engines.base.Engine`."""

    def __init__(self, config: VLLMConfig) -> None:
        self.config = config
        self.supervisor: ProcessSupervisor | None = None
        api_key: str | None = None
        if config.remote_url:
            base_url = config.remote_url.rstrip("/")
        else:
            port = config.port or _free_port(config.host)
            base_url = f"http://{config.host}:{port}/v1"
            api_key = "sk-vllm-" + secrets.token_urlsafe(32)
            command = [
                part.replace("{port}", str(port)) for part in config.command
            ] or vllm_command(config, port)
            self.supervisor = ProcessSupervisor(
                command,
                health_url=f"http://{config.host}:{port}/health",
                log_path=Path(config.log_path),
                env={**config.env, "VLLM_API_KEY": api_key},
                startup_timeout=config.startup_timeout,
            )
        options: dict[str, Any] = {
            "base_url": base_url, "served_name": config.served_name, "model": config.served_name,
            **config.upstream,
        }  # fmt: skip
        if api_key is not None:
            options["api_key"] = api_key
        self.upstream = OpenAIUpstreamEngine(UpstreamConfig(**options))

    @property
    def info(self) -> ModelInfo:
        return self.upstream.info

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        return self.upstream.stream(request)

    async def start(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.start()
        await self.upstream.start()

    async def ready(self) -> bool:
        if self.supervisor is not None and not self.supervisor.healthy():
            return False
        return await self.upstream.ready()

    def stats(self) -> EngineStats:
        return self.upstream.stats()

    async def aclose(self) -> None:
        await self.upstream.aclose()
        if self.supervisor is not None:
            await self.supervisor.stop()


def create_engine(options: Mapping[str, Any]) -> VLLMEngine:
    """Entry point ``qwen_gateway.engines: vllm``; options as in VLLMConfig."""
    return VLLMEngine(VLLMConfig(**options))
