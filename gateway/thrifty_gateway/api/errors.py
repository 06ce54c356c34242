"""One error shape: every failure leaves as OpenAI's `{"error": {...}}` with its status.

Also the body-size guard, a pure ASGI middleware so that an oversized body is refused with 413
before any other work (auth, parsing): by `Content-Length` up front, or by counting the bytes
of a chunked body as they arrive. `POST /v1/files` is left to its route, which applies the
batch queue's (much larger) file limit the same way.
"""

from __future__ import annotations

import logging
import traceback

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thrifty_core.errors import PayloadTooLargeError, ThriftyError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    422: "invalid_request_error",
}


# routes that limit their own bodies: file uploads (the batch queue's `limits.maxFileBytes`)
OWN_LIMIT_PATHS = frozenset({"/v1/files"})


def error_response(exc: ThriftyError) -> Response:
    return Response(
        orjson.dumps(exc.body()),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


def _plain(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> Response:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _thrifty(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ThriftyError)
    return error_response(exc)


async def _http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _plain(exc.status_code, str(exc.detail))


async def _validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return _plain(400, "The request body is not valid JSON.", "invalid_json")
    where = first.get("loc", ())
    # ("body", "tenant") names a field; ("body",) alone is the body, (.., 3) an array index.
    param = ".".join(str(p) for p in where[1:]) if len(where) > 1 else None
    if param is None and where[:1] == ("body",):
        if isinstance(first.get("input"), bytes | str):  # not sent as application/json
            message = "The request body must be a JSON object (content-type: application/json)."
            return _plain(400, message, "invalid_value")
        return _plain(400, "The request body must be a JSON object.", "invalid_value")
    message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}."
    return _plain(400, message, "invalid_value", param)


async def _disconnect(_: Request, exc: Exception) -> Response:
    del exc
    log.debug("client disconnected before the request body arrived")
    return Response(b"", status_code=499)


async def _unexpected(_: Request, exc: Exception) -> Response:
    # Where it was raised, never its message (it may quote a prompt).
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    log.error("unhandled error", extra={"error_type": type(exc).__name__, "where": where})
    return _plain(500, "The gateway had an internal error.", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ThriftyError, _thrifty)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ClientDisconnect, _disconnect)
    app.add_exception_handler(Exception, _unexpected)


class UnexpectedErrorMiddleware:
    """An unhandled error becomes the 500 `internal_error` answer here, and goes no further.

    Starlette's own handler for `Exception` (in `ServerErrorMiddleware`) sends that answer and
    then re-raises, and uvicorn drops the connection: a client's next request on the same
    keep-alive connection was reset. An error after the response started (a stream) is
    re-raised: the connection must close then, the client has a partial answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            response = await _unexpected(Request(scope), exc)
            await response(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413 before anything else runs (except on
    `own_limit_paths`, whose routes enforce a limit of their own)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, own_limit_paths: frozenset[str] = OWN_LIMIT_PATHS
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.own_limit_paths = own_limit_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS")
            or scope["path"] in self.own_limit_paths
        ):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send)
                    return
                break
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"Request body exceeds the limit of {self.max_bytes} bytes."

    async def _refuse(self, send: Send) -> None:
        response = error_response(PayloadTooLargeError(self._message()))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [*response.raw_headers, (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": response.body})
