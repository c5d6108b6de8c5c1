"""The evaluation's user-scale steps in Spark (no Dagster here): the holdout, the evaluated users,
per-user metrics on the executors and their aggregates.

Sizes at the target (500 M users, 100 M tracks; docs/scale.md): the history window (240 G
interaction rows), the week W+1 holdout and the playlists (15 G rows) are read and joined on the
executors only. The evaluated users are at most ``EvaluationSample.users`` users drawn by a seeded
hash, cut further so that their histories total at most ``rows`` rows (whole users,
lowest hash first): those histories are the one user-scale thing the driver holds, because the
driver-side baselines (``implicit`` ALS, item-item CF, exact two-tower top-k, popularity with
the user's heard tracks removed) train on them and recommend for these users only. Per-user
metrics run in ``applyInPandas`` over hash buckets of ``users_per_bucket`` users (500 buckets at the
cap); only (system, segment) aggregates (30 rows) come back. With every user of a demo world inside the caps nothing is sampled and the
numbers are those of the whole week.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from dw_assets.embeddings.samples import HASH_COLUMN, smallest_hashes
from dw_assets.evaluation.metrics import (
    AUXILIARY_KEYS,
    PER_USER_COLUMNS,
    SEGMENTS,
    metric_keys,
    novelty_floor,
    per_user_metrics,
)
from dw_assets.lake.driver_guard import bounded, to_driver
from dw_assets.ranking.batch import STORED_ORDER, stored_order


@dataclass(frozen=True)
class EvaluationSample:
    """The evaluated users: a seeded-hash sample (caps obey ``DW_DRIVER_ROW_LIMIT`` through ``bounded``).

    users: at most this many users are evaluated (the demo worlds have <= 200 k: all of them).
    rows: the drawn users' rows the driver holds total at most this many (their histories and holdout
        positives for the driver-side baselines; both arms' playlists in the A/B test); users are
        dropped from the highest hash down beyond it (the `large` world's whole window fits).
    users_per_bucket: drawn users per hash bucket the per-user metrics run in (one pandas call each): small
        enough that the buckets spread over every core and a task's sort of its rows (30 slots x systems
        per user, each with its track's vector) stays small. With 20,000, `small`'s 24.5 k users made 2
        buckets that landed in one task: 95 s of its offline evaluation, 58 s with 2,000 (same numbers).
    """

    users: int = 1_000_000
    rows: int = 100_000_000
    seed: int = 7
    users_per_bucket: int = 2_000


def split_window(interactions: DataFrame, holdout_start) -> tuple[DataFrame, DataFrame]:
    """(history up to W, week W+1) of an interactions window that ends with the holdout week."""
    in_holdout = F.col("ts") >= F.lit(holdout_start)
    return interactions.where(~in_holdout), interactions.where(in_holdout)


def truth_frame(history: DataFrame, holdout: DataFrame) -> DataFrame:
    """user_id, track_id: week W+1 positives the user never played up to W (the discovery holdout), in Spark."""
    keys = ["user_id", "track_id"]
    liked = holdout.where(F.col("is_positive")).select(*keys).distinct()
    return liked.join(history.select(*keys), keys, "left_anti")


def draw_users(users: DataFrame, counted: DataFrame, sample: EvaluationSample) -> tuple[DataFrame, int, int]:
    """(the evaluated users as a one-column Spark frame, how many users were offered, how many were drawn).

    Every distinct user of ``users`` when they fit the caps (the demo); else the ``bounded(sample.users)``
    lowest seeded hashes, then whole users in hash order while their rows in ``counted`` (a user_id per row
    the driver will hold) fit ``bounded(sample.rows)``. One (user, rows) pair per drawn user reaches the driver.
    """
    users = users.select(F.col("user_id").cast("long")).distinct()
    rows = users.join(counted.groupBy("user_id").count(), "user_id", "left").fillna(0, ["count"])
    offered, total = rows.agg(F.count("*"), F.sum("count")).first()
    cap_users, cap_rows = bounded(sample.users), bounded(sample.rows)
    if offered <= cap_users and (total or 0) <= cap_rows:
        return users, int(offered), int(offered)
    drawn = to_driver(smallest_hashes(rows, "user_id", cap_users, sample.seed, keep_hash=True), "user_directory")
    drawn = drawn.sort_values([HASH_COLUMN, "user_id"], kind="mergesort")
    kept = drawn.loc[drawn["count"].cumsum().to_numpy() <= cap_rows, ["user_id"]].astype("int64")
    return users.sparkSession.createDataFrame(kept, "user_id long"), int(offered), len(kept)


def of_users(frame: DataFrame, users: DataFrame) -> DataFrame:
    return frame.join(users, "user_id", "left_semi")


def collect_history(history: DataFrame, users: DataFrame) -> pd.DataFrame:
    """The drawn users' interactions on the driver, in the order the lake stores them (the order a pandas
    read of the window had, so the baselines see the same rows in the same order)."""
    frame = stored_order(history.select("user_id", "track_id", "ts", "is_positive", "weight"))
    frame = of_users(frame, users).orderBy(*STORED_ORDER)
    return to_driver(frame, "interactions").drop(columns=list(STORED_ORDER)).reset_index(drop=True)


def collect_ids(frame: DataFrame, asset: str) -> np.ndarray:
    """The sorted distinct user ids of ``frame`` (a bounded sample) on the driver."""
    ids = to_driver(frame.select("user_id").distinct().orderBy("user_id"), asset)
    return ids["user_id"].to_numpy(np.int64)


def popularity_ranking(history: DataFrame) -> np.ndarray:
    """Track ids by distinct listeners in the history, most first (ties by id): a per-track aggregate,
    counted and sorted on the executors; the driver gets the ordered ids only (int64: 0.8 GB at 100 M
    tracks; the popularity baseline reads its first k + a user's heard tracks)."""
    listeners = history.groupBy("track_id").agg(F.countDistinct("user_id").alias("listeners"))
    ranked = listeners.orderBy(F.col("listeners").desc(), F.col("track_id")).select("track_id").toPandas()
    return ranked["track_id"].to_numpy(np.int64)


# -- per-user metrics on the executors ---------------------------------------------------------------

TRACK_COLUMNS = ["artist_id", "genre", "popularity_share", "popularity_percentile", "is_cold"]
PROFILE_COLUMNS = ["genre_share", "mean_popularity_percentile", "history_level", "is_new_user"]
_FLOATS = ("precision", "recall", "ndcg", "hit", "ap", "ild", "cold_slots", "listed", "own", "kl",
           "max_artist", "tracks_per_artist")  # fmt: skip
PER_USER_SCHEMA = ("system string, user_id long, segments array<string>, is_truth boolean, has_recs boolean, "
                   + ", ".join(f"{c} double" for c in _FLOATS)
                   + ", novelty_values array<double>, slots long, cold_positives long, cold_hits long")  # fmt: skip


def _segments(profiles: pd.DataFrame) -> dict[int, list[str]]:
    """user -> the segments it is in besides "all" (history level; "new")."""
    out: dict[int, list[str]] = {}
    new = profiles["is_new_user"].eq(True).to_numpy(bool)  # null: not new
    for user, level, is_new in zip(profiles["user_id"].to_numpy(np.int64), profiles["history_level"].astype(str),
                                   new, strict=True):  # fmt: skip
        out[int(user)] = ([level] if level in ("light", "medium", "heavy") else []) + (["new"] if is_new else [])
    return out


def _batch_metrics(systems: tuple[str, ...], k: int, floor: float):
    """The applyInPandas function: one bucket's rec, truth and profile rows -> per (system, user) rows."""

    def run(frame: pd.DataFrame) -> pd.DataFrame:
        kind = frame["kind"].to_numpy(object)
        recs, truth, profiles = frame[kind == "rec"], frame[kind == "truth"], frame[kind == "profile"]
        attributes = pd.concat([recs, truth])
        attributes = attributes[attributes["found"].eq(True).to_numpy(bool)]
        tracks = attributes[["track_id", *TRACK_COLUMNS]].drop_duplicates("track_id")
        tracks = tracks.astype({"track_id": np.int64, "artist_id": np.int64, "is_cold": bool})
        with_vector = recs[recs["vector"].notna()].drop_duplicates("track_id")
        vectors = ((with_vector["track_id"].to_numpy(np.int64), np.stack(with_vector["vector"].to_numpy()))
                   if len(with_vector) else (np.zeros(0, np.int64), np.zeros((0, 1), np.float32)))  # fmt: skip
        history = profiles[["user_id", *PROFILE_COLUMNS]].reset_index(drop=True)
        segments = _segments(history)
        truth = truth[["user_id", "track_id"]]
        out = []
        for system in systems:
            listed = recs.loc[recs["system"].to_numpy(object) == system, ["user_id", "position", "track_id"]]
            per_user = per_user_metrics(listed, truth, tracks, history, floor, k, vectors)
            per_user.insert(0, "system", system)
            per_user.insert(2, "segments", [["all", *segments.get(int(u), [])] for u in per_user["user_id"]])
            out.append(per_user)
        columns = ["system", "user_id", "segments", *PER_USER_COLUMNS[1:]]
        return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)

    return run


