"""The driver guard: user- and event-scale tables never land whole on the driver.

At 500 M users the driver can hold models, bounded samples and aggregates, nothing that grows
with users or events. A shortcut that collects such a table still works on a small world, so
the rule is enforced by a setting rather than by size: with ``DW_DRIVER_ROW_LIMIT=N`` every
driver-side materialization of a user- or event-scale table (``USER_SCALE``) larger than N rows
raises ``DriverRowLimitExceeded`` naming the asset and the row count, whatever the world's size.
Bounded samples obey it too: a sample capped at ``cap`` rows takes ``bounded(cap)`` =
min(cap, N). Track-scale tables (catalog, track statistics, track vectors: 100 M rows at the
target, held per track by design) are exempt. Unset (the default) the guard only counts.

An audit lists every shortcut in one run instead of stopping at the first: with
``DW_DRIVER_GUARD_REPORT=path.jsonl`` as well, a table over the limit is appended to that file
(asset, rows, limit, the calling line) and the run goes on with the whole table.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any

import pandas as pd

from dw_assets import settings

ROW_LIMIT_ENV = "DW_DRIVER_ROW_LIMIT"
REPORT_ENV = "DW_DRIVER_GUARD_REPORT"

# Tables whose rows grow with users or events. Track-scale tables are deliberately absent, and so are the
# evaluations' stored outputs (a few rows per system and segment a week: the report reads 12 weeks of them);
# the per-user rows they are computed from are "evaluation_rows".
USER_SCALE = frozenset({
    "user_directory", "user_playlists", "raw_play_events", "quarantined_events", "interactions",
    "flagged_activity", "sessions", "user_profiles", "candidates", "ranked_playlists", "ranker_order",
    "last_week_playlists", "earlier_playlists", "user_embeddings", "evaluation_rows",
    "published_playlists", "ranker_rows",
})


class DriverRowLimitExceeded(RuntimeError):
    """A user- or event-scale table (or a sample of one) would be materialized on the driver."""


def row_limit() -> int | None:
    """``DW_DRIVER_ROW_LIMIT`` as a positive int, or None when unset/empty."""
    return settings.get(ROW_LIMIT_ENV)


def is_user_scale(asset: str) -> bool:
    return asset in USER_SCALE


def _caller(depth: int = 3) -> str:
    """The innermost project lines outside the guard itself (and the lake IO manager, which names its step),
    innermost first: the shortcut and who called it."""
    lines = []
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace(os.sep, "/")
        package = next((p for p in ("/dw_assets/", "/dw_assets_tests/") if p in path), None)
        if package and not path.endswith(("/lake/driver_guard.py", "/lake/resources.py")):
            lines.append(f"{path[path.rindex(package) + 1:]}:{frame.lineno} {frame.name}")
            if len(lines) == depth:
                break
    return " <- ".join(lines) or "-"


def check_driver_rows(asset: str, rows: int, where: str | None = None) -> None:
    """Raise when ``rows`` rows of the user/event-scale ``asset`` exceed the limit (no-op for others);
    under an audit (``DW_DRIVER_GUARD_REPORT``) record it instead. ``where``: what put it on the driver."""
    limit = row_limit()
    if limit is None or rows <= limit or not is_user_scale(asset):
        return
    report = settings.get(REPORT_ENV)
    if report:
        entry = {"asset": asset, "rows": rows, "limit": limit, "where": where or _caller(), "pid": os.getpid()}
        with open(report, "a") as out:
            out.write(json.dumps(entry) + "\n")
        return
    raise DriverRowLimitExceeded(
        f"{asset}: {rows} rows would be materialized on the driver, above {ROW_LIMIT_ENV}={limit}; "
        "a user- or event-scale table must stay in Spark (or be sampled with a cap)"
        + (f" ({where})" if where else ""))


def bounded(cap: int) -> int:
    """A sample cap as the guard allows it: min(cap, DW_DRIVER_ROW_LIMIT)."""
    limit = row_limit()
    return cap if limit is None else min(cap, limit)


def to_driver(frame: Any, asset: str) -> pd.DataFrame:
    """``frame.toPandas()`` for a Spark DataFrame of ``asset``, refused above the limit for
    user/event-scale assets. Reads at most limit + 1 rows before refusing, then counts them all
    so the error gives the real size."""
    limit = row_limit()
    if limit is None or not is_user_scale(asset):
        return frame.toPandas()
    head = frame.limit(limit + 1).toPandas()
    if len(head) > limit:
        check_driver_rows(asset, frame.count())
        return frame.toPandas()  # an audit goes on with the whole table, as the run without a limit would
    return head
