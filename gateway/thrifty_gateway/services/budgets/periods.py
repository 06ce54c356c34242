"""Budget periods in UTC: where the current day or month starts and ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

Period = Literal["day", "month"]


def period_bounds(period: Period, now: float) -> tuple[datetime, datetime]:
    """(start, end) of the UTC period containing `now` (epoch seconds)."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        end = start.replace(year=start.year + 1, month=1)
    else:
        end = start.replace(month=start.month + 1)
    return start, end


def period_label(period: Period, start: datetime) -> str:
    """`2026-11-27` for a day, `2026-11` for a month."""
    return start.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def seconds_left(period: Period, now: float) -> float:
    """Seconds from `now` to the end of its period."""
    return period_bounds(period, now)[1].timestamp() - now
