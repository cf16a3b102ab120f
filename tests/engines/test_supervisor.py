"""A managed engine process (the vLLM engine's supervisor) with a real OpenAI-compatible child.

The child here is this project's own server on the tiny model, started through the same
supervisor code path that starts ``vllm.entrypoints.openai.api_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.plugin import EngineContext
from qwen_gateway.engines.vllm import VLLMConfig, VLLMEngine, create_engine, vllm_command
from support.fixtures import open_in_process


async def _child_ready(engine: VLLMEngine) -> None:
    """Until the child has loaded its model: this fake child's /health answers before that,
    unlike vLLM's."""
    ready = engine.upstream.config.base_url.removesuffix("/v1") + "/ready"
    async with asyncio.timeout(180), httpx.AsyncClient() as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(ready)).status_code == 200:
                    return
            await asyncio.sleep(0.2)  # polling the child's readiness


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_managed_child_serves_restarts_after_a_crash_and_leaves_no_orphans(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # the child requires the key the engine made for it (vLLM reads VLLM_API_KEY)
    command = (
        "sh", "-c", 'exec "$0" "$@" --api-key "$VLLM_API_KEY"',
        sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--model", str(tiny_model_dir),
        "--served-name", "managed", "--port", "{port}", "--max-batch-size", "4",
        "--data-dir", str(tmp_path / "child-data"),
    )  # fmt: skip
    config = VLLMConfig(
        model=str(tiny_model_dir), command=command, startup_timeout=180,
        env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},  # this checkout's sources
    )  # fmt: skip
    engine = await create_engine(config, EngineContext("managed", data_dir=tmp_path))
    supervisor = engine.supervisor
    assert supervisor is not None
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with open_in_process(Container(settings, engines={"managed": engine})) as g:
        ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        await _child_ready(engine)
        first = await g.client.chat.completions.create(model="managed", **ask)  # type: ignore[call-overload]
        assert first.usage.completion_tokens == 3
        child_models = engine.upstream.config.base_url + "/models"
        async with httpx.AsyncClient() as direct:  # without the key, the child refuses
            assert (await direct.get(child_models)).status_code == 401
        crashed = supervisor.pid
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)
        async with asyncio.timeout(180):  # the supervisor notices, backs off, restarts
            while supervisor.pid == crashed or not supervisor.healthy():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert supervisor.restarts == 1
        await _child_ready(engine)
        again = await g.client.chat.completions.create(model="managed", **ask)  # type: ignore[call-overload]
        assert again.usage.completion_tokens == 3
        child = supervisor.pid
        assert child is not None
    assert _gone(child), "the engine process outlived the gateway"
    assert "qwen-gateway is ready" in (tmp_path / "vllm.log").read_text()  # child's log kept


def test_vllm_command_has_the_qwen_flags() -> None:
    cfg = VLLMConfig(
        max_model_len=32768, gpu_memory_utilization=0.9, tensor_parallel_size=2,
        quantization="awq", python="/opt/vllm/bin/python",
    )  # fmt: skip
    cmd = vllm_command(cfg, "Qwen/Qwen2.5-7B-Instruct", "qwen", 8001)
    assert cmd[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for flag in (
        "--enable-auto-tool-choice", "--tool-call-parser hermes", "--enable-prefix-caching",
        "--max-model-len 32768", "--gpu-memory-utilization 0.9", "--tensor-parallel-size 2",
        "--quantization awq", "--served-model-name qwen", "--port 8001",
    ):  # fmt: skip
        assert flag in joined


async def test_a_child_that_dies_at_start_up_is_a_clear_error(tmp_path: Path) -> None:
    config = VLLMConfig(model="x", command=(sys.executable, "-c", "raise SystemExit(3)"))
    with pytest.raises(Exception, match="exited during start-up"):
        await create_engine(config, EngineContext("x", data_dir=tmp_path))


async def test_the_managed_child_gets_a_key_and_only_an_allowlisted_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = {
        "QWEN_GATEWAY_API_KEY": "sk-gateway-static", "QWEN_GATEWAY_AUTH__JWT__SECRET": "jwt",
        "QWEN_GATEWAY_DATABASE__URL": "postgresql://gw:pw@db/gw", "AWS_SECRET_ACCESS_KEY": "aws",
        "HF_HOME": "/cache/hf", "CUDA_VISIBLE_DEVICES": "1", "LC_ALL": "C.UTF-8",
        "VLLM_LOGGING_LEVEL": "INFO", "TORCH_CUDA_ARCH_LIST": "9.0", "OMP_NUM_THREADS": "4",
    }  # fmt: skip
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    dump = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"
    config = VLLMConfig(
        model="x", command=(sys.executable, "-c", script), env={"HF_TOKEN": "hf-token-from-config"}
    )

    async def child_environment() -> dict[str, str]:
        with pytest.raises(Exception, match="exited during start-up"):  # it only writes its env
            await create_engine(config, EngineContext("x", data_dir=tmp_path))
        env: dict[str, str] = json.loads(dump.read_text())
        return env

    seen = await child_environment()
    for name in ("HF_HOME", "CUDA_VISIBLE_DEVICES", "LC_ALL", "VLLM_LOGGING_LEVEL",
                 "TORCH_CUDA_ARCH_LIST", "OMP_NUM_THREADS", "PATH"):  # fmt: skip
        assert seen.get(name) == os.environ[name], name
    assert seen["HF_TOKEN"] == "hf-token-from-config"
    for name in ("QWEN_GATEWAY_API_KEY", "QWEN_GATEWAY_AUTH__JWT__SECRET",
                 "QWEN_GATEWAY_DATABASE__URL", "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        assert name not in seen, name
    key = seen["VLLM_API_KEY"]
    assert len(key) > 40
    assert (await child_environment())["VLLM_API_KEY"] != key  # a new key at each start
