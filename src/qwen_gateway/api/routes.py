"""Thin routes: parse the body, call the service, hand results to JSON or SSE."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncGenerator, Awaitable
from contextlib import suppress
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from qwen_gateway.api.admin import admin_router
from qwen_gateway.api.sse import EventStreamResponse
from qwen_gateway.container import Container
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ModelInfo
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.observability.metrics import CONTENT_TYPE
from qwen_gateway.policy.auth import require_admin
from qwen_gateway.protocol.chat import ChatCompletionRequest
from qwen_gateway.protocol.common import Model
from qwen_gateway.protocol.completions import CompletionRequest

T = TypeVar("T")
ROUTE_HEADER = "x-qwen-gateway-route"
_HEADER_UNSAFE = re.compile(r"[^\x20-\x7e]")  # the route names operator and upstream strings


def record_of(request: Request) -> RequestRecord:
    state = request.scope.setdefault("state", {})
    record = state.get("record")
    if not isinstance(record, RequestRecord):
        record = state["record"] = RequestRecord("req_internal")
    return record


def authenticated(container: Container, *, admin: bool = False) -> Any:
    """A dependency: who is calling (key, JWT or static key), noted on the request record."""
    auth = container.auth

    async def check(request: Request) -> None:
        client = request.client.host if request.client is not None else "unknown"
        principal = await auth.authenticate(
            request.headers.get("authorization"),
            set(request.query_params.keys()),
            client,
            request.url.path,
        )
        if admin:
            require_admin(principal)
        record_of(request).principal = principal

    return check


class _BadNumber(ValueError):
    """A number in a JSON body that no request field could take."""


_MAX_INT_DIGITS = 100  # far more than any field needs; Python refuses above 4300


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:32]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise _BadNumber(f"an integer has more than {_MAX_INT_DIGITS} digits")
    return int(text)


def _no_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not a JSON number")


async def read_json(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise InvalidRequest("Content-Type must be application/json.", code="invalid_content_type")
    body = await request.body()
    try:
        return json.loads(
            body, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constant
        )
    except (json.JSONDecodeError, UnicodeDecodeError, _BadNumber) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from None
    except RecursionError:
        raise InvalidRequest(
            "The JSON body of your request is nested too deeply.", code="invalid_json"
        ) from None


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it (aborting generation)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            record_of(request).cancelled = True
            task.cancel()
        return await task
    finally:
        watcher.cancel()
        task.cancel()
        with suppress(asyncio.CancelledError):
            await watcher


async def respond(request: Request, result: Any, keepalive: float) -> Response:
    """JSON for complete results; SSE (after the first chunk is in hand) for streams."""
    record = record_of(request)
    if isinstance(result, dict):
        return Response(
            orjson.dumps(result), media_type="application/json", headers=_headers(record)
        )
    stream: AsyncGenerator[Any, None] = result
    try:
        first = await until_disconnect(request, anext(stream))
    except BaseException:
        await stream.aclose()
        raise
    return EventStreamResponse(first, stream, record, keepalive, _headers(record))


def _headers(record: RequestRecord) -> dict[str, str] | None:
    """x-ratelimit-* for a limited caller, and the route a routed request took."""
    headers: dict[str, str] | None = getattr(record.permit, "headers", None)
    if record.route:
        route = _HEADER_UNSAFE.sub("?", record.route)
        headers = {**(headers or {}), ROUTE_HEADER: route}
    return headers


def _model_card(info: ModelInfo) -> Model:
    return {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.owned_by,
        "context_window": info.context_window,
        "max_output_tokens": info.max_output_tokens,
    }


def _body_schema(model: type[Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def include_routes(app: FastAPI, container: Container) -> None:
    service = container.service
    keepalive = container.settings.server.keepalive_seconds
    # authentication is called directly on the hot routes: FastAPI's dependency solving costs
    # more than the check itself
    check = authenticated(container)
    v1 = APIRouter(prefix="/v1")

    @v1.post("/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        await check(request)
        raw = await read_json(request)
        result = await until_disconnect(request, service.chat(raw, record_of(request)))
        return await respond(request, result, keepalive)

    @v1.post("/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(request: Request) -> Response:
        await check(request)
        raw = await read_json(request)
        result = await until_disconnect(request, service.complete(raw, record_of(request)))
        return await respond(request, result, keepalive)

    @v1.get("/models")
    async def list_models(request: Request) -> JSONResponse:
        await check(request)
        cards = [_model_card(i) for i in service.models()]
        return JSONResponse({"object": "list", "data": cards})

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> JSONResponse:
        await check(request)
        return JSONResponse(dict(_model_card(service.model(model_id))))

    ops = APIRouter()

    @ops.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @ops.get("/ready")
    async def ready() -> JSONResponse:
        if await container.ready():
            return JSONResponse({"status": "ready"})
        status = "failed" if container.load_error is not None else "loading"
        return JSONResponse(
            {
                "status": status,
                "error": {
                    "message": f"The engine is {status}.",
                    "type": "server_error",
                    "param": None,
                    "code": "engine_unavailable",
                },
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @ops.get("/metrics")
    async def metrics() -> Response:
        return Response(container.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(v1)
    app.include_router(ops)
    app.include_router(admin_router(container, authenticated(container, admin=True)))
