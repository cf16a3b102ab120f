"""A real ``qwen-gateway serve`` process on 127.0.0.1, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, base_url: str, log_path: Path, process: subprocess.Popen[bytes]) -> None:
        self.base_url = base_url
        self.log_path = log_path
        self.process = process

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()


@contextmanager
def running_server(
    model_dir: Path,
    log_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """``serve`` for the given model directory, on a free port."""
    port = free_port()
    args = [
        "--model", str(model_dir), "--served-name", "qwen2.5-tiny",
        "--port", str(port), "--max-batch-size", "32", *extra,
    ]  # fmt: skip
    with running_command(args, port, log_path, env=env) as server:
        yield server


@contextmanager
def running_command(
    serve_args: list[str],
    port: int,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    startup_timeout: float = 180.0,
    auth: bool = False,
    tls_ca: Path | None = None,
) -> Iterator[Server]:
    """Run ``qwen-gateway serve *serve_args`` until /ready answers 200, stop it afterwards.

    Without ``auth`` the server runs with ``--no-auth``; its data directory (database) is
    next to the log unless the environment names one.
    """
    cmd = [sys.executable, "-m", "qwen_gateway.cli.main", "serve", *serve_args]
    if not auth:
        cmd.append("--no-auth")
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("QWEN_GATEWAY_DATA_DIR", str(log_path.with_suffix(".data")))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    scheme = "http" if tls_ca is None else "https"  # https: verified against ``tls_ca``
    server = Server(f"{scheme}://127.0.0.1:{port}", log_path, proc)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
            try:
                verify: ssl.SSLContext | bool = True
                if tls_ca is not None:
                    verify = ssl.create_default_context(cafile=tls_ca)
                ready = httpx.get(server.base_url + "/ready", timeout=2, verify=verify)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in time:\n{log_path.read_text()}")
            time.sleep(0.2)  # polling for readiness, not synchronising test steps
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
