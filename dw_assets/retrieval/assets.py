"""The FAISS index over the week's track embeddings (recall measured on real user vectors), and the candidates."""

import time

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    MetadataValue,
    Output,
    multi_asset,
)
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame

from dw_assets.batch_timing import BATCH_TIMING, timing_table
from dw_assets.config_fields import config_fields
from dw_assets.embeddings.new_tracks import ASSET as NEW_TRACKS
from dw_assets.embeddings.new_tracks import delta_index, new_tracks_extending
from dw_assets.embeddings.user_tower import sampled_vectors
from dw_assets.embeddings.vector_table import track_vectors_of
from dw_assets.lake.quality import emit_checked, schema_check_spec, table_schema
from dw_assets.lake.resources import (
    COMPLETE_WINDOW_KEY,
    LAYER_KEY,
    PER_PARTITION_KEY,
    PartitionInputs,
)
from dw_assets.lake.storage import Artifact, array_bytes
from dw_assets.partitions import ONE_WEEK_PER_RUN, history_window, weekly_partitions
from dw_assets.retrieval.ann import AnnConfig, build_index, measure, tune_search
from dw_assets.retrieval.batch import (
    candidate_models,
    candidate_partitions,
    run_candidates,
    vector_users,
    with_heard,
)
from dw_assets.retrieval.candidates import CandidateConfig
from dw_assets.retrieval.index_check import RecallCheckConfig
from dw_assets.retrieval.schemas import CANDIDATES
from dw_assets.versioning import embedding_versions

RECALL_CHECK = "ann_recall_at_500"


class FaissIndexConfig(config_fields(AnnConfig, RecallCheckConfig)):
    """AnnConfig's settings (IVF at scale: nlist lists, None: ~4 sqrt(n), 40 k at 100 M tracks, trained on a
    seeded sample of at most train_sample track vectors, never on the whole catalog), and the recall check's."""

    def settings(self) -> AnnConfig:
        return self.to_domain(AnnConfig)


@multi_asset(
    outs={"faiss_index": AssetOut(group_name="retrieval", metadata={LAYER_KEY: "models"}, dagster_type=Artifact,
                                  description="Inner-product ANN index over track_embeddings; exact below a size threshold.")},
    ins={"track_embeddings": AssetIn(), "user_embeddings": AssetIn()},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[AssetCheckSpec(RECALL_CHECK, asset="faiss_index", blocking=True,
                                description="recall@500 vs exact search on a sample of real user vectors ≥ min_recall.")],
)
def faiss_index(context: AssetExecutionContext, config: FaissIndexConfig, track_embeddings: pd.DataFrame,
                user_embeddings: DataFrame):
    """The index over the catalog (100 M tracks at the target, on the driver); recall is checked and
    tuned on 2 x ``recall_sample_users`` user vectors drawn in Spark by a seeded hash (500 M rows stay there)."""
    version = embedding_versions(track_embeddings=track_embeddings, user_embeddings=user_embeddings)
    track_ids, track_vectors = track_vectors_of(track_embeddings, "track_embeddings")
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



class CandidatesConfig(config_fields(CandidateConfig, exclude=("faiss_threads", "min_partitions"))):
    # One thread per Spark task (the asset sets it); the partition floor keeps its run-config name.
    partitions: int = CandidateConfig.min_partitions

    def partitions_for(self, users: int) -> int:
        return candidate_partitions(users, self.users_per_partition, self.partitions)

    def settings(self, threads: int) -> CandidateConfig:
        return self.to_domain(CandidateConfig, faiss_threads=threads, min_partitions=self.partitions)


