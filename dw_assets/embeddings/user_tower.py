"""The user tower over every user, on Spark executors.

``user_embeddings_frame`` runs ``TrainedTwoTower.user_vectors`` — the one function that turns gold
``user_profiles`` rows into user-tower inputs (``two_tower_data.profile_user_features``) and vectors —
in ``mapInPandas`` over partitions of users. The model file (weights, vocabularies, per-track inputs;
no user) is broadcast once and unpacked once per Python worker (``ingest.spark.load_once``). Vectors
do not depend on the batch a user lands in (``TwoTowerModel.encode_users`` pads to a fixed shape), so
the partitioning never changes them.

Size at 500 M users: 500 M rows in and out, on the executors; the driver holds the model only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from dw_assets.embeddings.two_tower_data import PROFILE_COLUMNS
from dw_assets.ingest.spark import load_once, payload_key

USER_VECTOR_SCHEMA = "user_id long, vector array<float>"


def user_embeddings_frame(user_profiles: DataFrame, model_bytes: bytes) -> DataFrame:
    """user_id, vector (float32[dim], unit norm) for every profile with any listening (as
    ``TrainedTwoTower.user_vectors``), computed on the executors. Unsorted: sort what you write."""
    from dw_assets.embeddings.two_tower import TrainedTwoTower

    spark = user_profiles.sparkSession
    key, shipped = payload_key(model_bytes), spark.sparkContext.broadcast(model_bytes)
    columns = [c for c in PROFILE_COLUMNS if c in user_profiles.columns]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        trained = load_once(key, lambda: TrainedTwoTower.from_bytes(shipped.value))
        for batch in batches:
            ids, vectors = trained.user_vectors(batch)
            if len(ids):
                yield pd.DataFrame({"user_id": ids, "vector": list(vectors.astype(np.float32))})

    return user_profiles.select(*columns).mapInPandas(run, USER_VECTOR_SCHEMA)


def sorted_vectors(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(user ids int64[n] ascending, vectors float32[n, dim]) of a collected ``user_embeddings_frame``."""
    frame = frame.sort_values("user_id", kind="mergesort")
    ids = frame["user_id"].to_numpy(np.int64)
    vectors = np.stack(frame["vector"].to_numpy()).astype(np.float32) if len(frame) else np.zeros((0, 0), np.float32)
    return ids, vectors


def with_norm(frame: DataFrame) -> DataFrame:
    """The frame with a ``norm`` column (L2 norm of ``vector``), for aggregate checks in Spark."""
    return frame.withColumn("norm", F.sqrt(F.aggregate("vector", F.lit(0.0), lambda acc, x: acc + x * x)))
