"""The driver guard: DW_DRIVER_ROW_LIMIT refuses user/event-scale tables on the driver, at any size,
in the guard module and in the lake IO manager (before any row is read)."""

from __future__ import annotations

import pandas as pd
import pytest
from dagster import AssetKey, build_input_context, build_output_context
from dagster._core.types.dagster_type import resolve_dagster_type
from dagster_pyspark import LazyPySparkResource

from dw_assets.lake import driver_guard
from dw_assets.lake.driver_guard import DriverRowLimitExceeded
from dw_assets.lake.resources import LAYER_KEY, LakeIOManager, LakeResource, parquet_rows
from dw_assets.lake.storage import Artifact, open_lake, vectors_artifact

LIMIT = driver_guard.ROW_LIMIT_ENV


@pytest.fixture
def limit(monkeypatch):
    def set_limit(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(LIMIT, raising=False)
        else:
            monkeypatch.setenv(LIMIT, value)
    set_limit(None)
    return set_limit


# ------------------------------------------------------------------ the module


def test_unset_means_no_limit_and_bad_values_name_the_setting(limit):
    assert driver_guard.row_limit() is None
    driver_guard.check_driver_rows("interactions", 10**12)
    assert driver_guard.bounded(5_000_000) == 5_000_000
    limit("  ")
    assert driver_guard.row_limit() is None
    for bad in ("0", "-3", "1e3", "many", "2.5"):
        limit(bad)
        with pytest.raises(ValueError, match=f"{LIMIT} must be a positive integer, got '{bad}'"):
            driver_guard.row_limit()
        with pytest.raises(ValueError, match=LIMIT):
            driver_guard.check_driver_rows("interactions", 1)
    limit(" 200 ")
    assert driver_guard.row_limit() == 200


def test_user_scale_tables_are_refused_above_the_limit_and_track_scale_ones_are_exempt(limit):
    limit("200")
    driver_guard.check_driver_rows("user_profiles", 200)  # at the limit: allowed
    with pytest.raises(DriverRowLimitExceeded) as refused:
        driver_guard.check_driver_rows("user_profiles", 201)
    assert "user_profiles" in str(refused.value) and "201 rows" in str(refused.value) and f"{LIMIT}=200" in str(
        refused.value)
    for track_scale in ("track_catalog", "track_stats", "track_embeddings", "item2vec_embeddings", "faiss_index"):
        assert not driver_guard.is_user_scale(track_scale)
        driver_guard.check_driver_rows(track_scale, 10**9)
    assert driver_guard.bounded(5_000) == 200 and driver_guard.bounded(50) == 50
    # The evaluations' stored tables are aggregates (the report reads 12 weeks x 30 rows of them); the
    # per-user rows behind them are user-scale.
    for aggregate in ("offline_evaluation", "retrieval_evaluation", "north_star_evaluation", "model_monitoring"):
        driver_guard.check_driver_rows(aggregate, 12 * 30)
    with pytest.raises(DriverRowLimitExceeded):
        driver_guard.check_driver_rows("evaluation_rows", 201)


def test_an_audit_records_every_table_over_the_limit_and_goes_on(limit, monkeypatch, tmp_path):
    import json

    report = tmp_path / "guard.jsonl"
    monkeypatch.setenv(driver_guard.REPORT_ENV, str(report))
    limit("200")
    driver_guard.check_driver_rows("sessions", 5_000)
    driver_guard.check_driver_rows("user_profiles", 300, where="read as pandas by ranked_playlists")
    driver_guard.check_driver_rows("track_stats", 10**6)  # exempt: not recorded
    driver_guard.check_driver_rows("sessions", 200)  # at the limit: not recorded
    entries = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(e["asset"], e["rows"], e["limit"]) for e in entries] == [("sessions", 5_000, 200), ("user_profiles", 300, 200)]
    assert entries[0]["where"].startswith("dw_assets_tests/test_driver_guard.py:")  # the calling line
    assert entries[1]["where"] == "read as pandas by ranked_playlists"


def test_to_driver_refuses_with_the_real_count_and_passes_small_or_exempt_frames(limit, spark):
    frame = spark.range(0, 1_000).withColumnRenamed("id", "user_id")
    limit("200")
    with pytest.raises(DriverRowLimitExceeded, match=r"interactions: 1000 rows"):
        driver_guard.to_driver(frame, "interactions")
    assert len(driver_guard.to_driver(frame.limit(200), "interactions")) == 200
    assert len(driver_guard.to_driver(frame, "track_stats")) == 1_000
    limit(None)
    assert len(driver_guard.to_driver(frame, "interactions")) == 1_000


# ------------------------------------------------------------------ the lake IO manager


def _io_manager(root) -> LakeIOManager:
    lake = LakeResource(root=str(root))
    return LakeIOManager(lake=lake, pyspark=LazyPySparkResource(spark_config={}))


def _upstream(asset: str, layer: str = "gold"):
    return build_output_context(asset_key=AssetKey(asset), definition_metadata={LAYER_KEY: layer})


def _store(manager: LakeIOManager, asset: str, obj, layer: str = "gold") -> None:
    with _upstream(asset, layer) as context:  # closes the context's throwaway resources and instance
        manager.handle_output(context, obj)