def per_user_frame(lists: DataFrame, truth: DataFrame, profiles: DataFrame, tracks: pd.DataFrame,
                   vectors: tuple[np.ndarray, np.ndarray], systems: tuple[str, ...], k: int,
                   buckets: int) -> DataFrame:  # fmt: skip
    # buckets: how many applyInPandas groups the users are hashed into (drawn users / users_per_bucket)
    """One row per (system, evaluated user) with its metric terms (``metrics.per_user_metrics``) and segments.

    lists: system, user_id, position, track_id; truth: user_id, track_id; profiles: user_profiles rows.
    tracks: ``systems.track_table`` (per track, on the driver by design) and ``vectors`` (track ids,
    float32[n, dim]): joined to the slots in Spark, so each task holds only its users' tracks.
    """
    spark = lists.sparkSession
    attributes = spark.createDataFrame(
        tracks[["track_id", *TRACK_COLUMNS]].astype({"track_id": np.int64, "artist_id": np.int64}),
        "track_id long, artist_id long, genre string, popularity_share double, popularity_percentile double, "
        "is_cold boolean").withColumn("found", F.lit(True))
    ids, matrix = vectors
    vector_rows = spark.createDataFrame(
        pd.DataFrame({"track_id": np.asarray(ids, np.int64), "vector": list(np.asarray(matrix, np.float32))}),
        "track_id long, vector array<float>")
    recs = (lists.select("system", F.col("user_id").cast("long"), F.col("position").cast("long"),
                         F.col("track_id").cast("long"))
            .join(attributes, "track_id", "left").join(vector_rows, "track_id", "left").withColumn("kind", F.lit("rec")))
    truth_rows = (truth.select(F.col("user_id").cast("long"), F.col("track_id").cast("long"))
                  .join(attributes, "track_id", "left").withColumn("kind", F.lit("truth")))
    profile_rows = profiles.select(F.col("user_id").cast("long"), *PROFILE_COLUMNS).withColumn("kind", F.lit("profile"))
    rows = recs.unionByName(truth_rows, allowMissingColumns=True).unionByName(profile_rows, allowMissingColumns=True)
    bucket = F.pmod(F.xxhash64(F.col("user_id")), F.lit(max(1, int(buckets))))
    floor = novelty_floor(tracks)
    return rows.withColumn("_bucket", bucket).groupBy("_bucket").applyInPandas(
        _batch_metrics(tuple(systems), k, floor), PER_USER_SCHEMA)


