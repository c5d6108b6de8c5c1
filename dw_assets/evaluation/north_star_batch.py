"""The north star's user-scale steps (no Dagster): the user sample drawn in Spark and its rows on the driver.

Sizes at the target (500 M users, 100 M tracks): the playlists (15 G rows), candidates (250 G rows at 500
per user), profiles and user vectors (500 M rows) stay in Spark. The sample is at most
``NorthStarConfig.max_users`` users (``bounded``: the driver guard's limit caps it further) drawn by a
seeded hash among the evaluated users with a playlist, cut to whole users in hash order so that their
candidate and list rows total at most ``max_rows`` (5,000 users: ~2.5 M candidate rows, 1 M list rows).
Only those users' playlists, candidates and profiles come to the driver, through ``to_driver``. Every
demo world's users fit the caps: then the sample is every playlist user and nothing is hashed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from dw_assets.evaluation.batch import EvaluationSample, collect_ids, draw_users, of_users
from dw_assets.evaluation.north_star import RANKER_ORDER, NorthStarConfig, catalog_frame, north_star
from dw_assets.evaluation.ranker_order import ranker_order
from dw_assets.lake.driver_guard import check_driver_rows, to_driver
from dw_assets.ranking.features import USER_COLUMNS, FeatureContext
from dw_assets.ranking.playlists import CANDIDATE_ARRAYS
from dw_assets.ranking.ranker import TrainedRanker
from dw_assets.simulate.truth import Truth

__all__ = ["RANKER_ORDER", "draw_sample", "measure", "sample_frame", "sample_lists", "sample_ranker_order"]
LIST_COLUMNS = ["user_id", "position", "track_id"]


def draw_sample(listed: DataFrame, candidates: DataFrame, config: NorthStarConfig) -> np.ndarray:
    """The sampled user ids (sorted int64): among ``listed``'s users (one per row), at most
    ``bounded(max_users)`` of the lowest seeded hash whose candidate and list rows fit ``bounded(max_rows)``;
    every user when all fit. Only (user, rows) pairs of the hashed users reach the driver."""
    users = listed.select(F.col("user_id").cast("long")).distinct()
    per_user_rows = candidates.select("user_id").unionByName(listed.select("user_id"))
    drawn, _, _ = draw_users(users, of_users(per_user_rows, users),
                             EvaluationSample(users=config.max_users, rows=config.max_rows, seed=config.sample_seed))
    return collect_ids(drawn, "user_directory")


def sample_frame(spark, users: np.ndarray) -> DataFrame:
    """The sample as a one-column Spark frame (bounded: at most ``max_users`` ids)."""
    return spark.createDataFrame(pd.DataFrame({"user_id": np.asarray(users, np.int64)}), "user_id long")


def sample_lists(lists: Mapping[str, DataFrame], sample: DataFrame) -> dict[str, pd.DataFrame]:
    """Each stored system's rows (user_id, position, track_id) of the sampled users, sorted."""
    out = {}
    for name, frame in lists.items():
        rows = of_users(frame.select(*LIST_COLUMNS), sample).orderBy(*LIST_COLUMNS)
        out[name] = to_driver(rows, "ranked_playlists" if name == "pipeline" else "last_week_playlists")
    return out


def sample_ranker_order(ranker: TrainedRanker, context: FeatureContext, two_tower_prior: float,
                        candidates: DataFrame, profiles: DataFrame, user_vectors: DataFrame, sample: DataFrame,
                        track_stats: pd.DataFrame, config: NorthStarConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the sample's candidates: user_id, track_id; the ranker's order of them). The candidate rows and the
    profiles (``USER_COLUMNS`` + ``user_vector``) of the sampled users only come to the driver."""
    rows = to_driver(of_users(candidates.select("user_id", *CANDIDATE_ARRAYS), sample)
                     .orderBy("user_id", "track_id"), "candidates")
    users = to_driver(of_users(profiles.select(*USER_COLUMNS), sample)
                      .join(user_vectors.select("user_id", "user_vector"), "user_id", "left")
                      .orderBy("user_id"), "user_profiles")
    order = ranker_order(ranker, context, users, rows, track_stats[["track_id", "artist_id"]], two_tower_prior,
                         config.playlist_size, config.max_per_artist)
    return rows[["user_id", "track_id"]], order


def measure(truth: Truth, listened_week: str, users: np.ndarray, lists: Mapping[str, pd.DataFrame],
            heard: pd.DataFrame, candidates: pd.DataFrame, track_stats: pd.DataFrame,
            config: NorthStarConfig) -> dict:
    """``north_star.north_star`` of the sample: ``lists`` (system → the sample's rows; each filtered to the
    sample here), ``heard`` the users' listening up to the week (their histories, on the driver already)."""
    users = np.asarray(users, np.int64)
    check_driver_rows("interactions", len(heard), "the north star's heard tracks")
    lists = {name: frame.loc[frame["user_id"].isin(users), LIST_COLUMNS] for name, frame in lists.items()}
    heard = heard.loc[heard["user_id"].isin(users), ["user_id", "track_id"]].drop_duplicates()
    return north_star(truth, lists, users, heard, candidates, catalog_frame(track_stats), listened_week, config)