def _load(manager: LakeIOManager, asset: str, python_type=None, layer: str = "gold"):
    with _upstream(asset, layer) as upstream, build_input_context(
            asset_key=AssetKey(asset), upstream_output=upstream,
            dagster_type=resolve_dagster_type(python_type or pd.DataFrame)) as context:
        return manager.load_input(context)


def _write_parts(root, layer: str, asset: str, sizes: list[int]) -> None:
    """A Spark-like partition: several part files (the count must add them all up)."""
    lake = open_lake(str(root))
    folder = lake.uri(layer, asset)
    import pathlib

    pathlib.Path(folder).mkdir(parents=True)
    start = 0
    for i, size in enumerate(sizes):
        pd.DataFrame({"user_id": range(start, start + size)}).to_parquet(f"{folder}/part-{i:05d}.parquet")
        start += size
    pathlib.Path(folder, "_SUCCESS").touch()


def test_the_io_manager_refuses_a_user_scale_pandas_input_before_reading_it(limit, tmp_path, monkeypatch):
    _write_parts(tmp_path, "gold", "user_profiles", [150, 150])
    _write_parts(tmp_path, "gold", "track_stats", [400])
    manager = _io_manager(tmp_path)
    lake = open_lake(str(tmp_path))
    assert parquet_rows(lake, lake.uri("gold", "user_profiles")) == 300

    # unset: no limit
    assert len(_load(manager, "user_profiles")) == 300
    limit("200")
    reads = []
    monkeypatch.setattr(type(lake), "read_frame", lambda self, uri, columns=None: reads.append(uri))
    with pytest.raises(DriverRowLimitExceeded) as refused:
        _load(manager, "user_profiles")
    message = str(refused.value)
    assert message.startswith("user_profiles: 300 rows") and f"{LIMIT}=200" in message and "read as pandas" in message
    assert reads == []  # refused from the footers: no row was read
    monkeypatch.undo()
    limit("200")
    assert len(_load(manager, "track_stats")) == 400  # track scale: exempt
    limit("300")
    assert len(_load(manager, "user_profiles")) == 300  # at the limit
    limit("abc")
    with pytest.raises(ValueError, match=f"{LIMIT} must be a positive integer, got 'abc'"):
        _load(manager, "user_profiles")


def test_the_io_manager_refuses_user_scale_outputs_built_on_the_driver(limit, tmp_path):
    import numpy as np

    manager = _io_manager(tmp_path)
    limit("200")
    users = pd.DataFrame({"user_id": range(201)})
    with pytest.raises(DriverRowLimitExceeded, match=r"user_profiles: 201 rows .*returned as pandas"):
        _store(manager, "user_profiles", users)
    _store(manager, "track_stats", pd.DataFrame({"track_id": range(5_000)}))

    vectors = vectors_artifact(np.arange(300), np.zeros((300, 4)), {"model_version": "w"})
    with pytest.raises(DriverRowLimitExceeded, match=r"user_embeddings: 300 rows"):
        _store(manager, "user_embeddings", vectors, "models")
    _store(manager, "track_embeddings", vectors, "models")  # per track: exempt
    limit(None)
    _store(manager, "user_embeddings", vectors, "models")
    limit("200")
    with pytest.raises(DriverRowLimitExceeded, match=r"user_embeddings: 300 rows .*loaded by"):
        _load(manager, "user_embeddings", python_type=Artifact, layer="models")
    assert _load(manager, "track_embeddings", python_type=Artifact, layer="models").meta["rows"] == 300


def test_row_counts_come_from_the_footers_on_s3_too(monkeypatch, s3_endpoint):
    """On S3 the count reads each complete part's footer by ranged GETs (moto's server, real HTTP)."""
    from dw_assets.lake.s3 import S3Settings

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "DW_S3_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    S3Settings.from_env().client().create_bucket(Bucket="dw-guard")
    lake = open_lake("s3://dw-guard/lake")
    uri = lake.uri("gold", "user_profiles", "2026-01-05")
    lake.write_frame(pd.DataFrame({"user_id": range(321), "name": ["x" * 50] * 321}), uri)
    assert parquet_rows(lake, uri) == 321


def test_an_empty_window_reads_as_an_empty_table_of_the_annotated_kind(tmp_path, spark):
    """A Spark-typed input with no partition yet (the start of history) is an empty Spark frame, typed by
    the input's "schema" metadata; a pandas one an empty pandas frame with the named columns."""
    from pyspark.sql import DataFrame

    manager = LakeIOManager(lake=LakeResource(root=str(tmp_path)), pyspark=LazyPySparkResource(spark_config={}))

    def load(python_type, metadata):
        with _upstream("ranked_playlists") as upstream, build_input_context(
                asset_key=AssetKey("ranked_playlists"), upstream_output=upstream, definition_metadata=metadata,
                dagster_type=resolve_dagster_type(python_type)) as context:
            return manager.load_input(context)

    typed = load(DataFrame, {"may_be_empty": True, "columns": ["user_id", "week"], "schema": "user_id long, week string"})
    assert isinstance(typed, DataFrame) and typed.isEmpty() and typed.dtypes == [("user_id", "bigint"), ("week", "string")]
    assert load(DataFrame, {"may_be_empty": True, "columns": ["user_id"]}).dtypes == [("user_id", "string")]
    frame = load(pd.DataFrame, {"may_be_empty": True, "columns": ["user_id", "week"]})
    assert isinstance(frame, pd.DataFrame) and frame.empty and list(frame.columns) == ["user_id", "week"]
