"""Crash safety (#8): writers really killed (SIGKILL) part-way, then the reader's view and a re-run.

Each scenario runs the real ``Lake`` / ``publish_week`` code in a child process (``CHILD`` below).
The child reaches a chosen point and stops there (it prints ``PAUSED <point>`` and blocks), or, for
Spark, the parent watches the staging directory until the first part file of the partition is on
disk; then the parent kills the child's whole process group with SIGKILL (the Spark JVM and its
Python workers included). No hook exists in the library code: the child wraps the low-level calls
(``pq.write_table``, ``Path.write_bytes``, the S3 client's ``put_object``, store methods) itself.

After the kill the parent checks that readers see the previous state (or nothing, for a first
write), never a partial one; then it re-runs the write in-process and checks the result is whole
and nothing is duplicated (no leftover files, no orphaned store values).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dw_assets.calendar import week_range
from dw_assets.lake.storage import Artifact, Lake, LakeError
from dw_assets.serving import open_store, publish_week
from dw_assets.serving.loadtest import synthetic_playlists
from dw_assets.serving.stores import RedisStore, SQLiteStore, decode_tracks, encode_playlists
from dw_assets_tests.redis_server import delete_prefix, redis_for_tests, with_options

REPO = Path(__file__).resolve().parent.parent
W = week_range("2026-01-05", 4)
WEEK = "2026-01-12"
BATCH = 8  # users per store write batch: a 40-user week is 5 batches

# The child: argv[1] names a JSON spec file {"scenario": ..., ...}. It pauses (prints PAUSED and blocks on
# stdin, which the parent never answers) at the spec's "pause" point, or runs to the end ("DONE").
CHILD = r'''
import json, os, sys
spec = json.loads(open(sys.argv[1]).read())

def pause(point):
    print("PAUSED " + point, flush=True)
    sys.stdin.readline()  # the parent kills us here
    sys.exit(3)

scenario = spec["scenario"]
if scenario == "frame":
    import pandas as pd
    import pyarrow.parquet as pq
    from dw_assets.lake import storage
    from dw_assets.lake.storage import Lake

    point = spec["pause"]
    if point == "mid_file":  # half the rows on disk, no footer yet
        def partial_write(table, where, **kwargs):
            with pq.ParquetWriter(where, table.schema) as writer:
                writer.write_table(table.slice(0, len(table) // 2))
                pause(point)
        pq.write_table = partial_write
    elif point == "before_swap":  # the staged partition is complete, not yet renamed into place
        real = storage.replace_dir
        def paused_replace(tmp, final):
            pause(point)
            real(tmp, final)
        storage.replace_dir = paused_replace
    elif point == "between_renames":  # no RENAME_EXCHANGE: the old partition moved aside, the new not yet in
        storage._exchange = lambda a, b: False
        real_rename = os.rename
        def rename_then_pause(src, dst):
            real_rename(src, dst)
            if ".old-" in str(dst):
                pause(point)
        os.rename = rename_then_pause
    elif point == "after_swap":  # renamed into place, the old partition not yet deleted
        real_exchange = storage._exchange
        def paused_exchange(a, b):
            done = real_exchange(a, b)
            pause(point)
            return done
        storage._exchange = paused_exchange
    frame = pd.DataFrame({"x": range(spec["first"], spec["first"] + spec["rows"])})
    Lake(spec["lake"]).write_frame(frame, spec["uri"])

elif scenario == "artifact":
    import pathlib
    from dw_assets.lake.storage import Artifact, Lake

    real_write = pathlib.Path.write_bytes
    written = []
    def write_then_pause(self, data):
        real_write(self, data)
        written.append(self.name)
        if len(written) == 1:
            pause("after_first_file")
    pathlib.Path.write_bytes = write_then_pause
    files = {name: bytes.fromhex(value) for name, value in spec["files"].items()}
    Lake(spec["lake"]).write_artifact(Artifact(files, spec["meta"]), spec["uri"])

elif scenario == "s3_artifact":
    from dw_assets.lake.resources import LakeResource
    from dw_assets.lake.storage import Artifact

    lake = LakeResource(root=spec["lake"], s3_endpoint_url=spec["endpoint"]).open()
    real_put, puts = lake.s3_client.put_object, []
    def put_then_pause(**kwargs):
        result = real_put(**kwargs)
        puts.append(kwargs["Key"])
        if len(puts) == 1:
            pause("after_first_put")
        return result
    lake.s3_client.put_object = put_then_pause
    files = {name: bytes.fromhex(value) for name, value in spec["files"].items()}
    lake.write_artifact(Artifact(files, spec["meta"]), spec["uri"])

elif scenario == "spark":
    import time
    from dw_assets.ingest.spark import SparkSettings, use_this_interpreter
    from dw_assets.lake.storage import Lake
    from pyspark.sql import SparkSession

    use_this_interpreter()
    builder = SparkSession.builder
    for key, value in SparkSettings(master="local[1]", shuffle_partitions=1, driver_memory="1g").as_conf().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()

    def slow_after_first(batches):
        from pyspark import TaskContext
        first = TaskContext.get().partitionId() == 0
        for batch in batches:
            if not first:
                time.sleep(3600)  # every task after the first hangs: the parent kills us meanwhile
            yield batch

    frame = spark.range(spec["first"], spec["first"] + spec["rows"], numPartitions=4).mapInPandas(
        slow_after_first, "id long")
    print("WRITING", flush=True)
    Lake(spec["lake"]).write_spark(frame, spec["uri"])

elif scenario == "publish":
    from dw_assets.serving import open_store, publish_week
    from dw_assets.serving.loadtest import synthetic_playlists

    store = open_store(spec["url"])
    point = spec["pause"]
    progress = None
    if point.startswith("batch:"):  # after N write batches committed
        batches, limit = [], int(point.split(":")[1])
        def progress(users):
            batches.append(users)
            if len(batches) == limit:
                pause(point)
    elif point.startswith("reclaim:"):  # the Nth reclaim pass: the 2nd follows the registration
        real, calls, limit = store._reclaim, [], int(point.split(":")[1])
        def reclaim(*args):
            calls.append(1)
            if len(calls) == limit:
                pause(point)
            return real(*args)
        store._reclaim = reclaim
    elif point != "none":  # before a store method: verify_week, set_current_week, drop_week
        real_method = getattr(store, point)
        def before(*args, **kwargs):
            pause(point)
            return real_method(*args, **kwargs)
        setattr(store, point, before)
    frame = synthetic_playlists(spec["users"], seed=spec["seed"])
    publish_week(store, spec["week"], frame, keep_weeks=spec.get("keep_weeks"), progress=progress)
elif scenario == "publish_spark":  # the executor path: a Spark task hangs once it has written its first users
    import time
    from dw_assets.ingest.spark import SparkSettings, use_this_interpreter
    from dw_assets.serving import open_store, publish_week
    from dw_assets.serving import publish as publishing
    from dw_assets.serving.loadtest import synthetic_playlists
    from pyspark.sql import SparkSession

    use_this_interpreter()
    builder = SparkSession.builder
    settings = SparkSettings(master="local[1]", shuffle_partitions=1, driver_memory="1g", arrow_batch_rows=64)
    for key, value in settings.as_conf().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    real_writer = publishing._partition_writer

    def hanging_writer(*args):
        write = real_writer(*args)
        def run(batches):
            def first_batch_then_hang():
                batches_left = iter(batches)
                yield next(batches_left)
                time.sleep(3600)  # the users of the first batch are written: the parent kills us here
                yield from batches_left
            return write(first_batch_then_hang())
        return run

    publishing._partition_writer = hanging_writer
    frame = spark.createDataFrame(synthetic_playlists(spec["users"], seed=spec["seed"]))
    print("WRITING", flush=True)
    publish_week(open_store(spec["url"]), spec["week"], frame)
else:
    raise SystemExit("unknown scenario " + scenario)
print("DONE", flush=True)
'''


def kill_child(spec: dict, tmp_path: Path, ready: Callable[[list[str]], bool] | None = None,
               timeout_s: float = 180.0) -> list[str]:
    """Run CHILD with ``spec``; SIGKILL its process group once ``ready(lines)`` holds (default: the
    child printed PAUSED). Returns the lines it printed. Fails if the child ended by itself."""
    ready = ready or (lambda lines: any(line.startswith("PAUSED") for line in lines))
    name = f"child-{uuid.uuid4().hex[:6]}"
    stderr, spec_file = tmp_path / f"{name}.err", tmp_path / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    with open(stderr, "w") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(spec_file)], cwd=REPO, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    lines: list[str] = []
    received: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: ([received.put(line.strip()) for line in child.stdout], received.put(None)),
                     daemon=True).start()
    deadline = time.monotonic() + timeout_s
    try:
        while not ready(lines):
            if time.monotonic() > deadline:
                pytest.fail(f"the child never reached its kill point: {lines} {stderr.read_text()[-3000:]}")
            try:
                line = received.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                child.wait(30)
                pytest.fail(f"the child exited ({child.returncode}) before its kill point: {lines} "
                            f"{stderr.read_text()[-3000:]}")
            lines.append(line)
    finally:
        kill_group(child)
    assert child.returncode == -signal.SIGKILL, (child.returncode, stderr.read_text()[-2000:])
    assert "DONE" not in lines
    return lines


def kill_group(child: subprocess.Popen) -> None:
    """SIGKILL every process of the child's group (Spark's JVM and Python workers too); wait until gone."""
    pgid = child.pid  # start_new_session: the child leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    child.wait(60)  # reap it: a zombie still counts as a group member
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def hidden_siblings(uri: str) -> list[str]:
    """Staging / old directories of a partition (what a killed writer can leave behind)."""
    final = Path(uri)
    return sorted(p.name for p in final.parent.glob(f".{final.name}.*"))


# ------------------------------------------------------------------ lake: pandas partitions


def exchange_supported(folder: Path) -> bool:
    from dw_assets.lake.storage import _exchange

    (folder / "a").mkdir()
    (folder / "b").mkdir()
    return _exchange(folder / "a", folder / "b")


@pytest.mark.parametrize("point", ["mid_file", "before_swap", "after_swap", "between_renames"])
def test_a_killed_pandas_write_leaves_the_previous_partition_then_a_rerun_replaces_it(point, tmp_path):
    if point == "after_swap" and not exchange_supported(tmp_path):
        pytest.skip("no RENAME_EXCHANGE on this file system: the replace is two renames (no after-swap instant)")
    lake = Lake(str(tmp_path / "lake"))
    uri = lake.uri("gold", "ranked_playlists", WEEK)
    lake.write_frame(pd.DataFrame({"x": range(100)}), uri)
    kill_child({"scenario": "frame", "pause": point, "lake": lake.root, "uri": uri, "first": 1000, "rows": 5000},
               tmp_path)
    if point == "between_renames":  # the fallback without an atomic swap: no partition, never a partial one
        assert not lake.exists(uri)
        with pytest.raises(LakeError, match="no lake data"):
            lake.read_frame(uri)
    elif point == "after_swap":  # the swap is one syscall: the new partition is whole and live
        assert lake.read_frame(uri)["x"].tolist() == list(range(1000, 6000))
    else:
        assert lake.read_frame(uri)["x"].tolist() == list(range(100))
    assert hidden_siblings(uri), "the kill should have left the staging directory behind"
    lake.write_frame(pd.DataFrame({"x": range(2000, 2300)}), uri)  # the re-run
    assert lake.read_frame(uri)["x"].tolist() == list(range(2000, 2300))
    assert hidden_siblings(uri) == []


def test_a_killed_first_write_leaves_no_partition(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    uri = lake.uri("bronze", "raw_play_events", WEEK)
    kill_child({"scenario": "frame", "pause": "mid_file", "lake": lake.root, "uri": uri, "first": 0, "rows": 5000},
               tmp_path)
    assert not lake.exists(uri)
    with pytest.raises(LakeError, match="no lake data"):
        lake.read_frame(uri)
    lake.write_frame(pd.DataFrame({"x": range(10)}), uri)
    assert lake.read_frame(uri)["x"].tolist() == list(range(10)) and hidden_siblings(uri) == []


# ------------------------------------------------------------------ lake: model artifacts


def _artifact(version: str, names: list[str], seed: int) -> Artifact:
    rng = np.random.default_rng(seed)
    return Artifact({name: rng.bytes(200_000) for name in names}, {"model_version": version})


def _spec(artifact: Artifact, **extra) -> dict:
    return {"files": {n: d.hex() for n, d in artifact.files.items()}, "meta": artifact.meta, **extra}


def test_a_killed_artifact_write_leaves_the_previous_model(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    uri = lake.uri("models", "two_tower_model", WEEK)
    old = _artifact("v1", ["two_tower.bin", "report.json"], seed=1)
    new = _artifact("v2", ["two_tower.bin", "report.json", "extra.bin"], seed=2)
    lake.write_artifact(old, uri)
    kill_child({"scenario": "artifact", **_spec(new, lake=lake.root, uri=uri)}, tmp_path)
    back = lake.read_artifact(uri)
    assert back.meta == old.meta and back.files == old.files  # the old model, whole, not v2's first file
    lake.write_artifact(new, uri)
    back = lake.read_artifact(uri)
    assert back.meta == new.meta and back.files == new.files and hidden_siblings(uri) == []


# ------------------------------------------------------------------ lake: Spark partitions


def test_a_killed_spark_write_leaves_the_previous_partition(spark, tmp_path):
    """The child's Spark job writes 4 part files; it is killed (JVM included) once the first is on disk."""
    lake = Lake(str(tmp_path / "lake"))
    uri = lake.uri("bronze", "raw_play_events", WEEK)
    lake.write_spark(spark.range(0, 100, numPartitions=2), uri)
    staged = Path(uri).parent

    def first_part_written(lines: list[str]) -> bool:
        if "WRITING" not in lines:
            return False
        try:  # Spark creates and renames directories under the staging dir while we look
            return any(p.stat().st_size > 0 for p in staged.glob(f".{Path(uri).name}.tmp-*/**/part-*.parquet"))
        except FileNotFoundError:
            return False

    kill_child({"scenario": "spark", "lake": lake.root, "uri": uri, "first": 1000, "rows": 4000}, tmp_path,
               ready=first_part_written, timeout_s=300)
    assert sorted(lake.read_frame(uri)["id"]) == list(range(100))  # none of the killed job's rows
    assert sorted(lake.read_spark(spark, [uri]).toPandas()["id"]) == list(range(100))
    assert hidden_siblings(uri)
    lake.write_spark(spark.range(1000, 5000, numPartitions=4), uri)  # the re-run
    ids = lake.read_frame(uri)["id"]
    assert len(ids) == 4000 and sorted(ids) == list(range(1000, 5000))  # complete, nothing twice
    assert hidden_siblings(uri) == []


