"""Operating the weekly graph in Dagster: the schedules, the jobs they run, backfill policies and a backfill."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    Definitions,
    RunRequest,
    RunsFilter,
    build_schedule_context,
    instance_for_test,
    validate_run_config,
)

from dw_assets.automation.backfill import backfill_weeks
from dw_assets.automation.planner import DISCOVER_JOB, INGEST, RANKER_TRAINING
from dw_assets.automation.runner import RunError, registered_job, run_selection
from dw_assets.automation.schedules import (
    BACKFILL_TAG,
    PLANNED_LAYERS,
    WEEKLY_BATCH_TAG,
    evaluation_job,
    weekly_discover_job,
    weekly_discover_schedule,
    weekly_evaluation_job,
    weekly_evaluation_schedule,
)
from dw_assets.calendar import shift_week
from dw_assets.cli import backfill_command
from dw_assets.definitions import ALL_ASSETS, build_resources
from dw_assets.lake.storage import Lake
from dw_assets.partitions import FIRST_WEEK, ONE_WEEK_PER_RUN, weekly_partitions
from dw_assets.serving.stores import open_store

UTC = dt.UTC


# The weeks whose logs have landed in the schedule tests' lake (the schedules read its landing zone).
SCHEDULE_LANDED = [shift_week("2026-01-05", i) for i in range(9)]


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    lake = tmp_path_factory.mktemp("lake")
    for week in SCHEDULE_LANDED:
        (lake / "landing" / "events" / f"week={week}").mkdir(parents=True)
    return Definitions(assets=ALL_ASSETS, jobs=[weekly_discover_job, weekly_evaluation_job],
                       schedules=[weekly_discover_schedule, weekly_evaluation_schedule],
                       resources=build_resources(str(lake)))


def _tick(schedule, defs, when: dt.datetime, instance=None):
    with build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def(),
                                instance=instance, resources={"lake": defs.resources["lake"]}) as context:
        return schedule.evaluate_tick(context)


def _keys(selection) -> set[str]:
    return {key.to_user_string() for key in selection}


def test_the_weekly_schedule_fires_on_sundays_at_midnight_utc():
    assert weekly_discover_schedule.cron_schedule == "0 0 * * 0"
    assert weekly_discover_schedule.execution_timezone == "UTC"
    assert weekly_discover_schedule.job_name == "weekly_discover_job"
    assert weekly_partitions.timezone == "UTC"


@pytest.mark.parametrize(("when", "week"), [
    # the Sunday of week 2026-02-23: that week still runs until Monday, so the last closed one is built
    (dt.datetime(2026, 3, 1, 0, 0, tzinfo=UTC), "2026-02-16"),
    # the same instant seen from New York (Saturday evening there): the schedule's time zone is UTC
    (dt.datetime(2026, 2, 28, 19, 0, tzinfo=ZoneInfo("America/New_York")), "2026-02-16"),
    # a late tick, still on that Sunday
    (dt.datetime(2026, 3, 1, 23, 59, tzinfo=UTC), "2026-02-16"),
    # one week later, across a month boundary
    (dt.datetime(2026, 3, 8, 0, 0, tzinfo=UTC), "2026-02-23"),
    # the second week of history: a full week with a week before it
    (dt.datetime(2026, 1, 25, 0, 0, tzinfo=UTC), "2026-01-12"),
])
def test_the_weekly_schedule_builds_the_last_closed_week(defs, when, week):
    with instance_for_test() as instance:  # the history is in: only the week runs
        _materialized(defs, instance, "interactions", *[k for k in weekly_partitions.get_partition_keys() if k < week])
        _materialized(defs, instance, "candidates", shift_week(week, -1))
        data = _tick(weekly_discover_schedule, defs, when, instance)
    [request] = data.run_requests
    assert request.partition_key == week and request.run_key == week
    assert request.asset_selection is None  # the whole job
    job = defs.resolve_job_def("weekly_discover_job")
    assert validate_run_config(job, request.run_config) is not None


def test_the_weekly_schedule_skips_while_the_first_week_is_still_open(defs):
    with instance_for_test() as instance:
        data = _tick(weekly_discover_schedule, defs, dt.datetime(2026, 1, 11, 0, 0, tzinfo=UTC), instance)
    assert not data.run_requests and data.skip_message


def test_the_first_week_is_the_whole_job_with_a_stand_in_ranker(defs):
    with instance_for_test() as instance:
        data = _tick(weekly_discover_schedule, defs, dt.datetime(2026, 1, 18, 0, 0, tzinfo=UTC), instance)
    [request] = data.run_requests
    assert request.partition_key == "2026-01-05" and request.asset_selection is None
    assert "stand-in ranker" in request.tags["dw/stand_in"]


def test_the_weekly_schedule_runs_the_history_a_week_lacks_first(defs):
    with instance_for_test() as instance:  # the schedule was stopped while weeks 2026-01-05 and -12 closed
        data = _tick(weekly_discover_schedule, defs, dt.datetime(2026, 2, 1, 0, 0, tzinfo=UTC), instance)
    parts = [(r.partition_key, r.tags["dw/part"]) for r in data.run_requests]
    assert parts == [("2026-01-05", INGEST), ("2026-01-12", INGEST), ("2026-01-12", RANKER_TRAINING),
                     ("2026-01-19", "week")]
    job = defs.resolve_job_def("weekly_discover_job")
    for request in data.run_requests[:-1]:
        assert _keys(request.asset_selection) <= _keys(job.asset_layer.executable_asset_keys)
        job.get_subset(asset_selection=set(request.asset_selection))  # what the daemon builds to launch it
    assert "ranker_model" not in _keys(data.run_requests[2].asset_selection)
    assert "candidates" in _keys(data.run_requests[2].asset_selection)
    assert len({r.run_key for r in data.run_requests}) == 4


def test_the_weekly_job_publishes_the_week_without_its_evaluation(defs):
    job = defs.resolve_job_def("weekly_discover_job")
    keys = _keys(job.asset_layer.selected_asset_keys)
    graph = defs.resolve_asset_graph()
    groups = {graph.get(AssetKey(k)).group_name for k in keys}
    assert "evaluation" not in groups
    assert {"raw_play_events", "candidates", "ranker_model", "ranked_playlists", "published_playlists",
            "model_monitoring"} <= keys
    assert job.partitions_def == weekly_partitions
    assert job.run_tags[WEEKLY_BATCH_TAG] == "discover"  # the run queue's one-weekly-run-at-a-time limit


@pytest.mark.parametrize("simulated", [True, False])
def test_the_evaluation_job_is_the_evaluation_and_monitoring_groups(tmp_path, simulated):
    if simulated:
        (tmp_path / "simulator").mkdir()
    job = evaluation_job(tmp_path)
    defs = Definitions(assets=ALL_ASSETS, jobs=[job], resources=build_resources(str(tmp_path)))
    keys = _keys(defs.resolve_job_def("weekly_evaluation_job").asset_layer.selected_asset_keys)
    graph = defs.resolve_asset_graph()
    expected = {k.to_user_string() for k in graph.get_all_asset_keys()
                if graph.get(k).group_name in ("evaluation", "monitoring")}
    assert keys == (expected if simulated else expected - {"simulated_ab_test"})
    assert "offline_evaluation" in keys and "model_monitoring" in keys
    assert WEEKLY_BATCH_TAG in defs.resolve_job_def("weekly_evaluation_job").run_tags


def _materialized(defs, instance, asset: str, *weeks: str) -> None:
    """Recorded in the instance and present in the lake (the planner counts a week only where both hold)."""
    lake = Lake(defs.resources["lake"].root)
    for week in weeks:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=week))
        Path(lake.uri(PLANNED_LAYERS[asset], asset, week)).mkdir(parents=True, exist_ok=True)


def test_the_evaluation_schedule_evaluates_weeks_whose_holdout_is_in(defs):
    monday = dt.datetime(2026, 2, 2, 0, 0, tzinfo=UTC)  # after the Sunday batch that built week 2026-01-19
    with instance_for_test() as instance:
        data = _tick(weekly_evaluation_schedule, defs, monday, instance)
        assert not data.run_requests and "no week to evaluate" in data.skip_message
        _materialized(defs, instance, "interactions", "2026-01-05", "2026-01-12", "2026-01-19")
        _materialized(defs, instance, "ranked_playlists", "2026-01-12", "2026-01-19")
        data = _tick(weekly_evaluation_schedule, defs, monday, instance)
        # week 2026-01-19's holdout (2026-01-26) is not ingested yet; 2026-01-05 had no playlists
        assert [r.partition_key for r in data.run_requests] == ["2026-01-12"]
        _materialized(defs, instance, "offline_evaluation", "2026-01-12")
        _materialized(defs, instance, "interactions", "2026-01-26")
        later = _tick(weekly_evaluation_schedule, defs, monday + dt.timedelta(weeks=1), instance)
        [request] = later.run_requests
        assert isinstance(request, RunRequest) and request.partition_key == "2026-01-19"
        assert request.tags["dw/holdout_week"] == "2026-01-26"
        # Its run failed (no offline_evaluation): the next Monday asks again, under a new run key.
        retry = _tick(weekly_evaluation_schedule, defs, monday + dt.timedelta(weeks=2), instance)
        assert [r.partition_key for r in retry.run_requests] == ["2026-01-19"]
        assert retry.run_requests[0].run_key != request.run_key


def test_every_weekly_asset_backfills_one_week_per_run():
    weekly = [assets for assets in ALL_ASSETS if assets.partitions_def == weekly_partitions]
    assert weekly
    for assets in weekly:
        assert assets.backfill_policy == ONE_WEEK_PER_RUN, assets.node_def.name


def test_history_windows_resolve_to_the_existing_weeks_at_the_start_of_history(defs):
    graph = defs.resolve_asset_graph()
    lacking = set()
    for offset in range(3):
        week = shift_week(FIRST_WEEK, offset)
        for key in graph.get_all_asset_keys():
            if key.to_user_string() == "new_track_vectors":
                continue  # partitioned by upload day: its weekly inputs are every week (AllPartitionMapping)
            for parent in graph.get(key).parent_keys - {key}:
                if parent.to_user_string() == "new_track_vectors":
                    continue  # candidates' upload days, not weeks (every upload day; outside the weekly jobs)
                result = graph.get_parent_partition_keys_for_child(week, parent, key)
                keys = sorted(result.partitions_subset.get_partition_keys())
                assert all(k >= FIRST_WEEK for k in keys), (key, parent, week, keys)
                optional = getattr(graph.get_partition_mapping(key, parent), "allow_nonexistent_upstream_partitions",
                                   False)
                if not keys and not optional:  # a required input with no week to read
                    lacking.add((offset, key.to_user_string()))
                    # only what reads week W-1, only in the first week, outside the weekly job
                    assert offset == 0 and key not in weekly_discover_job.selection.resolve(graph), (key, parent, week)
        for model in ("item2vec_embeddings", "two_tower_model"):
            window = graph.get_parent_partition_keys_for_child(week, AssetKey("interactions"), AssetKey(model))
            assert sorted(window.partitions_subset.get_partition_keys()) == [
                shift_week(FIRST_WEEK, i) for i in range(offset + 1)], (model, week)
    # ranker_model reads week W-1 where there is one: the first week gets the stand-in ranker
    assert lacking == {(0, "last_week_playlists")}


def test_a_backfill_refuses_weeks_that_have_not_landed(tmp_path):
    with pytest.raises(RunError, match="2026-01-19"):
        backfill_weeks(tmp_path, "2026-01-05", "2026-01-19", landed=["2026-01-05", "2026-01-12"])
    with pytest.raises(RunError, match="not a Monday"):
        backfill_weeks(tmp_path, "2026-01-06", "2026-01-19", landed=["2026-01-05", "2026-01-12"])
    result = CliRunner().invoke(backfill_command, ["--lake", str(tmp_path), "--from", "2026-01-05", "--to", "2026-01-12"])
    assert result.exit_code == 1 and "have not landed" in result.output


def test_the_jobs_executor_refuses_a_week_after_a_failed_one(tmp_path):
    """The jobs' executor refuses week W when an earlier week of the same backfill failed: nothing of W runs."""
    weeks = ["2026-01-05", "2026-01-12"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        from dw_assets.automation.runner import run_instance

        instance = run_instance()
        tags = {BACKFILL_TAG: "bf1"}
        failed = instance.create_run_for_job(registered_job(DISCOVER_JOB, str(tmp_path), None),
                                             tags={**tags, "dagster/partition": weeks[0]})
        instance.report_run_failed(failed)
        with pytest.raises(RunError, match=f"week {weeks[0]} of this backfill failed"):
            run_selection(None, weeks[1], tmp_path, instance, job_name=DISCOVER_JOB, tags=tags)
        assert not instance.get_materialized_partitions(AssetKey("raw_play_events"))
        instance.dispose()


def test_an_instance_without_the_weekly_run_queue_limit_is_refused_naming_the_setting(tmp_path):
    """A dagster.yaml written by hand (or by another tool) without the limit: UI backfills and schedules
    would run weeks side by side, so `dw run` / `dw backfill` refuse it and say what to add."""
    from dw_assets.automation.runner import run_instance

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(home))
        with pytest.raises(RunError, match=f"no run queue limit of one run for the tag {WEEKLY_BATCH_TAG}.*"
                                           "tag_concurrency_limits"):
            run_instance()
        (home / "dagster.yaml").write_text("run_coordinator:\n  module: dagster.core.run_coordinator\n"
                                           "  class: QueuedRunCoordinator\n  config:\n    max_concurrent_runs: 4\n"
                                           f"    tag_concurrency_limits:\n      - key: {WEEKLY_BATCH_TAG}\n"
                                           "        limit: 1\n")
        run_instance().dispose()  # the production shape (docs/operations.md) is accepted


