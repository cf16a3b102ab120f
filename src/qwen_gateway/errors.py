"""One error hierarchy for the whole gateway.

Each error knows its HTTP status and the OpenAI error ``type``/``code`` it maps to.
``api/errors.py`` is the only place that turns these into HTTP responses.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: an error the client sees in OpenAI's envelope."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class ContentFiltered(InvalidRequest):
    default_code = "content_filter"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "request_too_large"


class UnprocessableEntity(InvalidRequest):
    status_code = 422


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"


class ModelNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class NotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class RateLimited(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    retryable = True


class QuotaExceeded(GatewayError):
    """A daily or monthly token budget is used up (OpenAI's ``insufficient_quota``)."""

    status_code = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class EngineOverloaded(GatewayError):
    status_code = 503
    error_type = "server_error"
    default_code = "engine_overloaded"
    retryable = True


class EngineUnavailable(GatewayError):
    status_code = 503
    error_type = "server_error"
    default_code = "engine_unavailable"
    retryable = True


class ServiceUnavailable(GatewayError):
    """A service the gateway depends on (e.g. the rate limiter's Redis) is unreachable."""

    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
    retryable = True


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"
    retryable = True


class InvalidModelOutput(UpstreamError):
    """The model's output broke a guarantee the request asked for (e.g. JSON schema)."""

    default_code = "invalid_model_output"


class GatewayTimeout(GatewayError):
    status_code = 504
    error_type = "server_error"
    default_code = "timeout"
    retryable = True


class InternalError(GatewayError):
    """A bug on our side; never blames the client."""
