"""The weekly evaluation: retrieval recall, last week's models on this week's users, the offline
comparison of every system on the discovery holdout, the simulated A/B test and drift monitoring."""

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyspark.sql.functions as F
from dagster import (
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
from pandera.pandas import Check, Column
from pyspark.sql import DataFrame

from dw_assets.batch_timing import throughput
from dw_assets.calendar import shift_week, week_bounds
from dw_assets.config_fields import config_fields, joined_config, parameter_default
from dw_assets.embeddings.two_tower_data import TwoTowerConfig, require_served, trained_cold_neighbours
from dw_assets.embeddings.user_tower import user_embeddings_frame, vectors_of
from dw_assets.embeddings.vector_table import track_vectors_of
from dw_assets.evaluation.ab import ab_frame, play_arms, summarize_ab
from dw_assets.evaluation.baselines import (
    AlsConfig,
    ItemCfConfig,
    als_top_k,
    embedding_top_k,
    popularity_top_k,
)
from dw_assets.evaluation.batch import (
    EvaluationSample,
    aggregate,
    collect_history,
    collect_ids,
    draw_users,
    lists_frame,
    of_users,
    per_user_frame,
    popularity_ranking,
    split_window,
    truth_frame,
)
from dw_assets.evaluation.config import PREFIXES, SAMPLE_FIELDS, AbTestConfig
from dw_assets.evaluation.holdout import recall_at_k
from dw_assets.evaluation.metrics import metric_keys
from dw_assets.evaluation.monitoring import batch_window_sla, prediction_drift, summarize, volume_anomaly
from dw_assets.evaluation.monitoring_batch import (
    MONITORING_CHECKS,
    DriftSample,
    embedding_drift,
    sampled_scores,
    weekly_volumes,
)
from dw_assets.evaluation.north_star import (
    SUMMARY_KEYS,
    NorthStarConfig,
    north_star_summary,
    north_star_table,
)
from dw_assets.evaluation.north_star import TABLE_COLUMNS as NORTH_STAR_COLUMNS
from dw_assets.evaluation.north_star_batch import draw_sample, measure
from dw_assets.evaluation.report import EXPOSURE_NOTE, north_star_markdown, render_report
from dw_assets.evaluation.summaries import REPORT_COLUMNS, ab_result_table, report_ab
from dw_assets.evaluation.systems import (
    LIST_COLUMNS,
    SYSTEMS,
    baseline_lists,
    evaluation_json,
    quality_targets,
    track_table,
)
from dw_assets.evaluation.truth import no_north_star_reason, simulator_truth
from dw_assets.ingest.profiles import exact_mean
from dw_assets.lake.driver_guard import to_driver
from dw_assets.lake.quality import emit_checked, schema_check_result, schema_check_spec, table_schema
from dw_assets.lake.resources import LAYER_KEY, PER_PARTITION_KEY, LakeResource, PartitionInputs
from dw_assets.lake.storage import Artifact, Lake, LakeError
from dw_assets.partitions import (
    HISTORY_WEEKS,
    ONE_WEEK_PER_RUN,
    earlier_weeks,
    history_window,
    history_window_weeks,
    lenient_window,
    previous_week,
    weekly_partitions,
)
from dw_assets.ranking.batch import (
    STORED_ORDER,
    build_playlists,
    stored_order,
    track_context,
    user_vector_table,
)
from dw_assets.ranking.config import PlaylistsConfig
from dw_assets.ranking.ranker import TrainedRanker
from dw_assets.ranking.rerank import RerankConfig
from dw_assets.ranking.schemas import RANKED_PLAYLISTS
from dw_assets.retrieval.batch import candidate_models, candidate_partitions, candidate_users, run_candidates
from dw_assets.retrieval.candidates import CandidateConfig
from dw_assets.versioning import table_version

EVAL_COLUMNS = ["user_id", "track_id", "ts", "is_positive", "weight"]
RETRIEVAL_EVALUATION = pa.DataFrameSchema(
    {
        "system": Column(str, unique=True),
        "k": Column("int64", Check.gt(0)),
        "recall": Column(float, Check.in_range(0.0, 1.0)),
        "cold_recall": Column(float, Check.in_range(0.0, 1.0), nullable=True),
        "users": Column("int64", Check.ge(0)),
        "hits": Column("int64", Check.ge(0)),
        "seconds": Column(float, Check.ge(0.0)),
    },
    strict=True,
    name="retrieval_evaluation",
)
# Week W's models are judged on week W+1's listening: the window W-11..W is the
# history, W+1 the holdout (read here only; nothing trains on it).
history_and_next_week = lenient_window(-(HISTORY_WEEKS - 1), 1)
# Weeks W-1 and W of one upstream asset (Dagster gives an asset one mapping per upstream): read week by week.
THIS_AND_PREVIOUS_WEEK = lenient_window(-1, 0)


# Run-config names of the dataclasses' fields: EvaluationSample's as sample_users, sample_rows, sample_seed;
# AlsConfig's as als_factors, als_seed, ...; ItemCfConfig's as item_cf_neighbours; NorthStarConfig's as
# north_star_max_users, north_star_seeds, ...


class SampleConfig(config_fields(EvaluationSample, **SAMPLE_FIELDS)):
    """The evaluated users (``batch.EvaluationSample``: a seeded-hash sample, every user of a demo world)."""

    def sample(self) -> EvaluationSample:
        return self.to_domain(EvaluationSample)


class RetrievalEvaluationConfig(config_fields(EvaluationSample, AlsConfig, **SAMPLE_FIELDS)):
    """The evaluated users and the ALS baseline's settings (``AlsConfig``)."""

    k: int = CandidateConfig.total  # recall@k of a retrieval list (the candidates' size, not the playlist's)

    def sample(self) -> EvaluationSample:
        return self.to_domain(EvaluationSample)

    def als(self) -> AlsConfig:
        return self.to_domain(AlsConfig)


def _only(truth: dict[int, np.ndarray], tracks: np.ndarray) -> dict[int, np.ndarray]:
    """Each user's truth restricted to ``tracks``; users left with none are dropped (one isin for all users)."""
    if not truth:
        return {}
    kept = np.isin(np.concatenate(list(truth.values())), tracks)
    cuts = np.cumsum([len(t) for t in truth.values()])[:-1]
    pieces = zip(truth.items(), np.split(kept, cuts), strict=True)
    return {u: t[keep] for (u, t), keep in pieces if keep.any()}


def _row(system: str, k: int, result: dict, cold: dict, seconds: float) -> dict:
    return {"system": system, "k": k, "recall": result["recall"], "cold_recall": cold["recall"] if cold["users"] else None,
            "users": result["users"], "hits": result["hits"], "seconds": round(seconds, 2)}


def _truth_dict(truth: pd.DataFrame) -> dict[int, np.ndarray]:
    """user_id -> sorted positives, users ascending (``holdout.discovery_holdout``'s shape)."""
    return {int(u): np.sort(g.to_numpy(np.int64)) for u, g in truth.groupby("user_id", sort=True)["track_id"]}


@dataclass
class _Drawn:
    """The evaluated sample's driver-side inputs (bounded by ``EvaluationSample``)."""

    users: DataFrame  # the drawn users (Spark, one column)
    offered: int  # users offered to the draw
    count: int  # users drawn
    history: pd.DataFrame  # their interactions up to W
    truth: DataFrame  # their discovery positives (Spark)


def _draw(interactions: DataFrame, holdout_start, offered_users: DataFrame | None,
          sample: EvaluationSample, week: str) -> tuple[_Drawn, DataFrame]:  # fmt: skip
    """Split the window, find the discovery truth and draw the evaluated users (among the history's, the
    truth's and ``offered_users``) in Spark; only the drawn users' histories reach the driver (the driver-side
    baselines train on them: every user's in a demo world). Also returns the history."""
    history, holdout = split_window(interactions, holdout_start)
    if holdout.limit(1).count() == 0:
        raise ValueError(f"no interactions for week {shift_week(week, 1)}: materialize it before evaluating week {week}")
    truth = truth_frame(history, holdout)
    offered = history.select("user_id").unionByName(truth.select("user_id"))
    if offered_users is not None:
        offered = offered.unionByName(offered_users.select("user_id"))
    users, n, drawn = draw_users(offered, history.select("user_id").unionByName(truth.select("user_id")), sample)
    users = users.persist()
    return _Drawn(users, n, drawn, collect_history(history, users), of_users(truth, users).persist()), history


@multi_asset(
    outs={"retrieval_evaluation": AssetOut(
        group_name="evaluation", metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(RETRIEVAL_EVALUATION)},
        description="recall@k on the discovery holdout (week W+1 positives never heard up to W) for two-tower, ALS, popularity.")},
    ins={
        "interactions": AssetIn(partition_mapping=history_and_next_week),
        "track_embeddings": AssetIn(),
        "user_embeddings": AssetIn(),
        "track_stats": AssetIn(),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("retrieval_evaluation", RETRIEVAL_EVALUATION, blocking=False)],
)
def retrieval_evaluation(
    context: AssetExecutionContext,
    config: RetrievalEvaluationConfig,
    interactions: DataFrame,
    track_embeddings: pd.DataFrame,
    user_embeddings: DataFrame,
    track_stats: pd.DataFrame,
):
    """Judged on the holdout's users drawn by seeded hash (``sample_users``, every user of the demo): the
    window (240 G rows at the target) is split and the truth found in Spark; the drawn users' histories
    and positives (at most ``sample_rows`` rows) and their vectors come to the driver, where the two-tower
    top-k, ALS (trained on those histories) and popularity (listeners counted in Spark) are scored."""
    _, holdout_start = week_bounds(context.partition_key)
    drawn, history = _draw(interactions, holdout_start, None, config.sample(), context.partition_key)
    truth = _truth_dict(to_driver(drawn.truth.orderBy("user_id", "track_id"), "evaluation_rows"))
    cold_truth = _only(truth, track_stats.loc[track_stats["is_cold"], "track_id"].to_numpy(np.int64))
    rows = []

    started = time.perf_counter()
    # Recall only reads the holdout's users: every other user's top-k was computed and dropped.
    user_ids, user_vectors = vectors_of(user_embeddings, np.fromiter(truth, np.int64, len(truth)))
    track_ids, track_vectors = track_vectors_of(track_embeddings, "track_embeddings")
    top = embedding_top_k(user_vectors, track_ids, track_vectors, user_ids, drawn.history, config.k)
    rows.append(_row("two_tower", config.k, recall_at_k(user_ids, top, truth), recall_at_k(user_ids, top, cold_truth),
                     time.perf_counter() - started))

    started = time.perf_counter()
    if drawn.history["weight"].gt(0).any():
        als_users, als_top = als_top_k(drawn.history, config.k, config.als())
    else:  # nothing to train on (a sample cut to nothing by the driver guard)
        als_users, als_top = np.zeros(0, np.int64), np.zeros((0, config.k), np.int64)
    rows.append(_row("als", config.k, recall_at_k(als_users, als_top, truth), recall_at_k(als_users, als_top, cold_truth),
                     time.perf_counter() - started))

    started = time.perf_counter()
    pop_top = popularity_top_k(drawn.history, user_ids, config.k, popularity_ranking(history))
    rows.append(_row("popularity", config.k, recall_at_k(user_ids, pop_top, truth),
                     recall_at_k(user_ids, pop_top, cold_truth), time.perf_counter() - started))
    drawn.truth.unpersist()
    drawn.users.unpersist()

    table = pd.DataFrame(rows)
    table["cold_recall"] = table["cold_recall"].astype(float)
    recall = dict(zip(table["system"], table["recall"], strict=True))
    yield Output(table, output_name="retrieval_evaluation", metadata={
        "model_version": table_version(track_embeddings, "track_embeddings"),
        "holdout_users": len(truth),
        "holdout_users_with_cold_positives": len(cold_truth),
        "users_offered": drawn.offered,
        **{f"recall@{config.k}_{system}": value for system, value in recall.items()},
        "results": MetadataValue.md(table.to_markdown(index=False)),
    })
    yield schema_check_result("retrieval_evaluation", table, RETRIEVAL_EVALUATION, blocking=False)




