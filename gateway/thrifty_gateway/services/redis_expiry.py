"""Keys Thrifty deletes itself instead of giving them a TTL.

The Redis a gateway shares with its exact cache evicts keys that have a TTL (`volatile-lru`):
usage buckets, budget spend and rate-limit buckets must never be among them. Such keys carry
none; a sorted set lists each under the time it may go, and `drop_listed` deletes those due.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CHUNK = 500  # keys deleted per transaction


async def drop_listed(
    client: Any, index: str, cutoff: float, key_of: Callable[[bytes], bytes] = bytes
) -> int:
    """Delete the keys `index` lists at or before `cutoff` (member -> key by `key_of`) and
    their entries in it; returns how many went."""
    due: list[bytes] = await client.zrangebyscore(index, "-inf", cutoff)
    for start in range(0, len(due), CHUNK):
        chunk = due[start : start + CHUNK]
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(*[key_of(member) for member in chunk])
            pipe.zrem(index, *chunk)
            await pipe.execute()
    return len(due)
