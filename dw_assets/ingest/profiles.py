"""Gold: per-track statistics and per-user profiles over the trailing history window."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from dw_assets.calendar import week_bounds


@dataclass(frozen=True)
class ProfileRules:
    recent_tracks: int = 50
    top_artists: int = 10
    light_max_positives: int = 20
    medium_max_positives: int = 100
    saved_tracks: int = 50  # last distinct saved tracks kept per user
    early_skipped_tracks: int = 50  # last distinct early-skipped (never positive) tracks kept per user
    # Upper bound of an estimated Beta prior strength (pseudo-plays): reached when rates vary no more
    # than their sampling noise, i.e. the data says "trust the prior".
    max_prior_strength: float = 1_000.0


TRACK_STATS_COLUMNS = [
    "track_id", "artist_id", "genre", "release_date", "age_days", "is_new_release", "plays", "listeners",
    "positives", "saves", "plays_last_week", "early_skip_rate", "skip_rate", "save_rate",
    "popularity_percentile", "is_cold",
]
USER_PROFILE_COLUMNS = [
    "user_id", "country", "signup_date", "birth_year", "is_new_user", "events", "positives",
    "weeks_active", "last_active", "history_level", "recent_tracks", "recent_age_days",
    "genre_share", "top_artists", "mean_popularity_percentile", "saved_tracks", "early_skipped_tracks",
    "user_save_rate", "user_skip_rate", "user_early_skip_rate", "genre_outcomes",
]
# Outcome counts of a user's plays (name, interactions flag), and the shrunk rate each one gives.
OUTCOMES = (("saves", "saved"), ("skips", "is_skip"), ("early_skips", "is_early_skip"))
OUTCOME_RATES = {"saves": "save_rate", "skips": "skip_rate", "early_skips": "early_skip_rate"}


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


def exact_mean(column: str) -> Column:
    """The mean of a double column, summed exactly (as decimal(38, 18)), so it does not depend on the order
    a shuffle delivers partial sums in: on two executors a double sum's last bits follow block arrival."""
    return F.avg(F.col(column).cast("decimal(38,18)")).cast("double")


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
    """One row per user in the directory; users without history get empty arrays.

    Beside the taste summary (last positives, genre mix, top artists, popularity habit): the last saved
    and early-skipped tracks (what the user loved and rejected, for contrastive taste) and the outcome
    rates per user and per (user, genre) (``outcome_profiles``). Size at the target: 500 M rows of a few
    hundred ids each, built in Spark from ~10^11 window interactions.
    """
    _, end = week_bounds(week)
    end_ts = F.lit(end)
    activity = interactions.groupBy("user_id").agg(
        F.count("*").alias("events"),
        F.sum(F.col("is_positive").cast("long")).alias("positives"),
        F.countDistinct(F.date_trunc("week", "ts")).alias("weeks_active"),
        F.max("ts").alias("last_active"),
    )
    positives = interactions.where("is_positive")

    # Each (user, track)'s last positive, save and early skip: one shuffle of the window feeds the
    # recent, saved and early-skipped lists below.
    pairs = interactions.groupBy("user_id", "track_id").agg(
        F.max(F.when(F.col("is_positive"), F.col("ts"))).alias("positive_ts"),
        F.max(F.when(F.col("saved"), F.col("ts"))).alias("saved_ts"),
        F.max(F.when(F.col("is_early_skip"), F.col("ts"))).alias("early_skip_ts"),
    )
    # Last N distinct positive tracks, newest first, with their age for recency weights.
    latest = pairs.where(F.col("positive_ts").isNotNull()).select("user_id", "track_id", F.col("positive_ts").alias("ts"))
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
        .agg(exact_mean("popularity_percentile").alias("mean_popularity_percentile"))
    )

    # What the user saved, and what they rejected within seconds and never came back to like.
    saved = _last_distinct(pairs.where(F.col("saved_ts").isNotNull())
                           .select("user_id", "track_id", F.col("saved_ts").alias("ts")),
                           rules.saved_tracks, "saved_tracks")
    rejected = pairs.where(F.col("early_skip_ts").isNotNull() & F.col("positive_ts").isNull())
    skipped = _last_distinct(rejected.select("user_id", "track_id", F.col("early_skip_ts").alias("ts")),
                             rules.early_skipped_tracks, "early_skipped_tracks")
    outcomes, prior = outcome_profiles(interactions, rules)

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
        .join(saved, "user_id", "left")
        .join(skipped, "user_id", "left")
        .join(outcomes, "user_id", "left")
        .crossJoin(F.broadcast(prior.select(*[F.col(f"m_{n}") for n, _ in OUTCOMES])))
        .fillna({"events": 0, "positives": 0, "weeks_active": 0})
        .withColumn("history_level", level)
    )
    for name, element in (("recent_tracks", "bigint"), ("recent_age_days", "float"), ("top_artists", "bigint"),
                          ("saved_tracks", "bigint"), ("early_skipped_tracks", "bigint")):
        profiles = profiles.withColumn(name, F.coalesce(F.col(name), F.array().cast(f"array<{element}>")))
    empty_genres = F.array().cast("array<struct<genre:string,share:double>>")
    profiles = profiles.withColumn("genre_share", F.coalesce(F.col("genre_share"), empty_genres))
    profiles = profiles.withColumn("genre_outcomes", F.coalesce(F.col("genre_outcomes"), F.array().cast(GENRE_OUTCOME_TYPE)))
    for name, _ in OUTCOMES:  # a user without plays: the catalog's rate (null only when nobody played)
        rate = f"user_{OUTCOME_RATES[name]}"
        profiles = profiles.withColumn(rate, F.coalesce(F.col(rate), F.col(f"m_{name}")))
    return profiles.select(*USER_PROFILE_COLUMNS)