# -- last week's models on this week's users: the A/B control and the "last_week" baseline ---------------


@joined_config
class LastWeekPlaylistsConfig(PlaylistsConfig, config_fields(
    CandidateConfig, prefix={CandidateConfig: "candidates_"},
    # as the candidates asset: one faiss thread per Spark task; the partition floor is ``candidates_partitions``
    exclude=["candidates_faiss_threads", "candidates_min_partitions"],
)):
    """The control arm's playlist settings (``PlaylistsConfig``, as ``ranked_playlists``) and candidate
    settings (``CandidateConfig``, as the ``candidates`` asset's run config, each name prefixed
    ``candidates_``): the arm differs from the treatment by its models only. Both default to the
    dataclasses' defaults; the week's candidates and playlists ran in another run (the discover job) and
    recorded no settings, so a run config that sets ``candidates`` or ``ranked_playlists`` fields
    (launchpad, ``materialize_week(ops=...)``) must set the same here (``total`` → ``candidates_total``,
    ``partitions`` → ``candidates_partitions``)."""

    candidates_partitions: int = CandidateConfig.min_partitions  # CandidatesConfig.partitions
    # W-1's serving settings (SERVING_SETTINGS), as tower_embeddings' run config for W-1: W-1's index carries
    # them in its version, so other ones fail the run naming them. query_centroid makes this week's queries.
    popularity_weight: float = TwoTowerConfig.popularity_weight
    query_centroid: float = TwoTowerConfig.query_centroid

    def candidate_settings(self) -> CandidateConfig:
        return self.to_domain(CandidateConfig, faiss_threads=1, min_partitions=self.candidates_partitions)


