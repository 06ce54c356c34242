"""OpenAI-compatible upstream HTTP: pooled connections per provider, one attempt per call.

`HttpUpstream` implements the `UpstreamClient` protocol with aiohttp (measured faster than
httpx on the hot path, see bench/RESULTS.md). Retries, fallbacks and circuit breakers live in
`resilience.py`; this module only performs one attempt and classifies its failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
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


# Seconds between two re-reads of the provider key files (and of the gateway's own key files,
# app.py): a rotated Secret, which the kubelet swaps in the mounted volume, is followed without
# a restart.
KEY_RELOAD_SECONDS = 10.0
# A 401 re-reads that provider's key file at once (the timer may not have seen the new key yet),
# at most this often per provider.
KEY_RECHECK_SECONDS = 1.0


class ProviderKeys:
    """Provider API keys from their env vars or mounted Secret files.

    Read at start (a key that cannot be read fails the start, naming no value); `reload()`
    reads them again. A key that cannot be read later (a Secret volume mid-swap, a key
    removed) keeps its previous value and is logged: a gateway without a key serves nothing.
    `version` counts the changes, for clients built from the values (`OpenAIBatches`)."""

    def __init__(self, providers: Sequence[ProviderConfig]) -> None:
        self._sources = {p.name: p.api_key for p in providers}
        self.values: dict[str, str | None] = {
            name: source.read() if source else None for name, source in self._sources.items()
        }
        self.version = 0

    def reload(self, only: str | None = None) -> dict[str, str]:
        """Re-read every key (or provider `only`'s); the ones that changed, by provider."""
        changed: dict[str, str] = {}
        for name, source in self._sources.items():
            if source is None or (only is not None and name != only):
                continue
            try:
                value = source.read()
            except LookupError as exc:
                log.warning("provider %s key unreadable, previous one kept: %s", name, exc)
                continue
            if not value:
                log.warning("provider %s key is empty, previous one kept", name)
                continue
            if value != self.values.get(name):
                self.values[name] = changed[name] = value
        if changed:
            self.version += 1
            log.info("provider keys reloaded", extra={"providers": ",".join(sorted(changed))})
        return changed


class _Provider:
    """One provider's pooled session, URL builder and auth header."""

    def __init__(self, config: ProviderConfig, api_key: str | None) -> None:
        self.config = config
        self.base = config.base_url.rstrip("/")
        # The key goes with each request (not the session's headers), so that a rotated key
        # applies to the next request while the pool and the streams in flight are kept.
        self.auth: dict[str, str] | None = None
        self.set_key(api_key)
        self.rechecked = 0.0  # monotonic time of the last re-read after a 401
        connector = aiohttp.TCPConnector(
            limit=config.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"content-type": "application/json", "accept-encoding": "identity"},
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    def set_key(self, api_key: str | None) -> None:
        if not api_key:
            self.auth = None
        elif self.config.type == "azure":
            self.auth = {"api-key": api_key}
        else:
            self.auth = {"authorization": f"Bearer {api_key}"}

    def url(self, model: str, path: str) -> str:
        if self.config.type == "azure":
            version = self.config.api_version or "2024-10-21"
            return f"{self.base}/openai/deployments/{model}/{path}?api-version={version}"
        return f"{self.base}/{path}"


class HttpUpstream:
    """aiohttp sessions, one per provider (connection pool sized by `maxConnections`).

    Provider keys follow their Secret files: `reload_keys()` (called on a timer) applies the
    keys that changed, and a 401 re-reads that provider's key at once and, when it changed,
    sends the request again with the new one."""

    def __init__(self, providers: list[ProviderConfig], keys: ProviderKeys):
        self._keys = keys
        self._providers = {p.name: _Provider(p, keys.values.get(p.name)) for p in providers}

    def reload_keys(self, only: str | None = None) -> dict[str, str]:
        """Re-read the provider keys (or provider `only`'s) and use the ones that changed
        (returned)."""
        changed = self._keys.reload(only)
        for name, value in changed.items():
            self._providers[name].set_key(value)
        return changed

    def _rotated(self, provider: _Provider, sent: dict[str, str] | None) -> bool:
        """After a 401: whether the provider's key is no longer the one `sent` (changed by
        another request meanwhile, or in its file now)."""
        if provider.auth is not sent:
            return True
        now = time.monotonic()
        if now - provider.rechecked < KEY_RECHECK_SECONDS:
            return False
        provider.rechecked = now
        return bool(self.reload_keys(provider.config.name))

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
        url = provider.url(target.model, path)
        auth = provider.auth
        with _failures(target):
            resp = await provider.session.post(url, data=payload, timeout=timeout, headers=auth)
            if resp.status == 401 and self._rotated(provider, auth):
                resp.release()
                resp = await provider.session.post(
                    url, data=payload, timeout=timeout, headers=provider.auth
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
    """The body as it comes. A body read to its end hands its connection back to the pool; one
    that ended early (the provider broke off, the client left) closes it: a half-read
    connection handed back failed the next request sent on it (a retry, and a failure
    counted against that target's breaker)."""
    read = False
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
        read = True
    finally:
        if read:
            resp.release()
        else:
            resp.close()
