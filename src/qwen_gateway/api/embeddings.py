"""``POST /v1/embeddings``: a thin route over the embeddings edge (service/embeddings.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qwen_gateway.api.routes import _body_schema, read_json, record_of, respond, until_disconnect
from qwen_gateway.protocol.embeddings import CreateEmbeddingRequest
from qwen_gateway.service.embeddings import EmbeddingService


def embeddings_router(service: EmbeddingService, check: Any, keepalive: float) -> APIRouter:
    """The route (also served on the app's fast path: see ``GatewayApp.add_hot_route``);
    ``check`` is the authenticate dependency."""
    router = APIRouter(prefix="/v1")

    @router.post("/embeddings", openapi_extra=_body_schema(CreateEmbeddingRequest))
    async def create_embeddings(request: Request) -> Response:
        await check(request)
        raw = await read_json(request)
        result = await until_disconnect(request, service.create(raw, record_of(request)))
        return await respond(request, result, keepalive)

    return router
