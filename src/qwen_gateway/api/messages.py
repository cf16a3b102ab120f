"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API.

Thin routes like the chat routes: authenticate (``x-api-key`` or ``Authorization: Bearer``),
read the body, call the service raced against the client leaving, answer JSON or an SSE
stream framed as Anthropic's (``event:`` lines). ``anthropic-version`` and ``anthropic-beta``
headers are accepted and not needed. Errors on these paths take Anthropic's shape
(``api/errors.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qwen_gateway.api.routes import read_json, record_of, respond, until_disconnect
from qwen_gateway.api.sse import ANTHROPIC
from qwen_gateway.protocol.messages import MessageCountTokensParams, MessageCreateParams
from qwen_gateway.service.messages import MessagesService


def _body(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def messages_router(service: MessagesService, check: Any, keepalive: float) -> APIRouter:
    """``check``: the authenticate dependency of the API routes."""
    router = APIRouter(prefix="/v1")

    @router.post("/messages", openapi_extra=_body(MessageCreateParams))
    async def create_message(request: Request) -> Response:
        await check(request)
        raw = await read_json(request)
        result = await until_disconnect(request, service.create(raw, record_of(request)))
        return await respond(request, result, keepalive, ANTHROPIC)

    @router.post("/messages/count_tokens", openapi_extra=_body(MessageCountTokensParams))
    async def count_tokens(request: Request) -> Response:
        await check(request)
        raw = await read_json(request)
        result = await service.count_tokens(raw, record_of(request))
        return await respond(request, dict(result), keepalive)

    return router