# ------------------------------------------------------------------ lake on S3 (moto server)


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield s3_endpoint


def _s3_lake(endpoint: str, bucket: str) -> Lake:
    from dw_assets.lake.resources import LakeResource

    lake = LakeResource(root=f"s3://{bucket}/prod", s3_endpoint_url=endpoint).open()
    lake.s3_client.create_bucket(Bucket=bucket)
    return lake


def test_a_killed_s3_artifact_write_shows_no_mix_of_old_and_new(s3, tmp_path):
    lake = _s3_lake(s3, "dw-crash-models")
    uri = lake.uri("models", "faiss_index", WEEK)
    old = _artifact("v1", ["ids.npy", "index.bin", "old-only.bin"], seed=1)
    new = _artifact("v2", ["ids.npy", "index.bin"], seed=2)
    lake.write_artifact(old, uri)
    kill_child({"scenario": "s3_artifact", **_spec(new, lake=lake.root, uri=uri, endpoint=s3)}, tmp_path)
    # S3 has no rename: the overwrite hid the old artifact before its first PUT, so nothing is visible.
    assert not lake.exists(uri)
    with pytest.raises(LakeError, match="no artifact"):
        lake.read_artifact(uri)
    lake.write_artifact(new, uri)
    back = lake.read_artifact(uri)
    assert back.meta == new.meta and back.files == new.files  # old-only.bin is gone


