"""Status conditions as pure functions: build, merge (keeping transition times), summarise."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Cond:
    """One observation: type, status, a one-word CamelCase reason and a human message."""

    type: str
    status: Status
    reason: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "True"


# Reasons of a condition not met yet on the way to it (a rollout, a Job running, a store
# starting): posted as Normal events. Every other reason not met is a Warning, which people
# alert on.
PROGRESS_REASONS = frozenset(
    {
        "Progressing",
        "StoresProgressing",
        "WorkersProgressing",
        "DeploymentProgressing",
        "Creating",
        "Training",
        "Evaluating",
        "WaitingForTraining",
        "WaitingForStore",
    }
)


def true(type_: str, reason: str, message: str = "") -> Cond:
    return Cond(type_, "True", reason, message)


def false(type_: str, reason: str, message: str = "") -> Cond:
    return Cond(type_, "False", reason, message)


def ready(conds: Sequence[Cond], message_ok: str = "all conditions are met") -> Cond:
    """Ready summarises the others: True when all are True, else the first one that is not."""
    for cond in conds:
        if not cond.ok:
            return Cond(
                "Ready",
                "False" if cond.status == "False" else "Unknown",
                cond.reason,
                cond.message or f"{cond.type} is {cond.status}",
            )
    return true("Ready", "Reconciled", message_ok)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    existing: Iterable[dict[str, Any]],
    conds: Sequence[Cond],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new conditions list; lastTransitionTime only moves when a status changes."""
    previous = {c.get("type"): c for c in existing}
    out = []
    for cond in conds:
        old = previous.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": _stamp(now)
                if changed or old is None
                else old.get("lastTransitionTime", _stamp(now)),
            }
        )
    return out


def transitions(existing: Iterable[dict[str, Any]], conds: Sequence[Cond]) -> list[Cond]:
    """Conditions whose status or reason differs from before (these deserve an Event)."""
    previous = {c.get("type"): c for c in existing}
    out = []
    for cond in conds:
        old = previous.get(cond.type)
        if old is None or old.get("status") != cond.status or old.get("reason") != cond.reason:
            out.append(cond)
    return out