def test_a_command_waits_behind_a_queued_weekly_run_and_names_it(tmp_path):
    """A UI backfill's week queued before a `dw run` goes first: the command waits for it (here no daemon
    ever starts it, so the wait ends with an error naming the run, its state and the setting)."""
    import sys

    from dagster import DagsterRunStatus
    from dagster._core.remote_origin import (
        InProcessCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.test_utils import create_run_for_test
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    from dw_assets.automation.runner import _wait_for_the_queue, run_instance

    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        env.setenv("DW_QUEUE_WAIT_S", "0")
        instance = run_instance()
        # Queued as the UI queues it: with the code location's origin (the daemon would launch it from there).
        location = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(executable_path=sys.executable, module_name="dw_assets.definitions"),
            location_name="dw_assets")
        queued = create_run_for_test(
            instance, job_name=DISCOVER_JOB, status=DagsterRunStatus.QUEUED,
            remote_job_origin=RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), DISCOVER_JOB),
            tags={WEEKLY_BATCH_TAG: "discover", "dagster/partition": "2026-01-05"})
        assert instance.get_run_by_id(queued.run_id).status == DagsterRunStatus.QUEUED
        with pytest.raises(RunError, match=f"weekly run {queued.run_id} .* still queued .*DW_QUEUE_WAIT_S"):
            _wait_for_the_queue(instance, "another plan", progress=lambda message: None)
        instance.dispose()


