"""Week arithmetic shared by the simulator, the lake and the partitions.

A week key is the ISO date (``YYYY-MM-DD``) of the Monday that starts the
listening week, exactly as Dagster's ``WeeklyPartitionsDefinition(day_offset=1)``
names its partitions. Weeks run Monday 00:00 UTC to the next Monday 00:00 UTC
(end exclusive).
"""

from __future__ import annotations

import datetime as dt

WEEK = dt.timedelta(days=7)
# Week W's models read weeks W-11..W. Here, not in partitions.py, so Dagster-free code (the planner)
# can use it without importing Dagster.
HISTORY_WEEKS = 12


def week_start(key: str) -> dt.datetime:
    """Monday 00:00 UTC of week ``key``; raises ValueError if key is not a Monday."""
    try:
        day = dt.date.fromisoformat(key)
        if day.isoformat() != key:  # one spelling per week key (3.11 also parses 20260105, 2026-W02-1)
            raise ValueError(key)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"week key must be an ISO date like 2026-01-05, got {key!r}") from exc
    if day.weekday() != 0:
        raise ValueError(f"week key {key!r} is a {day.strftime('%A')}, not a Monday")
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def week_bounds(key: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of week ``key`` as UTC datetimes."""
    start = week_start(key)
    return start, start + WEEK


def week_key(moment: dt.date | dt.datetime) -> str:
    """Key of the week that contains ``moment``."""
    day = moment.date() if isinstance(moment, dt.datetime) else moment
    return (day - dt.timedelta(days=day.weekday())).isoformat()


def shift_week(key: str, weeks: int) -> str:
    """The week ``weeks`` after (negative: before) week ``key``."""
    return (week_start(key) + weeks * WEEK).date().isoformat()


def week_range(first: str, count: int) -> list[str]:
    """``count`` consecutive week keys starting at ``first``."""
    return [shift_week(first, i) for i in range(count)]
