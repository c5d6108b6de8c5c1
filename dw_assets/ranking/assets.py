"""The ranker (trained on last week's candidates, labelled by this week) and the week's playlists."""

import numpy as np
import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    MetadataValue,
    Output,
    multi_asset,
)
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame

from dw_assets.automation.planner import STAND_IN_REASON, landed_weeks
from dw_assets.batch_timing import BATCH_TIMING, timing_table
from dw_assets.calendar import shift_week
from dw_assets.lake.quality import emit_checked, schema_check_spec, table_schema
from dw_assets.lake.resources import (
    COMPLETE_WINDOW_KEY,
    LAYER_KEY,
    PER_PARTITION_KEY,
    LakeResource,
    PartitionInputs,
)
from dw_assets.lake.storage import Artifact
from dw_assets.partitions import (
    ONE_WEEK_PER_RUN,
    earlier_weeks,
    history_window,
    lenient_window,
    weekly_partitions,
)
from dw_assets.ranking import features as feature_module
from dw_assets.ranking import ranker as ranker_module
from dw_assets.ranking import training as training_module
from dw_assets.ranking.batch import (
    PLAY_COLUMNS,
    build_playlists,
    candidate_version,
    is_stand_in,
    stand_in_ranker,
    track_context,
    user_vector_table,
)
from dw_assets.ranking.config import PlaylistsConfig, RankerAssetConfig
from dw_assets.ranking.ranker import MAX_POOL_WEEKS, TrainedRanker
from dw_assets.ranking.schemas import RANKED_PLAYLISTS, RANKER_ORDER
from dw_assets.ranking.training import assemble_pool, train_pooled
from dw_assets.versioning import embedding_versions, model_version, require_same_version

GROUP = "ranking"
# Weeks W-MAX_POOL_WEEKS .. W-1, read week by week and only those the ranker pools (none before the first
# partition: the first landed week gets the stand-in ranker instead).
POOL_WINDOW = lenient_window(-MAX_POOL_WEEKS, -1)
# Their labels: the listening of the week after each, W-MAX_POOL_WEEKS+1 .. W.
LABEL_WINDOW = lenient_window(-MAX_POOL_WEEKS + 1, 0)


def _per_week(kind: str, **metadata) -> AssetIn:
    return AssetIn(partition_mapping=POOL_WINDOW, metadata={PER_PARTITION_KEY: kind, **metadata})


