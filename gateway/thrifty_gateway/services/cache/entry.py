"""What a cache entry holds and how it is serialised (orjson, optionally zstd-compressed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from thrifty_core.prices import Usage

from ..sse import usage_of

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL = 3


@dataclass(slots=True)
class CachedAnswer:
    """A stored answer plus the labels purges select on (never the cache key)."""

    body: dict[str, Any]
    tenant: str
    route: str
    model: str
    created: float = field(default_factory=time.time)
    tags: tuple[str, ...] = ()
    # What the answer cost upstream (an OpenAI `usage` object) when its body carries none (a
    # stream whose client asked for no usage): a hit is worth that much.
    usage: dict[str, Any] | None = None
    # The gateway that stored it (`namespace/name`, as its scope names it; "" without one): a
    # purge through one gateway leaves the entries of others sharing the policy's stores.
    gateway: str = ""

    def worth(self) -> Usage | None:
        """What the answer cost upstream: its own `usage`, else the one stored beside it (an
        estimate, which prices a hit but is never handed to a client as the provider's)."""
        return usage_of(self.body) or usage_of({"usage": self.usage})

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.created

    def to_dict(self) -> dict[str, Any]:
        return {
            "body": self.body,
            "tenant": self.tenant,
            "route": self.route,
            "model": self.model,
            "created": self.created,
            "tags": list(self.tags),
            **({"usage": self.usage} if self.usage is not None else {}),
            **({"gateway": self.gateway} if self.gateway else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CachedAnswer:
        return cls(
            body=data["body"],
            tenant=data["tenant"],
            route=data["route"],
            model=data["model"],
            created=float(data["created"]),
            tags=tuple(data.get("tags") or ()),
            usage=data.get("usage"),
            gateway=data.get("gateway") or "",
        )


class Codec:
    """orjson, then zstd when `compress` (values are self-describing: both can be read)."""

    def __init__(self, compress: bool = True) -> None:
        import zstandard

        self._compress = compress
        self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._d = zstandard.ZstdDecompressor()

    def encode(self, entry: CachedAnswer) -> bytes:
        raw = orjson.dumps(entry.to_dict())
        return self._c.compress(raw) if self._compress else raw

    def decode(self, blob: bytes) -> CachedAnswer:
        raw = self._d.decompress(blob) if blob[:4] == ZSTD_MAGIC else blob
        return CachedAnswer.from_dict(orjson.loads(raw))
