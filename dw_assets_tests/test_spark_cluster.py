"""The pipeline on a real Spark standalone cluster (scripts/spark-cluster.sh: one master, three 1-core
workers, executors in their own JVMs and Python workers) with a capped driver and an S3 lake, and the
settings that point a session at a cluster."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from dw_assets.ingest import spark as spark_settings
from dw_assets.ingest.spark import SparkSettings, settings_from_env
from dw_assets.lake.s3 import S3Settings
from dw_assets.lake.storage import open_lake
from dw_assets_tests.spark_cluster import TWO_EXECUTORS, run_world
from dw_assets_tests.test_s3_lake import QUICK, _export, aws  # noqa: F401 (aws: the fixture)

CLUSTER_ENV = ("DW_SPARK_MASTER", "DW_SPARK_DRIVER_MEMORY", "DW_SPARK_DRIVER_MAX_RESULT_SIZE",
               "DW_SPARK_EXECUTOR_MEMORY", "DW_SPARK_EXECUTOR_CORES", "DW_SPARK_CORES_MAX",
               "DW_SPARK_PYTHON_ARCHIVE", "DW_SPARK_JARS_SHARED")


@pytest.fixture
def clean_env(monkeypatch):
    for name in CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------ settings


def test_local_mode_keeps_its_settings_and_a_cluster_gets_its_own(clean_env, tmp_path):
    local = settings_from_env().as_conf()
    assert local["spark.master"] == "local[*]" and local["spark.sql.adaptive.enabled"] == "true"
    # a cluster's shuffle partitions follow the data; local mode's stay fixed (one JVM's heap)
    assert local["spark.sql.adaptive.coalescePartitions.enabled"] == "false"
    assert not {"spark.executor.memory", "spark.executor.cores", "spark.cores.max", "spark.archives",
                "spark.driver.maxResultSize"} & set(local)

    for name, value in {"DW_SPARK_MASTER": "spark://10.0.0.5:7077", "DW_SPARK_DRIVER_MEMORY": "1g",
                        "DW_SPARK_DRIVER_MAX_RESULT_SIZE": "16m", "DW_SPARK_EXECUTOR_MEMORY": "6g",
                        "DW_SPARK_EXECUTOR_CORES": "4", "DW_SPARK_CORES_MAX": "64",
                        "DW_SPARK_PYTHON_ARCHIVE": "s3://dw-deploy/dw-venv.tar.gz#env"}.items():
        clean_env.setenv(name, value)
    conf = settings_from_env().as_conf()
    assert {k: conf[k] for k in ("spark.master", "spark.driver.memory", "spark.driver.maxResultSize",
                                 "spark.executor.memory", "spark.executor.cores", "spark.cores.max",
                                 "spark.archives", "spark.pyspark.python", "spark.sql.adaptive.enabled",
                                 "spark.sql.adaptive.coalescePartitions.enabled")} == {
        "spark.master": "spark://10.0.0.5:7077", "spark.driver.memory": "1g", "spark.driver.maxResultSize": "16m",
        "spark.executor.memory": "6g", "spark.executor.cores": "4", "spark.cores.max": "64",
        "spark.archives": "s3://dw-deploy/dw-venv.tar.gz#env", "spark.pyspark.python": "./env/bin/python",
        "spark.sql.adaptive.enabled": "true", "spark.sql.adaptive.coalescePartitions.enabled": "true"}

    # pyspark's executors take their interpreter from PYSPARK_PYTHON only: set to the unpacked archive's
    clean_env.setenv("PYSPARK_PYTHON", "/somewhere/else/python")
    spark_settings.use_this_interpreter()
    assert os.environ["PYSPARK_PYTHON"] == "./env/bin/python"
    assert SparkSettings(master="spark://h:7077", python_archive="/opt/dw/venv.tar.gz").as_conf()[
        "spark.archives"] == "/opt/dw/venv.tar.gz#env"  # no alias: ./env
    # local mode unpacks nothing: the archive only matters to executors on other hosts
    assert "spark.archives" not in SparkSettings(python_archive="/opt/dw/venv.tar.gz#env").as_conf()

    for name, bad in (("DW_SPARK_EXECUTOR_CORES", "two"), ("DW_SPARK_CORES_MAX", "0"),
                      ("DW_SPARK_PYTHON_ARCHIVE", "venv.tar.gz#a/b")):
        clean_env.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            settings_from_env()
        clean_env.delenv(name)


def test_the_jars_go_on_the_classpath_where_every_host_has_them(clean_env):
    shipped = SparkSettings(master="spark://h:7077").as_conf()
    shared = SparkSettings(master="spark://h:7077", jars_shared=True).as_conf()
    if "spark.jars" not in shipped:
        pytest.fail("scripts/spark-jars.sh has not fetched the s3a:// jars (the set-up does)")
    jars = shipped["spark.jars"].split(",")
    assert shared["spark.executor.extraClassPath"].split(":") == jars == shared["spark.driver.extraClassPath"].split(":")
    assert "spark.jars" not in shared


# ------------------------------------------------------------------ the tiny world on the cluster


@pytest.fixture(scope="module")
def two_week_world(tmp_path_factory) -> Path:
    """A tiny world of two training weeks and the holdout (the session's has four): every step of a week
    on the cluster (W-1's models for the ranker's training, W's, the evaluation) at two fewer ingests a run."""
    from dw_assets.simulate import config_for, simulate

    root = tmp_path_factory.mktemp("two_week_world")
    simulate(config_for("tiny", weeks=2), root)
    return root


@pytest.mark.timeout(2400)  # two runs of the tiny world: the cluster's and its local reference
@pytest.mark.usefixtures("aws")
def test_the_tiny_world_on_two_executors_with_an_s3_lake_and_a_200_row_driver_limit_gives_the_local_runs_playlists(
        two_week_world, spark_cluster, monkeypatch, tmp_path):
    """The shape of a multi-host deployment: executors in their own JVMs and Python workers (two of them,
    each job's tasks split between them), the driver capped at 1 GB and 16 MB per collect, landing zone and
    lake in one S3 bucket (Spark through s3a:// from the executors, artifacts and pandas through boto3,
    audio clips read from S3 by the executors), and the driver guard at 200 rows (fewer than the tiny
    world's users: every user- or event-scale table must stay in Spark, the bounded samples take
    min(cap, 200)). The playlists are complete and valid (30 unique unheard tracks for every user) and equal
    the same world's local[*] run under the same limit on a local lake, row for row; the credentials are
    never logged or stored. (One cluster run for both proofs: the suite's slowest test.)"""
    secret = "dw-s3-planted-secret-7f3a9c"  # moto takes any key: this one must never be logged or stored
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    manifest = json.loads((two_week_world / "landing" / "manifest.json").read_text())
    week = manifest["last_training_week"]
    guarded = {"DW_DRIVER_ROW_LIMIT": "200"}
    # The reference: local mode in a process of its own, the same limit, a driver big enough for local[2];
    # told of the training weeks only, so it skips the evaluation (the cluster run's is not compared).
    local_root = tmp_path / "local"
    done, where = run_world("local[2]", two_week_world, local_root, manifest, QUICK, weeks=manifest["training_weeks"],
                            env={**guarded, "DW_SPARK_DRIVER_MEMORY": "3g", "DW_SPARK_DRIVER_MAX_RESULT_SIZE": "1g"})
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert where["master"] == "local[2]", where

    S3Settings.from_env().client().create_bucket(Bucket="dw-cluster")
    root = "s3://dw-cluster/world"
    scratch = tmp_path / "cluster"
    started = time.perf_counter()
    done, where = run_world(spark_cluster, two_week_world, root, manifest, QUICK, env={**guarded, **TWO_EXECUTORS},
                            scratch=scratch, store_url=f"sqlite:///{scratch / 'store' / 'playlists.db'}")
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    print(f"tiny world on {spark_cluster} with an S3 lake and a 200-row driver limit: {elapsed:.0f}s")
    assert where["master"] == spark_cluster and where["executors"] == 2, where
    assert len(where["tasks_by_executor"]) == 2 and min(where["tasks_by_executor"].values()) > 0, where

    lake, local = open_lake(root), open_lake(str(local_root))
    # Spark wrote through s3a:// with its committer's marker; nothing was written to the local disk.
    # The week's evaluation (the holdout landed) ran on the executors under the same guard; the north star
    # played its sample there too (the evaluated users whose histories fit the 200-row limit, or none: then
    # it is stored empty and says why).
    for asset in ("retrieval_evaluation", "offline_evaluation", "last_week_playlists"):
        assert len(lake.read_frame(lake.uri("gold", asset, week))) > 0, asset
    north_star = lake.read_frame(lake.uri("gold", "north_star_evaluation", week))
    assert north_star.empty or 0 < north_star["users"].max() <= int(guarded["DW_DRIVER_ROW_LIMIT"])
    for layer, asset in (("bronze", "raw_play_events"), ("silver", "interactions"), ("gold", "candidates"),
                         ("gold", "ranked_playlists"), ("gold", "ranker_order")):
        _, _, names = lake._s3_names(lake.uri(layer, asset, week))
        assert "_SUCCESS" in names and any(n.startswith("part-") for n in names), (asset, names)
    assert not list((scratch / "cwd").iterdir())
    audio = lake.read_artifact(lake.uri("models", "audio_embeddings", week))
    assert audio.meta["tracks_embedded"] > 0 and audio.meta["problems"]  # the world's broken clips, by S3 key
    assert all(p["path"].startswith(f"{root}/landing/audio/") for p in audio.meta["problems"])

    # Ingest, item2vec and the audio CNN are identical, row order included, on the executors and in local
    # mode: the models train with their configs' torch thread count, whatever the process had set.
    for layer, table in (("silver", "interactions"), ("gold", "user_profiles"), ("gold", "track_stats"),
                         ("models", "audio_vectors"), ("models", "item2vec_embeddings"), ("models", "track_embeddings")):
        pd.testing.assert_frame_equal(lake.read_frame(lake.uri(layer, table, week)),
                                      local.read_frame(local.uri(layer, table, week)), obj=table)
    # The kept encoder's features too; each row names its clip under its own lake's landing zone.
    features, local_features = (store.read_frame(store.uri("models", "audio_features", week)) for store in (lake, local))
    assert [p.split("/landing/", 1)[1] for p in features["location"]] == \
        [p.split("/landing/", 1)[1] for p in local_features["location"]]
    pd.testing.assert_frame_equal(features.drop(columns="location"), local_features.drop(columns="location"))
    for name in ("audio_embeddings", "two_tower_model", "ranker_model"):
        assert lake.read_artifact(lake.uri("models", name, week)).model_version == \
            local.read_artifact(local.uri("models", name, week)).model_version, name

    # The ranker's own order (written by the playlists' tasks) is the same lists as in local mode.
    lists = ["user_id", "position", "track_id"]
    pd.testing.assert_frame_equal(lake.read_frame(lake.uri("gold", "ranker_order", week))[lists],
                                  local.read_frame(local.uri("gold", "ranker_order", week))[lists], obj="ranker_order")

    on_cluster = _export(root, week, tmp_path / "cluster.parquet")
    reference = _export(str(local_root), week, tmp_path / "local.parquet")
    assert len(on_cluster) == len(reference) > 0
    pd.testing.assert_frame_equal(on_cluster, reference)

    # Complete and valid under the guard: the limit is below the world's users, so a table collected to
    # the driver would have failed the run; every user still gets 30 unique tracks not heard before.
    profiles = lake.read_frame(lake.uri("gold", "user_profiles", week))
    assert len(profiles) > int(guarded["DW_DRIVER_ROW_LIMIT"])
    per_user = on_cluster.groupby("user_id").size()
    assert set(per_user.index) == set(profiles["user_id"]) and (per_user == 30).all()
    assert not on_cluster.duplicated(["user_id", "track_id"]).any()
    heard = pd.concat([lake.read_frame(lake.uri("silver", "interactions", w))[["user_id", "track_id"]]
                       for w in manifest["training_weeks"] if w <= week])
    assert on_cluster.merge(heard.drop_duplicates(), on=["user_id", "track_id"]).empty

    # The secret reached the executors through the session's configuration, never a log or a stored file.
    assert secret not in done.stdout + done.stderr
    stored = [p for p in (scratch / "dagster_home").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not stored, stored
