"""Demotions shared by a gateway's replicas: continuous evaluation demotes a student version on
the replica that measured it; the others (and replicas started later, after a rollout or a
restart) read it here, so a version that stopped agreeing with the teacher does not come back
until a new version arrives. Kept in the gateway's shared ledger Redis (none: per replica, as
before), keyed by the gateway, the student and the version, for `KEEP_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

KEEP_SECONDS = 30 * 86400  # a demoted version rarely serves again; a new version is a new key
TIMEOUT = 0.5  # seconds: marking and reading run off the request path, but never hang


class DemotionStore:
    """`mark` a version demoted; `reason` it was demoted (None: not, or unknown)."""

    def __init__(self, client: Any, gateway: str) -> None:
        self._client = client
        self._prefix = (
            f"thrifty:distill:{gateway}:demoted:" if gateway else "thrifty:distill:demoted:"
        )

    def _key(self, student: str, version: str) -> str:
        return f"{self._prefix}{student}:{version}"

    async def mark(self, student: str, version: str, reason: str) -> None:
        try:
            await asyncio.wait_for(
                self._client.set(self._key(student, version), reason, ex=KEEP_SECONDS), TIMEOUT
            )
        except Exception as exc:  # the replica that measured it keeps it demoted all the same
            log.warning("demotion of %s not shared: %s", student, type(exc).__name__)

    async def reason(self, student: str, version: str) -> str | None:
        try:
            value = await asyncio.wait_for(self._client.get(self._key(student, version)), TIMEOUT)
        except Exception as exc:
            log.info("demotions unreadable: %s", type(exc).__name__)
            return None
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
