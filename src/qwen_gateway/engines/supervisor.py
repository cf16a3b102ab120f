"""Runs an engine server as a child process: health wait, log file, restart on crash, clean stop.

The child gets its own process group, so stopping it also stops whatever it started (vLLM
spawns workers); nothing is left behind when the gateway exits. It inherits only an allowlist of
the gateway's environment (see :func:`child_environment`), never the gateway's own secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from qwen_gateway.errors import EngineUnavailable

log = logging.getLogger(__name__)

#: What the child inherits: the basics, and the GPU, Hugging Face and PyTorch/vLLM settings.
INHERITED = frozenset({"PATH", "HOME", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "XDG_CACHE_HOME"})
INHERITED_PREFIXES = (
    "LC_", "CUDA_", "NVIDIA_", "HF_", "VLLM_", "TORCH", "PYTORCH_", "OMP_", "NCCL_", "TRITON_",
)  # fmt: skip


def child_environment(
    extra: Mapping[str, str] | None = None, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The allowlisted part of ``parent`` (the gateway's environment), plus ``extra``."""
    parent = os.environ if parent is None else parent
    kept = {k: v for k, v in parent.items() if k in INHERITED or k.startswith(INHERITED_PREFIXES)}
    return {**kept, **(extra or {})}


class ProcessSupervisor:
    def __init__(
        self,
        command: Sequence[str],
        *,
        health_url: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 600.0,
        restart_backoff: float = 1.0,
        max_restarts: int = 5,
        stop_grace: float = 20.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.command = list(command)
        self.health_url = health_url
        self.log_path = log_path
        self.env = child_environment(env)
        self.startup_timeout = startup_timeout
        self.restart_backoff = restart_backoff
        self.max_restarts = max_restarts
        self.stop_grace = stop_grace
        self.progress = progress or (lambda message: log.info(message))
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._healthy = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> None:
        """Start the child and wait until its health URL answers 200."""
        self._spawn()
        await self._wait_healthy()
        self._watch = asyncio.create_task(self._watch_loop())

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: stop() reaches its children
            )
        self._healthy.clear()
        self.progress(f"started {self.command[0]} (pid {self.process.pid}); log: {self.log_path}")

    async def _wait_healthy(self) -> None:
        started = time.monotonic()
        last_report = started
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                if not self.alive():
                    raise EngineUnavailable(
                        f"The engine process exited during start-up; see {self.log_path}."
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_url)).status_code == 200:
                        self._healthy.set()
                        self.progress(f"engine healthy after {time.monotonic() - started:.0f}s")
                        return
                now = time.monotonic()
                if now - started > self.startup_timeout:
                    await self.stop()
                    raise EngineUnavailable(
                        f"The engine was not healthy within {self.startup_timeout:.0f}s; "
                        f"see {self.log_path}."
                    )
                if now - last_report >= 10:
                    last_report = now
                    self.progress(f"waiting for the engine ... {now - started:.0f}s")
                await asyncio.sleep(0.5)  # polling the child's health endpoint

    async def _watch_loop(self) -> None:
        while not self._stopping:
            process = self.process
            assert process is not None
            code = await asyncio.to_thread(process.wait)
            if self._stopping:
                return
            self._healthy.clear()
            if self.restarts >= self.max_restarts:
                log.error("engine process exited (code %s); no restarts left", code)
                return
            delay = self.restart_backoff * 2**self.restarts
            self.restarts += 1
            log.warning("engine process exited (code %s); restart %d in %.1fs",
                        code, self.restarts, delay)  # fmt: skip
            await asyncio.sleep(delay)
            if self._stopping:
                return
            self._spawn()
            try:
                await self._wait_healthy()
            except EngineUnavailable:
                log.exception("engine restart failed")

    def healthy(self) -> bool:
        return self._healthy.is_set() and self.alive()

    async def stop(self) -> None:
        """SIGTERM the child's process group, then SIGKILL after the grace period."""
        self._stopping = True
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), self.stop_grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait)
        if process is not None:  # whatever the child left in its group goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