# The UI's "Launch backfill" (the partitions dialog of weekly_discover_job): the same mutation, same schema.
LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""


def launch_ui_backfill(instance: DagsterInstance, weeks: list[str], run_config: dict) -> str:
    """A backfill of ``weeks`` of weekly_discover_job as the web UI launches it (GraphQL ``launchPartitionBackfill``
    on the code location ``dw_assets``, loaded here as workspace.yaml names it); its id."""
    import sys

    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster_graphql.test.utils import execute_dagster_graphql

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="dw_assets.definitions"),
        location_name="dw_assets")  # workspace.yaml's name: the daemon finds the backfill's job by it
    with WorkspaceProcessContext(instance, InProcessTestWorkspaceLoadTarget(origin)) as process:
        result = execute_dagster_graphql(process.create_request_context(), LAUNCH_BACKFILL, {"params": {
            "selector": {"partitionSetName": f"{DISCOVER_JOB}_partition_set",
                         "repositorySelector": {"repositoryLocationName": origin.location_name,
                                                "repositoryName": "__repository__"}},
            "partitionNames": weeks, "runConfigData": run_config}})
    launched = result.data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


@contextlib.contextmanager
def dagster_daemon(home: Path, env: dict[str, str], log: Path):
    """A real ``dagster-daemon run`` on the repository's workspace.yaml (its queue dequeues the runs, its
    backfill daemon submits a backfill's runs, each run in a process of its own); stopped on exit."""
    import signal
    import subprocess
    import sys

    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    with log.open("w") as out:
        daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
                                  env={**os.environ, **env, "DAGSTER_HOME": str(home)}, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield daemon
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)  # the daemon and the code server it started, nothing else
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()


