"""Graceful drain on SIGTERM.

1. ``/ready`` answers 503 at once and every new request is refused with 503
   ``server_shutting_down`` (``Retry-After``, ``Connection: close``), for
   ``server.drain_seconds``: time for a load balancer to take this process out of rotation.
   ``/health`` and ``/metrics`` still answer.
2. Then uvicorn's shutdown: the port closes, requests in flight get
   ``server.shutdown_grace_seconds`` to finish; streams still running then end with an
   in-stream ``server_shutting_down`` error (:mod:`qwen_gateway.api.sse`).
3. The app's lifespan closes the services: the usage queue is written out. The process exits 0.

SIGINT (Ctrl-C) skips step 1; a second signal during step 1 skips the rest of it.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from qwen_gateway.api.errors import anthropic_body, anthropic_path

log = logging.getLogger(__name__)

#: what still answers while draining (probes and the scraper)
_STILL_SERVED = frozenset({"/health", "/metrics"})


class DrainState:
    """Whether this process is draining; set by :class:`DrainingServer`, read by
    :class:`DrainGate`."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False


class DrainGate:
    """ASGI wrapper: while draining, /ready is 503 and new requests are refused with 503."""

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.state.draining or scope["type"] != "http" or scope["path"] in _STILL_SERVED:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        message = "The server is shutting down; retry the request on another server."
        error = {
            "message": message,
            "type": "server_error",
            "param": None,
            "code": "server_shutting_down",
        }
        if path == "/ready":
            body = orjson.dumps({"status": "draining", "error": error})
        elif anthropic_path(path):  # Anthropic's clients get Anthropic's envelope
            body = orjson.dumps(anthropic_body(message, 503))
        else:
            body = orjson.dumps({"error": error})
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM first drains for ``drain_seconds`` (see the module
    docstring) before its own graceful shutdown."""

    def __init__(self, config: uvicorn.Config, state: DrainState, drain_seconds: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.state.draining
        self.state.draining = True
        if sig == signal.SIGTERM and first and self.drain_seconds > 0:
            self._drain_until = time.monotonic() + self.drain_seconds
            log.info(
                "SIGTERM: draining for %.1f s (/ready answers 503, new requests are refused)",
                self.drain_seconds,
            )
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self._drain_until = None
            log.info("drained: closing the port; requests in flight may finish")
            self.should_exit = True
        return await super().on_tick(counter)


def serving(app: Any, config_options: dict[str, Any], drain_seconds: float) -> DrainingServer:
    """The server for ``app`` behind a :class:`DrainGate`."""
    state = DrainState()
    config = uvicorn.Config(DrainGate(app, state), **config_options)
    return DrainingServer(config, state, drain_seconds)
