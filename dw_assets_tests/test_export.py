"""``dw export-playlists`` streams the stored part files and writes the file a one-shot pandas export writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dw_assets.lake.storage import LakeError, open_lake
from dw_assets.serving import export
from dw_assets_tests.test_s3_lake import aws  # noqa: F401 (a fixture)


def _playlists(users: int, rng: np.random.Generator) -> pd.DataFrame:
    n = users * 30
    return pd.DataFrame({
        "week": "2026-01-05", "user_id": np.repeat(np.arange(users, dtype=np.int64) * 7, 30),
        "position": np.tile(np.arange(1, 31, dtype=np.int64), users), "track_id": rng.integers(0, 10_000, n),
        "score": rng.random(n).astype(np.float32), "ranker_score": rng.random(n).astype(np.float32),
        "source": rng.choice(["ann", "item2vec", "cold"], n), "is_exploration": rng.random(n) < 0.1,
        "genre": "rock",
    })


def _one_shot(frame: pd.DataFrame, path) -> bytes:
    export.playlists_for_export(frame).to_parquet(path, index=False)
    return path.read_bytes()


@pytest.mark.parametrize("shuffled", [False, True])
def test_the_streamed_export_is_byte_identical_to_the_one_shot_pandas_write(tmp_path, monkeypatch, shuffled):
    monkeypatch.setattr(export, "ROW_GROUP", 1000)  # several row groups and a partial last one
    monkeypatch.setattr(export, "BATCH", 256)
    frame = _playlists(120, np.random.default_rng(1))
    lake = open_lake(str(tmp_path / "lake"))
    uri = lake.uri("gold", "ranked_playlists", "2026-01-05")
    Path(uri).mkdir(parents=True)
    stored = frame.sample(frac=1.0, random_state=0) if shuffled else frame
    for i, part in enumerate(np.array_split(np.arange(len(stored)), 4)):  # Spark's part files, in name order
        stored.iloc[part].to_parquet(f"{uri}/part-{i:05d}.snappy.parquet", index=False)
    rows = export.export_playlists(lake, "2026-01-05", tmp_path / "out.parquet")
    assert rows == len(frame)
    monkeypatch.setattr(export, "ROW_GROUP", 1024 * 1024)
    expected = frame.copy()
    want = tmp_path / "want.parquet"
    pq.write_table(pa.Table.from_pandas(export.playlists_for_export(expected), preserve_index=False),
                   want, compression="snappy", row_group_size=1000)
    assert (tmp_path / "out.parquet").read_bytes() == (want.read_bytes() if not shuffled
                                                     else _one_shot(expected, tmp_path / "one.parquet"))
    # With the real row group size the streamed file is the pandas one, byte for byte.
    export.export_playlists(lake, "2026-01-05", tmp_path / "full.parquet")
    assert (tmp_path / "full.parquet").read_bytes() == _one_shot(expected, tmp_path / "one.parquet")
    # Above the in-memory cap an unsorted partition is refused (a sorted one streams whatever its size).
    capped = export.ExportConfig(max_unsorted_rows=len(frame) - 1)
    if shuffled:
        with pytest.raises(LakeError, match="rebuild week 2026-01-05's ranked_playlists"):
            export.export_playlists(lake, "2026-01-05", tmp_path / "capped.parquet", capped)
        assert not (tmp_path / "capped.parquet").exists()
    else:
        assert export.export_playlists(lake, "2026-01-05", tmp_path / "capped.parquet", capped) == len(frame)


@pytest.mark.usefixtures("aws")
def test_the_export_of_an_s3_lake_is_the_one_shot_file(tmp_path):
    from dw_assets_tests.test_s3_lake import _bucket

    frame = _playlists(40, np.random.default_rng(2))
    bucket = _bucket("dw-export")
    lake = open_lake(f"s3://{bucket}/world")
    uri = lake.uri("gold", "ranked_playlists", "2026-01-05")
    _, key = uri.removeprefix("s3://").split("/", 1)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 3)):  # Spark's layout: parts and _SUCCESS
        body = tmp_path / f"part-{i}.parquet"
        frame.iloc[part].to_parquet(body, index=False)
        lake.s3_client.put_object(Bucket=bucket, Key=f"{key}/part-{i:05d}-x.snappy.parquet", Body=body.read_bytes())
    lake.s3_client.put_object(Bucket=bucket, Key=f"{key}/_SUCCESS", Body=b"")
    assert export.export_playlists(lake, "2026-01-05", tmp_path / "out.parquet") == len(frame)
    assert (tmp_path / "out.parquet").read_bytes() == _one_shot(frame, tmp_path / "one.parquet")