_MEANS = ("precision", "recall", "ndcg", "hit", "ap", "ild", "kl", "tracks_per_artist", "listed", "own")
SEGMENT_SCHEMA = ("system string, segment string, users long, users_with_recs long, "
                  + ", ".join(f"{c} double" for c in (*_MEANS, "lift", "max_artist", "novelty", "cold_slots"))
                  + ", slots long, cold_positives long, cold_hits long")  # fmt: skip


def _segment_sums(frame: pd.DataFrame) -> pd.DataFrame:
    """One (system, segment)'s users -> its means, sums and maximum. In user order, whatever the shuffle
    delivered (Spark's own sums would follow the shuffle's order, so the last bits could vary run to run):
    the means are numpy's over the users sorted by id, as ``metrics.evaluate_lists`` takes them."""
    frame = frame.sort_values("user_id", kind="mergesort")

    def finite(column: str) -> np.ndarray:
        values = frame[column].to_numpy(np.float64)
        return values[np.isfinite(values)]

    def mean(values: np.ndarray) -> float:
        return float(np.mean(values)) if len(values) else float("nan")

    listed, own = frame["listed"].to_numpy(np.float64), frame["own"].to_numpy(np.float64)
    known = np.isfinite(listed) & np.isfinite(own)
    most = finite("max_artist")
    row = {"system": frame["system"].iloc[0], "segment": frame["segment"].iloc[0],
           "users": int(frame["is_truth"].sum()), "users_with_recs": int(frame["has_recs"].sum()),
           **{column: mean(finite(column)) for column in _MEANS},
           "lift": mean(listed[known] / own[known]),
           "max_artist": float(most.max()) if len(most) else float("nan"),
           "novelty": mean(np.concatenate([np.empty(0), *frame["novelty_values"]])),
           "cold_slots": math.fsum(frame["cold_slots"].to_numpy(np.float64)),
           **{column: int(frame[column].sum()) for column in ("slots", "cold_positives", "cold_hits")}}
    return pd.DataFrame([row])


