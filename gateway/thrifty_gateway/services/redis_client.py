"""Redis clients of the request path: short timeouts, and one immediate retry on a broken
connection.

A pooled connection that a restarted Redis closed fails its next command with a
`ConnectionError`. Without a retry that first command after the restart turned into a cache or
rate-limit bypass and started the caller's cool-down (measured: every lookup of the next 0.4 s
bypassed, the first purge failed); with one retry on a new connection, at once, it succeeds.
Timeouts are not retried (a hung Redis costs the caller one timeout, not two), nor does the
retry back off (redis-py's default backs off for up to seconds, far beyond these timeouts).
"""

from __future__ import annotations

from typing import Any


def fast_redis(
    url: str, *, password: str | None, timeout: float, connect_timeout: float | None = None
) -> Any:
    """A `redis.asyncio.Redis` for `url` (typed Any: redis-py's own types are unions of sync
    and async results)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return aioredis.Redis.from_url(
        url,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout if connect_timeout is not None else timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
        health_check_interval=0,
    )