def wait_for_backfill(instance: DagsterInstance, backfill_id: str, runs: int, log: Path, timeout_s: float = 1200):
    """The backfill's runs, oldest first, once ``runs`` of them have finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = instance.get_runs(RunsFilter(tags={BACKFILL_TAG: backfill_id}))
        if len(found) >= runs and all(r.is_finished for r in found):
            return sorted(found, key=lambda r: r.tags["dagster/partition"])
        time.sleep(2)
    tail = log.read_text()[-3000:] if log.exists() else ""
    raise AssertionError(f"backfill {backfill_id}: {runs} runs did not finish in {timeout_s:.0f} s; daemon log:\n{tail}")


def run_errors(instance: DagsterInstance, run) -> str:
    """The failure messages of a run (steps and run), each with its causes, for an assertion's message."""
    def chain(error) -> str:
        parts = []
        while error is not None:
            parts.append(str(error.message).strip()[:800])
            error = error.cause
        return " <- ".join(parts)

    events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
    return " | ".join(chain(error) for ev in events
                      if (ev.is_step_failure or ev.is_run_failure)
                      and (error := getattr(ev.event_specific_data, "error", None)) is not None)


def materialization_metadata(instance: DagsterInstance, asset: str, week: str) -> dict:
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[week]), limit=1).records
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory, spark):
    """A tiny world of one week plus the week after it: every landed week backfilled from the UI (the web
    UI's GraphQL mutation; a real ``dagster-daemon`` submits, queues and launches one run of
    weekly_discover_job per week, oldest first, each in its own process); then what `dw backfill` of the
    last week would run, planned from what the instance recorded."""
    from dagster._core.run_coordinator import QueuedRunCoordinator

    from dw_assets.simulate import config_for, simulate

    root = tmp_path_factory.mktemp("backfill_world")
    # Two landed weeks are enough for every rule under test (the first with a stand-in ranker, the next
    # with the ranker trained on it, one run at a time in order); each week costs a run process (~100 s).
    manifest = simulate(config_for("tiny", weeks=1), root)
    landed = manifest["weeks"]  # FIRST, LAST: the training week and the one after it
    # Cheap models: this test is about which weeks get built, not about their quality.
    quick = {"audio_embeddings": {"config": {"epochs": 1, "max_warm_tracks": 300}},
             "two_tower_model": {"config": {"epochs": 1, "max_examples": 20_000}},
             "item2vec_embeddings": {"config": {"epochs": 2}}}
    home = root / "dagster_home"
    with pytest.MonkeyPatch.context() as env:  # its own Dagster instance: other modules build the same weeks
        env.setenv("DAGSTER_HOME", str(home))
        from dw_assets.automation.backfill import plan_backfill
        from dw_assets.automation.runner import QUIET, run_instance

        instance = run_instance()  # writes the project's dagster.yaml: the run queue's limit on the weekly tag
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        backfill_id = launch_ui_backfill(instance, landed, {**QUIET, "ops": quick})
        # The runs' processes: this world's lake, a Spark as small as the tests' own.
        settings = {"DW_LAKE": str(root), "DW_SPARK_MASTER": "local[2]", "DW_SPARK_SHUFFLE_PARTITIONS": "4"}
        log = root / "dagster-daemon.log"
        with dagster_daemon(home, settings, log):
            ui_runs = wait_for_backfill(instance, backfill_id, len(landed), log)
        errors = {r.tags["dagster/partition"]: run_errors(instance, r) for r in ui_runs if not r.is_success}
        assert not errors, errors
        cli_plan = plan_backfill(root, landed[-1], landed[-1], evaluate=False)
        instance.dispose()
    return root, manifest, ui_runs, cli_plan


