"""The single mapping from exceptions to HTTP responses: OpenAI's error envelope, and
Anthropic's (``{"type": "error", "error": {...}}``) for requests under ``/v1/messages``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from qwen_gateway.core.normalize import param_path
from qwen_gateway.errors import GatewayError
from qwen_gateway.protocol.common import ErrorResponse
from qwen_gateway.protocol.messages import ErrorResponse as AnthropicErrorResponse

log = logging.getLogger(__name__)

_HTTP_TYPES = {404: "invalid_request_error", 405: "invalid_request_error"}

#: Anthropic's error type for each status it uses.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ANTHROPIC_PATH = "/v1/messages"


def anthropic_path(path: str) -> bool:
    """Whether a request path is Anthropic's Messages API (its errors in Anthropic's shape)."""
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def anthropic_body(message: str, status: int, param: str | None = None) -> AnthropicErrorResponse:
    """Anthropic's envelope has no ``param``: the message starts with the field's path, as
    theirs do."""
    default = "invalid_request_error" if status < 500 else "api_error"
    if param and not message.startswith(f"{param}: "):
        message = f"{param}: {message}"
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, default), "message": message},
    }


def _json(
    request: Request, body: ErrorResponse, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    if anthropic_path(request.url.path):
        return JSONResponse(dict(anthropic_body(body["error"]["message"], status)), status, headers)
    return JSONResponse(dict(body), status_code=status, headers=headers)


def envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: GatewayError, path: str = "") -> JSONResponse:
    if anthropic_path(path):
        body = anthropic_body(exc.message, exc.status_code, exc.param)
        return JSONResponse(dict(body), status_code=exc.status_code, headers=exc.headers)
    openai = envelope(exc.message, exc.error_type, exc.param, exc.code)
    return JSONResponse(dict(openai), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return error_response(exc, request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = list(first.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]  # where it came from: the field's own name is the param
        body = envelope(
            str(first.get("msg", "Invalid request.")),
            "invalid_request_error",
            param_path(loc) or None,
            "invalid_value",
        )
        return _json(request, body, 400)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        body = envelope(
            str(exc.detail),
            _HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
            None,
            "not_found" if exc.status_code == 404 else None,
        )
        return _json(request, body, exc.status_code, exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response, and the server logs the traceback once.
        body = envelope(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            "internal_error",
        )
        return _json(request, body, 500)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