@multi_asset(
    outs={"last_week_playlists": AssetOut(
        group_name="evaluation", metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(RANKED_PLAYLISTS)},
        description="Week W-1's models (two-tower, item2vec, audio, FAISS, and its ranker when W-1 has one) applied "
                    "to week W's users through the same funnel: the A/B control arm and the last_week baseline.")},
    ins={
        **{name: AssetIn(partition_mapping=previous_week, dagster_type=Artifact)
           for name in ("two_tower_model", "faiss_index")},
        **{name: AssetIn(partition_mapping=previous_week) for name in ("item2vec_embeddings", "track_embeddings")},
        "audio_vectors": AssetIn(partition_mapping=previous_week),
        # Weeks W-1 and W, read week by week: W-1's ranker, or this week's where W-1 has none.
        "ranker_model": AssetIn(partition_mapping=THIS_AND_PREVIOUS_WEEK, metadata={PER_PARTITION_KEY: "artifact"}),
        "user_profiles": AssetIn(),
        "user_directory": AssetIn(metadata={"columns": ["user_id", "country"]}),
        "track_stats": AssetIn(),
        "interactions": AssetIn(partition_mapping=history_window),
        "earlier_playlists": AssetIn(key="ranked_playlists", partition_mapping=earlier_weeks,
                                     metadata={"columns": ["week", "user_id", "track_id", "genre", "is_exploration"],
                                               "may_be_empty": True}),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("last_week_playlists", RANKED_PLAYLISTS, blocking=False)],
)
def last_week_playlists(
    context: AssetExecutionContext,
    config: LastWeekPlaylistsConfig,
    pyspark: LazyPySparkResource,
    lake: LakeResource,
    two_tower_model: Artifact,
    faiss_index: Artifact,
    item2vec_embeddings: pd.DataFrame,
    audio_vectors: DataFrame,
    track_embeddings: pd.DataFrame,
    ranker_model: PartitionInputs,
    user_profiles: DataFrame,
    user_directory: DataFrame,
    track_stats: pd.DataFrame,
    interactions: DataFrame,
    earlier_playlists: DataFrame,
):
    week = context.partition_key
    spark = pyspark.spark_session
    version = require_served(two_tower_model.model_version, config, "last_week_playlists", {
        "faiss_index": faiss_index.model_version,
        "track_embeddings": table_version(track_embeddings, "track_embeddings")},
        cold_neighbours=trained_cold_neighbours(two_tower_model.meta))
    started = time.perf_counter()
    # Last week's user tower on this week's histories (vectors in last week's space), on the executors.
    users = user_embeddings_frame(user_profiles, two_tower_model.files["two_tower.bin"], config.query_centroid)
    users = users.select("user_id", F.col("vector").alias("user_vector")).persist()
    models = candidate_models(faiss_index, item2vec_embeddings, audio_vectors, track_stats, version)
    # The candidates asset's settings, and as many tasks as it would use for these users (not a fixed count).
    settings = config.candidate_settings()
    partitions = candidate_partitions(users.count(), settings.users_per_partition, settings.min_partitions)
    candidate_frame = run_candidates(spark, candidate_users(users, user_profiles, interactions), models.to_bytes(),
                                     settings, partitions).persist()
    ranker, ranker_week = last_week_ranker(ranker_model, week)
    playlists, _, stats = build_playlists(
        spark, week, config.settings(), candidate_frame, ranker, user_profiles, user_directory, track_stats,
        track_context(track_stats, item2vec_embeddings, audio_vectors, track_embeddings),
        user_vector_table(spark, users), interactions,
        None if isinstance(earlier_playlists, pd.DataFrame) and earlier_playlists.empty else earlier_playlists)
    yield from emit_checked("last_week_playlists", playlists, RANKED_PLAYLISTS, {
        "model_version": version, "ranker_from_week": ranker_week, **stats,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }, blocking=False)
    candidate_frame.unpersist()
    users.unpersist()


