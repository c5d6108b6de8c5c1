"""The weekly jobs and their schedules: what the UI, the daemon and ``dagster job backfill`` run.

Time zone: UTC, the partitions' own (a schedule built from a partitioned job takes the
partitions' zone). Week ``W`` runs Monday 00:00 UTC to the next Monday 00:00 UTC; its
landed logs are complete only when it has closed.

When the weekly batch runs. The product runs a 24-hour batch every Sunday and serves the
result on Monday. On a Sunday the week in progress still has that day to go, so
it cannot be built: ``weekly_discover_schedule`` fires every Sunday at 00:00 UTC (the start
of the batch window) and builds the week that closed most recently, i.e. the one that
ended the Monday before (Dagster's partitioned schedule targets the last complete
partition). So the run on Sunday 2026-02-08 builds week 2026-01-26 (Mon 26 Jan to Sun
1 Feb) and publishes its playlists within that Sunday, live for Monday 2026-02-09. The six days between the week's end
and its batch absorb late-landing logs (offline plays synced later, delayed uploads). A
week that closed while the schedule was stopped is not caught up: backfill it.

The first landed week has no week before it, so no ranker trained on last week: its playlists come
from a stand-in ranker (retrieval order through the same re-ranking), which ``ranker_model`` and
``ranked_playlists`` say in their metadata.

Week W's evaluation reads week W+1's listening (the discovery holdout), which the Sunday
run that builds W+1 ingests. ``weekly_evaluation_schedule`` fires every Monday at 00:00 UTC,
when the Sunday batch window has ended, and evaluates every recent week whose playlists and
following week's listening are materialized and that has no evaluation yet
(``planner.evaluations_due``): normally the week before the one just built; a week an earlier
tick had to skip is caught up.

What runs is planned by ``automation/planner.py``, as for ``dw run`` and ``dw backfill``: the Sunday
tick requests, before the week itself, the runs of the weeks it lacks (history ingests, last week's
candidates), in order. From the UI, a backfill of ``weekly_discover_job`` (its page, "Materialize
all...", a range of weeks, or ``dagster job backfill -j weekly_discover_job --from A --to B``)
submits one run of the whole job per week, oldest first (``ONE_WEEK_PER_RUN``); every run of both
jobs carries the ``dw/weekly_batch`` tag, and a run queue limit of one run for that tag makes the
weeks run one after another in that order. The jobs' executor refuses to start a week when an
earlier week of the same backfill failed (``planner.stopped_by``): a failed week stops the weeks
after it. (A backfill launched from the asset graph is not a range of weeks: Dagster adds every
downstream partition, i.e. the next 11 weeks through the history windows and every later week's
playlists through their self-dependency.)
"""

from __future__ import annotations

from pathlib import Path

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    Executor,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    build_schedule_from_partitioned_job,
    define_asset_job,
    executor,
    in_process_executor,
    schedule,
)

from dw_assets.automation.planner import (
    DISCOVER_JOB,
    EVALUATION_JOB,
    INGEST,
    PER_WEEK_ASSETS,
    RANKER_TRAINING,
    RANKER_TRAINING_ASSETS,
    PlanError,
    Step,
    evaluations_due,
    landed_weeks,
    plan_weeks,
    stopped_by,
)
from dw_assets.calendar import shift_week
from dw_assets.evaluation.truth import has_simulator_truth
from dw_assets.lake.resources import LakeResource
from dw_assets.lake.storage import Lake
from dw_assets.partitions import weekly_partitions

SCHEDULE_TIMEZONE = "UTC"
# On every run of the weekly jobs: a run queue limit of 1 on this tag runs them one at a time, oldest
# first (one Spark session at a time; a backfill's week W after week W-1, whose candidates it needs).
WEEKLY_BATCH_TAG = "dw/weekly_batch"
# What week W publishes: every asset but the evaluation group, which needs week W+1's listening.
# Monitoring (drift, volumes, batch window) needs no holdout and runs with the week, as in `dw run`.
# The "uploads" group (the sensor's new_track_vectors) is partitioned by upload date, not by week.
DISCOVER_SELECTION = AssetSelection.all() - AssetSelection.groups("evaluation", "uploads")
# Backfill runs carry this tag (Dagster's); the executor reads the backfill's earlier weeks by it.
BACKFILL_TAG = "dagster/backfill"


