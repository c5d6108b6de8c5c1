"""The tiny world on the standalone cluster with DW_DRIVER_ROW_LIMIT=200 (fewer than the tiny world's
users): every user- or event-scale table stays in Spark (the evaluation on a seeded-hash sample of users
that the limit caps), so the run passes the guard and gives complete, valid playlists: 30 unique unheard
tracks for every user.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dw_assets.lake.storage import open_lake
from dw_assets_tests.spark_cluster import TWO_EXECUTORS, run_world
from dw_assets_tests.test_s3_lake import QUICK, _export


@pytest.mark.timeout(1800)  # one run of the tiny world's weeks on two executors of the cluster
def test_the_tiny_world_on_the_cluster_with_a_200_row_driver_limit_gives_complete_playlists(
        tiny_world, spark_cluster, tmp_path):
    manifest = json.loads((tiny_world / "landing" / "manifest.json").read_text())
    week = manifest["last_training_week"]
    done, where = run_world(spark_cluster, tiny_world, tmp_path / "guarded", manifest, QUICK,
                            env={"DW_DRIVER_ROW_LIMIT": "200", **TWO_EXECUTORS})
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    # Both executors ran tasks: the week's data was split between two JVMs, not run on one.
    assert where["executors"] == 2 and len(where["tasks_by_executor"]) == 2, where
    assert min(where["tasks_by_executor"].values()) > 0, where

    root = tmp_path / "guarded"
    lake = open_lake(str(root))
    profiles = lake.read_frame(lake.uri("gold", "user_profiles", week))
    assert len(profiles) > 200  # the limit is below the world's users: a collected table would have failed
    playlists = _export(str(root), week, tmp_path / "guarded.parquet")
    per_user = playlists.groupby("user_id").size()
    assert set(per_user.index) == set(profiles["user_id"]) and (per_user == 30).all()
    assert not playlists.duplicated(["user_id", "track_id"]).any()
    heard = pd.concat([lake.read_frame(lake.uri("silver", "interactions", w))[["user_id", "track_id"]]
                       for w in manifest["training_weeks"] if w <= week])
    assert playlists.merge(heard.drop_duplicates(), on=["user_id", "track_id"]).empty
