"""Idempotency (#8): materializing the same week twice gives the same playlists and the same store.

The first materialization is the session's tiny world, built as ``dw run`` does (conftest's
``tiny_world_report``: the history, week W-1's candidates, then every asset of the last training week,
published to its embedded SQLite store), copied to a folder of this module's and published to Redis too.
Then the week is materialized again from ``candidates`` down (candidates, ranker_model, ranked_playlists,
published_playlists) on the same upstream lake, to both stores. A full second materialization of the week
(models retrained) would cost another ~100 s on 2 shared cores, so the re-run starts at candidates, the
first asset whose output the playlists are built from.

Compared: the content hashes of every ranked_playlists row (sorted), candidates likewise, and what
each store serves for the week (every user's tracks), plus the values physically stored (no
duplicates left by the rewrite).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, AssetRecordsFilter, AssetSelection, DagsterInstance

from dw_assets.automation.runner import run_selection
from dw_assets.lake.storage import Lake
from dw_assets.serving.stores import RedisStore, SQLiteStore, decode_tracks, encode_playlists, open_store
from dw_assets_tests.redis_server import delete_prefix, redis_for_tests, with_options

RERUN = ("candidates", "ranker_model", "ranked_playlists", "published_playlists")


def row_hashes(frame: pd.DataFrame) -> str:
    """One digest of a table's rows, independent of row order: sha256 of the sorted per-row content hashes."""
    frame = frame[sorted(frame.columns)]
    hashes = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
    return hashlib.sha256(hashes.tobytes()).hexdigest()


def store_contents(url: str) -> dict:
    """What the store serves (pointer, registered weeks, every user's tracks) and the playlist values
    it physically holds (all versions)."""
    with open_store(url) as store:
        weeks: dict[str, dict[int, list]] = {week: {} for week in store.weeks()}
        if isinstance(store, SQLiteStore):
            with sqlite3.connect(store.path) as db:
                stored = db.execute("SELECT COUNT(*) FROM playlists").fetchone()[0]
                for week, user, blob in db.execute("SELECT w.week, p.user_id, p.tracks FROM weeks w JOIN playlists p "
                                                   "ON p.week = w.week AND p.version = w.version"):
                    weeks[week][int(user)] = decode_tracks(blob)
        else:
            assert isinstance(store, RedisStore)
            client = store._client("read")
            stored = sum(1 for _ in client.scan_iter(f"{store.prefix}:pl:*", count=1000))
            for week, version in store._fetch_registry().versions.items():
                for user in client.smembers(store._key("users", week, version)):
                    weeks[week][int(user)] = decode_tracks(client.get(store._key("pl", week, version, int(user))))
        return {"current": store.current_week(), "weeks": weeks, "stored": stored}


@pytest.fixture(scope="module")
def twice(tmp_path_factory, tiny_world_run):
    """(week, lake, first snapshot, second snapshot, run ids of the re-run)."""
    root = tmp_path_factory.mktemp("idempotent_world") / "world"
    shutil.copytree(tiny_world_run, root)  # the session's run is read-only for the other tests
    week = json.loads((root / "landing" / "manifest.json").read_text())["last_training_week"]
    lake = Lake(str(root))
    sqlite_url = f"sqlite:///{root}/serving/playlists.db"  # the embedded store the session's run published to
    assert (root / "serving" / "playlists.db").is_file()
    prefix = "dwidem"
    with redis_for_tests(tmp_path_factory.mktemp("redis")) as redis_base:
        redis_url = with_options(redis_base, prefix=prefix)
        instance = DagsterInstance.get()

        def snapshot() -> dict:
            return {
                "ranked_playlists": row_hashes(lake.read_frame(lake.uri("gold", "ranked_playlists", week))),
                "candidates": row_hashes(lake.read_frame(lake.uri("gold", "candidates", week))),
                "sqlite": store_contents(sqlite_url), "redis": store_contents(redis_url),
            }

        run_selection(AssetSelection.assets("published_playlists"), week, root, instance, store_url=redis_url)
        first = snapshot()
        reruns = [run_selection(AssetSelection.assets(*RERUN), week, root, instance, store_url=sqlite_url).run_id,
                  run_selection(AssetSelection.assets("published_playlists"), week, root, instance,
                                store_url=redis_url).run_id]
        second = snapshot()
        delete_prefix(redis_url, prefix)
    return week, lake, first, second, reruns


def test_the_same_week_twice_gives_identical_playlists(twice):
    week, lake, first, second, reruns = twice
    assert second["ranked_playlists"] == first["ranked_playlists"]
    assert second["candidates"] == first["candidates"]
    playlists = lake.read_frame(lake.uri("gold", "ranked_playlists", week))
    assert len(playlists) and not playlists.duplicated(["user_id", "position"]).any()  # replaced, not appended
    # the second materialization really happened (recorded by Dagster in the re-run)
    records = DagsterInstance.get().fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("ranked_playlists"), asset_partitions=[week]), limit=10).records
    assert reruns[0] in {record.run_id for record in records} and len(records) >= 2
    for folder in ("gold/candidates", "gold/ranked_playlists", "models/ranker_model"):
        assert [p.name for p in (Path(lake.root) / folder).iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_the_same_week_twice_gives_identical_store_contents(twice, kind):
    week, lake, first, second, _ = twice
    before, after = first[kind], second[kind]
    assert after == before
    assert after["current"] == week and list(after["weeks"]) == [week]
    playlists = lake.read_frame(lake.uri("gold", "ranked_playlists", week))
    served = {user: decode_tracks(blob) for user, blob in encode_playlists(playlists)}
    assert after["weeks"][week] == served  # exactly the lake's playlists, every user
    assert after["stored"] == len(served)  # the superseded version was deleted: nothing twice