def part_selection(step: Step) -> AssetSelection | None:
    """The assets of ``step``'s job that its part runs; None: the whole job."""
    if step.part == INGEST:
        return AssetSelection.assets(*PER_WEEK_ASSETS)
    if step.part == RANKER_TRAINING:
        # Within the job: candidates' upstream also holds the upload days' new_track_vectors (not weekly).
        return ((AssetSelection.assets(*RANKER_TRAINING_ASSETS).upstream() & DISCOVER_SELECTION)
                - AssetSelection.assets(*PER_WEEK_ASSETS))
    return None


class _WeekInOrderExecutor(Executor):
    """The in-process executor, refusing a backfill's week when an earlier week of it failed."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner

    @property
    def retries(self):
        return self.inner.retries

    @property
    def step_dependency_config(self):
        return self.inner.step_dependency_config

    def execute(self, plan_context, execution_plan):
        run = plan_context.dagster_run
        week, backfill = run.tags.get("dagster/partition"), run.tags.get(BACKFILL_TAG)
        if week and backfill:
            earlier = plan_context.instance.get_runs(RunsFilter(tags={BACKFILL_TAG: backfill}))
            statuses: dict[str, str] = {}
            for other in sorted(earlier, key=lambda r: r.run_id):  # any failed run of a week counts
                key = other.tags.get("dagster/partition")
                if key and other.run_id != run.run_id and other.status in (
                        DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                    statuses[key] = other.status.value
            reason = stopped_by(week, statuses)
            if reason:
                raise RuntimeError(reason)
        yield from self.inner.execute(plan_context, execution_plan)


@executor(name="in_process", config_schema=in_process_executor.config_schema)
def week_in_order_executor(init_context):
    """``in_process_executor`` (one process, one Spark session per run) with the stop rule of
    ``planner.stopped_by``: a failed week of a backfill stops the weeks after it."""
    return _WeekInOrderExecutor(in_process_executor.executor_creation_fn(init_context))


def evaluation_selection(lake_root: Path | str) -> AssetSelection:
    """The evaluation group (and the monitoring its report shows); the simulated A/B only where the simulator's truth is."""
    selection = AssetSelection.groups("evaluation", "monitoring")
    return selection if has_simulator_truth(lake_root) else selection - AssetSelection.assets("simulated_ab_test")


# One process per run: every Spark asset of the run shares one local Spark session (JVM).
weekly_discover_job = define_asset_job(
    DISCOVER_JOB,
    selection=DISCOVER_SELECTION,
    partitions_def=weekly_partitions,
    executor_def=week_in_order_executor,
    tags={WEEKLY_BATCH_TAG: "discover"},
    description="Everything week W publishes, from landed logs to the serving store (not the evaluation, "
                "which needs week W+1). Week W-1 must already have its candidates (W's ranker trains on them); "
                "the first landed week's playlists come from a stand-in ranker (retrieval order).",
)


def evaluation_job(lake_root: Path | str):
    """The weekly evaluation job (an unresolved asset job) for the lake at ``lake_root``: the simulated A/B
    test only in a simulated world."""
    return define_asset_job(
        EVALUATION_JOB,
        selection=evaluation_selection(lake_root),
        partitions_def=weekly_partitions,
        executor_def=week_in_order_executor,
        tags={WEEKLY_BATCH_TAG: "evaluation"},
        description="Week W's evaluation on the discovery holdout (week W+1's listening), the simulated A/B "
                    "test, monitoring and the report. Needs W's playlists and W+1's interactions.",
    )


# The deployment's lake (DW_LAKE) decides whether the job has the simulated A/B test.
weekly_evaluation_job = evaluation_job(LakeResource().root)

# Cron, time zone and target week come from the partitioned job: Sundays 00:00 UTC, last closed week.
_last_closed_week = build_schedule_from_partitioned_job(
    weekly_discover_job, name="weekly_discover_schedule", day_of_week=0, hour_of_day=0, minute_of_hour=0
)


