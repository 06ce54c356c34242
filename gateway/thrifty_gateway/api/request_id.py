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


def request_id_of(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bool]:
    """(the client's id when it is the one plain one it sent, else a new one; whether the
    request's headers must be rewritten to carry it)."""
    sent = [value for name, value in headers if name == HEADER]
    if len(sent) == 1 and _PLAIN_ID.fullmatch(sent[0]):
        return sent[0], False
    return os.urandom(8).hex().encode(), True


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        request_id, rewrite = request_id_of(headers)
        if rewrite:
            kept = [h for h in headers if h[0] != HEADER]
            scope = {**scope, "headers": [*kept, (HEADER, request_id)]}

        async def stamped(message: Message) -> None:
            # (the proxy's answers carry it already, read from the request: left as they are)
            if message["type"] == "http.response.start":
                sent = message.get("headers", [])
                if not any(h[0].lower() == HEADER for h in sent):
                    message = {**message, "headers": [*sent, (HEADER, request_id)]}
            await send(message)

        token = REQUEST_ID.set(request_id.decode())
        try:
            await self.app(scope, receive, stamped)
        finally:
            REQUEST_ID.reset(token)
