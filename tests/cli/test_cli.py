"""The ``qwen-gateway`` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai

from support.server import free_port, running_command

CLI = [sys.executable, "-m", "qwen_gateway.cli.main"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_config_show_prints_effective_config_redacted() -> None:
    done = _run(
        "config", "show", "--json",
        env={"QWEN_GATEWAY_API_KEY": "sk-very-secret", "MAX_CONTEXT_LENGTH": "4096"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["server"]["api_key"] == "**********"
    assert shown["model"]["context_window"] == 4096
    assert "sk-very-secret" not in done.stdout + done.stderr


def test_config_error_exits_2_naming_the_key() -> None:
    done = _run("config", "show", env={"QWEN_GATEWAY_SERVER__PORT": "nope"})
    assert done.returncode == 2
    assert "server.port" in done.stderr


def test_help_lists_the_commands() -> None:
    done = _run("--help")
    assert done.returncode == 0
    for command in ("serve", "init-tiny-model", "config"):
        assert command in done.stdout


def test_init_tiny_model_writes_a_loadable_model(tmp_path: Path) -> None:
    done = _run("init-tiny-model", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names  # fmt: skip


def test_serve_without_arguments_creates_and_serves_the_embedded_model(tmp_path: Path) -> None:
    port = free_port()
    env = {"QWEN_GATEWAY_DATA_DIR": str(tmp_path / "data"), "QWEN_GATEWAY_SERVER__PORT": str(port)}
    with running_command([], port, tmp_path / "serve.log", env=env) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(
            model="qwen2.5-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        log = (tmp_path / "serve.log").read_text()
        assert "Tiny model ready" in log
        assert f"http://127.0.0.1:{port}/v1/chat/completions" in log  # the curl example
    assert (tmp_path / "data" / "tiny-qwen2.5" / "model.safetensors").is_file()


def test_serve_without_auth_off_loopback_is_refused() -> None:
    refused = _run("serve", "--no-auth", "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "Refusing to serve without authentication on 0.0.0.0" in refused.stderr
    assert "auth.allow_unauthenticated_remote" in refused.stderr


def test_serve_without_auth_off_loopback_runs_when_explicitly_allowed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    args = ["--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", str(port)]
    allow = {"QWEN_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED_REMOTE": "true"}
    with running_command(args, port, tmp_path / "log", env=allow) as server:
        assert server.process.poll() is None