def test_a_ui_backfill_of_every_landed_week_builds_the_first_with_a_stand_in_ranker(backfilled):
    root, manifest, ui_runs, cli_plan = backfilled
    weeks = manifest["weeks"]
    # one run of the job per week, oldest first, through the queue, in its own process
    assert [(r.job_name, r.tags["dagster/partition"]) for r in ui_runs] == [(DISCOVER_JOB, w) for w in weeks]
    assert all(r.is_success and r.tags[WEEKLY_BATCH_TAG] == "discover" for r in ui_runs)
    with DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        times = {r.dagster_run.run_id: (r.start_time, r.end_time)
                 for r in instance.get_run_records(RunsFilter(run_ids=[r.run_id for r in ui_runs]))}
        for before, after in itertools.pairwise(ui_runs):  # one weekly run at a time
            assert times[before.run_id][1] <= times[after.run_id][0]
        first = {a: materialization_metadata(instance, a, weeks[0]) for a in ("ranker_model", "ranked_playlists")}
        later = [materialization_metadata(instance, "ranked_playlists", w) for w in weeks[1:]]
    assert first["ranker_model"]["stand_in"] is True
    assert "first landed week" in first["ranker_model"]["stand_in_reason"]
    assert first["ranked_playlists"]["stand_in_ranker"] is True
    assert [m["stand_in_ranker"] for m in later] == [False] * len(later)
    # `dw backfill` of the last week would run that week only: the planner finds the others in the instance
    assert [(s.week, s.part) for s in cli_plan.steps] == [(weeks[-1], "week")]
    lake = Lake(str(root))
    for week in weeks:
        for layer, asset in [("bronze", "raw_play_events"), ("bronze", "quarantined_events"),
                             ("silver", "interactions"), ("gold", "track_stats"), ("gold", "user_profiles"),
                             ("models", "item2vec_embeddings"), ("models", "audio_embeddings"),
                             ("models", "two_tower_model"), ("models", "track_embeddings"),
                             ("models", "faiss_index"), ("gold", "candidates"), ("models", "ranker_model")]:
            assert lake.exists(lake.uri(layer, asset, week)), (asset, week)
        playlists = lake.read_frame(lake.uri("gold", "ranked_playlists", week))
        assert len(playlists) and playlists.groupby("user_id").size().eq(30).all(), week
    assert lake.read_artifact(lake.uri("models", "ranker_model", weeks[0])).meta["stand_in"] is True
    for week in weeks[1:]:
        ranker = lake.read_artifact(lake.uri("models", "ranker_model", week))
        assert ranker.meta["trained_on_week"].startswith(shift_week(week, -1))  # W-1's candidates and models


