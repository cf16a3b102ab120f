"""The ``qwen-gateway`` command as a user runs it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from qwen_gateway.cli.main import _bootstrap_notice
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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QWEN_GATEWAY_LIMITS__BACKEND": "redis"}, "'limits.backend' ('redis'): redis.url is"),
        ({"QWEN_GATEWAY_AUTH__TIERS__GOLD__RPM": "0"}, "'auth.tiers.gold.rpm'"),
    ],
)
def test_limit_mistakes_exit_2_naming_the_setting(env: dict[str, str], message: str) -> None:
    done = _run("config", "show", env=env)
    assert done.returncode == 2, done.stdout
    assert "Configuration error" in done.stderr
    assert message in " ".join(done.stderr.split())


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


def test_the_clients_key_variable_breaks_nothing_and_errors_show_no_secrets() -> None:
    key = {"QWEN_GATEWAY_KEY": "sk-qg-EXAMPLEADMINKEY"}
    done = _run("config", "show", env=key)
    assert done.returncode == 0, done.stderr
    assert "EXAMPLEADMINKEY" not in done.stdout + done.stderr
    done = _run("config", "show", env={**key, "QWEN_GATEWAY_REDIS__URLL": "redis://:hunter2@h/0"})
    assert done.returncode == 2
    assert "redis.urll" in done.stderr
    assert "hunter2" not in done.stderr and "EXAMPLEADMINKEY" not in done.stderr


def test_an_expiry_too_far_ahead_is_a_clear_error(tmp_path: Path) -> None:
    done = _run("keys", "create", "--name", "x", "--expires", "99999999999d",
                "--data-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 2
    assert "too far in the future" in done.stderr and "Traceback" not in done.stderr


def test_the_first_admin_key_is_kept_in_a_private_file_even_if_the_engine_fails(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "QWEN_GATEWAY_KEY": "sk-qg-EXAMPLEADMINKEY"}
    args = ["serve", "--model", str(tmp_path / "no-such-model"), "--port", str(free_port()),
            "--data-dir", str(data)]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*CLI, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "engine failed to start" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)  # polling the server's log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    key_file = data / "admin-key"
    secret = key_file.read_text().strip()
    assert secret.startswith("sk-qg-")
    assert secret not in log_path.read_text()  # stderr is not a terminal: only the file's path
    assert str(key_file) in log_path.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "gateway.db").stat().st_mode) == 0o600
    listed = _run("keys", "list", "--json", "--data-dir", str(data), env=env)
    assert listed.returncode == 0, listed.stderr
    assert [k["prefix"] for k in json.loads(listed.stdout)] == [secret[:12] + "…"]


def test_the_first_admin_key_is_printed_only_on_a_terminal(tmp_path: Path) -> None:
    key_file = tmp_path / "admin-key"
    on_tty = _bootstrap_notice("sk-qg-SECRET", key_file, tty=True)
    in_logs = _bootstrap_notice("sk-qg-SECRET", key_file, tty=False)
    assert "export QWEN_GATEWAY_KEY=sk-qg-SECRET" in on_tty and str(key_file) in on_tty
    assert "sk-qg-SECRET" not in in_logs and f"$(cat {key_file})" in in_logs
