"""One error hierarchy, rendered in OpenAI's shape by one handler.

`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}` with the HTTP status the
class carries. Messages must never contain prompt text, completion text or keys.
"""

from __future__ import annotations

from typing import Any


class ThriftyError(Exception):
    """Base of every error the gateway answers with."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

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
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# The header the official SDKs obey before their own retry rules (they retry 408, 409, 429 and
# 5xx by default): on an answer a retry cannot change (a cache miss under only-if-cached, a
# feature this gateway is not configured for, a budget spent until the period ends).
NO_RETRY = {"x-should-retry": "false"}


class InvalidRequestError(ThriftyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(ThriftyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(ThriftyError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(ThriftyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class PayloadTooLargeError(ThriftyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(ThriftyError):
    """429 with Retry-After (whole seconds, at least 1)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(message, code=code, headers={"retry-after": str(seconds)})
        self.retry_after = seconds


class UpstreamError(ThriftyError):
    """The provider failed (5xx, connection error, open circuit) after retries and fallbacks."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamStatusError(ThriftyError):
    """The provider answered a 4xx we pass on (its status, its message)."""

    type = "upstream_error"
    code: str | None = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        passed_on: bool = False,
    ) -> None:
        """`passed_on`: the provider's own error object (its code kept, null included)."""
        super().__init__(message, param=param, code=code)
        self.status = status
        if passed_on:
            self.code = code
        if type_:
            self.type = type_


class UpstreamTimeoutError(ThriftyError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class ServiceUnavailableError(ThriftyError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
