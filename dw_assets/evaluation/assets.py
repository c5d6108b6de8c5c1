"""Retrieval quality on the discovery holdout: two-tower vs ``implicit`` ALS vs popularity."""

import time

import numpy as np
import pandas as pd
import pandera.pandas as pa
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    TimeWindowPartitionMapping,
    multi_asset,
)
from pandera.pandas import Check, Column

from dw_assets.calendar import week_bounds
from dw_assets.evaluation.baselines import AlsConfig, als_top_k, embedding_top_k, popularity_top_k
from dw_assets.evaluation.holdout import discovery_holdout, recall_at_k
from dw_assets.lake.quality import schema_check_result, schema_check_spec, table_schema
from dw_assets.lake.resources import LAYER_KEY
from dw_assets.lake.storage import Artifact, vectors_from
from dw_assets.partitions import HISTORY_WEEKS, weekly_partitions

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
history_and_next_week = TimeWindowPartitionMapping(
    start_offset=-(HISTORY_WEEKS - 1), end_offset=1, allow_nonexistent_upstream_partitions=True
)


class RetrievalEvaluationConfig(Config):
    k: int = 500
    als_factors: int = AlsConfig.factors
    als_iterations: int = AlsConfig.iterations
    seed: int = AlsConfig.seed


def _row(system: str, k: int, result: dict, cold: dict, seconds: float) -> dict:
    return {"system": system, "k": k, "recall": result["recall"], "cold_recall": cold["recall"] if cold["users"] else None,
            "users": result["users"], "hits": result["hits"], "seconds": round(seconds, 2)}


@multi_asset(
    outs={"retrieval_evaluation": AssetOut(
        group_name="evaluation", metadata={LAYER_KEY: "gold", "dagster/column_schema": table_schema(RETRIEVAL_EVALUATION)},
        description="recall@k on the discovery holdout (week W+1 positives never heard up to W) for two-tower, ALS, popularity.")},
    ins={
        "interactions": AssetIn(partition_mapping=history_and_next_week, metadata={"columns": EVAL_COLUMNS}),
        "track_embeddings": AssetIn(dagster_type=Artifact),
        "user_embeddings": AssetIn(dagster_type=Artifact),
        "track_stats": AssetIn(),
    },
    partitions_def=weekly_partitions,
    check_specs=[schema_check_spec("retrieval_evaluation", RETRIEVAL_EVALUATION, blocking=False)],
)
def retrieval_evaluation(
    context: AssetExecutionContext,
    config: RetrievalEvaluationConfig,
    interactions: pd.DataFrame,
    track_embeddings: Artifact,
    user_embeddings: Artifact,
    track_stats: pd.DataFrame,
):
    _, holdout_start = week_bounds(context.partition_key)
    in_holdout = interactions["ts"] >= holdout_start
    history, holdout = interactions[~in_holdout], interactions[in_holdout]
    if holdout.empty:
        raise ValueError(f"no interactions for the week after {context.partition_key}: materialize it before evaluating")
    truth = discovery_holdout(holdout, history)
    cold_ids = set(track_stats.loc[track_stats["is_cold"], "track_id"].tolist())
    cold_truth = {u: t[np.isin(t, list(cold_ids))] for u, t in truth.items()}
    cold_truth = {u: t for u, t in cold_truth.items() if len(t)}
    rows = []

    started = time.perf_counter()
    user_ids, user_vectors = vectors_from(user_embeddings)
    track_ids, track_vectors = vectors_from(track_embeddings)
    top = embedding_top_k(user_vectors, track_ids, track_vectors, user_ids, history, config.k)
    rows.append(_row("two_tower", config.k, recall_at_k(user_ids, top, truth), recall_at_k(user_ids, top, cold_truth),
                     time.perf_counter() - started))

    started = time.perf_counter()
    als_users, als_top = als_top_k(history, config.k, AlsConfig(factors=config.als_factors,
                                                                     iterations=config.als_iterations, seed=config.seed))
    rows.append(_row("als", config.k, recall_at_k(als_users, als_top, truth), recall_at_k(als_users, als_top, cold_truth),
                     time.perf_counter() - started))

    started = time.perf_counter()
    pop_top = popularity_top_k(history, user_ids, config.k)
    rows.append(_row("popularity", config.k, recall_at_k(user_ids, pop_top, truth),
                     recall_at_k(user_ids, pop_top, cold_truth), time.perf_counter() - started))

    table = pd.DataFrame(rows)
    table["cold_recall"] = table["cold_recall"].astype(float)
    recall = dict(zip(table["system"], table["recall"], strict=True))
    yield Output(table, output_name="retrieval_evaluation", metadata={
        "model_version": track_embeddings.model_version,
        "holdout_users": len(truth),
        "holdout_users_with_cold_positives": len(cold_truth),
        **{f"recall@{config.k}_{system}": value for system, value in recall.items()},
        "results": MetadataValue.md(table.to_markdown(index=False)),
    })
    yield schema_check_result("retrieval_evaluation", table, RETRIEVAL_EVALUATION, blocking=False)


evaluation_assets = [retrieval_evaluation]
