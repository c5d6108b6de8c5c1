"""The FAISS index over the week's track embeddings (recall measured on real user vectors), and the candidates."""

import time

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    multi_asset,
)
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame

from dw_assets.automation.sensors import AUDIO_UPLOADS
from dw_assets.embeddings.assets import embedding_versions
from dw_assets.embeddings.audio_table import audio_vectors_of
from dw_assets.embeddings.incremental_assets import delta_index, load_new_track_vectors
from dw_assets.embeddings.user_tower import sampled_vectors
from dw_assets.ingest.spark import load_once, map_user_batches, payload_key
from dw_assets.lake.quality import emit_checked, schema_check_spec, table_schema
from dw_assets.lake.resources import LAYER_KEY, LakeResource, require_partitions
from dw_assets.lake.storage import Artifact, array_bytes, vectors_from
from dw_assets.partitions import ONE_WEEK_PER_RUN, history_window, history_window_weeks, weekly_partitions
from dw_assets.retrieval.ann import AnnConfig, AnnIndex, build_index, measure, tune_search
from dw_assets.retrieval.candidates import (
    CANDIDATE_SPARK_SCHEMA,
    CandidateConfig,
    CandidateModels,
    generate_candidates,
)
from dw_assets.retrieval.schemas import CANDIDATES

RECALL_CHECK = "ann_recall_at_500"


class FaissIndexConfig(Config):
    kind: str = AnnConfig.kind
    exact_below: int = AnnConfig.exact_below
    nprobe: int = AnnConfig.nprobe
    ef_search: int = AnnConfig.ef_search
    use_gpu: str = AnnConfig.use_gpu
    # IVF at scale: nlist lists (None: ~4 sqrt(n); 40 k at 100 M tracks), trained on a seeded sample of at most
    # train_sample track vectors (faiss wants >= 39 per list: raise it with nlist), never on the whole catalog.
    nlist: int | None = AnnConfig.nlist
    train_sample: int = AnnConfig.train_sample
    recall_k: int = 500
    recall_sample_users: int = 2_000
    min_recall: float = 0.95
    # Approximate indexes: the cheapest nprobe / efSearch reaching tune_recall on a second user sample.
    tune_recall: float = 0.97
    seed: int = AnnConfig.seed

    def settings(self) -> AnnConfig:
        return AnnConfig(kind=self.kind, exact_below=self.exact_below, nprobe=self.nprobe,
                         ef_search=self.ef_search, use_gpu=self.use_gpu, nlist=self.nlist,
                         train_sample=self.train_sample, seed=self.seed)


@multi_asset(
    outs={"faiss_index": AssetOut(group_name="retrieval", metadata={LAYER_KEY: "models"}, dagster_type=Artifact,
                                  description="Inner-product ANN index over track_embeddings; exact below a size threshold.")},
    ins={"track_embeddings": AssetIn(dagster_type=Artifact), "user_embeddings": AssetIn()},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[AssetCheckSpec(RECALL_CHECK, asset="faiss_index", blocking=True,
                                description="recall@500 vs exact search on a sample of real user vectors ≥ min_recall.")],
)
def faiss_index(context: AssetExecutionContext, config: FaissIndexConfig, track_embeddings: Artifact,
                user_embeddings: DataFrame):
    """The index over the catalog (100 M tracks at the target, on the driver); recall is checked and
    tuned on 2 x ``recall_sample_users`` user vectors drawn in Spark by a seeded hash (500 M rows stay there)."""
    version = embedding_versions(track_embeddings=track_embeddings, user_embeddings=user_embeddings)
    track_ids, track_vectors = vectors_from(track_embeddings)
    # Lowest seeded hashes first: the first half checks the recall, the second tunes the search.
    _, user_vectors = sampled_vectors(user_embeddings, 2 * config.recall_sample_users, config.seed)
    started = time.perf_counter()
    index = build_index(track_ids, track_vectors, config.settings())
    build_s = time.perf_counter() - started
    sample = user_vectors[:config.recall_sample_users]
    # Tuned on other users than the check's, so the checked recall is not the tuned one.
    tuning = tune_search(index, track_vectors, track_ids, user_vectors[config.recall_sample_users:],
                         config.recall_k, config.tune_recall) if len(user_vectors) > config.recall_sample_users else {}
    quality = measure(index, track_vectors, track_ids, sample, config.recall_k)
    recall = float(quality[f"recall@{config.recall_k}"])
    meta = {"model_version": version, "kind": index.kind, "on_gpu": index.on_gpu, "build_s": round(build_s, 2),
            **{k: v for k, v in quality.items() if np.isscalar(v)},
            **{f"tuned_{k}": v for k, v in tuning.items() if k in ("nprobe", "ef_search")}}
    yield Output(
        Artifact(files={"index.bin": index.to_bytes(), "ids.npy": array_bytes(track_ids)}, meta=meta),
        output_name="faiss_index",
        metadata=meta,
    )
    yield AssetCheckResult(
        asset_key="faiss_index", check_name=RECALL_CHECK, passed=recall >= config.min_recall,
        severity=AssetCheckSeverity.ERROR,
        metadata={"recall": recall, "threshold": config.min_recall, "sample_users": len(sample), "kind": index.kind},
    )



