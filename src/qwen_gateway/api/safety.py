"""Content-safety administration: ``GET /admin/safety`` (what is in force) and
``POST /admin/safety/reload`` (read the configuration again and swap the policies in, as
SIGHUP does), admin credentials only. Requests in flight keep the policies they started with.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from qwen_gateway.api.admin import caller_of
from qwen_gateway.config import ConfigError
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.service.safety import SafetyRuntime

log = logging.getLogger("qwen_gateway.safety")


def safety_router(runtime: SafetyRuntime, check: Any) -> APIRouter:
    router = APIRouter(prefix="/admin/safety", dependencies=[Depends(check)])

    @router.get("")
    async def describe() -> JSONResponse:
        return JSONResponse(runtime.describe())

    @router.post("/reload")
    async def reload(request: Request) -> JSONResponse:
        actor = caller_of(request)
        try:
            await runtime.reload(actor.id, actor.client)
        except ConfigError as exc:
            raise InvalidRequest(
                f"The safety policies were not reloaded (the old ones stay): {exc}",
                code="invalid_config",
            ) from None
        return JSONResponse(runtime.describe())

    return router


def reload_on_sighup(runtime: SafetyRuntime | None) -> Callable[[], None]:
    """SIGHUP reloads the policies (a bad file is logged and the old policies stay); without a
    ``safety:`` section it is logged and ignored (never the default action, which would end
    the server). Returns the function that removes the handler."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        if runtime is None:
            log.warning("SIGHUP: nothing to reload (no safety: section; turning it on takes a "
                        "restart)")  # fmt: skip
            return
        try:
            generation = await runtime.reload("signal")
        except ConfigError as exc:
            log.error("SIGHUP: the safety policies were not reloaded (the old ones stay): %s", exc)
            return
        log.info("SIGHUP: safety policies reloaded (generation %d)", generation)

    def fire() -> None:
        task = loop.create_task(reload())
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, fire)

    def unhook() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return unhook
