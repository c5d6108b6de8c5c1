"""Execute a plan (``automation/planner.py``) in process, as ``dw run`` and ``dw backfill`` do.

Every run is a run of a job the code location defines (``weekly_discover_job`` or
``weekly_evaluation_job``, or a part of it: an asset selection of that job), bound to the lake and
store the command names; it carries the jobs' ``dw/weekly_batch`` tag, so the run queue holds UI runs
while it runs, and it waits (``DW_QUEUE_WAIT_S``, default 1800 s) while another weekly run is in
progress, as the queue's limit of one would. Execution options of the same plan: each step runs
through ``execute_job`` (each output dropped once stored: the in-process memory control), and
week W's item2vec trains in a second process while week W-1's ranker-training assets build
(``alongside``).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    JobDefinition,
    JobExecutionResult,
    RunConfig,
    RunsFilter,
    build_reconstructable_job,
    execute_job,
)

from dw_assets import settings
from dw_assets.automation.planner import (
    DISCOVER_JOB,
    EVALUATION,
    EVALUATION_JOB,
    INGEST,
    PER_WEEK_ASSETS,
    RANKER_TRAINING,
    WEEK,
    Plan,
    Step,
    plan_weeks,
)
from dw_assets.automation.schedules import (
    WEEKLY_BATCH_TAG,
    evaluation_job,
    evaluation_selection,
    materialized,
    part_selection,
    weekly_discover_job,
)
from dw_assets.calendar import shift_week
from dw_assets.definitions import ALL_ASSETS, build_resources
from dw_assets.embeddings.two_tower_data import SERVING_SETTINGS

# Trained in a second process while week W-1's models train: single-threaded (gensim with one worker
# is what makes it deterministic), so on its own it leaves the other core idle (~80 s a week on `small`).
ALONGSIDE_ASSETS = ("item2vec_embeddings",)
# Their failed checks are alerts (the summary and the UI show them); they do not fail a run.
ALERT_ONLY = ("model_monitoring",)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
PLAN_TAG = "dw/plan"  # the runs of one command's plan (its alongside runs may overlap each other)
IN_PROGRESS = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)
# What a command's run waits behind: weekly runs in progress, and those queued before it (oldest first).
AHEAD_IN_QUEUE = (DagsterRunStatus.QUEUED, *IN_PROGRESS)


class RunError(RuntimeError):
    """A Dagster run failed or a blocking check stopped it."""


def run_instance() -> DagsterInstance:
    """The instance in ``DAGSTER_HOME`` (created on first use), so the web UI shows these runs."""
    home = settings.get("DAGSTER_HOME")
    if not home:
        raise RunError("DAGSTER_HOME is not set: runs must be recorded where `dagster dev` can show them")
    Path(home).mkdir(parents=True, exist_ok=True)
    instance_yaml = Path(home) / "dagster.yaml"
    if not instance_yaml.exists():
        # One weekly run at a time, oldest first (a UI backfill's week W needs W-1's candidates; one JVM).
        instance_yaml.write_text("telemetry:\n  enabled: false\nrun_queue:\n  tag_concurrency_limits:\n"
                                 f"    - key: {WEEKLY_BATCH_TAG}\n      limit: 1\n")
    instance = DagsterInstance.get()
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits or []
    if not any(rule.get("key") == WEEKLY_BATCH_TAG and "value" not in rule and rule.get("limit") == 1
               for rule in limits):
        # Without it a UI backfill or the schedule runs weeks side by side: week W would not find W-1's candidates.
        raise RunError(f"{instance_yaml} has no run queue limit of one run for the tag {WEEKLY_BATCH_TAG}: add "
                       f"`tag_concurrency_limits: [{{key: {WEEKLY_BATCH_TAG}, limit: 1}}]` under `run_queue` (or "
                       "the QueuedRunCoordinator's config), as docs/operations.md shows")
    return instance


@functools.lru_cache(maxsize=16)
def registered_job(job_name: str, lake_root: str, store_url: str | None) -> JobDefinition:
    """The code location's job ``job_name`` (same name, selection, tags and executor) bound to the lake at
    ``lake_root`` and its store: what every run of a plan executes (a part of it by asset selection)."""
    jobs = [weekly_discover_job, evaluation_job(lake_root)]
    defs = Definitions(assets=ALL_ASSETS, jobs=jobs, resources=build_resources(lake_root, store_url))
    return defs.resolve_job_def(job_name)


def _job_for(keys: set[AssetKey], lake_root: str, store_url: str | None) -> str:
    for name in (DISCOVER_JOB, EVALUATION_JOB):
        if keys <= set(registered_job(name, lake_root, store_url).asset_layer.selected_asset_keys):
            return name
    raise RunError(f"no weekly job holds all of {sorted(k.to_user_string() for k in keys)}")


def _wait_for_the_queue(instance: DagsterInstance, plan_id: str, progress: Callable[[str], None]) -> None:
    """Wait while a weekly run of another plan (the UI's, another command's) is in progress or queued: the
    run queue's limit of one weekly run at a time, oldest first, for runs launched in process."""
    limit = settings.get("DW_QUEUE_WAIT_S")
    started, told = time.monotonic(), False
    while True:
        busy = [r for r in instance.get_runs(RunsFilter(statuses=list(AHEAD_IN_QUEUE)))
                if WEEKLY_BATCH_TAG in r.tags and r.tags.get(PLAN_TAG) != plan_id]
        if not busy:
            return
        state = busy[0].status.value.lower()
        if time.monotonic() - started > limit:
            raise RunError(f"weekly run {busy[0].run_id} ({busy[0].job_name}) is still {state} after "
                           f"{limit:.0f}s (DW_QUEUE_WAIT_S): one weekly run at a time, oldest first (a queued "
                           "run needs the daemon: `dagster-daemon run`, or `dagster dev`)")
        if not told:
            progress(f"waiting for weekly run {busy[0].run_id[:8]} ({busy[0].job_name}, {state}) to finish")
            told = True
        time.sleep(5)


