"""The single mapping from exceptions to HTTP responses in OpenAI's error envelope."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from qwen_gateway.core.normalize import param_path
from qwen_gateway.errors import GatewayError
from qwen_gateway.protocol.common import ErrorResponse

log = logging.getLogger(__name__)

_HTTP_TYPES = {404: "invalid_request_error", 405: "invalid_request_error"}


def envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: GatewayError) -> JSONResponse:
    body = envelope(exc.message, exc.error_type, exc.param, exc.code)
    return JSONResponse(dict(body), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [p for p in first.get("loc", ()) if p != "body"]
        body = envelope(
            str(first.get("msg", "Invalid request.")),
            "invalid_request_error",
            param_path(loc) or None,
            "invalid_value",
        )
        return JSONResponse(dict(body), status_code=400)

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        body = envelope(
            str(exc.detail),
            _HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
            None,
            "not_found" if exc.status_code == 404 else None,
        )
        return JSONResponse(dict(body), status_code=exc.status_code, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response, and the server logs the traceback once.
        body = envelope(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            "internal_error",
        )
        return JSONResponse(dict(body), status_code=500)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