class CandidatesConfig(Config):
    total: int = CandidateConfig.total
    two_tower_quota: int = CandidateConfig.two_tower_quota
    item2vec_quota: int = CandidateConfig.item2vec_quota
    audio_quota: int = CandidateConfig.audio_quota
    seed_tracks: int = CandidateConfig.seed_tracks
    # Spark tasks scale with the users: ceil(users / users_per_partition), at least ``partitions`` (the demo
    # worlds' 8, so their files, and the ranker that reads them in stored order, are unchanged). 500 M users:
    # 25 k tasks of 20 k users; a task's Python worker loads the shipped models once (load_once).
    users_per_partition: int = 20_000
    partitions: int = 8  # the floor

    def partitions_for(self, users: int) -> int:
        return candidate_partitions(users, self.users_per_partition, self.partitions)

    def settings(self, threads: int) -> CandidateConfig:
        return CandidateConfig(total=self.total, two_tower_quota=self.two_tower_quota,
                               item2vec_quota=self.item2vec_quota, audio_quota=self.audio_quota,
                               seed_tracks=self.seed_tracks, faiss_threads=threads)


@multi_asset(
    outs={"candidates": AssetOut(group_name="retrieval",
                                 metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(CANDIDATES)},
                                 description="~500 unheard candidates per user from two-tower ANN, item2vec neighbours "
                                             "of recent tracks and audio neighbours among cold tracks, source-tagged.")},
    ins={
        "faiss_index": AssetIn(dagster_type=Artifact),
        "user_embeddings": AssetIn(),
        "item2vec_embeddings": AssetIn(dagster_type=Artifact),
        "audio_vectors": AssetIn(),
        "user_profiles": AssetIn(metadata={"columns": ["user_id", "recent_tracks"]}),
        "track_stats": AssetIn(metadata={"columns": ["track_id", "is_cold", "is_new_release"]}),
        "interactions": AssetIn(partition_mapping=history_window),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("candidates", CANDIDATES, blocking=True)],
)
def candidates(
    context: AssetExecutionContext,
    config: CandidatesConfig,
    pyspark: LazyPySparkResource,
    lake: LakeResource,
    faiss_index: Artifact,
    user_embeddings: DataFrame,
    item2vec_embeddings: Artifact,
    audio_vectors: DataFrame,
    user_profiles: DataFrame,
    track_stats: pd.DataFrame,
    interactions: DataFrame,
):
    version = embedding_versions(faiss_index=faiss_index, user_embeddings=user_embeddings)
    require_partitions(lake.open(), "silver", "interactions", history_window_weeks(context.partition_key),
                       "the heard-track filter reads the whole 12-week window")
    started = time.perf_counter()
    models = candidate_models(faiss_index, item2vec_embeddings, audio_vectors, track_stats, version)
    # Tracks uploaded since this week's models were built (the audio-upload sensor): searched beside the index.
    index = models.two_tower
    models.two_tower_delta = delta_index(load_new_track_vectors(
        lake.open(), context.instance.get_dynamic_partitions(AUDIO_UPLOADS), version), index.dim) or None
    spark = pyspark.spark_session
    base = vector_users(user_embeddings, user_profiles)
    n_users = base.count()  # before the 12-week heard join: the count only needs the users
    users = with_heard(base, interactions)
    blob = models.to_bytes()
    partitions = config.partitions_for(n_users)
    frame = run_candidates(spark, users, blob, config.settings(threads=1), partitions)
    frame = frame.withColumn("model_version", F.lit(version)).persist()
    by_source = {r["sources"]: r["count"] for r in frame.groupBy("sources").count().collect()}
    yield from emit_checked("candidates", frame, CANDIDATES, {
        "model_version": version,
        "cold_pool_tracks": len(models.audio_ids),
        "uploaded_tracks_searched": len(models.two_tower_delta) if models.two_tower_delta is not None else 0,
        "shipped_model_mb": round(len(blob) / 2**20, 1),
        "users": n_users,
        "spark_partitions": partitions,
        "rows_by_sources": MetadataValue.json(dict(sorted(by_source.items()))),
        "elapsed_s": round(time.perf_counter() - started, 1),
    })


def candidate_models(faiss_index: Artifact, item2vec_embeddings: Artifact, audio: DataFrame | Artifact,
                     track_stats: pd.DataFrame, version: str) -> CandidateModels:
    """The candidate sources of one model set; the audio source searches cold and new-release tracks only,
    so only their rows of the ``audio_vectors`` table (or of an artifact carrying the vectors) are loaded:
    per track, bounded by the cold pool (at 100 M tracks, 10 M cold tracks x 32 float32 = 1.3 GB)."""
    cold = track_stats.loc[track_stats["is_cold"] | track_stats["is_new_release"], "track_id"].to_numpy(np.int64)
    audio_ids, audio_vectors = audio_vectors_of(audio, cold)
    return CandidateModels.build(AnnIndex.from_bytes(faiss_index.files["index.bin"]),
                                 *vectors_from(item2vec_embeddings), audio_ids, audio_vectors,
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
    """``generate_candidates`` over every user on Spark, the models broadcast once per executor.

    Deterministic layout: users are hash-partitioned into ``partitions`` (a function of the user count and
    the config), sorted by user_id within a partition, each user's rows in merge order (best first)."""
    key, shipped = payload_key(models_blob), spark.sparkContext.broadcast(models_blob)

    def run_batch(batch: pd.DataFrame) -> pd.DataFrame:
        models = load_once(key, lambda: CandidateModels.from_bytes(shipped.value))
        return generate_candidates(batch, models, settings)

    return map_user_batches(users, run_batch, CANDIDATE_SPARK_SCHEMA, partitions)


retrieval_assets = [faiss_index, candidates]