def aggregate(per_user: DataFrame, lists: DataFrame, catalog_size: int, systems: tuple[str, ...], k: int,
              uses_vectors: bool) -> pd.DataFrame:  # fmt: skip
    """One row per (system, segment) with ``users`` and the columns of ``metrics.evaluate_segments``, from
    per-user rows aggregated in Spark.

    Means are over the users a metric applies to; novelty and cold share over slots; cold hit rate over
    cold positives; coverage is the segment's distinct listed tracks (at positions 1..k) over the catalog.
    Each (system, segment) is summed by one pandas call over its users' rows (at most ``sample_users``
    rows of ~20 numbers: 160 MB at the 1 M cap), so the numbers do not depend on the partitioning."""
    per_user = per_user.persist()  # read twice: the UDF runs once
    exploded = per_user.select("*", F.explode("segments").alias("segment")).drop("segments")
    sums = exploded.groupBy("system", "segment").applyInPandas(_segment_sums, SEGMENT_SCHEMA)
    slot_segments = (lists.where(F.col("position") <= k).select("system", "user_id", "track_id")
                     .join(per_user.select("system", "user_id", "segments"), ["system", "user_id"])
                     .select("system", "track_id", F.explode("segments").alias("segment")))
    distinct = slot_segments.groupBy("system", "segment").agg(F.countDistinct("track_id").alias("tracks"))
    got = sums.join(distinct, ["system", "segment"], "left").toPandas().set_index(["system", "segment"])
    per_user.unpersist()

    rows = []
    for system in systems:
        for segment in SEGMENTS:
            g = got.loc[(system, segment)] if (system, segment) in got.index else None
            rows.append({"system": system, "segment": segment, **_metrics_row(g, catalog_size, k, uses_vectors)})
    columns = ["system", "segment", "users", *metric_keys(k), *[key for key in AUXILIARY_KEYS if key != "users"]]
    return pd.DataFrame(rows)[columns].astype({"users": np.int64, "users_with_recs": np.int64})


def _number(value) -> float:
    return float("nan") if value is None or pd.isna(value) else float(value)


def _metrics_row(g, catalog_size: int, k: int, uses_vectors: bool) -> dict:
    if g is None:  # nobody of the segment: what evaluate_lists gives for no users
        values = dict.fromkeys(metric_keys(k), float("nan"))
        values.update(users=0, users_with_recs=0, coverage=0.0 if catalog_size > 0 else float("nan"),
                      rec_popularity_percentile=float("nan"), history_popularity_percentile=float("nan"),
                      ild_uses_vectors=1.0 if uses_vectors else 0.0)
        return values

    def share(top: str, bottom: str) -> float:
        below = _number(g[bottom])
        return _number(g[top]) / below if below > 0 else float("nan")

    tracks = 0 if pd.isna(g["tracks"]) else int(g["tracks"])
    return {
        "users": int(g["users"]),
        f"precision@{k}": _number(g["precision"]), f"recall@{k}": _number(g["recall"]),
        f"ndcg@{k}": _number(g["ndcg"]), f"hit_rate@{k}": _number(g["hit"]), f"map@{k}": _number(g["ap"]),
        "coverage": tracks / catalog_size if catalog_size > 0 else float("nan"),
        "ild": _number(g["ild"]),
        "novelty": _number(g["novelty"]),
        "popularity_lift": _number(g["lift"]),
        "calibration_kl": _number(g["kl"]),
        "max_tracks_per_artist": _number(g["max_artist"]),
        "mean_tracks_per_artist": _number(g["tracks_per_artist"]),
        "cold_share": share("cold_slots", "slots"),
        "cold_hit_rate": share("cold_hits", "cold_positives"),
        "users_with_recs": int(g["users_with_recs"]),
        "rec_popularity_percentile": _number(g["listed"]),
        "history_popularity_percentile": _number(g["own"]),
        "ild_uses_vectors": 1.0 if uses_vectors else 0.0,
    }


def lists_frame(spark, lists: dict[str, pd.DataFrame | DataFrame]) -> DataFrame:
    """system, user_id, position, track_id of every system's lists as one Spark frame (driver-made lists
    are the evaluated sample's, bounded)."""
    frames = []
    for system, recs in lists.items():
        if not isinstance(recs, DataFrame):
            recs = spark.createDataFrame(
                pd.DataFrame({c: recs[c].to_numpy(np.int64) for c in ("user_id", "position", "track_id")}),
                "user_id long, position long, track_id long")
        frames.append(recs.select(F.lit(system).alias("system"), F.col("user_id").cast("long"),
                                  F.col("position").cast("long"), F.col("track_id").cast("long")))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out
