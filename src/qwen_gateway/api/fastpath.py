"""The hot endpoints as plain ASGI, in front of FastAPI's routing.

``POST /v1/chat/completions``, ``POST /v1/completions`` (and the other generation edges, such
as ``POST /v1/messages``) are what a gateway spends its time on. :class:`GatewayApp` serves them through the app's own middleware (request id, body cap,
metrics, access log, accounting) and the app's 500 handler, but without FastAPI's request
objects, router matching, dependency solving and exception middleware, which cost more than
the gateway's own work per request. Everything else (other paths, other methods, OpenAPI)
goes to FastAPI as before; the two routes stay registered there too (the OpenAPI document
describes them, and a ``GET`` still gets FastAPI's 405).

The behaviour is the route's: authentication first, then the body (``Content-Type``, the
strict JSON of :func:`qwen_gateway.api.body.parse_json`), the service call raced against the
client leaving (which cancels it, aborting the generation), errors in the OpenAI envelope
with their headers, the route and rate-limit headers on success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from qwen_gateway.api.body import parse_json
from qwen_gateway.api.disconnect import ClientWatch
from qwen_gateway.api.errors import error_response
from qwen_gateway.api.routes import _dumps, _headers, authorization
from qwen_gateway.api.sse import OPENAI, EventStreamResponse, Framing
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import GatewayError, InvalidRequest
from qwen_gateway.service.authenticate import Authenticate

#: The service call of a hot endpoint: the parsed body and the request's record in, a
#: complete response (a dict) or an async iterator of chunks out.
ServiceCall = Callable[[Mapping[str, Any], RequestRecord], Awaitable[Any]]


async def read_body(receive: Receive) -> bytes:
    """The whole request body; :class:`ClientDisconnect` if the client leaves first."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What ``scope["route"]`` holds for a hot route: its path template, as a route's."""

    path: str


class HotRoute:
    """One hot endpoint as an ASGI app (inside the app's middleware, see :class:`GatewayApp`)."""

    def __init__(
        self,
        call: ServiceCall,
        auth: Authenticate,
        keepalive: float,
        route: Endpoint,
        framing: Framing = OPENAI,
    ) -> None:
        self._call = call
        self._auth = auth
        self._keepalive = keepalive
        self._route = route
        self._framing = framing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self._route  # its path template names the endpoint in usage
        state = scope.setdefault("state", {})
        record = state.get("record")
        if not isinstance(record, RequestRecord):
            record = state["record"] = RequestRecord("req_internal")
        try:
            raw = await self._read(scope, receive, record)
            watch = ClientWatch(receive)  # from here on, the client leaving cancels the work
            try:
                result = await self._call(raw, record)
                if isinstance(result, dict):
                    watch.close()  # as the route did: the answer is sent even if it just left
                    await _send_json(send, _dumps(result), _headers(record))
                    return
                try:  # commit late: the status line waits for the first chunk
                    first = await anext(result)
                except BaseException:
                    await result.aclose()
                    raise
                stream = EventStreamResponse(
                    first, result, record, self._keepalive, _headers(record), watch, self._framing
                )
                await stream(scope, receive, send)
            except asyncio.CancelledError:
                if watch.caught():
                    record.cancelled = True
                    raise ClientDisconnect from None  # recorded as 499, cancelled
                raise
            finally:
                watch.close()
        except GatewayError as exc:
            await error_response(exc, scope["path"])(scope, receive, send)

    async def _read(self, scope: Scope, receive: Receive, record: RequestRecord) -> Any:
        """Authenticate the caller (noted on ``record``), then the JSON body."""
        header: str | None = None
        api_key: str | None = None
        ctype = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                if header is None:
                    header = value.decode("latin-1")
            elif name == b"content-type" and not ctype:
                ctype = value.decode("latin-1")
            elif name == b"x-api-key" and api_key is None:
                api_key = value.decode("latin-1")
        query = scope.get("query_string", b"")
        keys = (
            {k for k, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
            if query
            else set()
        )
        client = scope.get("client")
        await self._auth(
            record,
            authorization(header, api_key),
            keys,
            client[0] if client else "unknown",
            scope["path"],
        )
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise InvalidRequest(
                "Content-Type must be application/json.", code="invalid_content_type"
            )
        return parse_json(await read_body(receive))


async def _send_json(send: Send, body: bytes, headers: Mapping[str, str] | None) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    raw.append((b"content-length", str(len(body)).encode()))
    raw.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": 200, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GatewayApp(FastAPI):
    """FastAPI, with the paths in ``hot`` served by their :class:`HotRoute` (POST only)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot: dict[str, HotRoute] = {}
        self._hot_stack: dict[str, ASGIApp] | None = None

    def add_hot_route(
        self,
        path: str,
        call: ServiceCall,
        auth: Authenticate,
        keepalive: float,
        framing: Framing = OPENAI,
    ) -> None:
        """Serve ``POST path`` with ``call`` (the route registered at ``path`` stays for the
        OpenAPI document and the other methods); streams are framed by ``framing``."""
        self.hot[path] = HotRoute(call, auth, keepalive, Endpoint(path), framing)
        self._hot_stack = None

    def _build_hot(self) -> dict[str, ASGIApp]:
        """Each hot route inside the app's own middleware and 500 handler, as FastAPI stacks
        them (its exception middleware is the route's own ``except GatewayError``)."""
        stacks: dict[str, ASGIApp] = {}
        handler = self.exception_handlers.get(Exception) or self.exception_handlers.get(500)
        for path, route in self.hot.items():
            app: ASGIApp = route
            for cls, args, kwargs in reversed(self.user_middleware):
                app = cls(app, *args, **kwargs)
            stacks[path] = ServerErrorMiddleware(app, handler=handler, debug=self.debug)
        return stacks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not (self.root_path or scope.get("root_path"))
        ):
            stacks = self._hot_stack
            if stacks is None:
                stacks = self._hot_stack = self._build_hot()
            hot = stacks.get(scope["path"])
            if hot is not None:
                scope["app"] = self
                await hot(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