@multi_asset(
    # Both optional: the op builds either alone (can_subset below); Dagster requires every unselected-able
    # output of a subsettable multi-asset to be is_required=False.
    outs={"candidates": AssetOut(group_name="retrieval", is_required=False,
                                 metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(CANDIDATES)},
                                 description="~500 unheard candidates per user from two-tower ANN, item2vec neighbours "
                                             "of recent tracks and audio neighbours among cold tracks, source-tagged."),
          "candidates_timing": AssetOut(group_name="retrieval", is_required=False, metadata={
              LAYER_KEY: "gold", "dagster/column_schema": table_schema(BATCH_TIMING)},
              description="The candidates step's users, seconds and Spark cores (one row): the batch-window check "
                          "reads it.")},
    ins={
        "faiss_index": AssetIn(dagster_type=Artifact),
        "user_embeddings": AssetIn(),
        "item2vec_embeddings": AssetIn(),
        "audio_vectors": AssetIn(),
        "user_profiles": AssetIn(metadata={"columns": ["user_id", "recent_tracks"]}),
        "track_stats": AssetIn(metadata={"columns": ["track_id", "is_cold", "is_new_release"]}),
        "interactions": AssetIn(partition_mapping=history_window, metadata={
            COMPLETE_WINDOW_KEY: "the heard-track filter reads the whole 12-week window"}),
        # Uploaded tracks (the audio-upload sensor's, one partition per upload day): every day the lake holds,
        # its meta.json read; the days extending this week's models are read whole and searched beside the index.
        "new_track_vectors": AssetIn(NEW_TRACKS, partition_mapping=AllPartitionMapping(),
                                     metadata={PER_PARTITION_KEY: "artifact_meta"}),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("candidates", CANDIDATES, blocking=True),
                 schema_check_spec("candidates_timing", BATCH_TIMING, blocking=False)],
    # A week's ranker training builds W-1's candidates without their timing (not that week's batch).
    can_subset=True,
)
def candidates(
    context: AssetExecutionContext,
    config: CandidatesConfig,
    pyspark: LazyPySparkResource,
    faiss_index: Artifact,
    user_embeddings: DataFrame,
    item2vec_embeddings: pd.DataFrame,
    audio_vectors: DataFrame,
    user_profiles: DataFrame,
    track_stats: pd.DataFrame,
    interactions: DataFrame,
    new_track_vectors: PartitionInputs,
):
    version = embedding_versions(faiss_index=faiss_index, user_embeddings=user_embeddings)
    started = time.perf_counter()
    models = candidate_models(faiss_index, item2vec_embeddings, audio_vectors, track_stats, version)
    # Tracks uploaded since this week's models were built (the audio-upload sensor): searched beside the index.
    index = models.two_tower
    # Each day's meta.json says whether it extends this index; only those days' vectors are read.
    extending = new_tracks_extending(new_track_vectors, version, whole=new_track_vectors.whole)
    models.two_tower_delta = delta_index(extending, index.dim) or None
    spark = pyspark.spark_session
    base = vector_users(user_embeddings, user_profiles)
    n_users = base.count()  # before the 12-week heard join: the count only needs the users
    users = with_heard(base, interactions)
    blob = models.to_bytes()
    partitions = config.partitions_for(n_users)
    frame = run_candidates(spark, users, blob, config.settings(threads=1), partitions)
    frame = frame.withColumn("model_version", F.lit(version)).persist()
    by_source = {r["sources"]: r["count"] for r in frame.groupBy("sources").count().collect()}
    elapsed = round(time.perf_counter() - started, 1)
    if "candidates_timing" in context.selected_output_names:
        yield from emit_checked("candidates_timing", timing_table(
            context.partition_key, "candidates", n_users, elapsed, spark.sparkContext.defaultParallelism),
            BATCH_TIMING, {}, blocking=False)
    if "candidates" not in context.selected_output_names:
        return
    yield from emit_checked("candidates", frame, CANDIDATES, {
        "model_version": version,
        "cold_pool_tracks": len(models.audio_ids),
        "uploaded_tracks_searched": len(models.two_tower_delta) if models.two_tower_delta is not None else 0,
        "shipped_model_mb": round(len(blob) / 2**20, 1),
        "users": n_users,
        "spark_partitions": partitions,
        "rows_by_sources": MetadataValue.json(dict(sorted(by_source.items()))),
        "elapsed_s": elapsed,
    })


retrieval_assets = [faiss_index, candidates]
