"""Backfill a range of weeks through Dagster, in week order (``dw backfill``; the command is in ``cli.py``).

Weeks depend on the week before them: week W's ranker learns from week W-1's candidates
(labelled by W's listening) and its playlists' exploration reads earlier weeks' playlists. The
planner (``automation/planner.py``) orders the runs: one run of ``weekly_discover_job`` per week,
oldest first, each week's evaluation after its holdout week is ingested, and the history a week
lacks first. The backfill stops at the first week that fails (the later ones would build on a
hole); ``--from`` that week resumes it. The first landed week has no week before it: its playlists
come from a stand-in ranker (retrieval order through the same re-ranking), which the outcome says.

Dagster and the asset graph are imported when a backfill runs, not with this module, so
registering the command keeps ``dw --help`` and ``dw simulate`` instant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dw_assets.automation.planner import Plan, PlanError, landed_weeks, plan_weeks, weeks_from_to

__all__ = ["WeekOutcome", "backfill_weeks", "describe", "landed_weeks"]


@dataclass(frozen=True)
class WeekOutcome:
    """What the backfill built for one week.

    ``scope``: "all" (every asset the week publishes, plus its evaluation when the week after had
    landed and ``evaluate``) or "stand-in" (the first landed week: every asset, its playlists from the
    stand-in ranker). ``reason``: why a week's ranker is a stand-in ("" otherwise). ``seconds``: wall
    time of the week's runs. ``report``: one line per materialized partition.
    """

    week: str
    scope: str
    reason: str
    seconds: float
    report: str


def backfill_weeks(
    lake_root: Path | str,
    first_week: str,
    last_week: str,
    landed: list[str] | None = None,
    store_url: str | None = None,
    evaluate: bool = True,
    ops: dict | None = None,
    progress: Callable[[str], None] = print,
) -> list[WeekOutcome]:
    """Materialize weeks ``first_week``..``last_week`` (week keys, inclusive) in order, one week at a time.

    ``landed``: the landed week keys (default: read from the landing zone). ``evaluate``: also
    evaluate each week whose following week has landed (slower; otherwise the evaluation is left to
    ``dw evaluate`` or the evaluation schedule). ``ops``: Dagster run config per asset.

    Raises ``RunError`` before running anything when the range is not made of landed weeks,
    and at the first week that fails, naming the weeks done.
    """
    from dw_assets.automation.runner import RunError, execute_plan

    plan = plan_backfill(lake_root, first_week, last_week, landed, evaluate)
    weeks = plan.weeks()
    outcomes: list[WeekOutcome] = []

    def week_done(step, lines: list[str], seconds: float) -> None:
        outcome = WeekOutcome(step.week, "stand-in" if step.stand_in else "all", step.why if step.stand_in else "",
                              seconds, "\n".join(lines))
        outcomes.append(outcome)
        progress(f"week {step.week} ({len(outcomes)}/{len(weeks)}): {describe(outcome)}")

    started = time.perf_counter()
    try:
        execute_plan(plan, lake_root, ops, store_url, progress, on_week=week_done)
    except RunError as exc:
        done = ", ".join(o.week for o in outcomes) or "none"
        failed = next((w for w in weeks if w not in {o.week for o in outcomes}), weeks[-1])
        raise RunError(f"backfill stopped at week {failed} (weeks done: {done}); later weeks build on it, so "
                       f"resume with --from {failed} once it is fixed: {exc}") from exc
    progress(f"backfilled {len(outcomes)} week(s) in {time.perf_counter() - started:.1f}s")
    return outcomes


def plan_backfill(lake_root: Path | str, first_week: str, last_week: str, landed: list[str] | None = None,
                  evaluate: bool = True) -> Plan:
    """What ``backfill_weeks`` runs: ``planner.plan_weeks`` for the range, with the landed weeks (default: the
    landing zone's) and what the instance in ``DAGSTER_HOME`` has materialized (checked against the lake).
    The range's own weeks are rebuilt; earlier weeks only where the instance lacks them. Runs nothing."""
    from dw_assets.automation.runner import RunError, run_instance
    from dw_assets.automation.schedules import materialized
    from dw_assets.lake.resources import LakeResource

    landed = sorted(landed if landed is not None else landed_weeks(lake_root))
    try:
        weeks = weeks_from_to(first_week, last_week)
        have = {name: done - set(weeks)
                for name, done in materialized(run_instance(), LakeResource(root=str(lake_root)).open()).items()}
        return plan_weeks(weeks, landed, have, evaluate=evaluate)
    except PlanError as exc:
        raise RunError(f"{exc} in {lake_root}/landing" if "landed" in str(exc) else str(exc)) from exc


def describe(outcome: WeekOutcome) -> str:
    built = "every asset" + (", playlists from the stand-in ranker" if outcome.scope == "stand-in" else "")
    return f"{built} in {outcome.seconds:.1f}s" + (f" ({outcome.reason})" if outcome.reason else "")