def op_config(ops: RunConfig | dict | None) -> dict:
    """``{op: {"config": {...}}}`` of ``ops``: a ``dagster.RunConfig`` whose ``ops`` hold the assets'
    typed ``Config`` objects (its resources and loggers are not taken: a plan's runs are bound to
    the command's lake and store), or a run-config dict of that shape."""
    if ops is None:
        return {}
    if isinstance(ops, RunConfig):
        return RunConfig(ops=ops.ops).to_config_dict()["ops"]
    return dict(ops)


# The assets that serve a week's two-tower beside tower_embeddings: its serving settings are in the
# vectors' version, so theirs must be the same (they fail naming the settings otherwise).
SERVING_READERS = ("last_week_playlists", "new_track_vectors")


def with_serving_settings(ops: dict) -> dict:
    """``ops`` with ``tower_embeddings``' serving settings (``SERVING_SETTINGS``) copied to the
    ``SERVING_READERS`` that do not set them: one setting, one place, for a run of the runner."""
    served = {k: v for k, v in ((ops.get("tower_embeddings") or {}).get("config") or {}).items()
              if k in SERVING_SETTINGS}
    if not served:
        return ops
    out = dict(ops)
    for name in SERVING_READERS:
        given = dict((out.get(name) or {}).get("config") or {})
        out[name] = {**(out.get(name) or {}), "config": {**served, **given}}
    return out


def run_selection(
    selection: AssetSelection | None, week: str, lake_root: Path | str, instance: DagsterInstance,
    ops: RunConfig | dict | None = None, store_url: str | None = None, job_name: str | None = None, plan_id: str | None = None,
    progress: Callable[[str], None] = lambda m: None, tags: dict[str, str] | None = None,
) -> JobExecutionResult:
    """One run of a registered job (``job_name``, default: the one holding the selection) for ``week``:
    ``selection`` of it (None: the whole job). Raises RunError when it fails or a blocking check fails."""
    plan_id = plan_id or uuid.uuid4().hex
    lake_root = str(lake_root)
    if job_name is None:
        keys = (selection or AssetSelection.all()).resolve(registered_job(DISCOVER_JOB, lake_root, store_url)
                                                           .asset_layer.asset_graph)
        job_name = _job_for(set(keys), lake_root, store_url)
    job_def = registered_job(job_name, lake_root, store_url)
    selectable = set(job_def.asset_layer.selected_asset_keys)
    keys = selectable if selection is None else set(selection.resolve(job_def.asset_layer.asset_graph)) & selectable
    # Only the ops this run executes take config (Dagster refuses config for ops outside a run).
    names = {assets.node_def.name for assets in ALL_ASSETS if keys & set(assets.keys)}
    ops = {name: config for name, config in with_serving_settings(op_config(ops)).items() if name in names}
    _wait_for_the_queue(instance, plan_id, progress)
    # execute_job, not materialize(): an in-process materialize() keeps every step's output in
    # memory until the run ends (models, frames: ~2 GB on `small`); this drops each once stored.
    job = build_reconstructable_job("dw_assets.automation.runner", "registered_job",
                                    reconstructable_args=(job_name, lake_root, store_url))
    result = execute_job(job, instance, run_config={**QUIET, "ops": ops},
                         tags={**job_def.run_tags, "dagster/partition": week, PLAN_TAG: plan_id, **(tags or {})},
                         asset_selection=sorted(keys), raise_on_error=False)
    failed_checks = [
        f"{e.asset_key.to_user_string()}:{e.check_name} {_evidence(e.metadata)}"
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == AssetCheckSeverity.ERROR and e.asset_key.to_user_string() not in ALERT_ONLY
    ]
    if not result.success or failed_checks:
        # Step failures, and errors raised before any step (the executor's stop rule).
        failures = list(dict.fromkeys(
            str(error.message).strip() for ev in result.all_events
            if (ev.is_step_failure or ev.is_run_failure or ev.is_engine_event)
            and (error := getattr(ev.event_specific_data, "error", None)) is not None))
        raise RunError(
            f"run {result.run_id} for week {week} failed"
            + (f"; failed checks: {', '.join(failed_checks)}" if failed_checks else "")
            + (f"; {' | '.join(failures)[:2000]}" if failures else "")
        )
    return result


