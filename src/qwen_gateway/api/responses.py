"""Thin routes of the Responses API: ``/v1/responses`` and the stored responses under it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qwen_gateway.api.routes import _headers, read_json, record_of, respond, until_disconnect
from qwen_gateway.api.sse import RESPONSES
from qwen_gateway.core.jsonbytes import dumps
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.protocol.responses import ResponseCreateParams
from qwen_gateway.service.responses import ResponsesService


def _json(body: Any, request: Request) -> Response:
    return Response(
        dumps(body), media_type="application/json", headers=_headers(record_of(request))
    )


def _refuse_query(request: Request, *names: str) -> None:
    """Query parameters OpenAI takes there that this server does not honour: a 400 naming
    the first one given (``stream=false`` asks for nothing)."""
    for name in names:
        value = request.query_params.get(name)
        if value is not None and not (name == "stream" and value.lower() == "false"):
            raise InvalidRequest(
                f"The query parameter {name!r} is not supported by this server.",
                param=name.removesuffix("[]"),
                code="unsupported_parameter",
            )


def responses_router(
    service: ResponsesService,
    check: Callable[[Request], Awaitable[None]],
    keepalive: float,
) -> APIRouter:
    """``check``: the pipeline's authenticate stage for a request."""
    v1 = APIRouter(prefix="/v1")
    schema = ResponseCreateParams.model_json_schema()
    body = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    @v1.post("/responses", openapi_extra=body)
    async def create_response(request: Request) -> Response:
        """Served by the hot route (api/fastpath.py) unless the app runs under a root path."""
        await check(request)
        raw = await read_json(request)
        result = await until_disconnect(request, service.create(raw, record_of(request)))
        return await respond(request, result, keepalive, RESPONSES)

    @v1.get("/responses/{response_id}")
    async def retrieve_response(response_id: str, request: Request) -> Response:
        await check(request)
        _refuse_query(request, "stream", "include", "include[]", "starting_after")
        return _json(await service.retrieve(response_id, record_of(request)), request)

    @v1.delete("/responses/{response_id}")
    async def delete_response(response_id: str, request: Request) -> Response:
        await check(request)
        return _json(await service.delete(response_id, record_of(request)), request)

    @v1.post("/responses/{response_id}/cancel")
    async def cancel_response(response_id: str, request: Request) -> Response:
        await check(request)
        return _json(await service.cancel(response_id, record_of(request)), request)

    @v1.get("/responses/{response_id}/input_items")
    async def list_input_items(
        response_id: str,
        request: Request,
        limit: int = 20,
        order: str = "desc",
        after: str | None = None,
    ) -> Response:
        await check(request)
        _refuse_query(request, "include", "include[]", "before")
        page = await service.input_items(
            response_id, record_of(request), limit=limit, order=order, after=after
        )
        return _json(page, request)

    return v1
