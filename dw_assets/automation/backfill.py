"""Backfill a range of weeks through Dagster, in week order (``dw backfill``).

Weeks depend on the week before them: week W's ranker learns from week W-1's candidates
(labelled by W's listening) and its playlists' exploration reads earlier weeks'
playlists. So the weeks run one after another, oldest first, and the backfill stops at
the first week that fails (the later ones would build on a hole); ``--from`` that week
resumes it. The first landed week has no week before it: it is built up to its
candidates (the next week's ranker trains on them) and has no ranker or playlists, which
the outcome records as the reason; it does not fail the backfill.

Dagster and the asset graph are imported when a backfill runs, not with this module, so
registering the command keeps ``dw --help`` and ``dw simulate`` instant.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from dw_assets.calendar import shift_week, week_start


@dataclass(frozen=True)
class WeekOutcome:
    """What the backfill built for one week.

    ``scope``: "all" (every asset the week publishes, plus its evaluation when the week
    after had landed and ``evaluate``) or "candidates" (the first landed week: up to its
    candidates). ``reason``: why a week is not built whole ("" otherwise). ``seconds``:
    wall time of the week's runs. ``report``: one line per materialized partition.
    """

    week: str
    scope: str
    reason: str
    seconds: float
    report: str


def landed_weeks(lake_root: Path | str) -> list[str]:
    """Week keys in the landing zone (a directory or ``s3://``), oldest first: the manifest's weeks (a
    simulated world), else the ``landing/events/week=<key>/`` folders."""
    from dw_assets.lake.landing_fs import read_manifest
    from dw_assets.lake.storage import open_lake

    landing = open_lake(str(lake_root)).landing_fs()
    manifest = read_manifest(landing)
    if manifest:
        return sorted(manifest["weeks"])
    return sorted(name.removeprefix("week=") for name in landing.list_folders("events") if name.startswith("week="))


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

    Each week is ``dw run --week`` for that week (``runner.materialize_week``: the history it
    lacks, week W-1's candidates when missing, then the week), except the first landed week,
    which is built up to its candidates. ``landed``: the landed week keys (default: read from
    the landing zone). ``evaluate``: also evaluate each week whose following week has landed
    (slower; otherwise the evaluation is left to ``dw evaluate`` or the evaluation schedule).
    ``ops``: Dagster run config per asset, as for ``materialize_week``.

    Raises ``RunError`` before running anything when the range is not made of landed weeks,
    and at the first week that fails, naming the weeks done.
    """
    from dw_assets.automation.runner import RunError, _run, _summarize, materialize_week, run_instance
    from dw_assets.automation.schedules import FIRST_WEEK_REASON, FIRST_WEEK_SELECTION

    landed = sorted(landed if landed is not None else landed_weeks(lake_root))
    weeks = _week_range(first_week, last_week)
    missing = [w for w in weeks if w not in landed]
    if missing:
        raise RunError(f"week(s) {', '.join(missing)} have not landed in {lake_root}/landing "
                       f"(landed: {', '.join(landed) or 'none'})")
    outcomes: list[WeekOutcome] = []
    for number, week in enumerate(weeks, start=1):
        started = time.perf_counter()
        progress(f"week {week} ({number}/{len(weeks)}): backfilling")
        try:
            if shift_week(week, -1) not in landed:
                reason = FIRST_WEEK_REASON.format(previous=shift_week(week, -1))
                result = _run(FIRST_WEEK_SELECTION, week, lake_root, run_instance(), _ops_in(FIRST_WEEK_SELECTION, ops),
                              store_url)
                scope, report = "candidates", "\n".join(_summarize(result, week))
            else:
                # Without evaluation the week after stays out of sight, so materialize_week does not evaluate.
                visible = landed if evaluate else [k for k in landed if k <= week]
                reason, scope = "", "all"
                report = materialize_week(lake_root, week, visible, progress=progress, ops=ops, store_url=store_url)
        except RunError as exc:
            done = ", ".join(o.week for o in outcomes) or "none"
            raise RunError(f"backfill stopped at week {week} (weeks done: {done}); later weeks build on it, so "
                           f"resume with --from {week} once it is fixed: {exc}") from exc
        outcome = WeekOutcome(week, scope, reason, time.perf_counter() - started, report)
        outcomes.append(outcome)
        progress(f"week {week} ({number}/{len(weeks)}): {_describe(outcome)}")
    return outcomes


def _week_range(first_week: str, last_week: str) -> list[str]:
    from dw_assets.automation.runner import RunError

    try:
        week_start(first_week), week_start(last_week)
    except ValueError as exc:
        raise RunError(str(exc)) from exc
    if last_week < first_week:
        raise RunError(f"--to {last_week} is before --from {first_week}")
    weeks = [first_week]
    while weeks[-1] < last_week:
        weeks.append(shift_week(weeks[-1], 1))
    return weeks


def _ops_in(selection, ops: dict | None) -> dict:
    """The run config of the ops that ``selection`` (an AssetSelection) runs: Dagster refuses config
    for ops outside a run."""
    from dw_assets.definitions import ALL_ASSETS

    keys = selection.resolve(ALL_ASSETS)
    names = {assets.node_def.name for assets in ALL_ASSETS if keys & set(assets.keys)}
    return {name: config for name, config in (ops or {}).items() if name in names}


def _describe(outcome: WeekOutcome) -> str:
    built = "every asset" if outcome.scope == "all" else "up to its candidates"
    return f"{built} in {outcome.seconds:.1f}s" + (f" ({outcome.reason})" if outcome.reason else "")


@click.command("backfill")
@click.option("--lake", "lake_dir", required=True, help="Lake root (holds landing/): a directory or s3://bucket/prefix.")
@click.option("--from", "first_week", required=True, help="First week key to build (Monday, YYYY-MM-DD).")
@click.option("--to", "last_week", required=True, help="Last week key to build, inclusive.")
@click.option("--store", "store_url", default=None,
              help="Serving store URL (sqlite:///path.db, redis://host:port/db, scylla://h1,h2/keyspace); "
                   "default: $DW_STORE_URL, else LAKE/serving/playlists.db.")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="Also evaluate each week whose following week has landed.")
def backfill_command(lake_dir, first_week, last_week, store_url, evaluate):
    """Materialize weeks FROM..TO through Dagster, oldest first, one week at a time (runs recorded in DAGSTER_HOME).

    The first landed week is built up to its candidates only (its ranker would learn from the week
    before it). The backfill stops at the first failing week; --from that week resumes it.
    """
    from dw_assets.automation.runner import RunError
    from dw_assets.cli import _echo_step, _lake_and_manifest
    from dw_assets.lake.storage import LakeError

    lake_root, _ = _lake_and_manifest(lake_dir)
    _echo_step(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    try:
        outcomes = backfill_weeks(lake_root, first_week, last_week, store_url=store_url, evaluate=evaluate,
                                  progress=_echo_step)
    except (RunError, LakeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for outcome in outcomes:
        click.echo(f"week {outcome.week}: {_describe(outcome)}\n{outcome.report}")
    click.echo(f"\nbackfilled {len(outcomes)} week(s) {first_week}..{last_week}; browse them: "
               f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} DW_LAKE={lake_root} dagster dev -w workspace.yaml")
