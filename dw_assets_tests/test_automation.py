"""Operating the weekly graph in Dagster: the schedules, the jobs they run, backfill policies and a backfill."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    Definitions,
    RunRequest,
    build_schedule_context,
    instance_for_test,
    validate_run_config,
)

from dw_assets.automation.backfill import backfill_command, backfill_weeks
from dw_assets.automation.runner import RunError
from dw_assets.automation.schedules import (
    FIRST_WEEK_SELECTION,
    WEEKLY_BATCH_TAG,
    evaluation_job,
    weekly_discover_job,
    weekly_discover_schedule,
    weekly_evaluation_job,
    weekly_evaluation_schedule,
)
from dw_assets.calendar import shift_week
from dw_assets.definitions import ALL_ASSETS, build_resources
from dw_assets.lake.storage import Lake
from dw_assets.partitions import FIRST_WEEK, ONE_WEEK_PER_RUN, weekly_partitions
from dw_assets.serving.stores import open_store

UTC = dt.UTC
NOT_IN_FIRST_WEEK = {"ranker_model", "ranked_playlists", "published_playlists", "model_monitoring"}


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    lake = tmp_path_factory.mktemp("lake")
    return Definitions(assets=ALL_ASSETS, jobs=[weekly_discover_job, weekly_evaluation_job],
                       schedules=[weekly_discover_schedule, weekly_evaluation_schedule],
                       resources=build_resources(str(lake)))


def _tick(schedule, defs, when: dt.datetime, instance=None):
    context = build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def(),
                                     instance=instance)
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
    data = _tick(weekly_discover_schedule, defs, when)
    [request] = data.run_requests
    assert request.partition_key == week and request.run_key == week
    assert request.asset_selection is None  # the whole job
    job = defs.resolve_job_def("weekly_discover_job")
    assert validate_run_config(job, request.run_config) is not None


def test_the_weekly_schedule_skips_while_the_first_week_is_still_open(defs):
    data = _tick(weekly_discover_schedule, defs, dt.datetime(2026, 1, 11, 0, 0, tzinfo=UTC))
    assert not data.run_requests and data.skip_message


def test_the_first_week_is_built_up_to_its_candidates(defs):
    data = _tick(weekly_discover_schedule, defs, dt.datetime(2026, 1, 18, 0, 0, tzinfo=UTC))
    [request] = data.run_requests
    assert request.partition_key == "2026-01-05"
    built = _keys(request.asset_selection)
    assert "candidates" in built and "interactions" in built and "faiss_index" in built
    assert built.isdisjoint(NOT_IN_FIRST_WEEK)
    assert "first week of history" in request.tags["dw/scope"]
    job = defs.resolve_job_def("weekly_discover_job")
    assert built <= _keys(job.asset_layer.executable_asset_keys)


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


def _materialized(instance, asset: str, *weeks: str) -> None:
    for week in weeks:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=week))


def test_the_evaluation_schedule_evaluates_weeks_whose_holdout_is_in(defs):
    monday = dt.datetime(2026, 2, 2, 0, 0, tzinfo=UTC)  # after the Sunday batch that built week 2026-01-19
    with instance_for_test() as instance:
        data = _tick(weekly_evaluation_schedule, defs, monday, instance)
        assert not data.run_requests and "no week to evaluate" in data.skip_message
        _materialized(instance, "interactions", "2026-01-05", "2026-01-12", "2026-01-19")
        _materialized(instance, "ranked_playlists", "2026-01-12", "2026-01-19")
        data = _tick(weekly_evaluation_schedule, defs, monday, instance)
        # week 2026-01-19's holdout (2026-01-26) is not ingested yet; 2026-01-05 had no playlists
        assert [r.partition_key for r in data.run_requests] == ["2026-01-12"]
        _materialized(instance, "offline_evaluation", "2026-01-12")
        _materialized(instance, "interactions", "2026-01-26")
        later = _tick(weekly_evaluation_schedule, defs, monday + dt.timedelta(weeks=1), instance)
        [request] = later.run_requests
        assert isinstance(request, RunRequest) and request.partition_key == "2026-01-19"
        assert request.tags["dw/holdout_week"] == "2026-01-26"


def test_every_weekly_asset_backfills_one_week_per_run():
    weekly = [assets for assets in ALL_ASSETS if assets.partitions_def == weekly_partitions]
    assert weekly
    for assets in weekly:
        assert assets.backfill_policy == ONE_WEEK_PER_RUN, assets.node_def.name


def test_history_windows_resolve_to_the_existing_weeks_at_the_start_of_history(defs):
    graph = defs.resolve_asset_graph()
    first_week_builds = FIRST_WEEK_SELECTION.resolve(graph)
    lacking = set()
    for offset in range(3):
        week = shift_week(FIRST_WEEK, offset)
        for key in graph.get_all_asset_keys():
            for parent in graph.get(key).parent_keys - {key}:
                result = graph.get_parent_partition_keys_for_child(week, parent, key)
                keys = sorted(result.partitions_subset.get_partition_keys())
                assert all(k >= FIRST_WEEK for k in keys), (key, parent, week, keys)
                optional = getattr(graph.get_partition_mapping(key, parent), "allow_nonexistent_upstream_partitions",
                                   False)
                if not keys and not optional:  # a required input with no week to read
                    lacking.add((offset, key.to_user_string()))
                    # only what reads week W-1, only in the first week, which does not build it
                    assert offset == 0 and key not in first_week_builds, (key, parent, week)
        for model in ("item2vec_embeddings", "two_tower_model"):
            window = graph.get_parent_partition_keys_for_child(week, AssetKey("interactions"), AssetKey(model))
            assert sorted(window.partitions_subset.get_partition_keys()) == [
                shift_week(FIRST_WEEK, i) for i in range(offset + 1)], (model, week)
    assert lacking == {(0, "ranker_model"), (0, "last_week_playlists")}


def test_a_backfill_refuses_weeks_that_have_not_landed(tmp_path):
    with pytest.raises(RunError, match="2026-01-19"):
        backfill_weeks(tmp_path, "2026-01-05", "2026-01-19", landed=["2026-01-05", "2026-01-12"])
    with pytest.raises(RunError, match="not a Monday"):
        backfill_weeks(tmp_path, "2026-01-06", "2026-01-19", landed=["2026-01-05", "2026-01-12"])
    result = CliRunner().invoke(backfill_command, ["--lake", str(tmp_path), "--from", "2026-01-05", "--to", "2026-01-12"])
    assert result.exit_code == 1 and "have not landed" in result.output


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory, spark):
    """A tiny world of three weeks (plus its holdout), backfilled from its first week to its last."""
    from dw_assets.simulate import config_for, simulate

    root = tmp_path_factory.mktemp("backfill_world")
    manifest = simulate(config_for("tiny", weeks=3), root)
    # Cheap models: this test is about which weeks get built, not about their quality.
    quick = {"audio_embeddings": {"config": {"epochs": 1, "max_warm_tracks": 300}},
             "two_tower_model": {"config": {"epochs": 1, "max_examples": 20_000}},
             "item2vec_embeddings": {"config": {"epochs": 2}}}
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as env:  # its own Dagster instance: other modules build the same weeks
        env.setenv("DAGSTER_HOME", str(root / "dagster_home"))
        outcomes = backfill_weeks(root, manifest["training_weeks"][0], manifest["last_training_week"],
                                  evaluate=False, ops=quick, progress=messages.append)
    return root, manifest, outcomes, messages


def test_a_backfill_builds_every_week_in_order(backfilled):
    root, manifest, outcomes, messages = backfilled
    weeks = manifest["training_weeks"]
    assert [o.week for o in outcomes] == weeks
    assert [o.scope for o in outcomes] == ["candidates", "all", "all"]
    assert "first week of history" in outcomes[0].reason and not outcomes[1].reason
    assert any(m.startswith(f"week {weeks[0]} (1/3)") and "up to its candidates" in m for m in messages)
    lake = Lake(str(root))
    for week in weeks:
        for layer, asset in [("bronze", "raw_play_events"), ("bronze", "quarantined_events"),
                             ("silver", "interactions"), ("gold", "track_stats"), ("gold", "user_profiles"),
                             ("models", "item2vec_embeddings"), ("models", "audio_embeddings"),
                             ("models", "two_tower_model"), ("models", "track_embeddings"),
                             ("models", "faiss_index"), ("gold", "candidates")]:
            assert lake.exists(lake.uri(layer, asset, week)), (asset, week)
    # the first week has no ranker and no playlists; the later ones do, 30 tracks per user
    assert not lake.exists(lake.uri("models", "ranker_model", weeks[0]))
    assert not lake.exists(lake.uri("gold", "ranked_playlists", weeks[0]))
    for week in weeks[1:]:
        ranker = lake.read_artifact(lake.uri("models", "ranker_model", week))
        assert ranker.meta["trained_on_week"].startswith(shift_week(week, -1))  # W-1's candidates and models
        playlists = lake.read_frame(lake.uri("gold", "ranked_playlists", week))
        assert len(playlists) and playlists.groupby("user_id").size().eq(30).all()
    # the holdout week was left alone (no evaluation asked for)
    assert not lake.exists(lake.uri("silver", "interactions", manifest["holdout_week"]))


def test_a_backfills_windows_hold_exactly_the_weeks_built_so_far(backfilled):
    root, manifest, _, _ = backfilled
    lake = Lake(str(root))
    weeks = manifest["training_weeks"]
    events = [len(lake.read_frame(lake.uri("silver", "interactions", w), columns=["event_id"])) for w in weeks]
    for i, week in enumerate(weeks):
        stats = lake.read_frame(lake.uri("gold", "track_stats", week), columns=["plays"])
        assert int(stats["plays"].sum()) == sum(events[: i + 1]), week


def test_a_backfill_is_recorded_in_dagster_and_published(backfilled):
    root, manifest, _, _ = backfilled
    weeks = manifest["training_weeks"]
    with DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        assert instance.get_materialized_partitions(AssetKey("candidates")) == set(weeks)
        assert instance.get_materialized_partitions(AssetKey("ranked_playlists")) == set(weeks[1:])
    store = open_store(build_resources(str(root))["playlist_store"].url)
    assert store.current_week() == weeks[-1]
    assert set(weeks[1:]) <= set(store.weeks())
