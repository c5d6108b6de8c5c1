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

The first week of history has no week before it, so no ranker (it learns from week
W-1's candidates labelled by W's listening) and no playlists: its tick builds everything
up to its candidates, which the next week's ranker trains on.

Week W's evaluation reads week W+1's listening (the discovery holdout), which the Sunday
run that builds W+1 ingests. ``weekly_evaluation_schedule`` fires every Monday at 00:00 UTC,
when the Sunday batch window has ended, and evaluates every recent week whose playlists and
following week's listening are materialized and that has no evaluation yet: normally the
week before the one just built (Monday 2026-02-16 evaluates week 2026-01-26, whose holdout
week 2026-02-02 was built on Sunday 2026-02-15); a week an earlier tick had to skip is
caught up.

A single run is one week: it cannot build week W-1's missing candidates for W's ranker.
A range of weeks (and a fresh lake) is a backfill. ``dw backfill`` runs the weeks in order,
builds the first week up to its candidates and stops at a failed week. From the UI, a
backfill of ``weekly_discover_job`` (its page, "Materialize all...", a range of weeks, or
``dagster job backfill -j weekly_discover_job --from A --to B``) submits one run of the
whole job per week, oldest first (``ONE_WEEK_PER_RUN``); every run of both jobs carries
the ``dw/weekly_batch`` tag, and a run queue limit of one run for that tag makes the weeks
run one after another in that order. Start such a range at the second landed week: the
first week's run builds its candidates, then fails at ``ranker_model``. (A backfill
launched from the asset graph is not a range of weeks: Dagster adds every downstream
partition, i.e. the next 11 weeks through the history windows and every later week's
playlists through their self-dependency.)
"""

from __future__ import annotations

from pathlib import Path

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    build_schedule_from_partitioned_job,
    define_asset_job,
    in_process_executor,
    schedule,
)

from dw_assets.calendar import shift_week
from dw_assets.lake.resources import LakeResource
from dw_assets.partitions import HISTORY_WEEKS, weekly_partitions

SCHEDULE_TIMEZONE = "UTC"
# On every run of the weekly jobs: a run queue limit of 1 on this tag runs them one at a time, oldest
# first (one Spark session at a time; a backfill's week W after week W-1, whose candidates it needs).
WEEKLY_BATCH_TAG = "dw/weekly_batch"
# What week W publishes: every asset but the evaluation group, which needs week W+1's listening.
# Monitoring (drift, volumes, batch window) needs no holdout and runs with the week, as in `dw run`.
# The "uploads" group (the sensor's new_track_vectors) is partitioned by upload date, not by week.
DISCOVER_SELECTION = AssetSelection.all() - AssetSelection.groups("evaluation", "uploads")
# What the first week of history can build: no week before it, so no ranker and nothing downstream.
FIRST_WEEK_SELECTION = DISCOVER_SELECTION - AssetSelection.assets("ranker_model").downstream()
FIRST_WEEK_REASON = (
    "first week of history: its ranker would learn from week {previous}'s candidates labelled by this "
    "week's listening and week {previous} does not exist, so the week is built up to its candidates "
    "(next week's ranker trains on them) and has no ranker or playlists"
)


def has_simulator_truth(lake_root: Path | str) -> bool:
    """Only a simulated world (``dw simulate``) has hidden listeners to play the A/B arms."""
    return not str(lake_root).startswith("s3://") and (Path(lake_root) / "simulator").is_dir()


def evaluation_selection(lake_root: Path | str) -> AssetSelection:
    """The evaluation group (and the monitoring its report shows); the simulated A/B only where the simulator's truth is."""
    selection = AssetSelection.groups("evaluation", "monitoring")
    return selection if has_simulator_truth(lake_root) else selection - AssetSelection.assets("simulated_ab_test")


# One process per run: every Spark asset of the run shares one local Spark session (JVM).
weekly_discover_job = define_asset_job(
    "weekly_discover_job",
    selection=DISCOVER_SELECTION,
    partitions_def=weekly_partitions,
    executor_def=in_process_executor,
    tags={WEEKLY_BATCH_TAG: "discover"},
    description="Everything week W publishes, from landed logs to the serving store (not the evaluation, "
                "which needs week W+1). Week W-1 must already have its candidates (W's ranker trains on them).",
)


def evaluation_job(lake_root: Path | str):
    """The weekly evaluation job (an unresolved asset job) for the lake at ``lake_root``: the simulated A/B
    test only in a simulated world."""
    return define_asset_job(
        "weekly_evaluation_job",
        selection=evaluation_selection(lake_root),
        partitions_def=weekly_partitions,
        executor_def=in_process_executor,
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
                "Monday before); the first week of history only up to its candidates.",
)
def weekly_discover_schedule(context: ScheduleEvaluationContext):
    request = _last_closed_week(context)
    if not isinstance(request, RunRequest) or request.partition_key != weekly_partitions.get_first_partition_key():
        return request
    keys = FIRST_WEEK_SELECTION.resolve(context.repository_def.asset_graph)
    reason = FIRST_WEEK_REASON.format(previous=shift_week(request.partition_key, -1))
    return request.with_replaced_attrs(asset_selection=sorted(keys), tags={**request.tags, "dw/scope": reason})


def evaluable_weeks(instance: DagsterInstance, closed_weeks: list[str]) -> list[str]:
    """Weeks of the recent history whose playlists and following week's listening are materialized
    and that have no offline evaluation yet, oldest first.

    ``closed_weeks``: partition keys of the weeks that have closed, oldest first.
    """
    playlists = instance.get_materialized_partitions(AssetKey("ranked_playlists"))
    listening = instance.get_materialized_partitions(AssetKey("interactions"))
    evaluated = instance.get_materialized_partitions(AssetKey("offline_evaluation"))
    recent = closed_weeks[:-1][-HISTORY_WEEKS:]  # the week after must have closed too
    return [w for w in recent if w in playlists and shift_week(w, 1) in listening and w not in evaluated]


@schedule(
    name="weekly_evaluation_schedule",
    cron_schedule="0 0 * * 1",
    execution_timezone=SCHEDULE_TIMEZONE,
    job=weekly_evaluation_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Mondays 00:00 UTC, after the Sunday batch: evaluates each recent week whose playlists and "
                "following week's listening are materialized and that has no evaluation yet.",
)
def weekly_evaluation_schedule(context: ScheduleEvaluationContext):
    closed = list(weekly_partitions.get_partition_keys(current_time=context.scheduled_execution_time))
    weeks = evaluable_weeks(context.instance, closed)
    if not weeks:
        newest = closed[-2] if len(closed) > 1 else None
        return SkipReason(
            "no week to evaluate: " + (f"the newest week with a closed holdout is {newest}; it needs its "
                                       f"ranked_playlists and week {shift_week(newest, 1)}'s interactions "
                                       "materialized, and no offline_evaluation yet" if newest
                                       else "no week has a closed holdout week yet"))
    return [RunRequest(partition_key=week, run_key=week, tags={"dw/holdout_week": shift_week(week, 1)})
            for week in weeks]


schedules = [weekly_discover_schedule, weekly_evaluation_schedule]
jobs = [weekly_discover_job, weekly_evaluation_job]
