"""Thin routes: parse the body, call the service, hand results to JSON or SSE."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import suppress
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from qwen_gateway.api.admin import admin_router
from qwen_gateway.api.body import parse_json
from qwen_gateway.api.reviews import admin_review_router, client_review_router
from qwen_gateway.api.sse import OPENAI, EventStreamResponse, Framing
from qwen_gateway.config import ServerSettings
from qwen_gateway.core.jsonbytes import dumps
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ModelInfo
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.observability.metrics import CONTENT_TYPE, Metrics
from qwen_gateway.policy.auth import check_model
from qwen_gateway.protocol.chat import ChatCompletionRequest
from qwen_gateway.protocol.common import Model
from qwen_gateway.protocol.completions import CompletionRequest
from qwen_gateway.service.admin import AdminService
from qwen_gateway.service.authenticate import Authenticate
from qwen_gateway.service.completions import CompletionService
from qwen_gateway.service.console import ConsoleService
from qwen_gateway.service.reviews import ReviewService

T = TypeVar("T")
ROUTE_HEADER = "x-qwen-gateway-route"
CACHE_HEADER = "x-qwen-gateway-cache"
_HEADER_UNSAFE = re.compile(r"[^\x20-\x7e]")  # the route names operator and upstream strings


def record_of(request: Request) -> RequestRecord:
    state = request.scope.setdefault("state", {})
    record = state.get("record")
    if not isinstance(record, RequestRecord):
        record = state["record"] = RequestRecord("req_internal")
    return record


class Health(Protocol):
    """What /health and /ready ask: the engines' state and the database's."""

    database_up: bool
    load_error: BaseException | None

    @property
    def loading(self) -> bool: ...

    async def healthy(self) -> bool: ...

    async def ready(self) -> bool: ...


def authenticated(authenticate: Authenticate, *, admin: bool = False) -> Any:
    """A dependency: the pipeline's authenticate stage for this request (key, JWT or static
    key), the caller noted on the request record."""

    async def check(request: Request) -> None:
        client = request.client.host if request.client is not None else "unknown"
        await authenticate(
            record_of(request),
            authorization(request.headers.get("authorization"), request.headers.get("x-api-key")),
            set(request.query_params.keys()),
            client,
            request.url.path,
            admin=admin,
        )

    return check


def authorization(header: str | None, api_key: str | None) -> str | None:
    """The credential as an Authorization header: the header itself, else an ``x-api-key``
    (how Anthropic's clients send the key) as a bearer token."""
    if header is None and api_key:
        return f"Bearer {api_key}"
    return header


async def read_json(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise InvalidRequest("Content-Type must be application/json.", code="invalid_content_type")
    return parse_json(await request.body())


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
            await asyncio.wait({task})
            if task.cancelled():
                raise ClientDisconnect  # the middleware records it as 499, cancelled
        return task.result()
    finally:
        watcher.cancel()
        task.cancel()
        with suppress(asyncio.CancelledError):
            await watcher


async def respond(
    request: Request, result: Any, keepalive: float, framing: Framing = OPENAI
) -> Response:
    """JSON for complete results; SSE (after the first chunk is in hand) for streams."""
    record = record_of(request)
    if isinstance(result, dict):
        return Response(_dumps(result), media_type="application/json", headers=_headers(record))
    stream: AsyncGenerator[Any, None] = result
    try:
        first = await until_disconnect(request, anext(stream))
    except BaseException:
        await stream.aclose()
        raise
    return EventStreamResponse(first, stream, record, keepalive, _headers(record), framing=framing)


def _dumps(result: dict[str, Any]) -> bytes:
    return dumps(result)  # exact for integers beyond 64 bits (a tool's input, as written)


def _headers(record: RequestRecord) -> dict[str, str] | None:
    """x-ratelimit-* for a limited caller, the route a routed request took, and the response
    cache's verdict (hit, miss or bypass) when the cache stage ran."""
    headers: dict[str, str] | None = getattr(record.permit, "headers", None)
    if record.route:
        route = _HEADER_UNSAFE.sub("?", record.route)
        headers = {**(headers or {}), ROUTE_HEADER: route}
    if record.cache is not None:
        headers = {**(headers or {}), CACHE_HEADER: record.cache}
    return headers


def _metrics_check(
    server: ServerSettings, authenticate: Authenticate
) -> Callable[[Request], Awaitable[None]]:
    """/metrics: open, or (``server.metrics_auth``) the scraper's token or an admin key."""
    admin = authenticated(authenticate, admin=True)
    token = server.metrics_token.get_secret_value() if server.metrics_token else None

    async def check(request: Request) -> None:
        if not server.metrics_auth:
            return
        given = request.headers.get("authorization", "")
        if token is not None and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return
        await admin(request)

    return check


def _model_card(info: ModelInfo, responses_storage: bool = False) -> Model:
    generates = info.task == "generate"
    return {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.owned_by,
        "context_window": info.context_window,
        "max_output_tokens": info.max_output_tokens,
        "default_max_tokens": info.default_max_tokens,
        "capabilities": {
            "tools": generates and info.supports_tools,
            "json_schema": generates and info.supports_json_schema,
            "logprobs": generates and info.supports_logprobs,
            "echo": generates and info.supports_echo,
            "embeddings": info.task == "embed",
            "responses_storage": generates and responses_storage,
        },
    }


def _body_schema(model: type[Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def include_routes(
    app: FastAPI,
    *,
    server: ServerSettings,
    authenticate: Authenticate,
    service: CompletionService,
    admin: AdminService,
    metrics_source: Metrics,
    health_check: Health,
    reviews: ReviewService | None = None,
    console: ConsoleService | None = None,
    responses_storage: bool = False,
) -> None:
    keepalive = server.keepalive_seconds
    # authentication is called directly on the hot routes: FastAPI's dependency solving costs
    # more than the check itself
    check = authenticated(authenticate)
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

    def allowed(request: Request, model: str) -> bool:
        return service.allowed(record_of(request).principal, model)

    @v1.get("/models")
    async def list_models(request: Request) -> JSONResponse:
        await check(request)
        cards = [
            _model_card(i, responses_storage) for i in service.models() if allowed(request, i.id)
        ]
        return JSONResponse({"object": "list", "data": cards})

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> JSONResponse:
        await check(request)
        info = service.model(model_id)
        if not allowed(request, model_id):  # 403 model_not_allowed, as for a completion
            check_model(record_of(request).principal, model_id)
        return JSONResponse(dict(_model_card(info, responses_storage)))

    ops = APIRouter()

    @ops.get("/health")
    async def health() -> JSONResponse:
        if await health_check.healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "engine_down"}, status_code=503)

    @ops.get("/ready")
    async def ready() -> JSONResponse:
        if await health_check.ready():
            return JSONResponse({"status": "ready"})
        code = "engine_unavailable"
        if not health_check.database_up:
            status, message = "unavailable", "The database is unreachable."
            code = "database_unavailable"
        elif health_check.load_error is not None or not await health_check.healthy():
            status, message = "failed", "The engine is failed."
        elif health_check.loading:
            status, message = "loading", "The engine is loading."
        else:
            status, message = "unavailable", "A deployment has no replica ready."
        return JSONResponse(
            {
                "status": status,
                "error": {
                    "message": message,
                    "type": "server_error",
                    "param": None,
                    "code": code,
                },
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    metrics_check = _metrics_check(server, authenticate)

    @ops.get("/metrics")
    async def metrics(request: Request) -> Response:
        await metrics_check(request)
        return Response(metrics_source.render(), media_type=CONTENT_TYPE)

    app.include_router(v1)
    app.include_router(ops)
    app.include_router(admin_router(admin, authenticated(authenticate, admin=True), console))
    if reviews is not None:  # content safety configured
        app.include_router(
            client_review_router(reviews, check, lambda request: record_of(request).principal)
        )
        app.include_router(admin_review_router(reviews, authenticated(authenticate, admin=True)))
