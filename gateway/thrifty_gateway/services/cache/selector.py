"""Purge selectors: which entries an admin purge removes (all given fields must match)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .entry import CachedAnswer


@dataclass(frozen=True, slots=True)
class Selector:
    tenant: str | None = None
    route: str | None = None
    model: str | None = None
    tag: str | None = None
    older_than_seconds: float | None = None
    # Only the entries this gateway stored, and those labelled with none (stored before the
    # label existed, or by a gateway that names none): the cache stage sets it to its own.
    gateway: str | None = None

    @property
    def everything(self) -> bool:
        return self == Selector()

    def matches(self, entry: CachedAnswer, now: float | None = None) -> bool:
        if self.gateway is not None and entry.gateway not in ("", self.gateway):
            return False
        if self.tenant is not None and entry.tenant != self.tenant:
            return False
        if self.route is not None and entry.route != self.route:
            return False
        if self.model is not None and entry.model != self.model:
            return False
        if self.tag is not None and self.tag not in entry.tags:
            return False
        if self.older_than_seconds is not None:
            return entry.age(now if now is not None else time.time()) >= self.older_than_seconds
        return True
