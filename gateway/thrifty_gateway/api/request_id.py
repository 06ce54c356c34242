"""Every response carries an `x-request-id`, and every log line written for it the same id.

The client's own `x-request-id` is kept when it is a plain id (letters, digits and `._:-`, up
to 128 characters: what proxies and SDKs send); anything else (a tab and quotes that would
forge log fields, 7,000 characters) is replaced by one the gateway makes. The id is set on the
request's headers (the proxy reads it there), on `REQUEST_ID` for the log lines, and on the
response, errors included: a 401, a 413 or a 400 from the shape checks carried none before.
"""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thrifty_core.logging import REQUEST_ID

HEADER = b"x-request-id"
_PLAIN_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's id when it is a plain one, else a new one."""
    for name, value in headers:
        if name == HEADER and _PLAIN_ID.fullmatch(value):
            return value
    return os.urandom(8).hex().encode()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope["headers"])
        request_id = request_id_of(headers)
        scope = {
            **scope,
            "headers": [*(h for h in headers if h[0] != HEADER), (HEADER, request_id)],
        }

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*sent, (HEADER, request_id)]}
            await send(message)

        token = REQUEST_ID.set(request_id.decode())
        try:
            await self.app(scope, receive, stamped)
        finally:
            REQUEST_ID.reset(token)
