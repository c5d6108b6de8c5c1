"""The ranker's training set, Dagster-free: rows pooled over the weeks before the trained week.

Week W's ranker learns from weeks W-1 .. W-``pool_weeks`` (``RankerConfig.pool_weeks``): week w's
candidates, labelled by week w+1's listening, featurized as of week w (w's profiles, track statistics,
item2vec, audio and two-tower vectors), so no row sees its own label in its features (week w's models
were trained on weeks up to w). A week without candidates is left out of the pool by the caller.

Sizes at the target, per pooled week: candidates 250 G rows, the labelling week's interactions 20 G,
profiles 500 M, user vectors 500 M, all read and sampled on Spark (``batch.ranker_training_samples``: the caps
hold for the pool as a whole, so the driver gets at most ``sample_rows`` candidate and play rows and
``sample_users`` profile rows whatever the number of weeks). The driver holds each week's catalog-sized
models (100 M tracks: item2vec and two-tower vectors, track statistics, audio vectors) while that week
is featurized, one week's feature context at a time, and the pooled features (<= ``sample_rows`` rows).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from dw_assets.calendar import shift_week
from dw_assets.embeddings.audio_table import audio_vectors_of
from dw_assets.embeddings.vector_table import track_vectors_of
from dw_assets.ranking.batch import LabelledWeek, ranker_training_samples, user_vectors_of
from dw_assets.ranking.features import FeatureContext, build_ranker_features, training_examples
from dw_assets.ranking.ranker import RankerConfig, TrainedRanker, train_ranker

QUERY_SHIFT = 32  # query id = week index << 32 | user id: one LightGBM query per (user, week)


@dataclass(frozen=True)
class PoolWeek:
    """One week w of the pool: w's candidates and what they are featurized with, as of w, and week w+1's
    interactions (their labels)."""

    week: str
    candidates: DataFrame
    interactions: DataFrame  # week w+1's
    user_profiles: DataFrame
    track_stats: pd.DataFrame
    item2vec: pd.DataFrame  # per-track tables (Artifacts of an older layout read the same)
    audio_vectors: DataFrame
    user_embeddings: DataFrame
    track_embeddings: pd.DataFrame


@dataclass
class TrainingSet:
    """The pooled rows on the driver: features (float32, one row per example), outcome labels, sample
    weights, user, query and track ids (int64), and per week: week, rows, positives, users (with
    candidates), sampled_users."""

    features: pd.DataFrame
    labels: np.ndarray
    weights: np.ndarray
    user_ids: np.ndarray
    query_ids: np.ndarray
    track_ids: np.ndarray
    weeks: list[dict]
    seconds: float


def assemble_pool(week: str, count: int, candidates: Mapping[str, DataFrame], interactions: Mapping[str, DataFrame],
                  user_profiles: Mapping[str, DataFrame], track_stats: Mapping[str, pd.DataFrame],
                  item2vec: Mapping[str, pd.DataFrame], audio_vectors: Mapping[str, DataFrame],
                  user_embeddings: Mapping[str, DataFrame], track_embeddings: Mapping[str, pd.DataFrame]) -> list[PoolWeek]:
    """The pool of week ``week``'s ranker: weeks W-1 .. W-``count``, newest first, from inputs keyed by week.

    A week is pooled when its inputs hold it (a key of each mapping: candidates, every input of its own
    week, and the interactions of the week after it); any other week is skipped (a ``dw run`` builds only
    W-1's candidates, a backfill every week's). Whether W-1 itself may be missing is the caller's rule."""
    pool = []
    for offset in range(1, count + 1):
        w = shift_week(week, -offset)
        inputs = (candidates, user_profiles, track_stats, item2vec, audio_vectors, user_embeddings, track_embeddings)
        # Membership only: the IO manager's PartitionInputs reads a week when it is first asked for.
        if all(w in source for source in inputs) and shift_week(w, 1) in interactions:
            pool.append(PoolWeek(w, candidates[w], interactions[shift_week(w, 1)], user_profiles[w], track_stats[w],
                                 item2vec[w], audio_vectors[w], user_embeddings[w], track_embeddings[w]))
    return pool


def pooled_training_set(weeks: list[PoolWeek], config: RankerConfig) -> TrainingSet:
    """The training rows of ``weeks`` (newest first; the first ``config.pool_weeks`` of them), each week
    sampled on Spark and featurized with its own week's inputs."""
    started = time.perf_counter()
    weeks = list(weeks)[: config.pool_weeks]
    if not weeks:
        raise ValueError("no week to train the ranker on")
    samples = ranker_training_samples([LabelledWeek(w.candidates, w.interactions, w.user_profiles) for w in weeks],
                                      config)
    parts, stats = [], []
    for index, (week, sample) in enumerate(zip(weeks, samples, strict=True)):
        examples, labels, weights = training_examples(sample.candidates, sample.plays, rows=config.training_rows,
                                                      scheme=config.label_scheme,
                                                      min_propensity=config.min_propensity,
                                                      propensity=sample.propensity)
        stats.append({"week": week.week, "rows": int(len(examples)), "positives": int((labels > 0).sum()),
                      "users": sample.users, "sampled_users": sample.sampled_users})
        if not len(examples):  # the caps left this week no user
            continue
        features = build_ranker_features(examples, week_context(week, sample.profiles))
        users = examples["user_id"].to_numpy(np.int64)
        if users.min() < 0 or users.max() >= 1 << QUERY_SHIFT:
            raise ValueError(f"user ids must be in [0, 2**{QUERY_SHIFT}) to pool weeks")
        parts.append((features, labels.to_numpy(), weights.to_numpy(), users, (index << QUERY_SHIFT) | users,
                      examples["track_id"].to_numpy(np.int64)))
    if not parts:
        raise ValueError(f"no training rows in weeks {', '.join(w.week for w in weeks)}")
    features = pd.concat([p[0] for p in parts], ignore_index=True)
    return TrainingSet(features, *(np.concatenate([p[i] for p in parts]) for i in range(1, 6)), stats,
                       round(time.perf_counter() - started, 3))


def week_context(week: PoolWeek, profiles: pd.DataFrame) -> FeatureContext:
    """Week w's feature context for its sampled users (``profiles``): every input as of w."""
    sampled = profiles["user_id"].to_numpy(np.int64)
    return FeatureContext.build(profiles, week.track_stats, track_vectors_of(week.item2vec, "item2vec_embeddings"),
                                audio_vectors_of(week.audio_vectors), user_vectors_of(week.user_embeddings, sampled),
                                track_vectors_of(week.track_embeddings, "track_embeddings"))


def train_pooled(weeks: list[PoolWeek], config: RankerConfig) -> tuple[TrainedRanker, TrainingSet]:
    """The ranker trained on :func:`pooled_training_set`; its report also names the pooled weeks."""
    rows = pooled_training_set(weeks, config)
    trained = train_ranker(rows.features, rows.labels, rows.user_ids, config, sample_weight=rows.weights,
                           query_ids=rows.query_ids)
    trained.report["pooled_weeks"] = rows.weeks
    trained.report["featurize_seconds"] = rows.seconds
    return trained, rows