def _run_apart(names: tuple[str, ...], week: str, lake_root: str, ops: RunConfig | dict | None,
               store_url: str | None, plan_id: str) -> tuple[str, list[str]]:
    """``run_selection`` in a process of its own (the alongside option): its run id and summary lines."""
    result = run_selection(AssetSelection.assets(*names), week, lake_root, run_instance(), ops, store_url,
                           DISCOVER_JOB, plan_id)
    return result.run_id, summarize(result, week)


def _evidence(metadata) -> str:
    sample = metadata.get("failure_sample")
    return f"\n{getattr(sample, 'value', sample)}\n" if sample is not None else ""


def summarize(result: JobExecutionResult, week: str) -> list[str]:
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


def execute_plan(
    plan: Plan, lake_root: Path | str, ops: RunConfig | dict | None = None, store_url: str | None = None,
    progress: Callable[[str], None] = print, alongside: bool = True,
    on_week: Callable[[Step, list[str], float], None] | None = None,
) -> list[str]:
    """Run ``plan``'s steps in order, each a run of its registered job; the summary lines of every
    materialized partition. ``alongside``: when a week's step follows week W-1's ranker-training
    step, ingest W first and train W's item2vec in a second process beside W-1's models.
    ``on_week``: called after each whole-week step with its summary lines and seconds (backfill
    outcomes). Raises RunError at the first failed step."""
    lake_root, instance, plan_id = str(lake_root), run_instance(), uuid.uuid4().hex
    ops = op_config(ops)  # a plain dict: it goes to the alongside process too
    report: list[str] = []
    steps = list(plan.steps)

    def run(selection, step: Step, what: str, job: str | None = None) -> list[str]:
        started = time.perf_counter()
        result = run_selection(selection, step.week, lake_root, instance, ops, store_url, job or step.job, plan_id,
                               progress)
        progress(f"week {step.week}: {what} in {time.perf_counter() - started:.1f}s (run {result.run_id[:8]})")
        return summarize(result, step.week)

    index, week_started = 0, time.perf_counter()
    while index < len(steps):
        step = steps[index]
        follower = steps[index + 1] if index + 1 < len(steps) else None
        if (alongside and step.part == RANKER_TRAINING and follower and follower.part == WEEK
                and follower.week == shift_week(step.week, 1)):
            week = follower.week
            lines = run(AssetSelection.assets(*PER_WEEK_ASSETS), Step(DISCOVER_JOB, week, INGEST, ""), "ingested")
            started = time.perf_counter()
            # spawn, not fork: this process holds a JVM gateway and Dagster's threads. One task per child: the
            # process (and its Spark JVM, ~2.4 GB on the demo) exits when its run ends, not when W-1's does.
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
                apart = pool.submit(_run_apart, ALONGSIDE_ASSETS, week, lake_root, ops, store_url, plan_id)
                lines += run(part_selection(step), step, "candidates for ranker training built")
                run_id, more = apart.result()
            progress(f"week {week}: {', '.join(ALONGSIDE_ASSETS)} trained alongside in "
                     f"{time.perf_counter() - started:.1f}s (run {run_id[:8]})")
            rest = weekly_discover_job_selection() - AssetSelection.assets(*PER_WEEK_ASSETS, *ALONGSIDE_ASSETS)
            lines += more + run(rest, follower, "all assets materialized")
            report += lines
            if on_week:
                on_week(follower, lines, time.perf_counter() - week_started)
            week_started, index = time.perf_counter(), index + 2
            continue
        what = {INGEST: "ingested", RANKER_TRAINING: "candidates for ranker training built",
                WEEK: "all assets materialized" + (" (stand-in ranker: first landed week)" if step.stand_in else ""),
                }.get(step.part, "evaluation materialized")
        selection = evaluation_selection(lake_root) if step.job == EVALUATION_JOB else part_selection(step)
        lines = run(selection, step, what)
        report += lines
        if step.part == WEEK and on_week:
            on_week(step, lines, time.perf_counter() - week_started)
            week_started = time.perf_counter()
        index += 1
    return report