def last_week_ranker(rankers: Mapping[str, Artifact], week: str) -> tuple[TrainedRanker, str]:
    """Week W-1's ranker when there is one; else this week's (W-1 was the first week with candidates).
    ``rankers``: the ``ranker_model`` partitions of weeks W-1 and W that exist."""
    previous = shift_week(week, -1)
    used = previous if previous in rankers else week
    if used not in rankers:
        raise ValueError(f"week {week} has no ranker_model: materialize it before its last_week_playlists")
    return TrainedRanker.from_bytes(rankers[used].files["ranker.bin"]), used


# -- the offline comparison ---------------------------------------------------------------------------

OFFLINE_EVALUATION = pa.DataFrameSchema(
    {
        "week": Column(str),
        "holdout_week": Column(str),
        "system": Column(str, Check.isin(list(SYSTEMS))),
        "segment": Column(str),
        "users": Column("int64", Check.ge(0)),
        **{key: Column(float, nullable=True) for key in metric_keys(30)},
    },
    strict=False,
    unique=["system", "segment"],
    name="offline_evaluation",
)
NORTH_STAR = pa.DataFrameSchema(
    {
        "week": Column(str),
        "listened_week": Column(str),
        "listener": Column(str),
        "system": Column(str),
        "metric": Column(str),
        "value": Column(float, nullable=True),
        "ci_low": Column(float, nullable=True),
        "ci_high": Column(float, nullable=True),
        "users": Column("int64", Check.ge(0)),
        "seeds": Column(str),
    },
    strict=True,
    unique=["listener", "system", "metric"],
    name="north_star_evaluation",
)
AB_ARMS = pa.DataFrameSchema(
    {
        "arm": Column(str, Check.isin(["control", "treatment"])),
        "metric": Column(str),
        "users": Column("int64", Check.ge(0)),
        "mean": Column(float, nullable=True),
        "ci_low": Column(float, nullable=True),
        "ci_high": Column(float, nullable=True),
        "week": Column(str),
        # the summary, the same on every row (ab.SUMMARY_COLUMNS): the report reads the verdict from here
        "experiment": Column(str),
        "primary_metric": Column(str),
        "confidence": Column(float, Check.in_range(0.0, 1.0)),
        "treatment_share": Column(float, Check.in_range(0.0, 1.0)),
        "treatment_share_observed": Column(float, nullable=True),
        "missing_users": Column("int64", Check.ge(0)),
        "verdict": Column(str, Check.isin(["ship", "do not ship", "inconclusive"])),
        "reason": Column(str),
        # the rest of the summary (summaries.DETAIL_COLUMNS): `dw ab` and `dw run` read it back from here
        "listened_week": Column(str),
        "arm_users": Column("int64", Check.ge(0)),
        # the row's metric's treatment - control effect (the same on both arms' rows)
        **{f"effect_{name}": Column(float, nullable=True)
           for name in ("difference", "ci_low", "ci_high", "relative_lift", "p_value")},
        **{f"effect_{name}": Column(bool) for name in ("significant", "better", "worse")},
        "effect_min_detectable_effect": Column(float, nullable=True),
    },
    strict=True, unique=["arm", "metric"], name="simulated_ab_test",
)
MONITORING = pa.DataFrameSchema(
    {
        "name": Column(str, unique=True),
        "status": Column(str, Check.isin(["PASS", "WARN", "ERROR"])),
        "passed": Column(bool),
        "severity": Column(str, Check.isin(["WARN", "ERROR"])),
        "value": Column(float, nullable=True),
        "threshold": Column(float, nullable=True),
        "description": Column(str),
        "week": Column(str),
    },
    strict=True, name="model_monitoring",
)
PLAYLIST_COLUMNS = ["user_id", "position", "track_id", "ranker_score", "source", "is_exploration", "genre"]
PROFILE_COLUMNS = ["user_id", "genre_share", "mean_popularity_percentile", "history_level", "is_new_user"]


class OfflineEvaluationConfig(config_fields(
    EvaluationSample, AlsConfig, ItemCfConfig, NorthStarConfig, prefix=PREFIXES,
    exclude=["north_star_playlist_size"],  # the lists the north star plays are k long
)):
    """The evaluated users (with their hash buckets), the baselines' settings and the north star's."""

    k: int = RerankConfig.playlist_size  # metrics@k: the playlist's length

    def sample(self) -> EvaluationSample:
        return self.to_domain(EvaluationSample)

    def als(self) -> AlsConfig:
        return self.to_domain(AlsConfig)

    def item_cf(self) -> ItemCfConfig:
        return self.to_domain(ItemCfConfig)

    def north_star(self) -> NorthStarConfig:
        return self.to_domain(NorthStarConfig, playlist_size=self.k)


