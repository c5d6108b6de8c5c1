"""The ranker (trained on last week's candidates, labelled by this week) and the week's playlists."""

import time

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from dagster import (
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

from dw_assets.embeddings.assets import embedding_versions
from dw_assets.ingest.spark import load_once, map_user_batches, payload_key
from dw_assets.lake.quality import emit_checked, schema_check_spec, table_schema
from dw_assets.lake.resources import LAYER_KEY, LakeResource, require_partitions
from dw_assets.lake.storage import Artifact, vectors_from
from dw_assets.partitions import (
    ONE_WEEK_PER_RUN,
    earlier_weeks,
    history_window,
    history_window_weeks,
    previous_week,
    weekly_partitions,
)
from dw_assets.ranking import features as feature_module
from dw_assets.ranking import ranker as ranker_module
from dw_assets.ranking.features import USER_COLUMNS, FeatureContext, build_features, training_examples
from dw_assets.ranking.playlists import (
    CANDIDATE_ARRAYS,
    PLAYLIST_SPARK_SCHEMA,
    TRACK_TABLE,
    PlaylistModels,
    fallback_pool,
    rank_users,
)
from dw_assets.ranking.ranker import RankerConfig, TrainedRanker, train_ranker
from dw_assets.ranking.rerank import FALLBACK_SOURCE, RerankConfig, empty_posteriors, update_posteriors
from dw_assets.ranking.schemas import RANKED_PLAYLISTS
from dw_assets.retrieval.assets import heard_tracks
from dw_assets.versioning import VersionMismatch, model_version, require_same_version

GROUP = "ranking"
FEATURE_INPUTS = ("user_profiles", "track_stats", "item2vec_embeddings", "audio_embeddings", "user_embeddings",
                  "track_embeddings")


class RankerAssetConfig(Config):
    objective: str = RankerConfig.objective
    training_rows: str = RankerConfig.training_rows
    num_leaves: int = RankerConfig.num_leaves
    learning_rate: float = RankerConfig.learning_rate
    n_estimators: int = RankerConfig.n_estimators
    max_training_users: int = RankerConfig.max_training_users
    seed: int = RankerConfig.seed

    def settings(self) -> RankerConfig:
        return RankerConfig(objective=self.objective, training_rows=self.training_rows, num_leaves=self.num_leaves,
                            learning_rate=self.learning_rate, n_estimators=self.n_estimators,
                            max_training_users=self.max_training_users, seed=self.seed, num_threads=1)


def feature_context(user_profiles: pd.DataFrame | None, track_stats: pd.DataFrame, item2vec: Artifact,
                    audio: Artifact, users: Artifact | None, tracks: Artifact) -> FeatureContext:
    """One week's feature context from its gold tables and embedding artifacts."""
    return FeatureContext.build(user_profiles, track_stats, vectors_from(item2vec), vectors_from(audio),
                                vectors_from(users) if users is not None else None, vectors_from(tracks))


@multi_asset(
    outs={"ranker_model": AssetOut(group_name=GROUP, metadata={LAYER_KEY: "models"}, dagster_type=Artifact,
                                   description="LightGBM on week W-1's candidates labelled by week W's listening "
                                               "(time split); features as of W-1.")},
    ins={
        "candidates": AssetIn(partition_mapping=previous_week),  # the first week has none: start a week later
        "interactions": AssetIn(metadata={"columns": ["user_id", "track_id", "ts", "is_positive", "saved", "context",
                                                      "position"]}),
        **{name: AssetIn(partition_mapping=previous_week,
                         **({"dagster_type": Artifact} if name.endswith("_embeddings") else {}))
           for name in FEATURE_INPUTS},
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
)
def ranker_model(
    context: AssetExecutionContext,
    config: RankerAssetConfig,
    candidates: pd.DataFrame,
    interactions: pd.DataFrame,
    user_profiles: pd.DataFrame,
    track_stats: pd.DataFrame,
    item2vec_embeddings: Artifact,
    audio_embeddings: Artifact,
    user_embeddings: Artifact,
    track_embeddings: Artifact,
):
    settings = config.settings()
    previous_version = embedding_versions(user_embeddings=user_embeddings, track_embeddings=track_embeddings)
    require_same_version({"candidates": _one_version(candidates["model_version"].unique()),
                          "embeddings": previous_version})
    examples, labels, weights = training_examples(candidates, interactions, rows=settings.training_rows,
                                                  graded=settings.graded_labels,
                                                  min_propensity=settings.min_propensity)
    features_then = feature_context(user_profiles, track_stats, item2vec_embeddings, audio_embeddings,
                                    user_embeddings, track_embeddings)
    features = build_features(examples, features_then)
    trained = train_ranker(features, labels.to_numpy(), examples["user_id"].to_numpy(), settings,
                           sample_weight=weights.to_numpy())
    version = model_version(context.partition_key, [settings], [feature_module, ranker_module], [previous_version])
    report = trained.report
    importance = sorted(report.get("feature_importance", {}).items(), key=lambda kv: -kv[1])
    yield Output(
        Artifact(files={"ranker.bin": trained.to_bytes()}, meta={"model_version": version, "report": report,
                                                                  "trained_on_week": previous_version}),
        output_name="ranker_model",
        metadata={
            "model_version": version,
            "training_rows": int(len(examples)),
            "training_positives": int((labels > 0).sum()),
            **{k: v for k, v in report.items() if np.isscalar(v) and not isinstance(v, str)},
            "feature_importance": MetadataValue.md(
                pd.DataFrame(importance[:15], columns=["feature", "gain"]).to_markdown(index=False)),
        },
    )


class PlaylistsConfig(Config):
    mmr_lambda: float = RerankConfig.mmr_lambda
    calibration_lambda: float = RerankConfig.calibration_lambda
    max_per_artist: int = RerankConfig.max_per_artist
    exploration_min: int = 2
    exploration_max: int = 3
    seed: int = RerankConfig.seed
    fallback_per_country: int = 300
    users_per_task: int = 2_000  # Spark tasks hold this many users' candidates at once

    def rerank(self) -> RerankConfig:
        return RerankConfig(mmr_lambda=self.mmr_lambda, calibration_lambda=self.calibration_lambda,
                            max_per_artist=self.max_per_artist,
                            exploration_slots=(self.exploration_min, self.exploration_max), seed=self.seed)


@multi_asset(
    outs={"ranked_playlists": AssetOut(
        group_name=GROUP, metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(RANKED_PLAYLISTS)},
        description="30 tracks per user: LightGBM score -> MMR -> genre calibration -> Thompson-sampled "
                    "exploration slots; popularity-by-country fallback for users without candidates.")},
    ins={
        "candidates": AssetIn(),
        "ranker_model": AssetIn(dagster_type=Artifact),
        "user_profiles": AssetIn(),
        "user_directory": AssetIn(metadata={"columns": ["user_id", "country"]}),
        "track_stats": AssetIn(),
        "item2vec_embeddings": AssetIn(dagster_type=Artifact),
        "audio_embeddings": AssetIn(dagster_type=Artifact),
        "user_embeddings": AssetIn(dagster_type=Artifact),
        "track_embeddings": AssetIn(dagster_type=Artifact),
        "interactions": AssetIn(partition_mapping=history_window),
        # Earlier weeks' playlists: their exploration slots, judged on the week after, update the bandit.
        "earlier_playlists": AssetIn(key="ranked_playlists", partition_mapping=earlier_weeks,
                                     metadata={"columns": ["week", "user_id", "track_id", "genre", "is_exploration"],
                                               "may_be_empty": True}),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("ranked_playlists", RANKED_PLAYLISTS, blocking=True)],
)
def ranked_playlists(
    context: AssetExecutionContext,
    config: PlaylistsConfig,
    pyspark: LazyPySparkResource,
    lake: LakeResource,
    candidates: DataFrame,
    ranker_model: Artifact,
    user_profiles: DataFrame,
    user_directory: pd.DataFrame,
    track_stats: pd.DataFrame,
    item2vec_embeddings: Artifact,
    audio_embeddings: Artifact,
    user_embeddings: Artifact,
    track_embeddings: Artifact,
    interactions: DataFrame,
    earlier_playlists: pd.DataFrame,
):
    week = context.partition_key
    version = embedding_versions(user_embeddings=user_embeddings, track_embeddings=track_embeddings)
    require_same_version({"candidates": candidate_version(candidates), "embeddings": version})
    require_partitions(lake.open(), "silver", "interactions", history_window_weeks(week),
                       "heard tracks (never recommended) come from the whole 12-week window")
    playlists, stats = build_playlists(
        pyspark.spark_session, week, config, candidates,
        TrainedRanker.from_bytes(ranker_model.files["ranker.bin"]), user_profiles, user_directory, track_stats,
        item2vec_embeddings, audio_embeddings, user_embeddings, track_embeddings, interactions, earlier_playlists)
    yield from emit_checked("ranked_playlists", playlists, RANKED_PLAYLISTS, {
        "model_version": version, "ranker_version": ranker_model.model_version, **stats,
        "sample": MetadataValue.md(playlists.limit(30).toPandas().to_markdown(index=False)),
    })


def candidate_version(candidates: DataFrame) -> str:
    """The one model version a Spark candidates table was built with."""
    return _one_version([r[0] for r in candidates.select("model_version").distinct().collect()])


def build_playlists(
    spark, week: str, config: PlaylistsConfig, candidates: DataFrame, ranker: TrainedRanker,
    user_profiles: DataFrame, user_directory: pd.DataFrame, track_stats: pd.DataFrame, item2vec_embeddings: Artifact,
    audio_embeddings: Artifact, user_embeddings: Artifact, track_embeddings: Artifact, interactions: DataFrame,
    earlier_playlists: pd.DataFrame,
) -> tuple[DataFrame, dict]:
    """Every user's playlist for ``week`` on Spark (persisted), and run statistics for metadata.

    The embeddings, ranker and candidates are one model set: this week's for ``ranked_playlists``,
    last week's for the evaluation's control arm.
    """
    started = time.perf_counter()
    rerank = config.rerank()
    tracks = track_stats[list(TRACK_TABLE)].sort_values("track_id").reset_index(drop=True)
    this_week = interactions.where(F.col("ts") >= F.lit(pd.Timestamp(week, tz="UTC")))
    fallback = fallback_pool(this_week.select("user_id", "track_id", "is_positive").toPandas(), user_directory,
                             tracks, config.fallback_per_country)
    models = PlaylistModels(
        context=feature_context(None, track_stats, item2vec_embeddings, audio_embeddings, None,
                                track_embeddings).without_users(),
        ranker=ranker, tracks=tracks, fallback=fallback, rerank=rerank,
    )
    posteriors = exploration_posteriors(earlier_playlists, interactions, rerank, week)
    users = playlist_users(spark, user_profiles, user_directory, user_embeddings, interactions, candidates, posteriors)
    n_users = user_profiles.count()
    blob = models.to_bytes()
    key, shipped = payload_key(blob), spark.sparkContext.broadcast(blob)

    def run_batch(batch: pd.DataFrame) -> pd.DataFrame:
        return rank_users(batch, load_once(key, lambda: PlaylistModels.from_bytes(shipped.value)), week)

    partitions = max(1, -(-n_users // config.users_per_task))
    playlists = (map_user_batches(users, run_batch, PLAYLIST_SPARK_SCHEMA, partitions)
                 .withColumn("week", F.lit(week)).orderBy("user_id", "position").persist())
    per_user = playlists.groupBy("user_id").agg(
        F.count("*").alias("slots"), F.sum(F.col("is_exploration").cast("int")).alias("exploration"),
        F.max((F.col("source") == FALLBACK_SOURCE).cast("int")).alias("fallback"))
    totals = per_user.agg(F.count("*").alias("users"), F.sum("slots").alias("rows"),
                          F.sum((F.col("slots") < rerank.playlist_size).cast("int")).alias("short"),
                          F.sum("exploration").alias("exploration"), F.sum("fallback").alias("fallback")).first()
    shipped.unpersist()
    served = int(totals["users"] or 0)
    elapsed = time.perf_counter() - started
    return playlists, {
        "users": served,
        "users_with_short_playlists": int(totals["short"] or 0) + int(n_users - served),
        "exploration_slots": int(totals["exploration"] or 0),
        "fallback_users": int(totals["fallback"] or 0),
        "posterior_pairs": int(len(posteriors)),
        "users_per_s": round(served / max(elapsed, 1e-9), 1),
        "spark_cores": int(spark.sparkContext.defaultParallelism),
        "shipped_model_mb": round(len(blob) / 2**20, 1),
        "elapsed_s": round(elapsed, 1),
    }


def _one_version(versions) -> str:
    """The single model version of a table's rows (raises if it holds several or none)."""
    versions = sorted(set(versions))
    if len(versions) != 1:
        raise VersionMismatch(f"expected one model_version in the candidates, found {versions or 'none'}")
    return versions[0]


def exploration_posteriors(earlier_playlists: pd.DataFrame, interactions: DataFrame, rerank: RerankConfig,
                           week: str) -> pd.DataFrame:
    """Beta posteriors per (user, genre) from earlier playlists' exploration slots and the following weeks' listening."""
    slots = earlier_playlists.loc[earlier_playlists["is_exploration"].astype(bool),
                                  ["week", "user_id", "track_id", "genre"]] if len(earlier_playlists) else None
    if slots is None or slots.empty:
        return empty_posteriors()
    explored = interactions.sparkSession.createDataFrame(slots[["user_id"]].drop_duplicates())
    # Spark truncates to the Monday that starts the week: the partition key of the listening week.
    outcomes = (interactions.join(explored, "user_id")
                .select("user_id", "track_id", "is_positive",
                        F.date_format(F.date_trunc("week", "ts"), "yyyy-MM-dd").alias("week"))
                .toPandas())
    return update_posteriors(slots, outcomes, rerank, as_of_week=week)


def playlist_users(spark, user_profiles: DataFrame, user_directory: pd.DataFrame, user_embeddings: Artifact,
                   interactions: DataFrame, candidates: DataFrame, posteriors: pd.DataFrame) -> DataFrame:
    """One row per user: profile columns, country, heard, user_vector, ``c_*`` candidate and ``p_*`` posterior arrays."""
    ids, vectors = vectors_from(user_embeddings)
    user_vectors = spark.createDataFrame(pd.DataFrame({"user_id": ids, "user_vector": list(vectors)}),
                                         "user_id long, user_vector array<float>")
    country = spark.createDataFrame(user_directory[["user_id", "country"]], "user_id long, country string")
    heard = heard_tracks(interactions)
    # Arrays of one struct list, sorted by track: the candidate columns stay aligned.
    packed = candidates.groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct(*CANDIDATE_ARRAYS))).alias("c"))
    packed = packed.select("user_id", *[F.col(f"c.{c}").alias(f"c_{c}") for c in CANDIDATE_ARRAYS])
    users = (user_profiles.select(*USER_COLUMNS)
             .join(country, "user_id", "left")
             .join(heard, "user_id", "left")
             .join(user_vectors, "user_id", "left")
             .join(packed, "user_id", "left")
             .withColumn("heard", F.coalesce("heard", F.array().cast("array<long>"))))
    if len(posteriors):
        post = spark.createDataFrame(posteriors[["user_id", "genre", "alpha", "beta"]],
                                     "user_id long, genre string, alpha double, beta double")
        post = post.groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct("genre", "alpha", "beta"))).alias("p"))
        post = post.select("user_id", *[F.col(f"p.{c}").alias(f"p_{c}") for c in ("genre", "alpha", "beta")])
        users = users.join(post, "user_id", "left")
    return users


ranking_assets = [ranker_model, ranked_playlists]
