"""The pipeline on a real Spark standalone cluster (scripts/spark-cluster.sh: one master, two 1-core
workers, executors in their own JVMs and Python workers) with a capped driver, and the settings that
point a session at a cluster."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pytest

from dw_assets.ingest import spark as spark_settings
from dw_assets.ingest.spark import SparkSettings, settings_from_env
from dw_assets_tests.spark_cluster import run_world
from dw_assets_tests.test_s3_lake import QUICK, _export

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
    assert local["spark.sql.adaptive.coalescePartitions.enabled"] == "false"  # deterministic file counts
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
        "spark.sql.adaptive.enabled": "true", "spark.sql.adaptive.coalescePartitions.enabled": "false"}

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


@pytest.mark.timeout(2400)  # alone, it builds the local reference first: two runs of the tiny world
def test_the_tiny_world_on_a_standalone_cluster_gives_the_local_runs_playlists(tiny_world_run, spark_cluster,
                                                                               tmp_path):
    """Executors in their own JVMs and Python workers, the driver capped at 1 GB and 16 MB per collect:
    the exported playlists equal the same world's local[*] run, row for row."""
    manifest = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())
    week = manifest["last_training_week"]
    started = time.perf_counter()
    done, where = run_world(spark_cluster, tiny_world_run, tmp_path / "cluster", manifest, QUICK)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    print(f"tiny world on {spark_cluster}: {elapsed:.0f}s")
    # One executor: with two, the last week's user_profiles differ from local mode's (measured 2026-12-06;
    # a shuffle's float partial sums are merged in fetch order: docs/operations.md). The two-executor run is
    # the driver-guard test's.
    assert where["master"] == spark_cluster and where["executors"] >= 1, where

    cluster = tmp_path / "cluster"
    # Ingest, item2vec and the audio CNN are identical, row order included, on the executors and in local
    # mode: the models train with their configs' torch thread count, whatever the process had set (this
    # pytest process may hold 1 thread, set by test_two_tower at import; `dw run` has all cores).
    for table in ("silver/interactions", "gold/user_profiles", "gold/track_stats"):
        pd.testing.assert_frame_equal(pd.read_parquet(cluster / table / f"week={week}"),
                                      pd.read_parquet(tiny_world_run / table / f"week={week}"), obj=table)
    for name in ("ids.npy", "vectors.npy"):
        path = f"models/item2vec_embeddings/week={week}/{name}"
        assert np.array_equal(np.load(cluster / path), np.load(tiny_world_run / path)), path
    audio = [pd.read_parquet(root / f"models/audio_vectors/week={week}") for root in (cluster, tiny_world_run)]
    assert len(audio[0]) > 0
    assert audio[0]["track_id"].tolist() == audio[1]["track_id"].tolist()
    assert np.array_equal(np.stack(audio[0]["vector"]), np.stack(audio[1]["vector"]))

    on_cluster = _export(str(cluster), week, tmp_path / "cluster.parquet")
    local = _export(str(tiny_world_run), week, tmp_path / "local.parquet")
    assert len(on_cluster) == len(local) > 0
    pd.testing.assert_frame_equal(on_cluster, local)
