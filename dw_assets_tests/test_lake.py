"""The lake: atomic partition writes that replace, window loads, and the same code on S3 (moto server)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from dagster import AssetIn, AssetOut, multi_asset
from dagster import materialize as dagster_materialize

from dw_assets.lake.resources import (
    COMPLETE_WINDOW_KEY,
    LAYER_KEY,
    PER_PARTITION_KEY,
    LakeIOManager,
    LakeResource,
    PartitionInputs,
)
from dw_assets.lake.storage import Lake, LakeError
from dw_assets.partitions import history_window, weekly_partitions


def test_rewrite_replaces_a_partition_whole(tmp_path):
    lake = Lake(str(tmp_path))
    uri = lake.uri("silver", "interactions", "2026-01-05")
    lake.write_frame(pd.DataFrame({"x": range(10)}), uri)
    lake.write_frame(pd.DataFrame({"x": [99, 100]}), uri)
    assert lake.read_frame(uri)["x"].tolist() == [99, 100]
    # nothing but the partition itself is left beside it
    assert sorted(p.name for p in (tmp_path / "silver" / "interactions").iterdir()) == ["week=2026-01-05"]


def test_failed_write_leaves_the_previous_partition(tmp_path):
    lake = Lake(str(tmp_path))
    uri = lake.uri("gold", "track_stats", "2026-01-05")
    lake.write_frame(pd.DataFrame({"x": [1, 2, 3]}), uri)
    with pytest.raises(pa.ArrowInvalid):
        lake.write_frame(pd.DataFrame({"x": [object()]}), uri)  # pyarrow cannot convert this
    assert lake.read_frame(uri)["x"].tolist() == [1, 2, 3]
    assert [p.name for p in Path(uri).parent.iterdir()] == ["week=2026-01-05"]


def test_reading_a_missing_partition_says_which(tmp_path):
    lake = Lake(str(tmp_path))
    with pytest.raises(LakeError, match="week=2026-01-12"):
        lake.read_frame(lake.uri("bronze", "raw_play_events", "2026-01-12"))
    with pytest.raises(LakeError, match="unknown lake layer"):
        lake.uri("platinum", "x")


@multi_asset(outs={"weekly_numbers": AssetOut(metadata={LAYER_KEY: "silver"})}, partitions_def=weekly_partitions)
def weekly_numbers(context):
    return pd.DataFrame({"week": [context.partition_key] * 3, "n": [1, 2, 3]})


@multi_asset(
    outs={"window_total": AssetOut(metadata={LAYER_KEY: "gold"})},
    ins={"weekly_numbers": AssetIn(partition_mapping=history_window)},
    partitions_def=weekly_partitions,
)
def window_total(weekly_numbers: pd.DataFrame):
    return pd.DataFrame({"weeks": [weekly_numbers["week"].nunique()], "total": [int(weekly_numbers["n"].sum())]})


def _materialize(lake: LakeResource, week: str, assets):
    from dagster_pyspark import LazyPySparkResource

    resources = {"io_manager": LakeIOManager(lake=lake, pyspark=LazyPySparkResource(spark_config={}))}
    return dagster_materialize(assets, partition_key=week, resources=resources)


def test_history_window_loads_the_weeks_that_exist(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    for week in ("2026-01-05", "2026-01-12"):
        _materialize(lake, week, [weekly_numbers])
    result = _materialize(lake, "2026-01-12", [weekly_numbers.to_source_asset(), window_total])
    assert result.success
    total = lake.open().read_frame(lake.open().uri("gold", "window_total", "2026-01-12"))
    assert total.to_dict("records") == [{"weeks": 2, "total": 12}]


def test_the_same_io_manager_writes_and_reads_s3(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    lake = LakeResource(root="s3://dw-lake/prod", s3_endpoint_url=s3_endpoint)
    lake.open().s3_client.create_bucket(Bucket="dw-lake")
    for week in ("2026-01-05", "2026-01-12"):
        assert _materialize(lake, week, [weekly_numbers]).success
    _materialize(lake, "2026-01-12", [weekly_numbers])  # re-materializing replaces, never duplicates
    assert _materialize(lake, "2026-01-12", [weekly_numbers.to_source_asset(), window_total]).success
    opened = lake.open()
    keys = [o["Key"] for o in opened.s3_client.list_objects_v2(Bucket="dw-lake")["Contents"]]
    assert "prod/silver/weekly_numbers/week=2026-01-12/part-00000.parquet" in keys
    total = opened.read_frame(opened.uri("gold", "window_total", "2026-01-12"))
    assert total.to_dict("records") == [{"weeks": 2, "total": 12}]


def test_artifacts_round_trip_and_replace(tmp_path):
    import numpy as np

    from dw_assets.lake.storage import Artifact, array_bytes, array_from_bytes

    lake = Lake(str(tmp_path))
    uri = lake.uri("models", "two_tower_model", "2026-01-05")
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    lake.write_artifact(Artifact({"vectors.npy": array_bytes(vectors)}, {"model_version": "v1"}), uri)
    lake.write_artifact(Artifact({"vectors.npy": array_bytes(vectors * 2)}, {"model_version": "v2"}), uri)
    back = lake.read_artifact(uri)
    assert back.model_version == "v2"
    np.testing.assert_array_equal(array_from_bytes(back.files["vectors.npy"]), vectors * 2)
    with pytest.raises(LakeError, match="no artifact"):
        lake.read_artifact(lake.uri("models", "two_tower_model", "2026-01-12"))
    assert lake.read_artifact_meta(uri) == {"model_version": "v2"}  # the version alone, no file read
    with pytest.raises(LakeError, match="no artifact"):
        lake.read_artifact_meta(lake.uri("models", "two_tower_model", "2026-01-12"))


def test_artifacts_on_s3(s3_endpoint, monkeypatch):
    from dw_assets.lake.storage import Artifact

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    lake = LakeResource(root="s3://dw-models/prod", s3_endpoint_url=s3_endpoint).open()
    lake.s3_client.create_bucket(Bucket="dw-models")
    uri = lake.uri("models", "faiss_index", "2026-01-05")
    lake.write_artifact(Artifact({"index.faiss": b"\x00\x01", "ids.npy": b"ids"}, {"model_version": "2026-01-05-abc"}), uri)
    back = lake.read_artifact(uri)
    assert back.files == {"index.faiss": b"\x00\x01", "ids.npy": b"ids"} and back.model_version == "2026-01-05-abc"
    assert lake.read_artifact_meta(uri) == {"model_version": "2026-01-05-abc"}


def test_read_head_reads_only_the_first_rows_across_part_files(tmp_path):
    """`dw run`'s summary peeks at the week's playlists (15 G rows at the target): the first rows in part
    order, crossing into the next part file when the first is short, and a clear error where nothing is."""
    import pyarrow.parquet as pq

    lake = Lake(str(tmp_path))
    uri = lake.uri("gold", "ranked_playlists", "2026-01-05")
    Path(uri).mkdir(parents=True)
    for i, users in enumerate(([1, 2], [3, 4, 5])):  # two Spark-style part files, sorted by user
        rows = pd.DataFrame({"user_id": [u for u in users for _ in range(30)], "position": list(range(30)) * len(users)})
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), f"{uri}/part-0000{i}-x.snappy.parquet")
    head = lake.read_head(uri, 75, columns=["user_id"])
    assert list(head.columns) == ["user_id"] and len(head) == 75
    assert head["user_id"].tolist() == [1] * 30 + [2] * 30 + [3] * 15
    assert len(lake.read_head(uri, 1_000)) == 150  # fewer rows than asked: all of them
    with pytest.raises(LakeError, match="no lake data"):
        lake.read_head(lake.uri("gold", "ranked_playlists", "2026-01-12"), 10)


@multi_asset(
    outs={"window_weeks": AssetOut(metadata={LAYER_KEY: "gold"})},
    ins={"weekly_numbers": AssetIn(partition_mapping=history_window, metadata={PER_PARTITION_KEY: "pandas"})},
    partitions_def=weekly_partitions,
)
def window_weeks(context, weekly_numbers: PartitionInputs):
    # Only the newest week is read: the others stay unread (the ranker pools only the weeks it uses).
    newest = list(weekly_numbers)[-1]
    frame = weekly_numbers[newest]
    return pd.DataFrame({"weeks": [",".join(weekly_numbers)], "newest_total": [int(frame["n"].sum())],
                         "newest_week": [frame["week"].iloc[0]], "read": [repr(weekly_numbers._values.keys())]})


def test_a_window_read_week_by_week_holds_the_weeks_that_exist_and_reads_only_those_asked_for(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    for week in ("2026-01-05", "2026-01-19"):  # 2026-01-12 never materialized
        _materialize(lake, week, [weekly_numbers])
    result = _materialize(lake, "2026-01-19", [weekly_numbers.to_source_asset(), window_weeks])
    assert result.success
    row = lake.open().read_frame(lake.open().uri("gold", "window_weeks", "2026-01-19")).iloc[0]
    assert row["weeks"] == "2026-01-05,2026-01-19"
    assert (row["newest_week"], row["newest_total"]) == ("2026-01-19", 6)
    assert row["read"] == "dict_keys(['2026-01-19'])"


@multi_asset(
    outs={"complete_total": AssetOut(metadata={LAYER_KEY: "gold"})},
    ins={"weekly_numbers": AssetIn(partition_mapping=history_window,
                                   metadata={COMPLETE_WINDOW_KEY: "the total needs every week"})},
    partitions_def=weekly_partitions,
)
def complete_total(weekly_numbers: pd.DataFrame):
    return pd.DataFrame({"total": [int(weekly_numbers["n"].sum())]})


def test_a_complete_window_input_refuses_a_hole_naming_the_missing_weeks(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    for week in ("2026-01-05", "2026-01-19"):  # 2026-01-12 never materialized
        _materialize(lake, week, [weekly_numbers])
    with pytest.raises(LakeError, match=r"weekly_numbers is missing for week\(s\) 2026-01-12: the total needs "
                                        r"every week; materialize them first"):
        _materialize(lake, "2026-01-19", [weekly_numbers.to_source_asset(), complete_total])
    _materialize(lake, "2026-01-12", [weekly_numbers])
    assert _materialize(lake, "2026-01-19", [weekly_numbers.to_source_asset(), complete_total]).success


def test_partition_inputs_read_lazily_once_and_name_a_missing_week():
    reads = []
    inputs = PartitionInputs({"2026-01-05": "a", "2026-01-12": "b"}, lambda uri: reads.append(uri) or uri.upper())
    assert list(inputs) == ["2026-01-05", "2026-01-12"] and len(inputs) == 2 and reads == []
    assert inputs["2026-01-12"] == "B" and inputs["2026-01-12"] == "B" and reads == ["b"]
    assert inputs.get("2026-01-19") is None and "2026-01-19" not in inputs
    with pytest.raises(LakeError, match="no partition 2026-01-19 .*holds: 2026-01-05, 2026-01-12"):
        inputs["2026-01-19"]
    assert inputs.whole("2026-01-12") == "B"  # read whole already


def test_upload_days_are_chosen_by_their_meta_and_only_those_read_whole():
    """The candidates read each upload day's meta.json (kind ``artifact_meta``) and only the days that
    extend the week's index whole: a year of other days' vectors is never read."""
    from dw_assets.embeddings.new_tracks import new_tracks_extending
    from dw_assets.lake.storage import Artifact

    versions = {"2026-01-27": "w-old", "2026-01-28": "w-now", "2026-01-29": "w-now"}
    wholes = []
    days = PartitionInputs({day: day for day in versions}, lambda day: Artifact({}, {"model_version": versions[day]}),
                           "new_track_vectors", whole=lambda day: wholes.append(day) or Artifact(
                               {"ids.npy": day.encode()}, {"model_version": versions[day]}))
    extending = new_tracks_extending(days, "w-now", whole=days.whole)
    assert [a.files["ids.npy"] for a in extending] == [b"2026-01-28", b"2026-01-29"]
    assert wholes == ["2026-01-28", "2026-01-29"]
    with pytest.raises(LakeError, match="no partition 2026-02-01"):
        days.whole("2026-02-01")
