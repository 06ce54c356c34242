"""An upstream body read to its end gives its connection back to the pool; one that ends early
closes it (a half-read connection handed back broke the next request sent on it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from thrifty_gateway.services.upstream import _iter_chunks


class FakeResponse:
    def __init__(self, chunks: list[bytes], broken: bool = False) -> None:
        self.chunks, self.broken = chunks, broken
        self.released = self.closed = False
        self.content = self

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.broken:
            raise ConnectionResetError("the provider broke off")

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


async def test_a_body_read_to_its_end_releases_its_connection() -> None:
    resp = FakeResponse([b"a", b"b"])
    assert [c async for c in _iter_chunks(resp)] == [b"a", b"b"]  # type: ignore[arg-type]
    assert resp.released and not resp.closed


async def test_a_body_that_broke_off_closes_its_connection() -> None:
    resp = FakeResponse([b"a"], broken=True)
    with pytest.raises(ConnectionResetError):
        [c async for c in _iter_chunks(resp)]  # type: ignore[arg-type]
    assert resp.closed and not resp.released


async def test_a_body_left_half_read_closes_its_connection() -> None:
    resp: Any = FakeResponse([b"a", b"b", b"c"])
    chunks = _iter_chunks(resp)
    assert await anext(chunks) == b"a"
    await chunks.aclose()  # the client left
    assert resp.closed and not resp.released
