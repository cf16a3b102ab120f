"""Per-request plumbing as plain ASGI: request ids, body size cap, access log and metrics, and
the pipeline's account stage once each request has ended."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_gateway.api.errors import anthropic_body, anthropic_path, envelope
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.observability.logging import access_log
from qwen_gateway.observability.metrics import Metrics
from qwen_gateway.service.account import Accounting

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_QUIET_PATHS = frozenset({"/metrics", "/health", "/ready"})
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the response


def _json_bytes(obj: Any) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()


def _endpoint(scope: Scope) -> str | None:
    """The path template of the route that took the request (None when no route matched):
    never the raw path, which the client wrote."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the cap."""


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        account: Accounting | None = None,
    ) -> None:
        """``account``: the pipeline's last stage, told when each request begins and ends
        (it also keeps the count of requests in flight)."""
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.account = account

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else f"req_{secrets.token_hex(16)}"
        record = RequestRecord(request_id)
        cache_control = headers.get(b"cache-control")
        if cache_control is not None:  # the response cache honours no-cache and no-store
            record.cache_control = cache_control.decode("latin-1")
        scope.setdefault("state", {})["record"] = record
        status = 500
        id_header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send_wrapper, scope)
            self._finish(scope, record, 413)
            return

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        account = self.account
        if account is not None:
            account.start()
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BodyTooLarge:
            await self._too_large(send_wrapper, scope)
        except ClientDisconnect:  # the client left before the response began: no one to answer
            record.cancelled = True
            status = CLIENT_CLOSED_REQUEST
        except asyncio.CancelledError:  # cut off (server shutting down): it did not complete
            record.cancelled = True
            raise
        finally:
            self._finish(scope, record, status)
            if account is not None:
                await account.finish(record, _endpoint(scope), scope.get("method", ""), status)

    async def _too_large(self, send: Send, scope: Scope) -> None:
        message = f"The request body exceeds the limit of {self.max_body_bytes} bytes."
        if anthropic_path(scope.get("path", "")):
            body = _json_bytes(anthropic_body(message, 413))
        else:
            body = _json_bytes(
                envelope(message, "invalid_request_error", None, "request_too_large")
            )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _finish(self, scope: Scope, record: RequestRecord, status: int) -> None:
        duration = time.perf_counter() - record.started
        path = scope.get("path", "")
        self.metrics.observe_request(
            model=record.model,
            deployment=record.deployment,
            status=status,
            duration=duration,
            ttft=record.ttft,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
        )
        if path in _QUIET_PATHS:
            return
        ttft = record.ttft
        access_log(
            {
                "request_id": record.request_id,
                "method": scope.get("method"),
                "path": path,
                "status": status,
                "model": record.model,
                "deployment": record.deployment,
                "stream": record.stream,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "finish_reason": record.finish_reason,
                "cancelled": record.cancelled,
                "latency_ms": round(duration * 1000, 2),
                "ttft_ms": None if ttft is None else round(ttft * 1000, 2),
            }
        )