@multi_asset(
    outs={"offline_evaluation": AssetOut(
        group_name="evaluation",
        metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(OFFLINE_EVALUATION)},
        description="Every system side by side on the discovery holdout (docs/evaluation.md): precision/recall/NDCG/hit "
                    "rate/MAP@30 (an exposure monitor), coverage, diversity, novelty, popularity lift, calibration, "
                    "cold tracks; by user segment, on a seeded-hash sample of users (all of a demo world's)."),
          "north_star_evaluation": AssetOut(
        group_name="evaluation",
        metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(NORTH_STAR)},
        description="The north star on a simulated world: saves, positive plays, early skips, cold slots and cold "
                    "saves per user of every system and both oracles, the decomposition retrieval x ranking x "
                    "re-rank efficiency, perturbed listener models, popularity TPR per decile (no rows without "
                    "the simulator's truth).")},
    ins={
        "ranked_playlists": AssetIn(),
        "last_week_playlists": AssetIn(),
        "interactions": AssetIn(partition_mapping=history_and_next_week),
        "user_embeddings": AssetIn(),
        "track_embeddings": AssetIn(),
        "faiss_index": AssetIn(dagster_type=Artifact),
        "track_stats": AssetIn(),
        "user_profiles": AssetIn(),
        "retrieval_evaluation": AssetIn(),
        "candidates": AssetIn(),
        "ranker_order": AssetIn(),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("offline_evaluation", OFFLINE_EVALUATION, blocking=False),
                 schema_check_spec("north_star_evaluation", NORTH_STAR, blocking=False)],
)
def offline_evaluation(
    context: AssetExecutionContext,
    config: OfflineEvaluationConfig,
    lake: LakeResource,
    ranked_playlists: DataFrame,
    last_week_playlists: DataFrame,
    interactions: DataFrame,
    user_embeddings: DataFrame,
    track_embeddings: pd.DataFrame,
    faiss_index: Artifact,
    track_stats: pd.DataFrame,
    user_profiles: DataFrame,
    retrieval_evaluation: pd.DataFrame,
    candidates: DataFrame,
    ranker_order: DataFrame,
):
    """Sizes at the target: playlists (15 G rows), the window (240 G) and profiles (500 M) stay in Spark;
    the evaluated users are drawn there (``sample_users``, every user of the demo), the driver-side
    baselines train on and recommend for them only (at most ``sample_rows`` rows of history and truth,
    ``sample_users`` x 30 list rows back to Spark), per-user metrics run on the executors and only the
    (system, segment) aggregates (30 rows) come back. The north star (a simulated world only) plays a
    seeded-hash sample of the playlist users (``north_star_max_users``, 1 M: every user of the demo) on the
    executors (``north_star_batch``): the ranker's own order is the one ``ranked_playlists`` wrote from its
    scores (``ranker_order``), the baselines' lists are the ones trained above (for the sample's users too),
    and only sums over users come back."""
    week = context.partition_key
    _, holdout_start = week_bounds(week)
    holdout_week = shift_week(week, 1)
    started = time.perf_counter()
    spark = ranked_playlists.sparkSession
    listed = ranked_playlists.select("user_id").unionByName(last_week_playlists.select("user_id"))
    phases = _Phases(context.log)
    drawn, history = _draw(interactions, holdout_start, listed, config.sample(), week)
    tracks = track_table(track_stats)
    holdout_users = collect_ids(drawn.truth, "evaluation_rows")
    phases.done("draw users and histories")
    track_vectors = track_vectors_of(track_embeddings, "track_embeddings")
    ns_config = config.north_star()
    truth, ns_sample, ns_count, why_not = _north_star_inputs(lake.open(), of_users(ranked_playlists, drawn.users),
                                                             ns_config)
    # The baselines recommend for the north star's users too: their ids come to the driver (bounded sample).
    ns_users = collect_ids(ns_sample, "user_directory") if truth is not None else np.zeros(0, np.int64)
    phases.done("draw the north star's sample")
    lists: dict = {"pipeline": of_users(ranked_playlists, drawn.users)}
    baselines: dict = {}
    if len(holdout_users) and drawn.history["weight"].gt(0).any():
        # The north star's users get their lists from the same trained models (recommending is per user).
        wanted = np.union1d(holdout_users, ns_users)
        # Only these users' vectors are joined in Spark and collected (the retrieval list reads no other).
        baselines = baseline_lists(drawn.history, wanted, vectors_of(user_embeddings, wanted), track_vectors, config.k,
                                   config.als(), config.item_cf(), popular=popularity_ranking(history))
        lists.update({name: frame[frame["user_id"].isin(holdout_users)] for name, frame in baselines.items()})
    else:  # nothing drawn to recommend for or to train on (a sample cut to nothing by the driver guard)
        lists.update({name: pd.DataFrame(columns=LIST_COLUMNS) for name in ("retrieval", "popularity", "item_cf", "als")})
    phases.done("baselines")
    lists["last_week"] = of_users(last_week_playlists, drawn.users)
    frame = lists_frame(spark, lists).persist()
    per_user = per_user_frame(frame, drawn.truth, of_users(user_profiles, drawn.users), tracks, track_vectors,
                              SYSTEMS, config.k, -(-drawn.count // max(1, config.sample().users_per_bucket)))
    table = aggregate(per_user, frame, int(tracks["track_id"].nunique()), SYSTEMS, config.k, uses_vectors=True)
    positives = drawn.truth.count()
    phases.done("per-user metrics")
    frame.unpersist()
    drawn.truth.unpersist()
    drawn.users.unpersist()
    table.insert(0, "holdout_week", holdout_week)
    table.insert(0, "week", week)
    table["users"] = table["users"].astype("int64")
    table["retrieval_recall@500"] = float(retrieval_evaluation.set_index("system")["recall"].get("two_tower", np.nan))
    table["ann_recall@500"] = float(faiss_index.meta.get("recall@500", np.nan))
    ns_table = _empty_north_star()
    if truth is not None:
        played = {"pipeline": ranked_playlists, "last_week": last_week_playlists, "ranker_order": ranker_order,
                  **{name: lists_frame(spark, {name: frame}).drop("system") for name, frame in baselines.items()}}
        report = measure(truth, holdout_week, ns_sample, ns_count, played, history, candidates, track_stats, ns_config)
        ns_sample.unpersist()
        ns_table = north_star_table(report, week, holdout_week)
        phases.done("north star: every system played on the executors")
    summary = {**evaluation_json(table, config.k), **north_star_summary(ns_table, why_not)}
    targets = quality_targets(table, config.k)
    overall = table[table["segment"] == "all"].set_index("system")
    key_numbers = overall[[c for c in REPORT_COLUMNS if c in overall]]
    yield Output(ns_table, output_name="north_star_evaluation", metadata={
        "users": int(ns_count) if truth is not None else 0,
        "measured": truth is not None,
        **({} if truth is not None else {"reason": why_not}),
        **{key: summary[key] for key in SUMMARY_KEYS if summary.get(key) is not None},
        "north_star": MetadataValue.md(north_star_markdown(summary)),
    })
    yield schema_check_result("north_star_evaluation", ns_table, NORTH_STAR, blocking=False)
    yield Output(table, output_name="offline_evaluation", metadata={
        "north_star": MetadataValue.md(north_star_markdown(summary)),
        "exposure_monitor": EXPOSURE_NOTE,
        "holdout_users": len(holdout_users),
        "holdout_positives": int(positives),
        "users_offered": drawn.offered,
        **{f"ndcg@{config.k}_{s}": float(v) for s, v in overall[f"ndcg@{config.k}"].items()},
        "retrieval_recall@500": float(table["retrieval_recall@500"].iloc[0]),
        "ann_recall@500": float(table["ann_recall@500"].iloc[0]),
        "summary": MetadataValue.json(summary),
        "systems": MetadataValue.md(key_numbers.round(4).to_markdown()),
        "targets": MetadataValue.md(targets.to_markdown(index=False)),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "phase_seconds": MetadataValue.json(phases.seconds),
    })
    yield schema_check_result("offline_evaluation", table, OFFLINE_EVALUATION, blocking=False)


class _Phases:
    """Seconds per phase of a long asset: logged as each ends (progress in the UI's run log) and kept for
    its metadata. Spark is lazy: a phase's time is that of the actions it ran."""

    def __init__(self, log) -> None:
        self.log, self.seconds, self._last = log, {}, time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 1)
        self._last = now
        self.log.info(f"{name}: {self.seconds[name]} s")


def _north_star_inputs(store: Lake, playlists: DataFrame, config: NorthStarConfig
                       ) -> tuple[object | None, DataFrame | None, int, str | None]:
    """(the simulator's truth or None, the north star's sampled users as a Spark frame, how many, why it is
    not measured or None)."""
    try:
        truth = simulator_truth(store)
    except FileNotFoundError:
        return None, None, 0, (f"no simulator truth under {store.root}/simulator/: only a simulated world has hidden "
                               "listeners (a real deployment measures saves live)")
    users, count = draw_sample(playlists, config)
    if count == 0:
        return None, None, 0, "no user fits the north star's sample cap (max_users, DW_DRIVER_ROW_LIMIT)"
    return truth, users.persist(), count, None


def _empty_north_star() -> pd.DataFrame:
    types = {"value": float, "ci_low": float, "ci_high": float, "users": "int64"}
    return pd.DataFrame({c: pd.Series(dtype=types.get(c, object)) for c in NORTH_STAR_COLUMNS})


# -- the simulated A/B test ----------------------------------------------------------------------------


@multi_asset(
    outs={"simulated_ab_test": AssetOut(
        group_name="evaluation", metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(AB_ARMS)},
        description="Users split by a hash of (experiment, user id): control gets last week's models' playlist, "
                    "treatment this week's; the simulator's hidden listeners play them in week W+1. Per-arm save "
                    "rate, plays > 30 s and skip rate with confidence intervals, and a verdict.")},
    ins={"ranked_playlists": AssetIn(), "last_week_playlists": AssetIn()},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("simulated_ab_test", AB_ARMS, blocking=False)],
)
def simulated_ab_test(context: AssetExecutionContext, config: AbTestConfig, lake: LakeResource,
                      ranked_playlists: DataFrame, last_week_playlists: DataFrame):
    """On the users drawn by seeded hash (``sample_users``, every user of the demo; 500 M users' 15 G
    playlist rows stay in Spark): both arms' playlists of the drawn users (at most ``sample_rows`` rows)
    come to the driver, where the simulator plays each user's arm."""
    week = context.partition_key
    truth = simulator_truth(lake.open())
    settings = config.settings()
    listed = ranked_playlists.select("user_id").unionByName(last_week_playlists.select("user_id"))
    users, _, _ = draw_users(listed, listed, config.sample())
    control, treatment = (_stored_lists(frame, users, asset) for frame, asset in (
        (last_week_playlists, "last_week_playlists"), (ranked_playlists, "ranked_playlists")))
    per_user = play_arms(truth, control=control, treatment=treatment, week=shift_week(week, 1), config=settings)
    summary = summarize_ab(per_user, settings)
    arms = ab_result_table(summary, week)
    yield Output(arms, output_name="simulated_ab_test", metadata={
        "verdict": summary["verdict"],
        "reason": summary["reason"],
        "users": MetadataValue.json(summary["users"]),
        "treatment_share_observed": float(summary["treatment_share_observed"]),
        "arms": MetadataValue.md(ab_frame(summary).round(4).to_markdown(index=False)),
        "effects": MetadataValue.md(pd.DataFrame(summary["effects"]).round(4).to_markdown(index=False)),
        "summary": MetadataValue.json(summary),
    })
    yield schema_check_result("simulated_ab_test", arms, AB_ARMS, blocking=False)


