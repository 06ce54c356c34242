"""OpenAI-compatible upstream HTTP: pooled connections per provider, one attempt per call.

`HttpUpstream` implements the `UpstreamClient` protocol with aiohttp (measured faster than
httpx on the hot path, see bench/RESULTS.md). Retries, fallbacks and circuit breakers live in
`resilience.py`; this module only performs one attempt and classifies its failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from thrifty_core.config import ProviderConfig

from .pipeline import Target
from .sse import EventSplitter, event_data

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    total: float


@dataclass(slots=True)
class UpstreamResponse:
    """One upstream answer. For streams `body` is empty and `chunks` yields raw bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    release: aiohttp.ClientResponse | None = None

    def close(self) -> None:
        if self.release is not None:
            self.release.release()


class UpstreamConnectionError(Exception):
    """The provider could not be reached (refused, reset, DNS)."""


class UpstreamTimeout(Exception):
    """The provider did not answer within the route's timeout."""


class UpstreamClient(Protocol):
    async def send(
        self, target: Target, path: str, payload: bytes, timeouts: Timeouts, stream: bool
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class _Provider:
    """One provider's pooled session, URL builder and auth header."""

    def __init__(self, config: ProviderConfig, api_key: str | None) -> None:
        self.config = config
        self.base = config.base_url.rstrip("/")
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if api_key:
            if config.type == "azure":
                headers["api-key"] = api_key
            else:
                headers["authorization"] = f"Bearer {api_key}"
        connector = aiohttp.TCPConnector(
            limit=config.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    def url(self, model: str, path: str) -> str:
        if self.config.type == "azure":
            version = self.config.api_version or "2024-10-21"
            return f"{self.base}/openai/deployments/{model}/{path}?api-version={version}"
        return f"{self.base}/{path}"


class HttpUpstream:
    """aiohttp sessions, one per provider (connection pool sized by `maxConnections`)."""

    def __init__(self, providers: list[ProviderConfig], api_keys: Mapping[str, str | None]):
        self._providers = {p.name: _Provider(p, api_keys.get(p.name)) for p in providers}

    async def send(
        self, target: Target, path: str, payload: bytes, timeouts: Timeouts, stream: bool
    ) -> UpstreamResponse:
        provider = self._providers[target.provider]
        timeout = (
            aiohttp.ClientTimeout(
                total=None, sock_connect=timeouts.connect, sock_read=timeouts.total
            )
            if stream
            else aiohttp.ClientTimeout(total=timeouts.total, sock_connect=timeouts.connect)
        )
        with _failures(target):
            resp = await provider.session.post(
                provider.url(target.model, path), data=payload, timeout=timeout
            )
        if stream and resp.status == 200:
            return await _first_event(target, resp)
        try:
            with _failures(target):
                body = await resp.read()
        finally:
            resp.release()
        return UpstreamResponse(resp.status, resp.headers, body=body)

    async def aclose(self) -> None:
        await asyncio.gather(*(p.session.close() for p in self._providers.values()))


@contextmanager
def _failures(target: Target) -> Iterator[None]:
    """aiohttp's failures as the gateway's: a timeout, or a connection that failed."""
    try:
        yield
    except TimeoutError as exc:
        raise UpstreamTimeout(target.label) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(f"{target.label}: {type(exc).__name__}") from exc


HEAD_LIMIT = 65_536  # bytes read, at most, to find a stream's first event


async def _first_event(target: Target, resp: aiohttp.ClientResponse) -> UpstreamResponse:
    """A 200 stream, read up to its first event before it is relayed: a provider that opens
    with an error event (an overload announced after the headers) is answered as the error it
    is, so that it is retried or failed over like a 5xx while nothing reached the client yet."""
    chunks = _iter_chunks(resp)
    head = b""
    splitter = EventSplitter()
    try:
        with _failures(target):
            while len(head) < HEAD_LIMIT:
                try:
                    data = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                head += data
                events = splitter.feed(data)
                if events:
                    first = event_data(events[0])
                    status = _error_status(first)
                    if status is not None:
                        await chunks.aclose()
                        return UpstreamResponse(status, resp.headers, body=first or b"")
                    break
    except (UpstreamTimeout, UpstreamConnectionError):
        await chunks.aclose()
        raise
    return UpstreamResponse(200, resp.headers, chunks=_after(head, chunks), release=resp)


def _error_status(payload: bytes | None) -> int | None:
    """The HTTP status an error event stands for (None when the event is not an error)."""
    if not payload or not payload.startswith(b"{") or b'"error"' not in payload[:200]:
        return None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or "choices" in data:
        return None
    kind = f"{err.get('type') or ''} {err.get('code') or ''}"
    if "rate_limit" in kind:
        return 429
    if "invalid_request" in kind:
        return 400
    return 500


async def _after(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _iter_chunks(resp: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    finally:
        resp.release()
