"""`GET /v1/thrifty/students` (admin key): what this replica's distill stage is doing.

Each gateway replica measures agreement and demotes a student on its own; this endpoint shows
that replica's view (`replica` is its host name, the pod name in a cluster), one entry per
student route: the serving version, mode, demotion, rolling agreement with the number of
comparisons behind it, answers by reason and captured examples.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol, cast

from fastapi import APIRouter
from pydantic import BaseModel, Field

from .deps import AdminDep, StateDep

router = APIRouter(tags=["distill"])

STAGE_NAME = "distill"  # services/distill's stage (not imported: the app loads stages lazily)


class StatusSource(Protocol):
    def status(self) -> list[dict[str, Any]]: ...


class StudentStatus(BaseModel):
    """One student route as this replica sees it."""

    student: str = Field(description="DistilledModel name.")
    route: str = Field(description="Teacher route the student serves.")
    kind: str
    mode: str = Field(description="shadow, canary or active.")
    version: str = Field(description="Artifact version serving; '' when none is loaded.")
    demoted: bool = Field(description="Traffic went back to the teacher (agreement gate).")
    demoted_reason: str = ""
    agreement: float | None = Field(description="Rolling agreement with the teacher.")
    comparisons: int = Field(description="Student/teacher comparisons measured (samples).")
    served: dict[str, int] = Field(description="Answers by reason (confident, canary, ...).")
    captured: int = Field(description="Teacher answers captured by this replica.")


class StudentsList(BaseModel):
    object: str = "list"
    replica: str
    data: list[StudentStatus]


@router.get("/v1/thrifty/students")
async def students(state: StateDep, _: AdminDep) -> StudentsList:
    stage = next((s for s in state.stages if s.name == STAGE_NAME), None)
    rows = cast(StatusSource, stage).status() if stage is not None else []
    return StudentsList(
        replica=socket.gethostname(),
        data=[StudentStatus.model_validate(row) for row in rows],
    )