def _stored_lists(playlists: DataFrame, users: DataFrame, asset: str) -> pd.DataFrame:
    """The drawn users' list rows (user_id, position, track_id) in the order the lake stores them."""
    frame = of_users(stored_order(playlists).select("user_id", "position", "track_id", *STORED_ORDER), users)
    return to_driver(frame.orderBy(*STORED_ORDER), asset).drop(columns=list(STORED_ORDER)).reset_index(drop=True)


# -- drift, volume and batch-window monitoring -----------------------------------------------------------

class MonitoringConfig(config_fields(DriftSample)):
    """The drift's sample (``monitoring_batch.DriftSample``); the thresholds are the check functions' own
    defaults (``monitoring.py``), exposed to the launchpad."""

    psi_warn: float = parameter_default(prediction_drift, "warn")
    psi_error: float = parameter_default(prediction_drift, "error")
    volume_max_change: float = parameter_default(volume_anomaly, "max_ratio_change")
    target_users: int = parameter_default(batch_window_sla, "target_users")
    cluster_cores: int = parameter_default(batch_window_sla, "cluster_cores")
    window_hours: float = parameter_default(batch_window_sla, "window_hours")

    def sample(self) -> DriftSample:
        return self.to_domain(DriftSample)


@multi_asset(
    outs={"model_monitoring": AssetOut(
        group_name="monitoring", metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(MONITORING)},
        description="This week's drift, volume and batch-window checks (severity per check); needs no holdout.")},
    # Weeks W-1 and W of each, read week by week: the drift compares them (W-1 may not exist).
    ins={"ranked_playlists": AssetIn(partition_mapping=THIS_AND_PREVIOUS_WEEK, metadata={PER_PARTITION_KEY: "spark"}),
         "user_embeddings": AssetIn(partition_mapping=THIS_AND_PREVIOUS_WEEK, metadata={PER_PARTITION_KEY: "spark"}),
         "interactions": AssetIn(partition_mapping=history_window, metadata={"columns": ["user_id", "ts"]}),
         "track_catalog": AssetIn(metadata={"columns": ["track_id", "release_date"]}),
         # the batch-window check's figures (absent when the week's candidates ran only for a ranker's training)
         "candidates_timing": AssetIn(metadata={"may_be_empty": True}),
         "ranked_playlists_timing": AssetIn(metadata={"may_be_empty": True})},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[AssetCheckSpec(name, asset="model_monitoring", description=text, blocking=False)
                 for name, text in MONITORING_CHECKS.items()]
    + [schema_check_spec("model_monitoring", MONITORING, blocking=False)],
)
def model_monitoring(context: AssetExecutionContext, config: MonitoringConfig, ranked_playlists: PartitionInputs,
                     user_embeddings: PartitionInputs, interactions: DataFrame, track_catalog: pd.DataFrame,
                     candidates_timing: pd.DataFrame, ranked_playlists_timing: pd.DataFrame):
    """Sizes at the target: the window's interactions (240 G rows) are counted on Spark (one row per
    week comes back); score drift reads the ranker scores of ``sample_users`` users drawn by seeded
    hash (30 scores each), this week's and last week's, and the user vectors of as many
    (``monitoring_batch.DriftSample``)."""
    week = context.partition_key
    previous = shift_week(week, -1)
    sample = config.sample()
    last_scores = np.zeros(0)
    if previous in ranked_playlists:
        last_scores = sampled_scores(ranked_playlists[previous], sample)
    weeks = weekly_volumes(interactions, track_catalog, history_window_weeks(week))
    trailing = weeks[weeks["week"] < week]
    now = weeks[weeks["week"] == week].iloc[0]
    outcomes = [
        prediction_drift(sampled_scores(ranked_playlists[week], sample), last_scores, config.psi_warn,
                         config.psi_error),
        embedding_drift(user_embeddings, week, sample, config.psi_warn, config.psi_error),
        *[volume_anomaly(column, float(now[column]), trailing[column].astype(float).tolist(), config.volume_max_change)
          for column in ("events", "active_users", "new_tracks")],
        batch_window_sla(*throughput(candidates_timing, ranked_playlists_timing),
                         target_users=config.target_users,
                         cluster_cores=config.cluster_cores, window_hours=config.window_hours),
    ]
    table = summarize(outcomes).assign(week=week)
    yield Output(table, output_name="model_monitoring", metadata={
        "checks": MetadataValue.md(table.to_markdown(index=False)),
        "volumes": MetadataValue.md(weeks.to_markdown(index=False)),
    })
    for outcome in outcomes:
        yield AssetCheckResult(
            asset_key="model_monitoring", check_name=outcome.name, passed=outcome.passed,
            severity=AssetCheckSeverity.ERROR if outcome.severity == "ERROR" else AssetCheckSeverity.WARN,
            description=outcome.description,
            metadata={"value": outcome.value, "threshold": outcome.threshold, **outcome.metadata})
    yield schema_check_result("model_monitoring", table, MONITORING, blocking=False)