@multi_asset(
    outs={"ranker_model": AssetOut(group_name=GROUP, metadata={LAYER_KEY: "models"}, dagster_type=Artifact,
                                   description="LightGBM on weeks W-1 .. W-pool_weeks' candidates, each labelled by "
                                               "the week after it (time split) and featurized as of its own week.")},
    ins={
        "candidates": _per_week("spark"),
        "interactions": AssetIn(partition_mapping=LABEL_WINDOW,
                                metadata={PER_PARTITION_KEY: "spark", "columns": PLAY_COLUMNS}),
        "user_profiles": _per_week("spark"),
        "track_stats": _per_week("pandas"),
        "item2vec_embeddings": _per_week("pandas"),
        "audio_vectors": _per_week("spark"),
        "user_embeddings": _per_week("spark"),
        "track_embeddings": _per_week("pandas"),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
)
def ranker_model(
    context: AssetExecutionContext,
    config: RankerAssetConfig,
    lake: LakeResource,
    candidates: PartitionInputs,
    interactions: PartitionInputs,
    user_profiles: PartitionInputs,
    track_stats: PartitionInputs,
    item2vec_embeddings: PartitionInputs,
    audio_vectors: PartitionInputs,
    user_embeddings: PartitionInputs,
    track_embeddings: PartitionInputs,
):
    """Sizes at the target, per pooled week: candidates 250 G rows, the labelling week's interactions 20 G,
    profiles 500 M, all read on Spark; the driver gets the sampled users' rows (``sample_users`` /
    ``sample_rows``, for the pool as a whole) and one week's per-track tables at a time.

    Each input is the window W-``MAX_POOL_WEEKS`` .. W-1 read week by week: only the ``pool_weeks`` weeks
    pooled are read (one by default). The first landed week (week W-1 has no partition or has not landed)
    gets the stand-in ranker (``batch.stand_in_ranker``: retrieval order); a week W-1 that has landed but
    has no candidates (it failed or was never built) fails this week: it would build on a hole. Earlier
    weeks without candidates are left out of the pool (``dw run`` builds only W-1's)."""
    week, previous = context.partition_key, shift_week(context.partition_key, -1)
    if previous not in item2vec_embeddings or previous not in candidates:
        opened = lake.open()
        if previous in context.asset_partition_keys_for_input("candidates") and previous in landed_weeks(opened.root):
            raise ValueError(f"week {previous} has landed but has no candidates: week {week}'s ranker learns from "
                             f"them; build week {previous} first (a failed week stops the weeks after it)")
        reason = STAND_IN_REASON.format(previous=previous)
        version = model_version(week, [], [ranker_module], ["stand-in"])
        yield Output(
            Artifact(files={"ranker.bin": stand_in_ranker(week, reason).to_bytes()},
                     meta={"model_version": version, "stand_in": True, "report": {"stand_in": True}}),
            output_name="ranker_model", metadata={"model_version": version, "stand_in": True, "stand_in_reason": reason})
        return
    settings = config.settings()
    pool = assemble_pool(week, settings.pool_weeks, candidates, interactions, user_profiles, track_stats,
                         item2vec_embeddings, audio_vectors, user_embeddings, track_embeddings)
    if not pool or pool[0].week != previous:
        raise ValueError(f"week {previous} lacks an input of its candidates' week (profiles, track statistics, "
                         f"embeddings) or week {week}'s interactions: build week {previous} first")
    # Every pooled week's candidates come from that week's embeddings (the rows' features are as of it).
    versions = [require_same_version({
        f"{w.week} candidates": candidate_version(w.candidates),
        f"{w.week} embeddings": embedding_versions(user_embeddings=w.user_embeddings,
                                                   track_embeddings=w.track_embeddings)}) for w in pool]
    trained, rows = train_pooled(pool, settings)
    version = model_version(context.partition_key, [settings], [feature_module, ranker_module, training_module],
                            versions[: len(rows.weeks)])
    report = trained.report
    importance = sorted(report.get("feature_importance", {}).items(), key=lambda kv: -kv[1])
    yield Output(
        Artifact(files={"ranker.bin": trained.to_bytes()}, meta={"model_version": version, "report": report,
                                                                  "trained_on_week": versions[0]}),
        output_name="ranker_model",
        metadata={
            "model_version": version,
            "training_rows": int(len(rows.features)),
            "training_positives": int((rows.labels > 0).sum()),
            "pooled_weeks": ", ".join(w["week"] for w in rows.weeks),
            "users_with_candidates": sum(w["users"] for w in rows.weeks),
            "sampled_users": sum(w["sampled_users"] for w in rows.weeks),
            **{k: v for k, v in report.items() if np.isscalar(v) and not isinstance(v, str)},
            "feature_importance": MetadataValue.md(
                pd.DataFrame(importance[:15], columns=["feature", "gain"]).to_markdown(index=False)),
        },
    )


@multi_asset(
    # Both optional and the op subsettable: a selection may name ranked_playlists without its timing row.
    outs={"ranked_playlists": AssetOut(is_required=False,
        group_name=GROUP, metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(RANKED_PLAYLISTS)},
        description="30 tracks per user: LightGBM score -> value order with an uncertainty bonus (cold and "
                    "little-heard-genre tracks compete on value) -> MMR -> genre calibration; "
                    "popularity-by-country fallback for users without candidates."),
          "ranker_order": AssetOut(is_required=False, group_name=GROUP, metadata={
              LAYER_KEY: "gold", "dagster/column_schema": table_schema(RANKER_ORDER)},
              description="The ranker's own order of every user's candidates, 30 per user with the hygiene only "
                          "(no value order, MMR, calibration, exploration or cold slots), from the playlists' "
                          "scores: the evaluation's ranking and re-rank efficiencies compare with it."),
          "ranked_playlists_timing": AssetOut(group_name=GROUP, is_required=False, metadata={
              LAYER_KEY: "gold", "dagster/column_schema": table_schema(BATCH_TIMING)},
              description="The playlists step's users, seconds and Spark cores (one row): the batch-window check "
                          "reads it.")},
    ins={
        "candidates": AssetIn(),
        "ranker_model": AssetIn(dagster_type=Artifact),
        "user_profiles": AssetIn(),
        "user_directory": AssetIn(metadata={"columns": ["user_id", "country"]}),
        "track_stats": AssetIn(),
        "item2vec_embeddings": AssetIn(),
        "audio_vectors": AssetIn(),
        "user_embeddings": AssetIn(),
        "track_embeddings": AssetIn(),
        "interactions": AssetIn(partition_mapping=history_window, metadata={
            COMPLETE_WINDOW_KEY: "heard tracks (never recommended) come from the whole 12-week window"}),
        # Earlier weeks' playlists: their exploration tracks, judged on the week after, update the bandit.
        "earlier_playlists": AssetIn(key="ranked_playlists", partition_mapping=earlier_weeks,
                                     metadata={"columns": ["week", "user_id", "track_id", "genre", "is_exploration"],
                                               "may_be_empty": True}),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("ranked_playlists", RANKED_PLAYLISTS, blocking=True),
                 schema_check_spec("ranker_order", RANKER_ORDER, blocking=False),
                 schema_check_spec("ranked_playlists_timing", BATCH_TIMING, blocking=False)],
    can_subset=True,
)
def ranked_playlists(
    context: AssetExecutionContext,
    config: PlaylistsConfig,
    pyspark: LazyPySparkResource,
    candidates: DataFrame,
    ranker_model: Artifact,
    user_profiles: DataFrame,
    user_directory: DataFrame,
    track_stats: pd.DataFrame,
    item2vec_embeddings: pd.DataFrame,
    audio_vectors: DataFrame,
    user_embeddings: DataFrame,
    track_embeddings: pd.DataFrame,
    interactions: DataFrame,
    earlier_playlists: DataFrame,
):
    """Sizes at the target: 500 M users x 30 slots written from the executors, and as many ranker-order rows
    when ``ranker_order`` is selected; the driver holds the catalog-sized models (100 M tracks) and the
    fallback pool (countries x 300 tracks)."""
    week = context.partition_key
    spark = pyspark.spark_session
    version = embedding_versions(user_embeddings=user_embeddings, track_embeddings=track_embeddings)
    require_same_version({"candidates": candidate_version(candidates), "embeddings": version})
    ranker = TrainedRanker.from_bytes(ranker_model.files["ranker.bin"])
    selected = context.selected_output_names
    playlists, order, stats = build_playlists(
        spark, week, config.settings(), candidates, ranker,
        user_profiles, user_directory, track_stats,
        track_context(track_stats, item2vec_embeddings, audio_vectors, track_embeddings),
        user_vector_table(spark, user_embeddings), interactions, spark_or_none(earlier_playlists),
        with_ranker_order="ranker_order" in selected)
    if "ranked_playlists" in selected:
        yield from emit_checked("ranked_playlists", playlists, RANKED_PLAYLISTS, {
            "model_version": version, "ranker_version": ranker_model.model_version, **stats,
            "stand_in_ranker": is_stand_in(ranker),
            "sample": MetadataValue.md(playlists.limit(30).toPandas().to_markdown(index=False)),
        })
    if order is not None:
        yield from emit_checked("ranker_order", order, RANKER_ORDER, {
            "model_version": version, "ranker_version": ranker_model.model_version,
            "users": stats["ranker_order_users"]}, blocking=False)
        order.unpersist()
    # After the playlists: the step reads earlier weeks' ranked_playlists, so Dagster orders every output
    # of it after that asset.
    if "ranked_playlists_timing" in selected:
        yield from emit_checked("ranked_playlists_timing", timing_table(
            week, "ranked_playlists", stats["users"], stats["elapsed_s"], stats["spark_cores"]), BATCH_TIMING, {},
            blocking=False)


def spark_or_none(frame) -> DataFrame | None:
    """An input that may have no partition yet: the IO manager gives an empty pandas frame then."""
    return None if isinstance(frame, pd.DataFrame) and frame.empty else frame


ranking_assets = [ranker_model, ranked_playlists]
