"""Materialize a week (and the history it needs) through Dagster, as ``dw run`` does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from dagster import (
    AssetCheckSeverity,
    AssetSelection,
    DagsterInstance,
    Definitions,
    JobDefinition,
    JobExecutionResult,
    build_reconstructable_job,
    define_asset_job,
    execute_job,
    in_process_executor,
)

from dw_assets.automation.schedules import evaluation_selection
from dw_assets.calendar import shift_week
from dw_assets.definitions import ALL_ASSETS, build_resources
from dw_assets.partitions import HISTORY_WEEKS

# What one week contributes to later weeks' history windows.
PER_WEEK_ASSETS = (
    "track_catalog", "user_directory", "user_playlists", "raw_play_events", "quarantined_events",
    "interactions", "flagged_activity",
)
# What week W's ranker reads from week W-1 (built first when missing).
RANKER_TRAINING_ASSETS = ("candidates", "track_stats", "user_profiles")
# Trained in a second process while week W-1's models train: single-threaded (gensim with one worker
# is what makes it deterministic), so on its own it leaves the other core idle (~80 s a week on `small`).
ALONGSIDE_ASSETS = ("item2vec_embeddings",)
# Their failed checks are alerts (the summary and the UI show them); they do not fail a run.
ALERT_ONLY = ("model_monitoring",)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class RunError(RuntimeError):
    """A Dagster run failed or a blocking check stopped it."""


def run_instance() -> DagsterInstance:
    """The instance in ``DAGSTER_HOME`` (created on first use), so the web UI shows these runs."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise RunError("DAGSTER_HOME is not set: runs must be recorded where `dagster dev` can show them")
    Path(home).mkdir(parents=True, exist_ok=True)
    settings = Path(home) / "dagster.yaml"
    if not settings.exists():
        # One weekly run at a time, oldest first (a UI backfill's week W needs W-1's candidates; one JVM).
        settings.write_text("telemetry:\n  enabled: false\nrun_queue:\n  tag_concurrency_limits:\n"
                            "    - key: dw/weekly_batch\n      limit: 1\n")
    return DagsterInstance.get()


def history_weeks(week: str, known_weeks: list[str] | None) -> list[str]:
    """Earlier weeks inside ``week``'s 12-week window that the landing zone has."""
    first = shift_week(week, -(HISTORY_WEEKS - 1))
    return [k for k in (known_weeks or []) if first <= k < week]


RUN_JOB = "dw_run"


def run_job(lake_root: str, store_url: str | None) -> JobDefinition:
    """Every weekly asset on one lake and store, in process: the job ``dw run`` executes selections of."""
    defs = Definitions(assets=ALL_ASSETS, jobs=[define_asset_job(RUN_JOB)],
                       resources=build_resources(lake_root, store_url), executor=in_process_executor)
    return defs.resolve_job_def(RUN_JOB)


def _run(
    selection: AssetSelection | None, week: str, lake_root: Path | str, instance: DagsterInstance, ops: dict | None = None,
    store_url: str | None = None,
) -> JobExecutionResult:
    # execute_job, not materialize(): an in-process materialize() keeps every step's output in
    # memory until the run ends (models, frames: ~2 GB on `small`); this drops each once stored.
    job = build_reconstructable_job("dw_assets.automation.runner", "run_job",
                                    reconstructable_args=(str(lake_root), store_url))
    keys = (selection or AssetSelection.all()).resolve(run_job(str(lake_root), store_url).asset_layer.asset_graph)
    result = execute_job(job, instance, run_config={**QUIET, "ops": ops or {}}, tags={"dagster/partition": week},
                         asset_selection=sorted(keys), raise_on_error=False)
    failed_checks = [
        f"{e.asset_key.to_user_string()}:{e.check_name} {_evidence(e.metadata)}"
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == AssetCheckSeverity.ERROR and e.asset_key.to_user_string() not in ALERT_ONLY
    ]
    if not result.success or failed_checks:
        failures = [str(ev.event_specific_data.error.message).strip()
                    for ev in result.all_events if ev.is_step_failure and ev.event_specific_data]
        raise RunError(
            f"run {result.run_id} for week {week} failed"
            + (f"; failed checks: {', '.join(failed_checks)}" if failed_checks else "")
            + (f"; {' | '.join(failures)[:2000]}" if failures else "")
        )
    return result