# -- the weekly report -----------------------------------------------------------------------------------


@multi_asset(
    outs={"evaluation_report": AssetOut(
        group_name="evaluation", metadata={LAYER_KEY: "reports"}, dagster_type=Artifact,
        description="The week's HTML report (LAKE/reports/evaluation_report/week=W/report.html): systems side by "
                    "side, segments, metric trends, popularity and genre mix, cold tracks, A/B arms, checks.")},
    ins={# this week's and the earlier weeks' of the window (the trend plot): the weeks evaluated so far
         "offline_evaluation": AssetIn(partition_mapping=history_window),
         "north_star_evaluation": AssetIn(),
         "ranked_playlists": AssetIn(),
         "track_stats": AssetIn(metadata={"columns": ["track_id", "artist_id", "genre", "plays",
                                                      "popularity_percentile", "is_cold"]}),
         "user_profiles": AssetIn(),
         "model_monitoring": AssetIn(),
         # only a simulated world has one: an empty table elsewhere
         "simulated_ab_test": AssetIn(metadata={"may_be_empty": True})},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
)
def evaluation_report(context: AssetExecutionContext, config: SampleConfig, lake: LakeResource,
                      offline_evaluation: pd.DataFrame, north_star_evaluation: pd.DataFrame,
                      ranked_playlists: DataFrame, track_stats: pd.DataFrame,
                      user_profiles: DataFrame, model_monitoring: pd.DataFrame, simulated_ab_test: pd.DataFrame):
    """The popularity plot reads one number per user drawn by seeded hash (``sample_users``, every user of
    the demo; averaged in Spark), the genre-mix plot 4 users' rows; the rest are aggregates."""
    week = context.partition_key
    store = lake.open()
    trends = offline_evaluation.sort_values("week", kind="stable", ignore_index=True)
    table = trends[trends["week"] == week].reset_index(drop=True)
    if table.empty:  # the window's other weeks loaded without it
        raise LakeError(f"no offline_evaluation for week {week}: evaluate the week before its report")
    overall = table[table["segment"] == "all"].set_index("system")
    ab = report_ab(simulated_ab_test)
    tracks = track_table(track_stats)
    html, main_plot = render_report(
        week, overall, table[table["system"] == "pipeline"].set_index("segment"), trends[trends["segment"] == "all"],
        spark_popularity_distributions(ranked_playlists, user_profiles, tracks, config.sample()),
        spark_genre_mix(ranked_playlists, user_profiles, 4),
        overall.reset_index()[["system", "cold_share", "cold_hit_rate"]], ab, model_monitoring,
        north_star=north_star_summary(north_star_evaluation, no_north_star_reason(store)))
    targets = quality_targets(table)
    key_numbers = overall[[c for c in REPORT_COLUMNS if c in overall]].round(4)
    uri = store.uri("reports", "evaluation_report", week)
    yield Output(
        Artifact(files={"report.html": html.encode(), "main.png": main_plot}, meta={"week": week}),
        output_name="evaluation_report",
        metadata={
            "report": MetadataValue.path(f"{uri}/report.html"),
            "systems": MetadataValue.md(key_numbers.to_markdown()),
            "targets": MetadataValue.md(targets.to_markdown(index=False)),
            "ab_verdict": (ab or {}).get("verdict", "no simulated A/B this week"),
            "main_plot": MetadataValue.md(f"![week {week}](data:image/png;base64,{base64.b64encode(main_plot).decode()})"),
        })