def test_s3_readers_ignore_a_spark_write_without_its_success_marker(s3):
    """What a Spark job killed mid-write leaves on S3 (part files, no _SUCCESS) is invisible; a pandas
    rewrite of a Spark partition leaves only its own part."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    lake = _s3_lake(s3, "dw-crash-tables")
    uri = lake.uri("bronze", "raw_play_events", WEEK)
    bucket, key = "dw-crash-tables", uri.split("dw-crash-tables/", 1)[1]

    def put_part(name: str, values: range) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"x": list(values)}), buffer)
        lake.s3_client.put_object(Bucket=bucket, Key=f"{key}/{name}", Body=buffer.getvalue())

    put_part("part-00000-1f2e-c000.snappy.parquet", range(0, 10))
    put_part("part-00001-1f2e-c000.snappy.parquet", range(10, 20))
    assert not lake.exists(uri)
    with pytest.raises(LakeError, match="no lake data"):
        lake.read_frame(uri)
    lake.s3_client.put_object(Bucket=bucket, Key=f"{key}/_SUCCESS", Body=b"")  # the job committed
    assert lake.exists(uri) and sorted(lake.read_frame(uri)["x"]) == list(range(20))
    lake.write_frame(pd.DataFrame({"x": [7, 8]}), uri)
    assert lake.read_frame(uri)["x"].tolist() == [7, 8]
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in lake.s3_client.list_objects_v2(
        Bucket=bucket, Prefix=f"{key}/")["Contents"])
    assert names == ["part-00000.parquet"]


# ------------------------------------------------------------------ publishing (SQLite, Redis)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_for_tests(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/playlists.db?batch_users={BATCH}"
        return
    url = with_options(request.getfixturevalue("redis_url"), prefix=f"dwcrash-{uuid.uuid4().hex[:8]}",
                       batch_users=BATCH)
    yield url
    delete_prefix(url, url.rsplit("prefix=", 1)[1].split("&")[0])


def store_contents(store) -> dict:
    """What readers can reach: the pointer, each registered week's {user: tracks}; plus the number
    of playlist values physically stored (all versions, reachable or not)."""
    weeks = {week: {} for week in store.weeks()}
    if isinstance(store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(store.path) as db:
            stored = db.execute("SELECT COUNT(*) FROM playlists").fetchone()[0]
            rows = db.execute("SELECT w.week, p.user_id, p.tracks FROM weeks w JOIN playlists p "
                              "ON p.week = w.week AND p.version = w.version").fetchall()
        for week, user, blob in rows:
            weeks[week][int(user)] = decode_tracks(blob)
    else:
        assert isinstance(store, RedisStore)
        client = store._client("read")
        stored = sum(1 for _ in client.scan_iter(f"{store.prefix}:pl:*", count=1000))
        registry = store._fetch_registry()
        for week, version in registry.versions.items():
            for user in client.smembers(store._key("users", week, version)):
                weeks[week][int(user)] = decode_tracks(client.get(store._key("pl", week, version, int(user))))
    return {"current": store.current_week(), "weeks": weeks, "stored": stored}


def tracks_of(frame: pd.DataFrame) -> dict[int, list[dict]]:
    return {user: decode_tracks(blob) for user, blob in encode_playlists(frame)}


USERS = 40


def _publish_child(url: str, week: str, seed: int, pause: str, keep_weeks: int | None = None) -> dict:
    return {"scenario": "publish", "url": url, "week": week, "users": USERS, "seed": seed, "pause": pause,
            "keep_weeks": keep_weeks}


@pytest.mark.parametrize("pause", ["batch:2", "verify_week", "set_current_week"])
def test_a_killed_publish_leaves_last_week_live_then_a_rerun_publishes_the_new_week_whole(store_url, pause,
                                                                                           tmp_path):
    live, new = synthetic_playlists(USERS, seed=0), synthetic_playlists(USERS, seed=1)
    with open_store(store_url) as store:
        publish_week(store, W[0], live)
    kill_child(_publish_child(store_url, W[1], seed=1, pause=pause), tmp_path)
    with open_store(store_url) as store:
        after = store_contents(store)
        assert after["current"] == W[0]
        assert after["weeks"][W[0]] == tracks_of(live)  # every user of the live week, untouched
        assert store.get_playlist(5) == tracks_of(live)[5]
        if pause == "batch:2":  # two batches physically written, none of them reachable
            assert W[1] not in after["weeks"] and store.get_playlist(5, W[1]) is None
            assert store.count_users(W[1]) == 0 and after["stored"] == USERS + 2 * BATCH
        else:  # written whole and registered, but not live
            assert after["weeks"][W[1]] == tracks_of(new)
        stats = publish_week(store, W[1], new)  # the re-run
        assert stats["live"] and stats["users"] == USERS
        final = store_contents(store)
    assert final["current"] == W[1]
    assert final["weeks"] == {W[0]: tracks_of(live), W[1]: tracks_of(new)}
    assert final["stored"] == 2 * USERS  # the killed write's values were reclaimed: nothing twice


def test_a_publish_killed_after_registering_a_rewrite_orphans_nothing(store_url, tmp_path):
    """Killed between registering a rewritten week and deleting the version it replaced."""
    first, rewrite = synthetic_playlists(USERS, seed=0), synthetic_playlists(USERS, seed=2)
    with open_store(store_url) as store:
        publish_week(store, W[0], first)
    kill_child(_publish_child(store_url, W[0], seed=2, pause="reclaim:2"), tmp_path)
    with open_store(store_url) as store:
        after = store_contents(store)
        assert after["current"] == W[0] and after["weeks"] == {W[0]: tracks_of(rewrite)}  # the rewrite, whole
        assert after["stored"] == 2 * USERS  # the replaced version is still there, listed as garbage
        publish_week(store, W[0], rewrite)
        final = store_contents(store)
    assert final["weeks"] == {W[0]: tracks_of(rewrite)} and final["stored"] == USERS


def test_a_publish_killed_before_retention_keeps_the_new_week_live_and_the_rerun_drops_old_weeks(store_url,
                                                                                                   tmp_path):
    frames = [synthetic_playlists(USERS, seed=i) for i in range(3)]
    with open_store(store_url) as store:
        for week, frame in zip(W[:2], frames, strict=False):
            publish_week(store, week, frame, keep_weeks=2)
    kill_child(_publish_child(store_url, W[2], seed=2, pause="drop_week", keep_weeks=2), tmp_path)
    with open_store(store_url) as store:
        after = store_contents(store)
        assert after["current"] == W[2] and set(after["weeks"]) == set(W[:3])  # flipped; W[0] not dropped yet
        stats = publish_week(store, W[2], frames[2], keep_weeks=2)
        final = store_contents(store)
    assert stats["dropped_weeks"] == [W[0]]
    assert final["current"] == W[2] and final["weeks"] == {W[1]: tracks_of(frames[1]), W[2]: tracks_of(frames[2])}
    assert final["stored"] == 2 * USERS



def test_a_publish_killed_while_spark_executors_write_leaves_last_week_live(redis_url, spark, tmp_path):
    """The executor path (#20): the driver, its JVM and the Python worker writing to Redis are
    killed once the worker has written its first users; then a re-run from Spark in-process."""
    prefix = f"dwcrash-{uuid.uuid4().hex[:8]}"
    url = with_options(redis_url, prefix=prefix, batch_users=BATCH)
    live, new = synthetic_playlists(USERS, seed=0), synthetic_playlists(USERS, seed=1)
    try:
        with open_store(url) as store:
            publish_week(store, W[0], live)
            client = store._client("read")

            def executor_wrote(lines: list[str]) -> bool:
                return "WRITING" in lines and any(
                    client.scard(key) for key in client.scan_iter(f"{prefix}:users:{W[1]}:*"))

            kill_child({"scenario": "publish_spark", "url": url, "week": W[1], "users": USERS, "seed": 1},
                       tmp_path, ready=executor_wrote, timeout_s=300)
            after = store_contents(store)
            assert after["current"] == W[0] and after["weeks"] == {W[0]: tracks_of(live)}
            assert USERS < after["stored"] < 2 * USERS  # some of week 1 written, none of it reachable
            stats = publish_week(store, W[1], spark.createDataFrame(new).repartition(2))  # the re-run
            assert stats["writers"] == "executors" and stats["live"]
            final = store_contents(store)
        assert final["current"] == W[1]
        assert final["weeks"] == {W[0]: tracks_of(live), W[1]: tracks_of(new)}
        assert final["stored"] == 2 * USERS  # the killed write's values were reclaimed
    finally:
        delete_prefix(url, prefix)
