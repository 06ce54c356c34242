"""Files API (owned by the batch component; stub until it lands)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
