"""The ASGI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from qwen_gateway import __version__
from qwen_gateway.api.errors import install_error_handlers
from qwen_gateway.api.fastpath import GatewayApp
from qwen_gateway.api.middleware import GatewayMiddleware
from qwen_gateway.api.routes import include_routes
from qwen_gateway.container import Container


def create_app(container: Container, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The app; ``on_ready`` runs once the engines have loaded."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await container.start()
        announce: asyncio.Task[None] | None = None
        if on_ready is not None:
            announce = asyncio.create_task(_announce(container, on_ready))
        try:
            yield
        finally:
            if announce is not None:
                announce.cancel()
            await container.aclose()

    app = GatewayApp(
        title="qwen-gateway",
        version=__version__,
        summary="OpenAI-compatible API for Qwen2.5 models",
        lifespan=lifespan,
        # no Swagger UI or ReDoc: both run JS from a CDN in the gateway's origin, where
        # operators paste admin keys; server.docs serves the OpenAPI document only
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if container.settings.server.docs else None,
    )
    install_error_handlers(app)
    include_routes(app, container)
    keepalive = container.settings.server.keepalive_seconds
    app.add_hot_route("/v1/chat/completions", container.service.chat, container.auth, keepalive)
    app.add_hot_route("/v1/completions", container.service.complete, container.auth, keepalive)
    app.add_middleware(
        GatewayMiddleware,
        metrics=container.metrics,
        max_body_bytes=container.settings.server.max_body_bytes,
        on_start=container.request_started,
        on_finish=container.finish,
    )
    return app


async def _announce(container: Container, on_ready: Callable[[], None]) -> None:
    await container.wait_loaded()
    if await container.ready():
        on_ready()