GENRE_OUTCOME_TYPE = ("array<struct<genre:string,plays:bigint,saves:bigint,skips:bigint,early_skips:bigint,"
                      "save_rate:double,skip_rate:double,early_skip_rate:double>>")


def _last_distinct(latest: DataFrame, n: int, name: str) -> DataFrame:
    """``(user_id, name)``: each user's last ``n`` tracks of ``latest`` (one row per (user, track), its
    ``ts``), newest first (bigint array). Size at the target: <= 50 ids per user, 500 M rows, in Spark
    (a per-user group limit before collecting)."""
    newest_first = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), "track_id")
    return (
        latest.withColumn("rank", F.row_number().over(newest_first))
        .where(F.col("rank") <= n)
        .groupBy("user_id")
        .agg(F.sort_array(F.collect_list(F.struct("rank", "track_id"))).alias("_t"))
        .select("user_id", F.transform("_t", lambda t: t["track_id"]).alias(name))
    )


def outcome_profiles(interactions: DataFrame, rules: ProfileRules) -> tuple[DataFrame, DataFrame]:
    """(outcomes, prior): each user's save / skip / early-skip rates over their plays of the window, and
    per (user, genre) the counts and the rates, Beta-shrunk in two levels.

    A user's rate shrinks toward the catalog's (the rate over every play of the window), a (user,
    genre) rate toward the user's own: a genre heard twice says little, and the user's other genres
    say more about them than the catalog does. Each level's prior strength (pseudo-plays) follows from
    the data by moments: the spread of the rates that sampling noise does not explain,
    m (1 - m) / var - 1 (``_strength``), so a world where users differ little by genre shrinks hard.

    outcomes: ``user_id, user_save_rate, user_skip_rate, user_early_skip_rate`` (double) and
    ``genre_outcomes`` (``GENRE_OUTCOME_TYPE``, sorted by genre; null genres left out) for users with
    plays; prior: one row, ``m_<outcome>`` (catalog rate), ``k_user_<outcome>``, ``k_genre_<outcome>``.
    Size at the target: 12 weeks of interactions (~10^11 rows) -> ~500 M x (genres heard) cells, then
    one row per user, in Spark; the prior is a one-row aggregate, broadcast back (never collected).
    """
    names = [n for n, _ in OUTCOMES]
    cells = interactions.groupBy("user_id", "genre").agg(
        F.count(F.lit(1)).alias("plays"), *[F.sum(F.col(flag).cast("long")).alias(n) for n, flag in OUTCOMES])

    def square(name: str):  # x^2 / n: summed, the play-weighted spread of x / n
        return F.col(name).cast("double") ** 2 / F.col("plays")

    users = cells.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("genre", "plays", *names))).alias("_cells"),
        F.count(F.lit(1)).alias("_n_cells"),
        *[F.sum(square(n)).alias(f"_cq_{n}") for n in names],
        *[F.sum(c).alias(c) for c in ("plays", *names)],
    )
    sums = users.agg(
        F.sum("plays").cast("double").alias("n"), F.count(F.lit(1)).cast("double").alias("u"),
        F.sum("_n_cells").cast("double").alias("c"),
        *[F.sum(n).cast("double").alias(f"x_{n}") for n in names],
        *[F.sum(square(n)).alias(f"uq_{n}") for n in names],
        *[F.sum(f"_cq_{n}").alias(f"cq_{n}") for n in names],
    )
    strengths = []
    for name in names:
        m = F.col(f"x_{name}") / F.col("n")
        noise = m * (1 - m)
        # sum_u n_u (r_u - m)^2 = sum x_u^2 / n_u - m^2 N, of which each user's sampling noise is ~m (1 - m)
        user_var = _safe_ratio(F.col(f"uq_{name}") - m * m * F.col("n") - F.col("u") * noise, F.col("n") - F.col("u"))
        # sum_cells n (r_ug - r_u)^2 = sum x_ug^2 / n_ug - sum x_u^2 / n_u, noise ~ m (1 - m) per extra cell
        extra = F.col("c") - F.col("u")
        genre_var = _safe_ratio(F.col(f"cq_{name}") - F.col(f"uq_{name}") - extra * noise, F.col("n") - extra)
        strengths += [m.alias(f"m_{name}"), _strength(m, user_var, rules.max_prior_strength).alias(f"k_user_{name}"),
                      _strength(m, genre_var, rules.max_prior_strength).alias(f"k_genre_{name}")]
    prior = sums.select(*strengths)

    shrunk = users.crossJoin(F.broadcast(prior))
    for n in names:
        shrunk = shrunk.withColumn(f"user_{OUTCOME_RATES[n]}", (F.col(n) + F.col(f"k_user_{n}") * F.col(f"m_{n}"))
                                   / (F.col("plays") + F.col(f"k_user_{n}")))

    def cell(c):
        return F.struct(
            c["genre"].alias("genre"), *[c[k].cast("long").alias(k) for k in ("plays", *names)],
            *[((c[n] + F.col(f"k_genre_{n}") * F.col(f"user_{OUTCOME_RATES[n]}")) / (c["plays"] + F.col(f"k_genre_{n}")))
              .alias(OUTCOME_RATES[n]) for n in names],
        )

    known = F.filter("_cells", lambda c: c["genre"].isNotNull())
    outcomes = shrunk.select("user_id", *[f"user_{OUTCOME_RATES[n]}" for n in names],
                             F.transform(known, cell).alias("genre_outcomes"))
    return outcomes, prior


def _safe_ratio(numerator, denominator):
    """numerator / denominator, null where the denominator is not positive (ANSI division would raise)."""
    return F.when(denominator > 0, numerator / F.when(denominator > 0, denominator))


def _strength(mean, var, cap: float):
    """Method-of-moments strength of a Beta with this mean and between-unit variance, in [1, cap]; ``cap``
    where the variance is not above the noise (or unknown)."""
    raw = mean * (1 - mean) / F.when(var > 0, var) - 1
    return F.coalesce(F.least(F.greatest(raw, F.lit(1.0)), F.lit(float(cap))), F.lit(float(cap)))
