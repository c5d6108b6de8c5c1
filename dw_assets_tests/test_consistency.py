"""Artifacts of one week must share a model version; the index refuses a mismatched pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dagster import materialize

from dw_assets.definitions import ALL_ASSETS, build_resources
from dw_assets.lake.storage import Lake

WEEK = "2026-01-26"


def _write_embeddings(root, track_version: str, user_version: str) -> Lake:
    lake = Lake(str(root))
    rng = np.random.default_rng(0)
    tracks = rng.normal(size=(300, 16)).astype(np.float32)
    users = rng.normal(size=(50, 16)).astype(np.float32)
    # Both are Parquet tables with their model_version column, as the Spark asset writes them
    lake.write_frame(pd.DataFrame({"track_id": np.arange(300, dtype=np.int64), "vector": list(tracks),
                                   "model_version": track_version}), lake.uri("models", "track_embeddings", WEEK))
    lake.write_frame(pd.DataFrame({"user_id": np.arange(50, dtype=np.int64), "user_vector": list(users),
                                   "model_version": user_version}), lake.uri("models", "user_embeddings", WEEK))
    return lake


def _build_index(root):
    return materialize(ALL_ASSETS, selection=["faiss_index"], partition_key=WEEK,
                       resources=build_resources(str(root)), raise_on_error=False)


def test_index_refuses_embeddings_of_different_versions(tmp_path):
    _write_embeddings(tmp_path, f"{WEEK}-aaaa", f"{WEEK}-bbbb")
    result = _build_index(tmp_path)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.cause.message if failure.event_specific_data.error.cause else ""
    message += failure.event_specific_data.error.message
    assert "different model versions" in message and "user_embeddings" in message
    assert not Lake(str(tmp_path)).exists(Lake(str(tmp_path)).uri("models", "faiss_index", WEEK))


def test_index_of_agreeing_embeddings_carries_their_version(tmp_path):
    lake = _write_embeddings(tmp_path, f"{WEEK}-aaaa", f"{WEEK}-aaaa")
    result = _build_index(tmp_path)
    assert result.success
    index = lake.read_artifact(lake.uri("models", "faiss_index", WEEK))
    assert index.model_version == f"{WEEK}-aaaa"
    assert index.meta["kind"] == "flat" and index.meta["recall@500"] == pytest.approx(1.0)
