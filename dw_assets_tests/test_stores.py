"""The PlaylistStore contract, run against every reachable store, plus publishing and encoding.

SQLite, a real redis-server (the test starts it, or uses DW_REDIS_URL) and a real Apache Cassandra
5.0 node (``scripts/cassandra.sh``, or the cluster DW_SCYLLA_HOSTS names) always run: every contract
test runs on all three, in a keyspace of its own per module. A node that cannot be reached fails.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import pandas as pd
import pytest

from dw_assets.calendar import week_range
from dw_assets.serving import InjectedFailure, StoreError, StoreUnavailable, open_store, publish_week
from dw_assets.serving.loadtest import synthetic_playlists
from dw_assets.serving.stores import (
    RedisStore,
    ScyllaSettings,
    ScyllaStore,
    SQLiteStore,
    cql_statements,
    decode_tracks,
    encode_playlists,
    token_ranges,
)
from dw_assets_tests import cassandra_node
from dw_assets_tests.redis_server import RedisServer, delete_prefix, free_port, redis_for_tests, with_options

W = week_range("2026-01-05", 7)
STORES = ["sqlite", "redis", "scylla"]
BATCH = 8  # users per write batch, so a 20-user week is written in several batches


def playlists(users: int = 20, seed: int = 0, first_user_id: int = 1) -> pd.DataFrame:
    """Rows shuffled, so the stores must order tracks by position themselves."""
    return synthetic_playlists(users, seed=seed, first_user_id=first_user_id).sample(frac=1.0, random_state=seed)


def expected_tracks(frame: pd.DataFrame, user_id: int) -> list[dict]:
    rows = frame[frame["user_id"] == user_id].sort_values("position")
    return [{"position": int(r.position), "track_id": int(r.track_id), "score": float(r.score), "source": r.source,
             "is_exploration": bool(r.is_exploration), "artist_id": int(r.artist_id), "genre": r.genre}
            for r in rows.itertuples()]


@pytest.fixture(scope="module")
def scylla_base(cassandra_hosts):
    """``scylla://HOST:PORT/KEYSPACE`` of a keyspace made for this module, dropped afterwards."""
    url = f"scylla://{cassandra_hosts}/{cassandra_node.fresh_keyspace()}"
    yield url
    cassandra_node.drop_keyspace(url)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_for_tests(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _reset_scylla(store: ScyllaStore) -> None:
    """Tests share keyspace dw_test: forget every registered week and the pointer (old rows expire)."""
    session = store._connected()
    ks = store.settings.keyspace
    for week in store.weeks():
        session.execute(f"DELETE FROM {ks}.playlist_weeks WHERE week = %s", (week,))
    session.execute(f"DELETE FROM {ks}.playlist_pointers WHERE name = %s", ("current_week",))
    store._invalidate()


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/playlists.db?batch_users={BATCH}"
    elif kind == "redis":
        prefix = f"dwtest-{uuid.uuid4().hex[:8]}"
        url = with_options(request.getfixturevalue("redis_url"), prefix=prefix, batch_users=BATCH)
    else:
        url = f"{request.getfixturevalue('scylla_base')}?replication=1&batch_users={BATCH}"
    opened = open_store(url)
    if kind == "scylla":
        _reset_scylla(opened)
    yield opened
    opened.close()
    if kind == "redis":
        delete_prefix(url, prefix)


def stored_values(store) -> int | None:
    """Playlist values physically in the store (all versions), where that can be counted."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            return db.execute("SELECT COUNT(*) FROM playlists").fetchone()[0]
    if isinstance(store, RedisStore):
        return sum(1 for _ in store._client("read").scan_iter(f"{store.prefix}:pl:*", count=1000))
    return None  # Scylla: superseded rows stay until their TTL, unreachable


def test_round_trip(store):
    frame = playlists(20)
    assert store.write_week(W[0], frame) == 20
    assert store.count_users(W[0]) == 20
    assert store.weeks() == [W[0]]
    assert store.current_week() is None
    assert store.get_playlist(3) is None  # nothing is live yet
    tracks = store.get_playlist(3, W[0])
    assert tracks == expected_tracks(frame, 3)
    assert [t["position"] for t in tracks] == list(range(1, 31))
    store.set_current_week(W[0])
    assert store.get_playlist(3) == tracks


def test_rewriting_a_week_replaces_it(store):
    store.write_week(W[0], playlists(20, seed=0, first_user_id=1))
    store.write_week(W[0], playlists(20, seed=0, first_user_id=1))  # identical rewrite: no duplicates
    assert store.count_users(W[0]) == 20
    assert stored_values(store) in (20, None)
    second = playlists(20, seed=1, first_user_id=11)  # users 11..30, other tracks
    store.write_week(W[0], second)
    assert store.count_users(W[0]) == 20
    assert store.get_playlist(1, W[0]) is None  # not in the rewrite: gone
    assert store.get_playlist(15, W[0]) == expected_tracks(second, 15)
    assert store.get_playlist(25, W[0]) == expected_tracks(second, 25)
    assert stored_values(store) in (20, None)


def test_current_week_is_one_pointer_flip(store):
    with pytest.raises(StoreError, match="not written"):
        store.set_current_week(W[0])
    first, second = playlists(20, seed=0), playlists(20, seed=1)
    store.write_week(W[0], first)
    store.set_current_week(W[0])
    store.write_week(W[1], second)
    assert store.current_week() == W[0]  # writing a week does not make it live
    assert store.get_playlist(5) == expected_tracks(first, 5)
    store.set_current_week(W[1])
    assert store.current_week() == W[1]
    assert store.get_playlist(5) == expected_tracks(second, 5)
    assert store.get_playlist(5, W[0]) == expected_tracks(first, 5)


def test_failed_publish_leaves_last_week_live(store):
    live = playlists(20, seed=0)
    publish_week(store, W[0], live)
    with pytest.raises(InjectedFailure):
        publish_week(store, W[1], playlists(20, seed=1), fail_after_users=BATCH)
    assert store.current_week() == W[0]
    assert store.get_playlist(7) == expected_tracks(live, 7)
    assert store.get_playlist(7, W[1]) is None
    assert store.weeks() == [W[0]]
    assert store.count_users(W[1]) == 0
    # A failed rewrite of the live week itself changes nothing either.
    with pytest.raises(InjectedFailure):
        publish_week(store, W[0], playlists(20, seed=2), fail_after_users=2 * BATCH)
    assert store.get_playlist(7) == expected_tracks(live, 7)
    stats = publish_week(store, W[1], playlists(20, seed=1))
    assert stats["live"] and store.current_week() == W[1]
    assert store.count_users(W[1]) == 20
    assert stored_values(store) in (40, None)  # leftovers of the failed writes were reclaimed


def test_retention_keeps_the_newest_weeks_and_the_live_one(store):
    for i in range(6):
        stats = publish_week(store, W[i], playlists(10, seed=i), keep_weeks=3)
    assert store.weeks() == W[3:6]
    assert stats["dropped_weeks"] == [W[2]]
    assert store.get_playlist(1, W[0]) is None
    # Written but not made live: the live week survives even outside the newest keep_weeks.
    stats = publish_week(store, W[6], playlists(10, seed=6), keep_weeks=1, make_live=False)
    assert store.current_week() == W[5]
    assert store.weeks() == [W[5], W[6]]
    assert not stats["live"] and stats["dropped_weeks"] == [W[3], W[4]]
    with pytest.raises(StoreError, match="live"):
        store.drop_week(W[5])


def test_publishing_an_older_week_does_not_roll_serving_back(store):
    publish_week(store, W[1], playlists(10, seed=1))
    stats = publish_week(store, W[0], playlists(10, seed=0))
    assert not stats["live"] and store.current_week() == W[1]
    publish_week(store, W[0], playlists(10, seed=0), make_live=True)  # an explicit rollback
    assert store.current_week() == W[0]


def test_republishing_a_week_is_idempotent(store):
    frame = playlists(20)
    first = publish_week(store, W[0], frame)
    before = {u: store.get_playlist(u) for u in range(1, 21)}
    second = publish_week(store, W[0], frame)
    assert (first["users"], second["users"]) == (20, 20)
    assert {u: store.get_playlist(u) for u in range(1, 21)} == before
    assert store.weeks() == [W[0]] and store.count_users(W[0]) == 20


def test_unknown_user_or_week_is_none(store):
    publish_week(store, W[0], playlists(20))
    assert store.get_playlist(10_000) is None
    assert store.get_playlist(1, W[3]) is None
    assert store.get_playlist(1) is not None


def test_verify_week_catches_missing_users_and_wrong_playlists(store):
    frame = playlists(20)
    store.write_week(W[0], frame)
    store.verify_week(W[0], 20, frame[frame["user_id"].isin([1, 20])])
    with pytest.raises(StoreError, match="21"):
        store.verify_week(W[0], 21)
    tampered = frame[frame["user_id"] == 4].assign(track_id=lambda f: f["track_id"] + 1)
    with pytest.raises(StoreError, match="user 4"):
        store.verify_week(W[0], 20, tampered)


def test_many_threads_read_the_same_answers(store):
    frame = playlists(20)
    publish_week(store, W[0], frame)
    users = [1 + i % 20 for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(store.get_playlist, users))
    assert all(tracks == expected_tracks(frame, user) for user, tracks in zip(users, found, strict=True))


def test_malformed_playlists_are_refused(store):
    frame = playlists(3)
    with pytest.raises(ValueError, match="same position"):
        store.write_week(W[0], pd.concat([frame, frame.head(1)]))
    with pytest.raises(ValueError, match="positions"):
        store.write_week(W[0], frame.assign(position=frame["position"] + 1))
    with pytest.raises(ValueError, match="Monday"):
        store.write_week("2026-01-06", frame)
    with pytest.raises(ValueError, match="empty"):
        publish_week(store, W[0], frame.head(0))
    assert store.weeks() == []


def _down_url(kind: str, tmp_path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}"  # a directory: SQLite cannot open it
    return f"{kind}://127.0.0.1:{free_port()}/{'0' if kind == 'redis' else 'dw_test'}"


@pytest.mark.parametrize("kind", ["sqlite", "redis", "scylla"])
def test_a_store_that_is_down_raises_store_unavailable(kind, tmp_path):
    with open_store(_down_url(kind, tmp_path)) as down:
        with pytest.raises(StoreUnavailable):
            down.ping()
        with pytest.raises(StoreUnavailable):
            down.get_playlist(1)
        with pytest.raises(StoreUnavailable):
            down.current_week()


def test_redis_recovers_after_a_restart_and_uses_the_env_password(tmp_path, monkeypatch):
    monkeypatch.setenv("DW_REDIS_PASSWORD", "s3cret-test")
    server = RedisServer(tmp_path, password="s3cret-test").start()
    try:
        store = open_store(server.url)
        assert "s3cret" not in repr(store)
        publish_week(store, W[0], playlists(5))
        server.stop()
        with pytest.raises(StoreUnavailable):
            store.get_playlist(1)
        server.start()
        assert store.get_playlist(1) == expected_tracks(playlists(5), 1)  # same client, reconnected
        monkeypatch.delenv("DW_REDIS_PASSWORD")
        with pytest.raises(StoreUnavailable, match="(?i)auth"):
            open_store(server.url).ping()
        store.close()
    finally:
        server.stop()


# ---------------------------------------------------------------- no cluster needed


def test_store_urls_are_parsed_and_secrets_stay_out_of_them():
    assert isinstance(open_store("sqlite:///data/serving.db"), SQLiteStore)
    assert str(open_store("sqlite:////abs/serving.db").path) == "/abs/serving.db"
    redis_store = open_store("redis://10.0.0.5:6380/2?prefix=dw_b&timeout_ms=100")
    assert (redis_store.host, redis_store.port, redis_store.db, redis_store.prefix, redis_store.timeout_s) == (
        "10.0.0.5", 6380, 2, "dw_b", 0.1)
    with pytest.raises(ValueError, match="DW_REDIS_PASSWORD"):
        open_store("redis://:hunter2@10.0.0.5:6380/0")
    with pytest.raises(ValueError, match="DW_SCYLLA"):
        open_store("scylla://me:hunter2@10.0.0.5/dw")
    with pytest.raises(ValueError, match="unknown store URL") as error:
        open_store("postgres://me:hunter2@db/dw")
    assert "hunter2" not in str(error.value)
    with pytest.raises(ValueError, match="unknown option"):
        open_store("sqlite:///x.db?batch=3")


def test_scylla_settings_from_url():
    settings = ScyllaSettings.from_url("scylla://10.0.0.1,10.0.0.2:9043/dw_prod?replication=dc1:3,dc2:3"
                                       "&local_dc=dc1&ttl_days=35&consistency=local_quorum&timeout_ms=50")
    assert settings.hosts == ("10.0.0.1", "10.0.0.2") and settings.port == 9043
    assert settings.keyspace == "dw_prod" and settings.local_dc == "dc1"
    assert settings.replication == {"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 3}
    assert (settings.ttl_s, settings.consistency, settings.timeout_s) == (35 * 86400, "LOCAL_QUORUM", 0.05)
    default = ScyllaSettings.from_url("scylla://db1/dw")
    assert default.replication == {"class": "SimpleStrategy", "replication_factor": 1}
    assert default.ttl_s == 56 * 86400 and default.port == 9042
    assert default.protocol_version == 4 and ScyllaStore.from_url("scylla://db1/dw").cluster_options()["protocol_version"] == 4
    assert ScyllaSettings.from_url("scylla://db1/dw?protocol_version=5").protocol_version == 5
    for bad in ("scylla://db1/dw-prod", "scylla://db1:9042,db2:9043/dw", "scylla://db1/",
                "scylla://db1/dw?consistency=MOST", "scylla://db1/dw?replication=dc1:x",
                "scylla://db1/dw?protocol_version=2"):
        with pytest.raises(ValueError):
            ScyllaSettings.from_url(bad)


def test_scylla_statements_are_prepared_with_ttl_and_user_partitions():
    cql = cql_statements(ScyllaSettings.from_url("scylla://db1/dw_prod?replication=dc1:3"))
    assert cql["create_keyspace"] == ("CREATE KEYSPACE IF NOT EXISTS dw_prod WITH replication = "
                                      "{'class': 'NetworkTopologyStrategy', 'dc1': 3}")
    assert "PRIMARY KEY ((user_id), week, version)" in cql["create_playlists"]
    assert cql["insert_playlist"].endswith("VALUES (?, ?, ?, ?) USING TTL ?")
    assert cql["select_playlist"].endswith("WHERE user_id = ? AND week = ? AND version = ?")
    # Every statement that takes values takes them as bind markers, never formatted in.
    for name in ("insert_playlist", "select_playlist", "count_range", "insert_week", "select_week",
                 "delete_week", "set_pointer", "get_pointer"):
        assert "?" in cql[name] and "'" not in cql[name], name


def test_token_ranges_cover_the_ring_exactly():
    ranges = token_ranges(7)
    assert ranges[0][0] == -(2**63) and ranges[-1][1] == 2**63 - 1
    assert all(hi + 1 == next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:], strict=False))


def test_scylla_credentials_and_routing_come_from_env_and_config(monkeypatch):
    from cassandra.policies import TokenAwarePolicy

    store = ScyllaStore.from_url("scylla://db1,db2/dw?local_dc=dc1")
    monkeypatch.delenv("DW_SCYLLA_USERNAME", raising=False)
    assert store.cluster_options()["auth_provider"] is None
    monkeypatch.setenv("DW_SCYLLA_USERNAME", "svc")
    monkeypatch.setenv("DW_SCYLLA_PASSWORD", "pw")
    options = store.cluster_options()
    assert options["auth_provider"].username == "svc"
    assert options["contact_points"] == ["db1", "db2"]
    assert all(isinstance(p.load_balancing_policy, TokenAwarePolicy) for p in options["execution_profiles"].values())


def test_blob_is_compact_ordered_and_exact():
    frame = playlists(2)
    encoded = dict(encode_playlists(frame))
    assert sorted(encoded) == [1, 2]
    assert decode_tracks(encoded[2]) == expected_tracks(frame, 2)
    assert all(len(blob) < 1500 for blob in encoded.values())  # 30 tracks, compressed


# ---------------------------------------------------------------- retention (#8)


def test_retention_comes_from_the_store_url_and_drops_old_weeks_physically(store, tmp_path):
    """``?keep_weeks=N`` on the URL sets the retention publish_week applies; an explicit argument wins."""
    url_kept = open_store(_with_keep_weeks(store, 2))
    try:
        assert url_kept.keep_weeks == 2
        for i in range(5):
            stats = publish_week(url_kept, W[i], playlists(10, seed=i))
        assert stats["keep_weeks"] == 2 and url_kept.weeks() == W[3:5]
        assert stored_values(url_kept) in (20, None)  # dropped weeks' values are deleted, not just hidden
        assert url_kept.get_playlist(1, W[2]) is None and url_kept.get_playlist(1) == expected_tracks(
            playlists(10, seed=4), 1)
        stats = publish_week(url_kept, W[5], playlists(10, seed=5), keep_weeks=3)  # the argument wins
        assert stats["keep_weeks"] == 3 and url_kept.weeks() == W[3:6]
    finally:
        url_kept.close()


def _with_keep_weeks(store, weeks: int) -> str:
    if isinstance(store, SQLiteStore):
        return f"sqlite:///{store.path}?batch_users={BATCH}&keep_weeks={weeks}"
    if isinstance(store, RedisStore):
        return f"redis://{store.host}:{store.port}/{store.db}?prefix={store.prefix}&keep_weeks={weeks}"
    return f"scylla://{store.settings.hosts[0]}:{store.settings.port}/{store.settings.keyspace}?replication=1&keep_weeks={weeks}"


def test_a_ttl_shorter_than_the_retention_is_refused_before_anything_is_written(redis_url, tmp_path):
    """Redis ``ttl_days`` (a safety-net expiry) must outlive the kept weeks, else kept weeks would lose users."""
    prefix = f"dwttl-{uuid.uuid4().hex[:8]}"
    short = open_store(with_options(redis_url, prefix=prefix, ttl_days=14, keep_weeks=4))
    try:
        with pytest.raises(ValueError, match="ttl_days or lower keep_weeks"):
            publish_week(short, W[0], playlists(5))
        assert short.weeks() == [] and stored_values(short) == 0
        publish_week(short, W[0], playlists(5), keep_weeks=1)  # two weeks of TTL cover one kept week
        ttl = short._client("read").ttl(f"{prefix}:pl:{W[0]}:{short._fetch_registry().versions[W[0]]}:1")
        assert 13 * 86400 < ttl <= 14 * 86400
    finally:
        short.close()
        delete_prefix(redis_url, prefix)


def test_scylla_row_ttl_follows_the_retention_and_a_conflict_is_refused_without_a_cluster():
    assert ScyllaSettings.from_url("scylla://db1/dw").ttl_s == 8 * 7 * 86400  # 4 kept weeks + 4
    assert ScyllaSettings.from_url("scylla://db1/dw?keep_weeks=10").ttl_s == 14 * 7 * 86400
    assert ScyllaSettings.from_url("scylla://db1/dw?keep_weeks=10&ttl_days=90").ttl_s == 90 * 86400
    with pytest.raises(ValueError, match="keep_weeks must be at least 1"):
        ScyllaSettings.from_url("scylla://db1/dw?keep_weeks=0")
    # Refused before connecting: nothing listens on this port, yet the error is about the TTL.
    unreachable = open_store(f"scylla://127.0.0.1:{free_port()}/dw_test?ttl_days=14&keep_weeks=4")
    with pytest.raises(ValueError, match="ttl_days or lower keep_weeks"):
        publish_week(unreachable, W[0], playlists(5))
    with pytest.raises(ValueError, match="ttl_days or lower keep_weeks"):
        publish_week(open_store(f"scylla://127.0.0.1:{free_port()}/dw_test?ttl_days=35"), W[0], playlists(5),
                     keep_weeks=8)


def test_the_publish_asset_takes_the_retention_from_run_config_or_the_store_url(tmp_path):
    """published_playlists through Dagster: run config ``keep_weeks`` > resource > URL ``keep_weeks`` > 4."""
    from dagster import AssetSelection, materialize

    from dw_assets.definitions import ALL_ASSETS, build_resources
    from dw_assets.lake.storage import Lake
    from dw_assets.serving.assets import PlaylistStoreResource

    lake = Lake(str(tmp_path / "lake"))
    for i, week in enumerate(W[:5]):
        lake.write_frame(playlists(6, seed=i), lake.uri("gold", "ranked_playlists", week))
    url = f"sqlite:///{tmp_path}/serving.db?keep_weeks=3"

    def publish(week: str, keep_weeks: int | None = None, resource_keep: int | None = None):
        resources = build_resources(lake.root, url)
        if resource_keep is not None:
            resources["playlist_store"] = PlaylistStoreResource(url=url, keep_weeks=resource_keep)
        config = {"ops": {"published_playlists": {"config": {"keep_weeks": keep_weeks}}}} if keep_weeks else None
        result = materialize(ALL_ASSETS, selection=AssetSelection.assets("published_playlists"), partition_key=week,
                             resources=resources, run_config=config)
        assert result.success
        return result.asset_materializations_for_node("published_playlists")[0].metadata

    for week in W[:4]:
        metadata = publish(week)  # the URL's keep_weeks=3
    assert metadata["keep_weeks"].value == 3 and metadata["dropped_weeks"].value == [W[0]]
    with open_store(url) as store:
        assert store.weeks() == W[1:4]
    metadata = publish(W[4], resource_keep=4)
    assert metadata["keep_weeks"].value == 4
    metadata = publish(W[4], keep_weeks=1)
    assert metadata["keep_weeks"].value == 1 and metadata["dropped_weeks"].value == W[1:4]
    with open_store(url) as store:
        assert store.weeks() == [W[4]] and store.current_week() == W[4]


# ---------------------------------------------------------------- Cassandra: TTL, restart, bad input


def test_cassandra_rows_carry_the_ttl_of_the_retention(scylla_base):
    """Every playlist row is written with the URL's TTL (keep_weeks + 4 weeks by default), so the
    rows of dropped and superseded versions expire by themselves."""
    with open_store(f"{scylla_base}?keep_weeks=2") as store:
        _reset_scylla(store)
        publish_week(store, W[0], playlists(5))
        version = store._fetch_registry().versions[W[0]]
        rows = store._connected().execute(
            f"SELECT TTL(tracks) FROM {store.settings.keyspace}.playlists WHERE user_id = %s AND week = %s "
            "AND version = %s", (3, W[0], version)).all()
    assert len(rows) == 1 and 6 * 7 * 86400 - 120 < rows[0][0] <= 6 * 7 * 86400


def test_cassandra_creates_the_keyspace_with_the_urls_replication(cassandra_hosts):
    url = f"scylla://{cassandra_hosts}/{cassandra_node.fresh_keyspace('dwrepl')}?replication=datacenter1:1"
    try:
        with open_store(url) as store:
            publish_week(store, W[0], playlists(3))
            row = store._connected().execute(
                "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                (store.settings.keyspace,)).one()
            replication = row[0]
            assert replication["class"].endswith("NetworkTopologyStrategy") and replication["datacenter1"] == "1"
            assert store.get_playlist(2) == expected_tracks(playlists(3), 2)
    finally:
        cassandra_node.drop_keyspace(url)


def test_cassandra_bad_urls_name_the_setting_and_publish_nothing(cassandra_hosts):
    with pytest.raises(ValueError, match="needs a keyspace"):
        open_store(f"scylla://{cassandra_hosts}")
    with pytest.raises(ValueError, match="CQL identifier"):
        open_store(f"scylla://{cassandra_hosts}/dw-prod")
    with pytest.raises(ValueError, match="unknown option 'replicas'"):
        open_store(f"scylla://{cassandra_hosts}/dw?replicas=3")
    # A replication naming a data centre the cluster does not have: refused by the node, nothing written.
    keyspace = cassandra_node.fresh_keyspace("dwbad")
    with open_store(f"scylla://{cassandra_hosts}/{keyspace}?replication=nowhere:3") as store, \
            pytest.raises(StoreError, match="(?i)nowhere|datacenter|replication"):
        publish_week(store, W[0], playlists(3))
    with open_store(f"scylla://{cassandra_hosts}/{cassandra_node.fresh_keyspace('dwcheck')}") as other:
        assert other._connected().execute(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)).all() == []
        cassandra_node.drop_keyspace(f"scylla://{cassandra_hosts}/{other.settings.keyspace}")


def test_cassandra_store_reconnects_after_the_node_restarts(scylla_base):
    """The same store object serves again once the node is back (the driver reconnects)."""
    if not cassandra_node.managed():
        pytest.skip("DW_SCYLLA_HOSTS names a cluster the tests do not run; restarting it is not theirs to do")
    frame = playlists(5)
    store = open_store(scylla_base)
    try:
        _reset_scylla(store)
        publish_week(store, W[0], frame)
        cassandra_node.stop_node()
        with pytest.raises(StoreUnavailable):
            store.ping()
        cassandra_node.start_node()
        deadline = time.monotonic() + 60
        while True:  # the driver's reconnection runs on its own schedule
            try:
                store.ping()
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        store._invalidate()
        assert store.get_playlist(4) == expected_tracks(frame, 4)
        assert store.current_week() == W[0]
    finally:
        store.close()


def test_dw_run_refuses_a_bad_or_unreachable_store_before_building_anything(cassandra_hosts, tmp_path):
    """One error naming the setting; no run, nothing in the lake, nothing published."""
    from click.testing import CliRunner

    from dw_assets.cli import main

    keyspace = cassandra_node.fresh_keyspace("dwpre")
    cases = {
        f"scylla://127.0.0.1:{free_port()}/dw": "unavailable",
        f"scylla://{cassandra_hosts}": "needs a keyspace",
        f"scylla://{cassandra_hosts}/{keyspace}?replication=nowhere:3": "replication",
        f"scylla://{cassandra_hosts}/{keyspace}?replicas=3": "unknown option 'replicas'",
        "mysql://127.0.0.1/dw": "unknown store URL",
    }
    lake = tmp_path / "lake"
    lake.mkdir()
    for url, reason in cases.items():
        result = CliRunner().invoke(main, ["run", "--lake", str(lake), "--week", W[0], "--store", url],
                                    env={"DAGSTER_HOME": str(tmp_path / "home")})
        assert result.exit_code == 2, (url, result.output)
        assert "--store / DW_STORE_URL" in result.output and reason in result.output, result.output
    assert list(lake.iterdir()) == [] and not (tmp_path / "home").exists()


@pytest.mark.parametrize("kind", ["redis", "scylla"])
def test_async_reads_see_a_flip_after_a_miss_and_share_one_refresh(kind, request):
    """The API's path: a reader with a cached registry finds a week made live by another process on
    its first miss, and a burst of misses re-reads the registry once, not once per request."""
    import asyncio

    if kind == "redis":
        prefix = f"dwasync-{uuid.uuid4().hex[:8]}"
        url = with_options(request.getfixturevalue("redis_url"), prefix=prefix)
    else:
        url = request.getfixturevalue("scylla_base")
    writer, reader = open_store(url), open_store(url)
    if kind == "scylla":
        _reset_scylla(writer)
    old, new = playlists(5, seed=0), playlists(5, seed=1, first_user_id=101)
    publish_week(writer, W[0], old)
    refreshes = 0
    fetch = reader._afetch_registry

    async def counted():
        nonlocal refreshes
        refreshes += 1
        await asyncio.sleep(0.05)  # a slow store: the burst below arrives while the refresh is in flight
        return await fetch()

    reader._afetch_registry = counted

    async def scenario():
        assert (await reader.aget_playlist_json(3))[0] == W[0]
        publish_week(writer, W[1], new)  # another process makes week 1 live
        await asyncio.sleep(0.1)  # the reader's registry is now older than a miss tolerates
        before = refreshes
        found = await asyncio.gather(*(reader.aget_playlist_json(user) for user in [101, 102, 103, 104, 105, 999]))
        return before, found

    try:
        before, found = asyncio.run(scenario())
        assert refreshes - before == 1
        assert [f and f[0] for f in found] == [W[1]] * 5 + [None]
        assert orjson.loads(found[0][1]) == expected_tracks(new, 101)
    finally:
        writer.close()
        reader.close()
        if kind == "redis":
            delete_prefix(url, prefix)


def test_a_redis_writer_left_running_after_its_write_was_reclaimed_stores_nothing(redis_url):
    """A Spark writer task can outlive its failed job: its next batch may come after the next publish
    reclaimed the failed version. The batch is refused (the version is no longer listed as being
    written), so no value is left behind that no reclaim would find."""
    from dw_assets.serving.stores.codec import encode_playlists

    prefix = f"dwfence-{uuid.uuid4().hex[:8]}"
    store = open_store(with_options(redis_url, prefix=prefix, batch_users=BATCH))
    try:
        encoded = encode_playlists(playlists(4))
        failed = store.begin_write(W[1])
        store.write_encoded(W[1], failed, encoded[:2])  # a batch of the job that failed
        assert stored_values(store) == 2
        publish_week(store, W[0], playlists(5))  # the next publish reclaims the failed version
        assert stored_values(store) == 5
        with pytest.raises(StoreError, match="no longer being written"):
            store.write_encoded(W[1], failed, encoded[2:])  # the straggler's next batch
        assert stored_values(store) == 5 and store.weeks() == [W[0]]
        assert not store._client("read").exists(f"{prefix}:users:{W[1]}:{failed}")
    finally:
        store.close()
        delete_prefix(redis_url, prefix)
