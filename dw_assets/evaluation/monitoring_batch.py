"""The Spark side of the weekly monitoring (Dagster-free): the sample the drift checks read, the weekly
volumes, and the feature-drift check over two weeks of user embeddings. ``monitoring.py`` holds the
checks themselves (plain numbers in, ``CheckOutcome`` out); ``model_monitoring`` runs these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame
from pyspark.sql.utils import AnalysisException

from dw_assets.calendar import shift_week
from dw_assets.embeddings.user_tower import sampled_vectors
from dw_assets.evaluation.monitoring import CheckOutcome, embedding_statistic, feature_drift
from dw_assets.lake.driver_guard import bounded
from dw_assets.lake.storage import LakeError
from dw_assets.ranking.batch import STORED_ORDER, sample_users, stored_order

MONITORING_CHECKS = {
    "prediction_drift": "PSI of the ranker score distribution vs last week's playlists.",
    "feature_drift": "PSI and KS of the user-embedding norm distribution vs last week's model.",
    "events_volume": "Clean events this week vs the trailing mean of the history window.",
    "active_users_volume": "Active users this week vs the trailing mean.",
    "new_tracks_volume": "Tracks released this week vs the trailing mean.",
    "batch_window_sla": "Projected 500M-user batch inference time from the measured users/s per core.",
}


@dataclass(frozen=True)
class DriftSample:
    """The users whose ranker scores (30 each) and user vectors the drift checks read, this week's and last
    week's alike: the lowest seeded hash first, drawn in Spark. (Run-config names of ``model_monitoring``.)"""

    sample_users: int = 250_000  # users whose scores the drift reads (seeded hash): the demo's are all
    seed: int = 7  # salt of the seeded hash


def sampled_user_vectors(user_embeddings: DataFrame, sample: DriftSample) -> np.ndarray:
    """The vectors of at most ``sample.sample_users`` users (lowest seeded hash, drawn in Spark), ordered by
    user id: every user's when there are no more (the demo), so the statistic is the one over all users."""
    ids, vectors = sampled_vectors(user_embeddings, sample.sample_users, sample.seed)
    return vectors[np.argsort(ids, kind="stable")]


def sampled_scores(playlists: DataFrame, sample: DriftSample) -> np.ndarray:
    """The non-null ranker scores of at most ``sample.sample_users`` users (lowest seeded hash first), in the
    stored order: every user's when there are no more (the demo)."""
    frame = stored_order(playlists).select("user_id", "ranker_score", *STORED_ORDER)
    chosen = sample_users(frame, bounded(sample.sample_users), sample.seed)
    if chosen is not None:
        frame = frame.join(chosen, "user_id", "left_semi")
    scores = frame.where(F.col("ranker_score").isNotNull()).orderBy(*STORED_ORDER).select("ranker_score")
    return np.asarray([r[0] for r in scores.collect()], dtype=np.float32)


def embedding_drift(user_embeddings: Mapping[str, DataFrame], week: str, sample: DriftSample,
                    warn: float, error: float) -> CheckOutcome:
    """``feature_drift`` of week ``week``'s user embeddings vs the week before's, on ``sample``'s users.
    ``user_embeddings``: {week: the user_embeddings table} of the weeks that exist (``PartitionInputs``).
    No week before: passes as the first week. A week before that is not a table (a lake written before
    user_embeddings was one: the lake refuses it as a table) is not compared: a failed WARN that says why
    (materializing that week's user_embeddings again makes it comparable)."""
    label, norms = embedding_statistic(sampled_user_vectors(user_embeddings[week], sample))
    previous = shift_week(week, -1)
    if previous not in user_embeddings:
        return feature_drift(norms, np.zeros(0), warn, error, label=label)
    try:
        table = user_embeddings[previous]
    except (AnalysisException, LakeError) as exc:  # no Parquet there
        reason = (f"week {previous}'s user_embeddings is not a table (written by an earlier layout: {exc}); "
                  f"materialize user_embeddings for {previous} again to compare")
        return CheckOutcome("feature_drift", False, "WARN", 0.0, warn, f"{label} PSI not computed: {reason}",
                            {"reason": reason, "users_now": int(norms.size), "users_last_week": 0})
    _, last_norms = embedding_statistic(sampled_user_vectors(table, sample))
    return feature_drift(norms, last_norms, warn, error, label=label)


def weekly_volumes(interactions: DataFrame, catalog: pd.DataFrame, weeks: list[str]) -> pd.DataFrame:
    """week, events, active_users, new_tracks for each week of the window (zeros where nothing landed);
    the interactions are counted on Spark, one row per week comes back."""
    per_week = (interactions.groupBy(F.date_format(F.date_trunc("week", "ts"), "yyyy-MM-dd").alias("week"))
                .agg(F.count("*").alias("events"), F.countDistinct("user_id").alias("active_users"))
                .toPandas().set_index("week"))
    release = pd.to_datetime(catalog["release_date"]).dt.to_period("W-SUN").dt.start_time.dt.strftime("%Y-%m-%d")
    new_tracks = release.value_counts()
    frame = pd.DataFrame({"week": weeks})
    frame["events"] = frame["week"].map(per_week["events"]).fillna(0).astype("int64")
    frame["active_users"] = frame["week"].map(per_week["active_users"]).fillna(0).astype("int64")
    frame["new_tracks"] = frame["week"].map(new_tracks).fillna(0).astype("int64")
    return frame