def _run_apart(names: tuple[str, ...], week: str, lake_root: str, ops: dict | None,
               store_url: str | None) -> tuple[str, list[str]]:
    """``_run`` in a process of its own (spawned by ``materialize_week``): its run id and summary lines."""
    result = _run(AssetSelection.assets(*names), week, lake_root, run_instance(), ops, store_url)
    return result.run_id, _summarize(result, week)


def _evidence(metadata) -> str:
    sample = metadata.get("failure_sample")
    return f"\n{getattr(sample, 'value', sample)}\n" if sample is not None else ""


def _summarize(result: JobExecutionResult, week: str) -> list[str]:
    order = ("pass", "warn", "alert", "FAIL")
    checks: dict[str, str] = {}
    for e in result.get_asset_check_evaluations():  # the worst check of each asset
        name = e.asset_key.to_user_string()
        status = "pass" if e.passed else "warn" if e.severity != AssetCheckSeverity.ERROR else (
            "alert" if name in ALERT_ONLY else "FAIL")
        checks[name] = max(checks.get(name, "pass"), status, key=order.index)
    lines = []
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        name = mat.asset_key.to_user_string()
        rows = mat.metadata.get("dagster/row_count")
        rows_text = f"{rows.value:>12,}" if rows is not None else " " * 12
        lines.append(f"  {name:<22} {week}  rows {rows_text}  check {checks.get(name, '-')}")
    return lines