def test_a_backfills_windows_hold_exactly_the_weeks_built_so_far(backfilled):
    root, manifest, _, _ = backfilled
    lake = Lake(str(root))
    weeks = manifest["weeks"]
    events = [len(lake.read_frame(lake.uri("silver", "interactions", w), columns=["event_id"])) for w in weeks]
    for i, week in enumerate(weeks):
        stats = lake.read_frame(lake.uri("gold", "track_stats", week), columns=["plays"])
        assert int(stats["plays"].sum()) == sum(events[: i + 1]), week


def test_a_backfill_is_recorded_in_dagster_and_published(backfilled):
    root, manifest, _, _ = backfilled
    weeks = manifest["weeks"]
    with DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        assert instance.get_materialized_partitions(AssetKey("candidates")) == set(weeks)
        assert instance.get_materialized_partitions(AssetKey("ranked_playlists")) == set(weeks)
        # every run is a run of a job the code location defines, with the run queue's tag
        runs = instance.get_runs()
        assert runs and {r.job_name for r in runs} == {DISCOVER_JOB}
        assert all(WEEKLY_BATCH_TAG in r.tags for r in runs)
    store = open_store(build_resources(str(root))["playlist_store"].url)
    assert store.current_week() == weeks[-1]
    assert set(weeks) <= set(store.weeks())


def test_a_failed_week_of_a_cli_backfill_through_the_daemon_stops_the_weeks_after_it(backfilled, tmp_path):
    """The same world with week 1's events gone: `dagster job backfill -j weekly_discover_job --from W1 --to W2`
    (Dagster's own command on workspace.yaml) through the real daemon fails week 1 at its ingest, and week
    2's run (queued behind it) refuses to start, naming week 1."""
    import shutil
    import subprocess
    import sys

    from dw_assets.automation.runner import run_instance

    source, manifest, _, _ = backfilled
    weeks = manifest["weeks"]  # the two landed weeks
    root = tmp_path / "world"
    shutil.copytree(source / "landing", root / "landing")
    shutil.rmtree(root / "landing" / "events" / f"week={weeks[0]}")
    home = root / "dagster_home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(home))
        instance = run_instance()
        settings = {"DW_LAKE": str(root), "DW_SPARK_MASTER": "local[2]", "DW_SPARK_SHUFFLE_PARTITIONS": "4"}
        workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
        done = subprocess.run([str(Path(sys.executable).with_name("dagster")), "job", "backfill", "-w", str(workspace),
                               "-j", DISCOVER_JOB, "--from", weeks[0], "--to", weeks[1], "--noprompt"],
                              env={**os.environ, **settings, "DAGSTER_HOME": str(home)}, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        [backfill] = instance.get_backfills()
        backfill_id = backfill.backfill_id
        log = root / "dagster-daemon.log"
        with dagster_daemon(home, settings, log):
            first, second = wait_for_backfill(instance, backfill_id, 2, log)
        errors = [run_errors(instance, run) for run in (first, second)]
        instance.dispose()
    assert first.tags["dagster/partition"] == weeks[0] and not first.is_success
    assert f"no landed events for week {weeks[0]}" in errors[0], errors[0]
    assert second.tags["dagster/partition"] == weeks[1] and not second.is_success
    assert f"week {weeks[0]} of this backfill failed" in errors[1], errors[1]
    lake = Lake(str(root))
    assert not lake.exists(lake.uri("bronze", "raw_play_events", weeks[1]))  # nothing of week 2 was built
