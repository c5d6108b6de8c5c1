"""The north star on the executors (no Dagster): the user sample drawn in Spark, every system (the ranker's
own order, which ``ranked_playlists`` writes, among them) played per user in hash buckets, the sums over users
aggregated in Spark.

Sizes at the target (500 M users, 100 M tracks): the playlists (15 G rows), candidates (250 G rows at 500
per user), the history window, profiles and user vectors (500 M rows) stay in Spark. The sample is at most
``NorthStarConfig.max_users`` users (1 M; ``bounded``: the driver guard's limit caps it further) drawn by a
seeded hash among the users with a playlist; every user of a demo world is in it, and then nothing is
hashed. Per hash bucket of ``users_per_bucket`` users, one pandas call on an executor plays every system's
lists under every listener model (``north_star.per_user_north_star``); the driver gets the sums over
users (a few dozen rows) and, only where the caps bind, the sample's ids. What is shipped to the
executors is catalog-sized: the simulated world's truth with the week's catalog frame (a simulated world
holds ≤ ~10^6 tracks).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from dw_assets.evaluation.batch import EvaluationSample, draw_users, of_users
from dw_assets.evaluation.north_star import (
    METRICS,
    PAIR_COLUMNS,
    PAIR_SYSTEMS,
    PER_USER_ROW,
    RANKER_ORDER,
    NorthStarConfig,
    catalog_frame,
    efficiency_moments,
    north_star_moments,
    north_star_report,
    per_user_north_star,
)
from dw_assets.ingest.spark import load_once, payload_key
from dw_assets.simulate.truth import Truth

__all__ = ["RANKER_ORDER", "draw_sample", "measure"]
LIST_COLUMNS = ["user_id", "position", "track_id"]
PER_USER_SCHEMA = ("listener string, system string, user_id long, "
                   + ", ".join(f"{m} double" for m in METRICS) + ", slots long, cold_slots long, surfaced array<long>")
MOMENT_SCHEMA = ("listener string, system string, users long, users_with_list long, slots long, cold_slots long, "
                 + ", ".join(f"n_{m} long, sum_{m} double, sumsq_{m} double" for m in METRICS)
                 + ", surfaced array<long>")
PAIR_SCHEMA = "listener string, efficiency string, n long, " + ", ".join(f"{c} double" for c in PAIR_COLUMNS[3:])
ROWS_SCHEMA = "kind string, system string, user_id long, position long, track_id long"


def draw_sample(listed: DataFrame, config: NorthStarConfig) -> tuple[DataFrame, int]:
    """(the sampled users as a one-column Spark frame, how many): among ``listed``'s users, every one when
    they fit ``bounded(max_users)``, else that many of the lowest seeded hash (only their ids reach the driver)."""
    users = listed.select(F.col("user_id").cast("long")).distinct()
    drawn, _, count = draw_users(users, users.limit(0),
                                 EvaluationSample(users=config.max_users, seed=config.sample_seed))
    return drawn, count


def _rows(sample: DataFrame, lists: Mapping[str, DataFrame], candidates: DataFrame, heard: DataFrame) -> DataFrame:
    """Everything a bucket needs as one long frame (``ROWS_SCHEMA``): the users, each system's list rows,
    the candidates and the heard tracks, each of the sample's users only."""
    none = F.lit(None)
    frames = [sample.select(F.lit("user").alias("kind"), none.cast("string").alias("system"),
                            F.col("user_id").cast("long"), none.cast("long").alias("position"),
                            none.cast("long").alias("track_id"))]
    for system, frame in lists.items():
        frames.append(of_users(frame, sample).select(
            F.lit("list").alias("kind"), F.lit(system).alias("system"), F.col("user_id").cast("long"),
            F.col("position").cast("long"), F.col("track_id").cast("long")))
    # The candidates table is unique per (user, track) (its schema); the window's plays repeat pairs.
    for kind, frame, unique in (("candidate", candidates, True), ("heard", heard, False)):
        pairs = of_users(frame.select("user_id", "track_id"), sample)
        frames.append((pairs if unique else pairs.distinct()).select(
            F.lit(kind).alias("kind"), none.cast("string").alias("system"), F.col("user_id").cast("long"),
            none.cast("long").alias("position"), F.col("track_id").cast("long")))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _play_bucket(key: str, shipped, systems: tuple[str, ...], week: str, config: NorthStarConfig):
    """The applyInPandas function: one bucket's rows -> its users' ``PER_USER_ROW`` rows."""

    def run(frame: pd.DataFrame) -> pd.DataFrame:
        truth, catalog = load_once(key, lambda: pickle.loads(shipped.value))
        kind = frame["kind"].to_numpy(object)
        users = frame.loc[kind == "user", "user_id"].to_numpy(np.int64)
        lists = frame[kind == "list"]
        by_system = {s: lists.loc[lists["system"].to_numpy(object) == s, LIST_COLUMNS].astype(np.int64)
                     for s in systems}
        pairs = ["user_id", "track_id"]
        out = per_user_north_star(truth, by_system, users, frame.loc[kind == "heard", pairs].astype(np.int64),
                                  frame.loc[kind == "candidate", pairs].astype(np.int64), catalog, week, config)
        out["surfaced"] = [None if v is None else [int(x) for x in v] for v in out["surfaced"]]
        return out[list(PER_USER_ROW)]

    return run


def measure(truth: Truth, listened_week: str, sample: DataFrame, count: int, lists: Mapping[str, DataFrame],
            heard: DataFrame, candidates: DataFrame, track_stats: pd.DataFrame, config: NorthStarConfig) -> dict:
    """``north_star.north_star``'s report of the sample, played on the executors. ``lists``: system -> Spark
    frame of user_id, position, track_id (``pipeline`` and ``ranker_order`` at least); ``heard``: the
    users' listening up to the week (user_id, track_id; the history window); ``candidates``: the week's;
    ``count``: the sample's users (the buckets: ``count / users_per_bucket``)."""
    spark = sample.sparkSession
    blob = pickle.dumps((truth, catalog_frame(track_stats)), protocol=pickle.HIGHEST_PROTOCOL)
    key, shipped = payload_key(blob), spark.sparkContext.broadcast(blob)
    buckets = max(1, -(-count // config.users_per_bucket))
    rows = _rows(sample, lists, candidates, heard)
    per_user = (rows.withColumn("_bucket", F.pmod(F.xxhash64("user_id"), F.lit(buckets)))
                .groupBy("_bucket").applyInPandas(_play_bucket(key, shipped, tuple(lists), listened_week, config),
                                                  PER_USER_SCHEMA)
                .persist())  # read twice: the buckets are played once
    moments = per_user.groupBy("listener", "system").applyInPandas(north_star_moments, MOMENT_SCHEMA).toPandas()
    pairs = (per_user.where(F.col("system").isin(*PAIR_SYSTEMS)).select("listener", "system", "user_id", "saves")
             .groupBy("listener").applyInPandas(efficiency_moments, PAIR_SCHEMA).toPandas())
    per_user.unpersist()
    shipped.unpersist()
    return north_star_report(moments, pairs, config)