def weekly_discover_job_selection() -> AssetSelection:
    from dw_assets.automation.schedules import DISCOVER_SELECTION

    return DISCOVER_SELECTION


def materialize_week(
    lake_root: Path | str,
    week: str,
    known_weeks: list[str] | None,
    rebuild_history: bool = False,
    progress: Callable[[str], None] = print,
    ops: RunConfig | dict | None = None,
    store_url: str | None = None,
) -> str:
    """Plan and run ``week`` (``dw run``): the history it lacks, week W-1's candidates when missing,
    the week, and its evaluation when the week after it has landed.

    ``lake_root``: a directory or ``s3://bucket/prefix`` (landing zone under it); an S3 lake is checked
    first (``Lake.verify``) and nothing falls back to a local folder. ``known_weeks``: the landed
    weeks (default: read from the landing zone). The first landed week gets the stand-in ranker.
    ``ops``: the assets' run config, typed: ``RunConfig(ops={"audio_embeddings": AudioAssetConfig(epochs=5)})``
    (a dict ``{"audio_embeddings": {"config": {"epochs": 5}}}`` is taken too).
    """
    from dw_assets.automation.planner import PlanError, landed_weeks

    lake_root = str(lake_root)
    instance = run_instance()
    # Builds the store resource too: a store URL carrying credentials is refused before any run.
    resources = build_resources(lake_root, store_url)
    lake = resources["lake"].open()
    lake.verify()  # an S3 lake's bucket, endpoint and credentials: one clear error before any run
    if not resources["playlist_store"].url:
        raise RunError(f"no serving store for the lake {lake.root} (an S3 lake has no embedded store beside it): "
                       "pass --store or set DW_STORE_URL")
    landed = known_weeks if known_weeks is not None else landed_weeks(lake_root)
    try:
        plan = plan_weeks([week], landed, materialized(instance, lake), rebuild_history=rebuild_history)
    except PlanError as exc:
        raise RunError(str(exc)) from exc
    report = execute_plan(plan, lake_root, ops, store_url, progress)
    return "materialized:\n" + "\n".join(report)


def evaluate_week(lake_root: Path | str, week: str, known_weeks: list[str] | None, refresh: bool = False,
                  progress: Callable[[str], None] = print, ops: RunConfig | dict | None = None,
                  selection: AssetSelection | None = None) -> None:
    """Evaluate ``week`` after ``dw run`` built it, as ``planner.plan_evaluation`` plans it: its holdout's
    ingest when missing, then the evaluation (once; ``refresh`` re-runs it). ``selection``: a part of the
    evaluation job (``dw ab``: the simulated A/B test and what it needs), always run."""
    from dw_assets.automation.planner import PlanError, landed_weeks, plan_evaluation

    lake_root = str(lake_root)
    lake = build_resources(lake_root)["lake"].open()
    lake.verify()
    instance = run_instance()
    landed = known_weeks if known_weeks is not None else landed_weeks(lake_root)
    full = evaluation_selection(lake_root)
    try:
        plan = plan_evaluation(week, landed, materialized(instance, lake),
                               refresh=refresh or (selection is not None and selection != full))
    except PlanError as exc:
        raise RunError(f"{exc} (lake {lake_root})") from exc
    for step in plan.steps:
        started = time.perf_counter()
        if step.part == EVALUATION:
            result = run_selection(selection or full, week, lake_root, instance, ops, job_name=EVALUATION_JOB)
            progress(f"week {week}: evaluation materialized in {time.perf_counter() - started:.1f}s "
                     f"(run {result.run_id[:8]})")
        else:
            result = run_selection(part_selection(step), step.week, lake_root, instance, job_name=DISCOVER_JOB)
            progress(f"week {step.week}: holdout ingested for evaluation (run {result.run_id[:8]})")

