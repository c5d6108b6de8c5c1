"""Publishing a Spark DataFrame week (#20): Redis and Cassandra written from the executors, SQLite
by the driver from a bounded stream; the stored values are byte for byte the pandas publisher's,
a failed publish leaves last week live, and nothing user-scale is collected on the driver.

Runs on the session's local[2] Spark, a real redis-server and the real Cassandra node.
"""

from __future__ import annotations

import uuid

import pandas as pd
import pytest

from dw_assets.calendar import week_range
from dw_assets.serving import InjectedFailure, StoreError, open_store, publish_week
from dw_assets.serving.loadtest import synthetic_playlists
from dw_assets.serving.publish import PublishSettings, spark_verification_sample
from dw_assets.serving.stores import RedisStore, ScyllaStore, encode_playlists, tracks_json
from dw_assets_tests import cassandra_node
from dw_assets_tests.redis_server import delete_prefix, redis_for_tests, with_options
from dw_assets_tests.test_stores import stored_values

W = week_range("2026-01-05", 4)
USERS = 60
BATCH = 8  # users per write batch: every writer task writes several


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_for_tests(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def scylla_base(cassandra_hosts):
    url = f"scylla://{cassandra_hosts}/{cassandra_node.fresh_keyspace('dwspark')}"
    yield url
    cassandra_node.drop_keyspace(url)


@pytest.fixture(params=["sqlite", "redis", "scylla"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/playlists.db?batch_users={BATCH}"
    elif request.param == "redis":
        prefix = f"dwspark-{uuid.uuid4().hex[:8]}"
        url = with_options(request.getfixturevalue("redis_url"), prefix=prefix, batch_users=BATCH)
        yield url
        delete_prefix(url, prefix)
    else:  # a keyspace per test: weeks and pointer start empty
        keyspace = cassandra_node.fresh_keyspace("dwspark")
        url = f"scylla://{request.getfixturevalue('cassandra_hosts')}/{keyspace}?batch_users={BATCH}"
        yield url
        cassandra_node.drop_keyspace(url)


def week_frame(spark, users: int = USERS, seed: int = 0, partitions: int = 3):
    """A week as the lake holds it (float32 scores), rows shuffled over several partitions."""
    frame = synthetic_playlists(users, seed=seed).sample(frac=1.0, random_state=seed)
    return frame, spark.createDataFrame(frame).repartition(partitions)


def stored_json(store, week: str, users) -> dict[int, bytes]:
    found = {user: store.get_playlist_json(int(user), week) for user in users}
    return {user: value[1] for user, value in found.items() if value is not None}


def expected_json(frame: pd.DataFrame) -> dict[int, bytes]:
    return {user: tracks_json(blob) for user, blob in encode_playlists(frame)}


def test_a_spark_week_is_published_from_the_executors_byte_identical_to_the_pandas_publisher(spark, store_url):
    frame, week = week_frame(spark)
    with open_store(store_url) as store:
        stats = publish_week(store, W[0], week)
        assert stats["writers"] == ("executors" if store.writes_from_executors else "driver")
        assert (stats["users"], stats["expected_users"], stats["rows"]) == (USERS, USERS, USERS * 30)
        assert stats["live"] and store.current_week() == W[0] and store.count_users(W[0]) == USERS
        by_spark = stored_json(store, W[0], range(1, USERS + 1))
        publish_week(store, W[1], frame, make_live=False)  # today's single-process writer, same rows
        by_pandas = stored_json(store, W[1], range(1, USERS + 1))
        raw = _raw_values(store, W[0]), _raw_values(store, W[1])
    assert by_spark == by_pandas == expected_json(frame)
    if raw[0] is not None:  # the compressed values themselves, not only what they inflate to
        assert raw[0] == raw[1] == dict(encode_playlists(frame))


def _raw_values(store, week: str) -> dict[int, bytes] | None:
    if isinstance(store, RedisStore):
        version = store._fetch_registry().versions[week]
        client = store._client("read")
        return {int(u): client.get(store._key("pl", week, version, int(u)))
                for u in client.smembers(store._key("users", week, version))}
    if isinstance(store, ScyllaStore):
        version = store._fetch_registry().versions[week]
        rows = store._connected().execute(f"SELECT user_id, week, version, tracks FROM {store.settings.keyspace}"
                                          ".playlists")
        return {user: bytes(blob) for user, row_week, row_version, blob in rows if (row_week, row_version) == (week,
                                                                                                             version)}
    return None


def test_a_failed_executor_write_leaves_last_week_live_and_a_rerun_rewrites_the_week_whole(spark, store_url):
    """fail_after_users counts per writer task: every task fails after its first batch."""
    live, live_week = week_frame(spark, seed=0)
    new, new_week = week_frame(spark, seed=1)
    with open_store(store_url) as store:
        publish_week(store, W[0], live_week)
        with pytest.raises(InjectedFailure):
            publish_week(store, W[1], new_week, fail_after_users=BATCH)
        assert store.current_week() == W[0] and store.weeks() == [W[0]]
        assert store.count_users(W[1]) == 0 and store.get_playlist_json(5, W[1]) is None
        assert stored_json(store, None, range(1, USERS + 1)) == expected_json(live)
        # A failed rewrite of the live week itself changes nothing either.
        with pytest.raises(InjectedFailure):
            publish_week(store, W[0], new_week, fail_after_users=BATCH)
        assert stored_json(store, None, range(1, USERS + 1)) == expected_json(live)

        stats = publish_week(store, W[1], new_week)  # the re-run
        assert stats["live"] and store.current_week() == W[1] and store.count_users(W[1]) == USERS
        assert stored_json(store, None, range(1, USERS + 1)) == expected_json(new)
        again = publish_week(store, W[1], new_week)  # and once more: identical, nothing twice
        assert again["users"] == USERS and stored_json(store, W[1], range(1, USERS + 1)) == expected_json(new)
        assert stored_values(store) in (2 * USERS, None)  # the failed writes' values were reclaimed


def test_a_bad_spark_week_is_refused_and_publishes_nothing(spark, store_url):
    frame, _ = week_frame(spark)
    with open_store(store_url) as store:
        with pytest.raises(ValueError, match="nulls in"):
            publish_week(store, W[0], spark.createDataFrame(frame.assign(genre=frame["genre"].where(
                frame["user_id"] != 7, None))))
        twice = pd.concat([frame, frame[frame["user_id"] == 9]], ignore_index=True)
        with pytest.raises(ValueError, match="two tracks at the same position"):  # caught by the writer of user 9
            publish_week(store, W[0], spark.createDataFrame(twice).repartition(2))
        with pytest.raises(ValueError, match="empty week"):
            publish_week(store, W[0], spark.createDataFrame(frame).limit(0))
        assert store.weeks() == [] and store.current_week() is None


def test_the_spark_publish_collects_nothing_user_scale(spark, store_url, monkeypatch):
    """Under DW_DRIVER_ROW_LIMIT=200 (a sixth of the week's 1,800 rows) the publish still writes and
    verifies every user: only counts and a capped sample reach the driver."""
    monkeypatch.setenv("DW_DRIVER_ROW_LIMIT", "200")
    frame, week = week_frame(spark)
    with open_store(store_url) as store:
        stats = publish_week(store, W[0], week)
        assert stats["users"] == USERS and store.count_users(W[0]) == USERS
        assert stored_json(store, None, range(1, USERS + 1)) == expected_json(frame)


def test_the_verification_sample_is_a_seeded_hash_draw_independent_of_partitioning(spark):
    frame, week = week_frame(spark, users=200)
    sample = spark_verification_sample(week, users=16)
    again = spark_verification_sample(spark.createDataFrame(frame).repartition(7), users=16)
    assert sorted(sample["user_id"].unique()) == sorted(again["user_id"].unique())
    assert sample["user_id"].nunique() == 16 and len(sample) == 16 * 30
    other_seed = spark_verification_sample(week, users=16, seed=PublishSettings.sample_seed + 1)
    assert set(other_seed["user_id"]) != set(sample["user_id"])


def test_a_wrong_count_from_the_writers_is_never_registered(spark, tmp_path, redis_url):
    """If the executors wrote fewer rows than the week holds, the version stays unregistered."""
    from dw_assets.serving import publish

    prefix = f"dwspark-{uuid.uuid4().hex[:8]}"
    url = with_options(redis_url, prefix=prefix, batch_users=BATCH)
    _, week = week_frame(spark)
    real = publish.spark_playlist_rows
    try:
        publish.spark_playlist_rows = lambda frame: real(frame) + 1
        with open_store(url) as store, pytest.raises(StoreError, match="not registered"):
            publish_week(store, W[0], week)
        with open_store(url) as store:
            assert store.weeks() == [] and store.current_week() is None
    finally:
        publish.spark_playlist_rows = real
        delete_prefix(url, prefix)


def test_the_publish_asset_writes_cassandra_from_the_executors_the_same_twice(tmp_path, cassandra_hosts, spark):
    """published_playlists through Dagster on a lake partition: written from the executors, and two
    runs of the week store byte-identical values (those the pandas publisher stores)."""
    from dagster import AssetSelection, materialize

    from dw_assets.definitions import ALL_ASSETS, build_resources
    from dw_assets.lake.storage import Lake

    lake = Lake(str(tmp_path / "lake"))
    frame = synthetic_playlists(USERS, seed=4).sample(frac=1.0, random_state=4)
    lake.write_frame(frame, lake.uri("gold", "ranked_playlists", W[0]))
    url = f"scylla://{cassandra_hosts}/{cassandra_node.fresh_keyspace('dwasset')}"
    try:
        stored = []
        for _ in range(2):
            result = materialize(ALL_ASSETS, selection=AssetSelection.assets("published_playlists"),
                                 partition_key=W[0], resources=build_resources(lake.root, url))
            metadata = result.asset_materializations_for_node("published_playlists")[0].metadata
            assert result.success and metadata["writers"].value == "executors"
            with open_store(url) as store:
                assert store.current_week() == W[0]
                stored.append(_raw_values(store, W[0]))
        assert stored[0] == stored[1] == dict(encode_playlists(frame))
    finally:
        cassandra_node.drop_keyspace(url)