def spark_popularity_distributions(playlists: DataFrame, profiles: DataFrame, tracks: pd.DataFrame,
                                   sample: EvaluationSample) -> dict:
    """The report's popularity plot: per user drawn by seeded hash, the mean popularity percentile of the
    playlist (computed in Spark, one number per user comes back) and of the user's own listening."""
    users, _, _ = draw_users(playlists.select("user_id"), playlists.select("user_id").limit(0), sample)
    pct = playlists.sparkSession.createDataFrame(
        tracks[["track_id", "popularity_percentile"]].astype({"track_id": np.int64}),
        "track_id long, popularity_percentile double")
    recommended = (of_users(playlists, users).select("user_id", "track_id").join(pct, "track_id", "left")
                   .groupBy("user_id").agg(exact_mean("popularity_percentile").alias("pct")).orderBy("user_id"))
    listened = (of_users(profiles, users).where(F.col("history_level") != "none")
                .select("user_id", "mean_popularity_percentile").orderBy("user_id"))
    recommended = to_driver(recommended, "ranked_playlists")["pct"]
    listened = to_driver(listened, "user_profiles")["mean_popularity_percentile"]
    return {"recommended": recommended.dropna().to_numpy(np.float64),
            "history": listened.dropna().to_numpy(np.float64)}


def spark_genre_mix(playlists: DataFrame, profiles: DataFrame, users: int) -> pd.DataFrame:
    """``genre_mix`` of the first ``users`` heavy listeners by id: only their rows come to the driver."""
    heavy = profiles.where(F.col("history_level") == "heavy").select("user_id").orderBy("user_id").limit(users)
    chosen = to_driver(of_users(profiles, heavy).select("user_id", "genre_share", "history_level")
                       .orderBy("user_id"), "user_profiles")
    lists = to_driver(of_users(stored_order(playlists), heavy).orderBy(*STORED_ORDER)
                      .select("user_id", "track_id", "genre"), "ranked_playlists")
    return genre_mix(lists, chosen, users)


def genre_mix(playlists: pd.DataFrame, profiles: pd.DataFrame, users: int) -> pd.DataFrame:
    """history_share vs playlist_share per genre for the first ``users`` heavy listeners (by id)."""
    heavy = profiles.loc[profiles["history_level"] == "heavy", "user_id"].sort_values().head(users)
    rows = []
    for user in heavy:
        shares = profiles.loc[profiles["user_id"] == user, "genre_share"].iloc[0]
        history_share = {g["genre"]: float(g["share"]) for g in shares} if shares is not None else {}
        mine = playlists.loc[playlists["user_id"] == user, "genre"].value_counts(normalize=True)
        for genre in sorted(set(history_share) | set(mine.index)):
            rows.append({"user_id": int(user), "genre": genre, "history_share": history_share.get(genre, 0.0),
                         "playlist_share": float(mine.get(genre, 0.0))})
    return pd.DataFrame(rows, columns=["user_id", "genre", "history_share", "playlist_share"])


evaluation_assets = [retrieval_evaluation, last_week_playlists, offline_evaluation, simulated_ab_test, model_monitoring,
                     evaluation_report]
