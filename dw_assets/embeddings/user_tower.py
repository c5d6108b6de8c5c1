"""The user tower over every user, on Spark executors.

``user_embeddings_frame`` runs ``TrainedTwoTower.user_vectors`` — the one function that turns gold
``user_profiles`` rows into user-tower inputs (``two_tower_data.profile_user_features``) and vectors —
in ``mapInPandas`` over partitions of users. The model file (weights, vocabularies, per-track inputs;
no user) is broadcast once and unpacked once per Python worker (``ingest.spark.load_once``). Vectors
do not depend on the batch a user lands in (``TwoTowerModel.encode_users`` pads to a fixed shape and pools
the history elementwise, ``two_tower._pool``), so the partitioning never changes them.

The ``user_embeddings`` asset is this frame as a Parquet table (``user_embeddings_table``: user_id,
user_vector, model_version, sorted by user_id), written from the executors. Its consumers join it in
Spark; what comes to the driver is a bounded sample: the users asked for (``vectors_of``) or the
lowest seeded hashes (``sampled_vectors``), both under the driver guard.

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


def user_embeddings_frame(user_profiles: DataFrame, model_bytes: bytes, query_centroid: float | None = None) -> DataFrame:
    """user_id, vector for every profile with any listening (as ``TrainedTwoTower.user_vectors``: float32[dim]
    unit norm, or [u, 1] of dim + 1 with the popularity term; ``query_centroid``: the serving query's share
    of the history centroid, None: the model's config), computed on the executors. Unsorted: sort what you
    write."""
    from dw_assets.embeddings.two_tower import TrainedTwoTower

    spark = user_profiles.sparkSession
    key, shipped = payload_key(model_bytes), spark.sparkContext.broadcast(model_bytes)
    columns = [c for c in PROFILE_COLUMNS if c in user_profiles.columns]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        trained = load_once(key, lambda: TrainedTwoTower.from_bytes(shipped.value))
        for batch in batches:
            ids, vectors = trained.user_vectors(batch, query_centroid)
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


# ---------------------------------------------------------------------------- the user_embeddings table

USER_EMBEDDINGS_SCHEMA = "user_id long, user_vector array<float>, model_version string"
HASH_BITS = 53  # a double holds 53 bits exactly: the hash as a number in [0, 1)


def user_embeddings_table(vectors: DataFrame, version: str) -> DataFrame:
    """The ``user_embeddings`` asset from a ``user_embeddings_frame``: user_id, user_vector, model_version
    (one value: the consumers' consistency check reads it), sorted by user_id (a range-partitioned sort).
    500 M rows at the target, written from the executors. Persist ``vectors`` first: the sort's sampling
    pass would run the tower once more."""
    return (vectors.select("user_id", F.col("vector").alias("user_vector"), F.lit(version).alias("model_version"))
            .orderBy("user_id"))


def hash_order(column: str, seed: int):
    """A seeded number in [0, 1) per value of ``column`` (xxhash64 of the value and the seed): the same on
    every executor and run, whatever the partitioning."""
    mask = (1 << HASH_BITS) - 1
    return F.xxhash64(F.col(column), F.lit(int(seed))).bitwiseAND(F.lit(mask)) / float(1 << HASH_BITS)


def sampled_vectors(user_embeddings: DataFrame, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32[n, dim]) of the ``bounded(cap)`` users with the lowest seeded hash, in hash order
    (a prefix of the order is a smaller sample). A top-k on the executors; only the sample comes back."""
    from dw_assets.lake.driver_guard import bounded, to_driver

    drawn = (user_embeddings.select("user_id", "user_vector", hash_order("user_id", seed).alias("_h"))
             .orderBy("_h", "user_id").limit(bounded(cap)))
    return _as_arrays(to_driver(drawn, "user_embeddings"))


def vectors_of(user_embeddings: DataFrame, users: np.ndarray | DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, float32[n, dim]) of ``users`` (ids on the driver, or a Spark frame with user_id),
    joined in Spark so only their vectors come back; every user's when None (refused above the driver
    guard's limit). ``users`` must be a bounded sample."""
    from dw_assets.lake.driver_guard import to_driver

    frame = user_embeddings.select("user_id", "user_vector")
    if users is not None:
        if not isinstance(users, DataFrame):
            ids = pd.DataFrame({"user_id": np.unique(np.asarray(users, np.int64))})
            users = frame.sparkSession.createDataFrame(ids, "user_id long")
        frame = frame.join(users.select(F.col("user_id").cast("long")).distinct(), "user_id", "left_semi")
    return _as_arrays(to_driver(frame.orderBy("user_id"), "user_embeddings"))


def _as_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    ids = frame["user_id"].to_numpy(np.int64)
    vectors = (np.stack(frame["user_vector"].to_numpy()).astype(np.float32) if len(frame)
               else np.zeros((0, 0), np.float32))
    return ids, vectors


def read_user_embeddings(lake, week: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids ascending, float32[n, dim], model_version) of a week's stored table, on the driver: for tests,
    benchmarks and tools on small worlds (refused above ``DW_DRIVER_ROW_LIMIT``)."""
    from dw_assets.lake.driver_guard import check_driver_rows

    frame = lake.read_frame(lake.uri("models", "user_embeddings", week))
    check_driver_rows("user_embeddings", len(frame), "read_user_embeddings")
    versions = frame["model_version"].unique().tolist()
    if len(versions) != 1:
        from dw_assets.versioning import VersionMismatch

        raise VersionMismatch(f"expected one model_version in user_embeddings, found {sorted(versions)}")
    ids, vectors = _as_arrays(frame.sort_values("user_id", kind="mergesort"))
    return ids, vectors, versions[0]
