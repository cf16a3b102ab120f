"""Running the app under uvicorn: proxy headers, connection timeouts and limits, fd limit.

uvicorn times out only idle keep-alive connections *between* requests. ``GuardedProtocol``
adds the rest: a connection must complete its request line and headers within
``header_timeout_seconds`` (an idle, slowloris or half-sent request is closed), and a request
body may pause at most ``idle_timeout_seconds``. Generating and streaming a response has no
timeout here. Connections beyond ``limit_concurrency`` are closed as they are accepted, so
clients cannot use up the file descriptors: uvloop (libuv) drops connections it cannot accept
without telling anyone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import socket
import sys
from typing import Any

from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from qwen_gateway.api.drain import serving
from qwen_gateway.config import ServerSettings

log = logging.getLogger(__name__)

FD_RESERVE = 256  # descriptors kept for the database, Redis, upstreams, model files, logs
_WARN_EVERY = 10.0  # seconds between two warnings about refused connections


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body-idle timeouts and a connection cap."""

    header_timeout = 30.0
    idle_timeout = 60.0
    max_connections = 2048
    _refused = 0
    _warned_at = float("-inf")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse()
            return
        self._waiting_since = self._last_data = self.loop.time()
        self._watchdog = self.loop.call_later(self.header_timeout, self._check)

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()  # for the next request's headers
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        watchdog = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.cancel()
        super().connection_lost(exc)

    def _check(self) -> None:
        if self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # waiting for a request line and headers
            left, what = self._waiting_since + self.header_timeout - now, "headers"
        elif cycle.more_body and not self.flow.read_paused:  # waiting for the body
            left, what = self._last_data + self.idle_timeout - now, "body"
        else:  # the app is working on the request, or not reading its body yet
            left, what = min(self.header_timeout, self.idle_timeout), ""
        if left <= 0:
            log.debug("closing a connection that sent no complete %s in time", what)
            self.transport.close()
            return
        self._watchdog = self.loop.call_later(left, self._check)

    def _refuse(self) -> None:
        cls = type(self)
        cls._refused += 1
        now = self.loop.time()
        if now - cls._warned_at >= _WARN_EVERY:
            log.warning(
                "closed %d new connection(s): %d connections are open (server.limit_concurrency)",
                cls._refused,
                len(self.connections) - 1,
            )
            cls._refused, cls._warned_at = 0, now
        self.transport.close()


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. an infinite hard limit the kernel caps
            log.warning("could not raise the open-file limit from %s to %s: %s", soft, hard, exc)
        else:
            soft = hard
    log.info("open-file limit: soft %s, hard %s", soft, hard)
    return soft


def uvicorn_options(settings: ServerSettings, fd_limit: int) -> dict[str, Any]:
    """uvicorn.run's keyword arguments for these settings and this open-file limit."""
    limit = settings.limit_concurrency
    if fd_limit != resource.RLIM_INFINITY and limit > fd_limit - FD_RESERVE:
        limit = max(1, fd_limit - FD_RESERVE)
        log.warning(
            "server.limit_concurrency %d lowered to %d to fit the open-file limit %d",
            settings.limit_concurrency, limit, fd_limit,
        )  # fmt: skip
    protocol = type(
        "GatewayHttpProtocol",
        (GuardedProtocol,),
        {
            "header_timeout": settings.header_timeout_seconds,
            "idle_timeout": settings.idle_timeout_seconds,
            "max_connections": limit,
        },
    )
    trusted = settings.trusted_proxies
    tls: dict[str, Any] = {}
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        tls = {"ssl_certfile": str(settings.ssl_certfile), "ssl_keyfile": str(settings.ssl_keyfile)}
    return {
        **tls,
        "host": settings.host,
        "port": settings.port,
        "http": protocol,
        "limit_concurrency": limit + 1,  # uvicorn counts the connection asking, too
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": ",".join(trusted) if trusted else "",
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        "log_config": None,
        "access_log": False,
    }


def run(app: Any, settings: ServerSettings, sockets: list[socket.socket] | None = None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (draining first on SIGTERM: :mod:`.drain`), on
    ``sockets`` when given (a worker of several) or on ``settings.host:port``."""
    server = serving(app, uvicorn_options(settings, raise_fd_limit()), settings.drain_seconds)
    # what is built by now (modules, settings, the app) lives as long as the process: out of
    # the cyclic collector's sight, a full collection under load walks only request objects
    gc.collect()
    gc.freeze()
    try:
        server.run(sockets=sockets)
    except Exception:
        if server.started:
            raise
        log.exception("the server could not start")
        sys.exit(STARTUP_FAILURE)  # not a crash to restart: it would fail the same way again
    if not server.started:
        sys.exit(STARTUP_FAILURE)
