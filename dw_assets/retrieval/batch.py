"""Candidate generation over every user on Spark: the model set's sources, the user rows, the run.

Dagster-free: the ``candidates`` asset, the evaluation's control arm (``last_week_playlists``) and the
benches call the same functions. Sizes at the target: the user rows (500 M, with each user's vector,
recent tracks and 12-week heard set) stay on the executors; the driver builds the model set (the FAISS
index, item2vec vectors and the cold pool's audio vectors).

How the model set reaches the workers (``run_candidates``): one Spark broadcast of its bytes (Spark keeps one
copy per executor, in the block manager and as a file the Python workers can read), and one copy per host
of plain files in the host cache (``dw_assets.lake.host_cache``): the first Python worker of a host that
needs the set unpickles the broadcast once and writes the files (faiss indexes in faiss's format, arrays
as ``.npy``); every worker then memory-maps them, so the pages are shared through the OS page cache. A
worker that finds the host's copy never reads the broadcast. At 100 M tracks (dim 64) the set is ~130 GB:
two-tower IVF-Flat 26 GB (or 4 shards of 6.5 GB, ``AnnConfig.shards``), item2vec vectors 25.6 GB and its
IVF index 26 GB, the neighbour table 51 GB (int32 + float32 x 64), the cold pool's audio vectors 2.6 GB.
Per host: the cache's ~130 GB of disk, mapped once whatever its cores (before: one unpickled copy per
Python worker); the broadcast adds the block manager's copy per executor and, while the files are written,
the writing worker holds the bytes once. The broadcast works alike in local mode, on a standalone cluster
and with an S3 lake (it needs no storage the executors share); what it does not remove is the driver
serializing the set and the executors' block-manager copies, which shipping the artifacts' lake paths
instead would (not built).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from dw_assets.embeddings.audio_table import audio_vectors_of
from dw_assets.embeddings.vector_table import track_vectors_of
from dw_assets.ingest.spark import load_once, map_user_batches, payload_key
from dw_assets.lake import host_cache
from dw_assets.lake.storage import Artifact
from dw_assets.retrieval.ann import AnnIndex
from dw_assets.retrieval.candidates import (
    CANDIDATE_SPARK_SCHEMA,
    CandidateConfig,
    CandidateModels,
    generate_candidates,
)


def candidate_models(faiss_index: Artifact, item2vec_embeddings: pd.DataFrame | Artifact, audio: DataFrame | Artifact,
                     track_stats: pd.DataFrame, version: str) -> CandidateModels:
    """The candidate sources of one model set; the audio source searches cold and new-release tracks only,
    so only their rows of the ``audio_vectors`` table (or of an artifact carrying the vectors) are loaded:
    per track, bounded by the cold pool (at 100 M tracks, 10 M cold tracks x 32 float32 = 1.3 GB)."""
    cold = track_stats.loc[track_stats["is_cold"] | track_stats["is_new_release"], "track_id"].to_numpy(np.int64)
    audio_ids, audio_vectors = audio_vectors_of(audio, cold)
    return CandidateModels.build(AnnIndex.from_bytes(faiss_index.files["index.bin"]),
                                 *track_vectors_of(item2vec_embeddings, "item2vec_embeddings"), audio_ids, audio_vectors,
                                 model_version=version)


def candidate_users(user_embeddings: DataFrame, user_profiles: DataFrame, interactions: DataFrame) -> DataFrame:
    """One row per user: user_id, user_vector (null without one), recent_tracks, heard (12-week window)."""
    return with_heard(vector_users(user_embeddings, user_profiles), interactions)


def vector_users(user_embeddings: DataFrame, user_profiles: DataFrame) -> DataFrame:
    """user_id, recent_tracks, user_vector for users with a vector or recent tracks (``candidate_users``
    without the heard tracks): a join on the executors (500 M rows at the target)."""
    profile = user_profiles.select(
        F.col("user_id").cast("long").alias("user_id"),
        F.coalesce(F.col("recent_tracks").cast("array<long>"), F.array().cast("array<long>")).alias("recent_tracks"))
    vectors = user_embeddings.select(F.col("user_id").cast("long").alias("user_id"),
                                     F.col("user_vector").cast("array<float>").alias("user_vector"))
    users = profile.join(vectors, "user_id", "left")
    return users.where(F.col("user_vector").isNotNull() | (F.size("recent_tracks") > 0))


def with_heard(users: DataFrame, interactions: DataFrame) -> DataFrame:
    """``users`` with ``heard``: every track the user played in the 12-week window (empty when none)."""
    heard = heard_tracks(interactions)
    return users.join(heard, "user_id", "left").withColumn("heard", F.coalesce("heard", F.array().cast("array<long>")))


def heard_tracks(interactions: DataFrame) -> DataFrame:
    """user_id, heard: every track each user played in the window (never recommended back)."""
    return interactions.groupBy("user_id").agg(F.collect_set("track_id").alias("heard"))


def candidate_partitions(users: int, users_per_partition: int, min_partitions: int = 1) -> int:
    """Spark partitions for ``users`` users: ceil(users / users_per_partition), at least ``min_partitions``."""
    if users_per_partition < 1 or min_partitions < 1:
        raise ValueError("users_per_partition and min_partitions must be >= 1")
    return max(min_partitions, -(-users // users_per_partition))


def run_candidates(spark, users: DataFrame, models_blob: bytes, settings: CandidateConfig, partitions: int) -> DataFrame:
    """``generate_candidates`` over every user on Spark, the models broadcast once per executor and
    memory-mapped from one copy per host (``shipped_models``).

    Deterministic layout: users are hash-partitioned into ``partitions`` (a function of the user count and
    the config), sorted by user_id within a partition, each user's rows in merge order (best first)."""
    key, shipped = payload_key(models_blob), spark.sparkContext.broadcast(models_blob)

    def run_batch(batch: pd.DataFrame) -> pd.DataFrame:
        models = load_once(key, lambda: shipped_models(key, lambda: shipped.value))
        return generate_candidates(batch, models, settings)

    return map_user_batches(users, run_batch, CANDIDATE_SPARK_SCHEMA, partitions)


def shipped_models(key: str, blob: Callable[[], bytes], cache_root: str | Path | None = None) -> CandidateModels:
    """The model set of digest ``key`` from this host's cache, memory-mapped; ``blob()`` (the broadcast's
    value: ``CandidateModels.to_bytes``) is called only by the one process that writes the host's copy."""
    folder = host_cache.materialize(key, lambda target: CandidateModels.unpack(blob(), target), cache_root)
    return CandidateModels.open(folder)
