"""The ASGI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from qwen_gateway import __version__
from qwen_gateway.api.embeddings import embeddings_router
from qwen_gateway.api.errors import install_error_handlers
from qwen_gateway.api.fastpath import GatewayApp
from qwen_gateway.api.messages import messages_router
from qwen_gateway.api.middleware import GatewayMiddleware
from qwen_gateway.api.responses import responses_router
from qwen_gateway.api.routes import authenticated, include_routes
from qwen_gateway.api.safety import reload_on_sighup, safety_router
from qwen_gateway.api.sse import ANTHROPIC, RESPONSES
from qwen_gateway.api.ui import ui_router
from qwen_gateway.container import Container
from qwen_gateway.service.fleet import Fleet


def create_app(container: Container, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The app over the container's services, which its lifespan starts and closes;
    ``on_ready`` runs once the engines have loaded."""
    services = container.services

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await container.start()
        unhook = reload_on_sighup(services.safety)
        announce: asyncio.Task[None] | None = None
        if on_ready is not None:
            announce = asyncio.create_task(_announce(services.fleet, on_ready))
        try:
            yield
        finally:
            if announce is not None:
                announce.cancel()
            unhook()
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
        openapi_url="/openapi.json" if services.settings.server.docs else None,
    )
    install_error_handlers(app)
    include_routes(
        app,
        server=services.settings.server,
        authenticate=services.pipeline.authenticate,
        service=services.completions,
        admin=services.store.admin,
        metrics_source=services.metrics,
        health_check=services.fleet,
        reviews=services.reviews,
        console=services.console,
        responses_storage=services.settings.responses.store,
    )
    app.include_router(
        messages_router(
            services.messages,
            authenticated(services.pipeline.authenticate),
            services.settings.server.keepalive_seconds,
        )
    )
    if services.responses is not None:
        app.include_router(
            responses_router(
                services.responses,
                authenticated(services.pipeline.authenticate),
                services.settings.server.keepalive_seconds,
            )
        )
    if services.safety is not None:
        admin_only = authenticated(services.pipeline.authenticate, admin=True)
        app.include_router(safety_router(services.safety, admin_only))
    settings = services.settings
    if settings.server.ui:
        keyed = settings.auth.enabled or settings.server.api_key is not None
        app.include_router(ui_router(auth=keyed))
    keepalive = services.settings.server.keepalive_seconds
    authenticate = services.pipeline.authenticate
    app.add_hot_route("/v1/chat/completions", services.completions.chat, authenticate, keepalive)
    app.add_hot_route("/v1/completions", services.completions.complete, authenticate, keepalive)
    app.add_hot_route("/v1/messages", services.messages.create, authenticate, keepalive, ANTHROPIC)
    if services.embeddings is not None:
        app.include_router(
            embeddings_router(services.embeddings, authenticated(authenticate), keepalive)
        )
        app.add_hot_route("/v1/embeddings", services.embeddings.create, authenticate, keepalive)
    if services.responses is not None:
        app.add_hot_route("/v1/responses", services.responses.create, authenticate, keepalive,
                          RESPONSES)  # fmt: skip
    app.add_middleware(
        GatewayMiddleware,
        metrics=services.metrics,
        max_body_bytes=services.settings.server.max_body_bytes,
        account=services.pipeline.account,
    )
    return app


async def _announce(fleet: Fleet, on_ready: Callable[[], None]) -> None:
    await fleet.wait_loaded()
    if await fleet.ready():
        on_ready()