@schedule(
    name="weekly_discover_schedule",
    cron_schedule=_last_closed_week.cron_schedule,
    execution_timezone=_last_closed_week.execution_timezone,
    job=weekly_discover_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Sundays 00:00 UTC: builds and publishes the week that closed most recently (it ended the "
                "Monday before), after the runs of earlier weeks it lacks (planner.plan_weeks).",
)
def weekly_discover_schedule(context: ScheduleEvaluationContext, lake: LakeResource):
    request = _last_closed_week(context)
    if not isinstance(request, RunRequest):
        return request
    week = request.partition_key
    # The planner's inputs as `dw run` reads them: the landing zone's weeks, the instance checked against the lake.
    landed = [k for k in landed_weeks(lake.root) if k <= week]
    try:
        plan = plan_weeks([week], landed, materialized(context.instance, lake.open(), ("interactions", "candidates")),
                          evaluate=False)
    except PlanError as exc:  # e.g. the week's logs have not landed: the next tick (or a backfill) builds it
        return SkipReason(f"week {week} not built: {exc}")
    requests = []
    for step in plan.steps:
        selection = part_selection(step)
        tags = {**request.tags, "dw/part": step.part} | ({"dw/stand_in": step.why} if step.stand_in else {})
        if selection is None:
            requests.append(request.with_replaced_attrs(tags=tags))
        else:
            keys = selection.resolve(context.repository_def.asset_graph)
            requests.append(RunRequest(run_key=f"{week}/{step.key}", partition_key=step.week, tags=tags,
                                       asset_selection=sorted(keys)))
    return requests


# The lake layer of each asset the planner asks about.
PLANNED_LAYERS = {"interactions": "silver", "candidates": "gold", "ranked_playlists": "gold",
                  "offline_evaluation": "gold"}


def materialized(instance: DagsterInstance, lake: Lake, assets=tuple(PLANNED_LAYERS)) -> dict[str, set[str]]:
    """Asset name -> the weeks the instance has materialized whose files the lake still holds (a lake rebuilt
    under the same DAGSTER_HOME lost them): the planner's view, for the commands and the schedules alike."""
    return {name: {w for w in instance.get_materialized_partitions(AssetKey(name))
                   if lake.exists(lake.uri(PLANNED_LAYERS[name], name, w))} for name in assets}


def evaluable_weeks(instance: DagsterInstance, lake: Lake, closed_weeks: list[str]) -> list[str]:
    """``planner.evaluations_due`` on what the instance has materialized (checked against the lake)."""
    return evaluations_due(closed_weeks, materialized(
        instance, lake, ("ranked_playlists", "interactions", "offline_evaluation")))


@schedule(
    name="weekly_evaluation_schedule",
    cron_schedule="0 0 * * 1",
    execution_timezone=SCHEDULE_TIMEZONE,
    job=weekly_evaluation_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Mondays 00:00 UTC, after the Sunday batch: evaluates each recent week whose playlists and "
                "following week's listening are materialized and that has no evaluation yet.",
)
def weekly_evaluation_schedule(context: ScheduleEvaluationContext, lake: LakeResource):
    closed = list(weekly_partitions.get_partition_keys(current_time=context.scheduled_execution_time))
    weeks = evaluable_weeks(context.instance, lake.open(), closed)
    if not weeks:
        newest = closed[-2] if len(closed) > 1 else None
        return SkipReason(
            "no week to evaluate: " + (f"the newest week with a closed holdout is {newest}; it needs its "
                                       f"ranked_playlists and week {shift_week(newest, 1)}'s interactions "
                                       "materialized, and no offline_evaluation yet" if newest
                                       else "no week has a closed holdout week yet"))
    # One run per week and tick: a week whose evaluation failed is still due, and the next tick retries it
    # (a run key of the week alone would make Dagster skip it for good).
    tick = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [RunRequest(partition_key=week, run_key=f"{week}@{tick}", tags={"dw/holdout_week": shift_week(week, 1)})
            for week in weeks]


schedules = [weekly_discover_schedule, weekly_evaluation_schedule]
jobs = [weekly_discover_job, weekly_evaluation_job]
