"""Gold: per-track statistics and per-user profiles over the trailing history window."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dw_assets.calendar import week_bounds


@dataclass(frozen=True)
class ProfileRules:
    recent_tracks: int = 50
    top_artists: int = 10
    light_max_positives: int = 20
    medium_max_positives: int = 100


TRACK_STATS_COLUMNS = [
    "track_id", "artist_id", "genre", "release_date", "age_days", "is_new_release", "plays", "listeners",
    "positives", "saves", "plays_last_week", "early_skip_rate", "skip_rate", "save_rate",
    "popularity_percentile", "is_cold",
]
USER_PROFILE_COLUMNS = [
    "user_id", "country", "signup_date", "birth_year", "is_new_user", "events", "positives",
    "weeks_active", "last_active", "history_level", "recent_tracks", "recent_age_days",
    "genre_share", "top_artists", "mean_popularity_percentile",
]


def track_counts(interactions: DataFrame, week: str) -> DataFrame:
    """Per-track plays, listeners, positives, saves and rates over the window's interactions.

    Size at the target: 12 weeks of interactions (~10^11 rows) aggregated into <= 100 M rows,
    in Spark (the costly part of ``build_track_stats``: cache it when passing it in).
    """
    start, _ = week_bounds(week)
    return interactions.groupBy("track_id").agg(
        F.count("*").alias("plays"),
        F.countDistinct("user_id").alias("listeners"),
        F.sum(F.col("is_positive").cast("long")).alias("positives"),
        F.sum(F.col("saved").cast("long")).alias("saves"),
        F.sum((F.col("ts") >= F.lit(start)).cast("long")).alias("plays_last_week"),
        F.avg(F.col("is_early_skip").cast("double")).alias("early_skip_rate"),
        F.avg(F.col("is_skip").cast("double")).alias("skip_rate"),
        F.avg(F.col("saved").cast("double")).alias("save_rate"),
    )


def build_track_stats(interactions: DataFrame, catalog: DataFrame, week: str,
                      counts: DataFrame | None = None) -> DataFrame:
    """One row per catalog track (cold tracks included, with zero plays), in listeners order.

    ``counts``: ``track_counts(interactions, week)`` when the caller cached it; the percentile's
    histogram and the output both read it (computed here otherwise, then twice).
    Size at the target: 100 M rows, in Spark; the driver holds the histogram of listener counts
    (``popularity_percentiles``, <= ~10^6 rows).
    """
    counts = track_counts(interactions, week) if counts is None else counts
    zeros = {c: 0 for c in ("plays", "listeners", "positives", "saves", "plays_last_week")}
    stats = catalog.join(counts, "track_id", "left").fillna(zeros)
    # Ties (e.g. all cold tracks) share a percentile, so it does not depend on row order.
    percentiles = popularity_percentiles(stats)
    # Written in listeners order, ties by track id: the order the demo's track_stats always had.
    return (
        stats.join(percentiles, "listeners", "left")
        .withColumn("is_cold", F.col("plays") == 0)
        .select(*TRACK_STATS_COLUMNS)
        .orderBy("listeners", "track_id")
    )


def popularity_percentiles(stats: DataFrame) -> DataFrame:
    """``(listeners, popularity_percentile)``: Spark's ``percent_rank`` over ``listeners``, exactly,
    without a window that moves every track to one partition.

    percent_rank = (rank - 1) / (n - 1), and rank - 1 = the number of tracks with fewer listeners,
    so it is a function of the listener count alone: Spark counts the tracks per distinct listener
    count (a histogram), the driver takes the running sum over the distinct counts. Those are few:
    k distinct counts need at least 0 + 1 + ... + (k - 1) ~ k^2/2 (user, track) pairs, so at the
    target (~5 * 10^11 pairs in 12 weeks, 100 M tracks) k <= ~10^6 rows (~16 MB). The division is
    Spark's (long -> double), so the values are identical to ``percent_rank``'s.
    """
    histogram = sorted((row["listeners"], row["_tracks"]) for row in
                       stats.groupBy("listeners").agg(F.count(F.lit(1)).alias("_tracks")).collect())
    n = sum(tracks for _, tracks in histogram)
    rows, smaller = [], 0
    for listeners, tracks in histogram:
        rows.append((listeners, smaller))
        smaller += tracks
    ranks = stats.sparkSession.createDataFrame(rows, "listeners long, _smaller long")
    return ranks.select(
        "listeners",
        (F.col("_smaller").cast("double") / F.lit(n - 1).cast("double") if n > 1 else F.lit(0.0))
        .alias("popularity_percentile"),
    )


def build_user_profiles(
    interactions: DataFrame, directory: DataFrame, track_stats: DataFrame, week: str, rules: ProfileRules
) -> DataFrame:
    """One row per user in the directory; users without history get empty arrays."""
    _, end = week_bounds(week)
    end_ts = F.lit(end)
    activity = interactions.groupBy("user_id").agg(
        F.count("*").alias("events"),
        F.sum(F.col("is_positive").cast("long")).alias("positives"),
        F.countDistinct(F.date_trunc("week", "ts")).alias("weeks_active"),
        F.max("ts").alias("last_active"),
    )
    positives = interactions.where("is_positive")

    # Last N distinct positive tracks, newest first, with their age for recency weights.
    latest = positives.groupBy("user_id", "track_id").agg(F.max("ts").alias("ts"))
    newest_first = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), "track_id")
    recent = (
        latest.withColumn("rank", F.row_number().over(newest_first))
        .where(F.col("rank") <= rules.recent_tracks)
        .withColumn("age_days", ((end_ts.cast("double") - F.col("ts").cast("double")) / 86400).cast("float"))
        .groupBy("user_id")
        .agg(F.sort_array(F.collect_list(F.struct("rank", "track_id", "age_days"))).alias("_recent"))
        .select(
            "user_id",
            F.transform("_recent", lambda r: r["track_id"]).alias("recent_tracks"),
            F.transform("_recent", lambda r: r["age_days"]).alias("recent_age_days"),
        )
    )

    genre_counts = positives.groupBy("user_id", "genre").agg(F.count("*").alias("n"))
    user_total = Window.partitionBy("user_id")
    genres = (
        genre_counts.withColumn("share", F.col("n") / F.sum("n").over(user_total))
        .groupBy("user_id")
        .agg(F.sort_array(F.collect_list(F.struct(-F.col("share"), F.col("genre"), F.col("share")))).alias("_g"))
        .select("user_id", F.transform("_g", lambda g: F.struct(g["genre"].alias("genre"), g["share"].alias("share"))).alias("genre_share"))
    )

    artist_counts = positives.groupBy("user_id", "artist_id").agg(F.count("*").alias("n"))
    artist_rank = Window.partitionBy("user_id").orderBy(F.col("n").desc(), "artist_id")
    artists = (
        artist_counts.withColumn("rank", F.row_number().over(artist_rank))
        .where(F.col("rank") <= rules.top_artists)
        .groupBy("user_id")
        .agg(F.sort_array(F.collect_list(F.struct("rank", "artist_id"))).alias("_a"))
        .select("user_id", F.transform("_a", lambda a: a["artist_id"]).alias("top_artists"))
    )

    habits = (
        positives.join(track_stats.select("track_id", "popularity_percentile"), "track_id")
        .groupBy("user_id")
        .agg(F.avg("popularity_percentile").alias("mean_popularity_percentile"))
    )

    level = (
        F.when(F.col("positives") == 0, "none")
        .when(F.col("positives") <= rules.light_max_positives, "light")
        .when(F.col("positives") <= rules.medium_max_positives, "medium")
        .otherwise("heavy")
    )
    profiles = (
        directory.join(activity, "user_id", "left")
        .join(recent, "user_id", "left")
        .join(genres, "user_id", "left")
        .join(artists, "user_id", "left")
        .join(habits, "user_id", "left")
        .fillna({"events": 0, "positives": 0, "weeks_active": 0})
        .withColumn("history_level", level)
    )
    for name, element in (("recent_tracks", "bigint"), ("recent_age_days", "float"), ("top_artists", "bigint")):
        profiles = profiles.withColumn(name, F.coalesce(F.col(name), F.array().cast(f"array<{element}>")))
    empty_genres = F.array().cast("array<struct<genre:string,share:double>>")
    profiles = profiles.withColumn("genre_share", F.coalesce(F.col("genre_share"), empty_genres))
    return profiles.select(*USER_PROFILE_COLUMNS)