def materialize_week(
    lake_root: Path | str,
    week: str,
    known_weeks: list[str] | None,
    rebuild_history: bool = False,
    progress: Callable[[str], None] = print,
    ops: dict | None = None,
    store_url: str | None = None,
) -> str:
    """Materialize the history window's per-week assets (when missing), then all of ``week``.

    ``lake_root``: a directory or ``s3://bucket/prefix`` (landing zone under it); an S3 lake is checked
    first (``Lake.verify``) and nothing falls back to a local folder.

    ``known_weeks``: the landed weeks. When the week after ``week`` is among them
    (a replayed past week, or the simulator's holdout) it is ingested too and the
    evaluation assets run; otherwise they are left for next week.

    ``ops``: Dagster run config per asset, e.g. ``{"audio_embeddings": {"config": {"epochs": 5}}}``.
    """
    instance = run_instance()
    # Builds the store resource too: a store URL carrying credentials is refused before any run.
    resources = build_resources(str(lake_root), store_url)
    lake = resources["lake"].open()
    lake.verify()  # an S3 lake's bucket, endpoint and credentials: one clear error before any run
    if not resources["playlist_store"].url:
        raise RunError(f"no serving store for the lake {lake.root} (an S3 lake has no embedded store beside it): "
                       "pass --store or set DW_STORE_URL")
    report = []

    def ingest(target: str, what: str) -> None:
        started = time.perf_counter()
        result = _run(AssetSelection.assets(*PER_WEEK_ASSETS), target, lake_root, instance)
        progress(f"week {target}: {what} in {time.perf_counter() - started:.1f}s (run {result.run_id[:8]})")
        report.extend(_summarize(result, target))

    previous = shift_week(week, -1)
    if previous not in (known_weeks or []):
        raise RunError(f"week {week} has no landed week before it: its ranker learns from week {previous}'s "
                       "candidates labelled by this week's listening, so start from the second landed week")
    # Week W-1's models read W-12..W-1, so the history starts a week earlier than W's own window.
    for earlier in sorted(set(history_weeks(previous, known_weeks)) | set(history_weeks(week, known_weeks))):
        if not rebuild_history and lake.exists(lake.uri("silver", "interactions", earlier)):
            progress(f"week {earlier}: already in the lake, kept")
            continue
        ingest(earlier, "history materialized")
    # The ranker of week W learns from W-1's candidates, labelled by W's listening.
    built_ahead: tuple[str, ...] = ()
    if rebuild_history or not lake.exists(lake.uri("gold", "candidates", previous)):
        # Week W's own history first, so W's item2vec can train in a second process alongside W-1's models.
        ingest(week, "ingested")
        started = time.perf_counter()
        # spawn, not fork: this process holds a JVM gateway and Dagster's threads.
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            alongside = pool.submit(_run_apart, ALONGSIDE_ASSETS, week, str(lake_root), ops, store_url)
            selection = (AssetSelection.assets(*RANKER_TRAINING_ASSETS).upstream()
                         - AssetSelection.assets(*PER_WEEK_ASSETS))
            result = _run(selection, previous, lake_root, instance, ops)
            progress(f"week {previous}: candidates for ranker training built in {time.perf_counter() - started:.1f}s")
            report += _summarize(result, previous)
            run_id, lines = alongside.result()
        progress(f"week {week}: {', '.join(ALONGSIDE_ASSETS)} trained alongside (run {run_id[:8]})")
        report += lines
        built_ahead = PER_WEEK_ASSETS + ALONGSIDE_ASSETS
    # Week W's evaluation reads W+1's listening; only a replayed past week has it.
    holdout = shift_week(week, 1)
    evaluable = holdout in (known_weeks or [])
    if evaluable and (rebuild_history or not lake.exists(lake.uri("silver", "interactions", holdout))):
        ingest(holdout, "holdout ingested for evaluation")
    selection = AssetSelection.all() - AssetSelection.groups("evaluation") - AssetSelection.assets(*built_ahead)
    if evaluable:
        selection = selection | evaluation_selection(lake_root)
    started = time.perf_counter()
    result = _run(selection, week, lake_root, instance, ops, store_url)
    progress(f"week {week}: all assets materialized in {time.perf_counter() - started:.1f}s (run {result.run_id[:8]})")
    report += _summarize(result, week)
    return "materialized:\n" + "\n".join(report)


def evaluate_week(lake_root: Path | str, week: str, known_weeks: list[str] | None, refresh: bool = False,
                  progress: Callable[[str], None] = print, ops: dict | None = None,
                  selection: AssetSelection | None = None) -> None:
    """Materialize ``week``'s evaluation assets (once; ``refresh`` re-runs them) after ``dw run`` built the week."""
    lake = build_resources(str(lake_root))["lake"].open()
    lake.verify()
    holdout = shift_week(week, 1)
    if not lake.exists(lake.uri("gold", "ranked_playlists", week)):
        raise RunError(f"week {week} has no playlists in {lake_root}: run `dw run --lake {lake_root} --week {week}` "
                       "first")
    if not lake.exists(lake.uri("silver", "interactions", holdout)):
        if holdout not in (known_weeks or []):
            raise RunError(f"week {week} cannot be evaluated yet: its holdout week {holdout} has not landed")
        result = _run(AssetSelection.assets(*PER_WEEK_ASSETS), holdout, lake_root, run_instance())
        progress(f"week {holdout}: holdout ingested for evaluation (run {result.run_id[:8]})")
    selection = selection or evaluation_selection(lake_root)
    if not refresh and lake.exists(lake.uri("gold", "offline_evaluation", week)) and selection == evaluation_selection(
            lake_root):
        return
    started = time.perf_counter()
    result = _run(selection, week, lake_root, run_instance(), ops)
    progress(f"week {week}: evaluation materialized in {time.perf_counter() - started:.1f}s (run {result.run_id[:8]})")
