"""The week's ranking on Spark, Dagster-free: the ranker's training sample and every user's playlist.

The assets (``ranking/assets.py``) and the evaluation's control arm call these functions. Nothing
here brings a user- or event-scale table to the driver: the driver holds the models, the
per-track tables (catalog, fallback pools), aggregates, and the ranker's training sample, whose
users are drawn in Spark by a seeded hash and capped in ``RankerConfig`` (``sample_users``,
``sample_rows``, both lowered to ``DW_DRIVER_ROW_LIMIT`` by ``driver_guard.bounded``).

Sizes at the target (500 M users, 100 M tracks, ~500 candidates per user, ~40 events per user
and week): candidates 250 G rows, a week's interactions 20 G rows, a 12-week window 240 G rows,
earlier playlists 12 x 15 G rows: all stay on the executors. The driver receives: the sampled
training rows (<= ``sample_rows``, 10 M by default: ~1.5 GB of features), the fallback pool
(countries x ``fallback_per_country`` rows, ~60 k), the global top tracks (``fallback_per_country``
rows) and a handful of counts.

How the ranking model set (``PlaylistModels``) reaches the workers (``build_playlists``): one Spark
broadcast of its bytes (one copy per executor), and one copy per host of plain files in the host cache
(``dw_assets.lake.host_cache``): the first Python worker of a host that needs the set unpacks the broadcast
once (``PlaylistModels.unpack``: the feature context's and the track table's arrays as ``.npy``, the ranker,
fallback pool and re-ranking config as shipped); every worker then memory-maps those arrays
(``PlaylistModels.open``), so their pages are shared through the OS page cache, and a worker that finds the
host's copy never reads the broadcast. At 100 M tracks (dim 64, audio dim 32) the context is ~75 GB: the
item2vec, two-tower and audio track vectors 25.6 + 25.6 + 12.8 GB, ids and per-track columns ~12 GB
(``track_features`` 17 float32 = 6.8 GB), the artist centroids 384 B per artist. Per host: ~75 GB of local
disk, mapped once whatever its cores (before: one unpickled copy per Python worker). The track table
(``playlists.TrackTable``: ``TRACK_TABLE`` of 100 M tracks as six column files, ~3.3 GB; it was ~9 GB per
worker as pandas) is mapped the same way, and looked up by binary search, not joined per batch. What each
worker still reads for itself: the ranker (a few MB of trees) and the fallback pool (countries x
``fallback_per_country`` rows).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame, Window
from pyspark.sql.utils import AnalysisException

from dw_assets.calendar import week_start
from dw_assets.embeddings.audio_table import audio_vectors_of
from dw_assets.embeddings.user_tower import vectors_of
from dw_assets.embeddings.vector_table import track_vectors_of
from dw_assets.ingest.spark import load_once, map_user_batches, payload_key
from dw_assets.lake import host_cache
from dw_assets.lake.driver_guard import bounded, to_driver
from dw_assets.lake.storage import Artifact
from dw_assets.ranking.features import (
    DISCOVERY_CONTEXT,
    DISCOVERY_LIST_SIZE,
    FEATURE_NAMES,
    FIRST_MONDAY,
    SOURCES,
    USER_COLUMNS,
    FeatureContext,
    propensity_from_counts,
)
from dw_assets.ranking.playlists import (
    CANDIDATE_ARRAYS,
    PLAYLIST_SPARK_SCHEMA,
    TRACK_TABLE,
    PlaylistModels,
    pool_from_counts,
    rank_users,
)
from dw_assets.ranking.ranker import RankerConfig, TrainedRanker
from dw_assets.ranking.rerank import FALLBACK_SOURCE, RerankConfig
from dw_assets.versioning import VersionMismatch

HASH_BITS = 53  # a double holds 53 bits exactly: the hash as a number in [0, 1)
TRAINING_SAMPLE_SALT = 2  # RankerConfig.seed + 2: apart from the validation (seed) and user-cap (seed + 1) hashes
# The outcome columns grade a heard track for label_scheme="outcome" (features.outcome_grades).
PLAY_COLUMNS = ["user_id", "track_id", "ts", "is_positive", "saved", "is_early_skip", "is_skip", "context",
                "position"]
STORED_ORDER = ("_stored_file", "_stored_row")


def hash_unit(column: str, salt: int):
    """A seeded pseudo-random number in [0, 1) per value of ``column`` (Spark's xxhash64 of the value and
    the salt): the same on every executor, in every run and whatever the partitioning."""
    mask = (1 << HASH_BITS) - 1
    return F.xxhash64(F.col(column), F.lit(int(salt))).bitwiseAND(F.lit(mask)) / float(1 << HASH_BITS)


def sample_users(users: DataFrame, cap: int, salt: int, column: str = "user_id") -> DataFrame | None:
    """The ``cap`` users (distinct ``column`` values) with the lowest seeded hash, as a one-column Spark
    frame; None when there are no more than ``cap`` (every user is in the sample). A top-k on the
    executors: each task keeps its ``cap`` lowest, one task merges them."""
    users = users.select(column).distinct()
    if users.count() <= cap:
        return None
    return users.select(column, hash_unit(column, salt).alias("_h")).orderBy("_h", column).limit(cap).select(column)


def stored_order(frame: DataFrame) -> DataFrame:
    """``frame`` with the file and row each row was read from: collected samples keep the stored order
    (what the pandas read of the partition had), so the ranker sees its rows in the same order."""
    try:
        return frame.select("*", F.col("_metadata.file_path").alias(STORED_ORDER[0]),
                            F.col("_metadata.row_index").alias(STORED_ORDER[1]))
    except AnalysisException:  # not read from files (built in a test): user and track order
        return frame.select("*", F.lit("").alias(STORED_ORDER[0]), F.lit(0).cast("long").alias(STORED_ORDER[1]))


@dataclass
class RankerTrainingSample:
    """The ranker's training inputs of one week w on the driver: w's candidates of the sampled users
    (stored order), their week-(w+1) plays of those candidates, their week-w profiles and, for
    ``training_rows="all"``, the position propensity of every user's lists (a Spark aggregate)."""

    candidates: pd.DataFrame
    plays: pd.DataFrame
    profiles: pd.DataFrame
    propensity: np.ndarray | None
    users: int  # users with candidates in the week, all of them
    sampled_users: int


@dataclass(frozen=True)
class LabelledWeek:
    """One week w of the ranker's training pool, on Spark: w's candidates and profiles, and week w+1's
    interactions (the labels)."""

    candidates: DataFrame
    interactions: DataFrame
    user_profiles: DataFrame


POOL_COLUMN = "_pool"  # which pooled week a row is of: 0 = the newest (W-1), 1 = W-2, ...


def ranker_training_sample(candidates: DataFrame, interactions: DataFrame, user_profiles: DataFrame,
                           config: RankerConfig) -> RankerTrainingSample:
    """:func:`ranker_training_samples` of one week: candidates of week W-1, interactions of week W, profiles of W-1."""
    return ranker_training_samples([LabelledWeek(candidates, interactions, user_profiles)], config)[0]


def ranker_training_samples(weeks: list[LabelledWeek], config: RankerConfig) -> list[RankerTrainingSample]:
    """Draw the ranker's training rows of every pooled week in Spark, then collect only those; one
    sample per week, in the order given (newest first).

    Per week at the target: candidates 250 G rows, the labelling week's interactions 20 G, profiles
    500 M, all read on Spark. The caps hold for the whole pool: (user, week) pairs are drawn by the
    user's seeded hash (the same users in every week, lowest hash first; ties by user, then the newer
    week) up to ``sample_users`` (so at most that many profile rows come), and ``sample_rows`` caps the
    candidate and play rows of all weeks together (whole users dropped from the highest hash down); both
    lowered by ``bounded``. With ``training_rows="exposed"`` only the candidates heard in the labelling
    week come (the only rows ``training_examples`` keeps), and the plays are only those of candidate
    pairs. With every user inside the caps (the demo) nothing is dropped. One week gives exactly the
    sample the ranker trained on before weeks were pooled.
    """
    keys, pair = ["user_id", "track_id"], ["user_id", POOL_COLUMN]
    salt = config.seed + TRAINING_SAMPLE_SALT
    # The file columns exist only before any projection: stored order per week, then the union.
    candidates = _union([stored_order(week.candidates).drop("model_version").withColumn(POOL_COLUMN, F.lit(index))
                         for index, week in enumerate(weeks)])
    pairs = candidates.select(*pair).distinct()
    per_week = {int(row[POOL_COLUMN]): int(row["count"]) for row in pairs.groupBy(POOL_COLUMN).count().collect()}
    cap = bounded(config.sample_users)
    if sum(per_week.values()) > cap:  # a top-k on the executors: each task keeps its cap lowest
        chosen = (pairs.select(*pair, hash_unit("user_id", salt).alias("_h"))
                  .orderBy("_h", "user_id", POOL_COLUMN).limit(cap).select(*pair))
        candidates = candidates.join(chosen, pair, "left_semi")
    interactions = _union([week.interactions.select(*PLAY_COLUMNS).withColumn(POOL_COLUMN, F.lit(index))
                           for index, week in enumerate(weeks)])
    plays = interactions.join(candidates.select(*keys, POOL_COLUMN), [*keys, POOL_COLUMN], "left_semi")
    if config.training_rows == "exposed":
        candidates = candidates.join(plays.select(*keys, POOL_COLUMN).distinct(), [*keys, POOL_COLUMN], "left_semi")
    # Persisted: the cap's counts, both collects and each week's users read them (each a pass over the weeks'
    # candidates and labelling plays otherwise; on the demo's week the step's sample took 47 s, now 27 s).
    cached = [candidates.persist(), plays.persist()]
    candidates, plays = _cap_rows(*cached, bounded(config.sample_rows), salt)
    collected = to_driver(candidates.orderBy(POOL_COLUMN, *STORED_ORDER, *keys), "ranker_rows").drop(
        columns=list(STORED_ORDER))
    played = to_driver(plays.orderBy(POOL_COLUMN, *keys, "ts"), "ranker_rows")
    samples = []
    for index, week in enumerate(weeks):
        rows = collected[collected[POOL_COLUMN] == index].drop(columns=POOL_COLUMN).reset_index(drop=True)
        heard = played[played[POOL_COLUMN] == index].drop(columns=POOL_COLUMN).reset_index(drop=True)
        # One collect per week: the weeks' profile tables need not share a schema. Pairs <= sample_users.
        users = candidates.where(F.col(POOL_COLUMN) == index).select("user_id").distinct()
        profiles = to_driver(week.user_profiles.join(users, "user_id", "left_semi").orderBy("user_id"),
                             "user_profiles")
        propensity = (spark_position_propensity(week.interactions, min_propensity=config.min_propensity)
                      if config.training_rows == "all" else None)
        samples.append(RankerTrainingSample(rows, heard, profiles, propensity, per_week.get(index, 0),
                                            int(rows["user_id"].nunique())))
    for frame in cached:
        frame.unpersist()
    return samples


def _union(frames: list[DataFrame]) -> DataFrame:
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    return union


def _cap_rows(candidates: DataFrame, plays: DataFrame, cap: int, salt: int) -> tuple[DataFrame, DataFrame]:
    """Keep whole users, lowest hash first, while their candidate and play rows fit in ``cap``."""
    per_user = (candidates.groupBy("user_id").count().unionByName(plays.groupBy("user_id").count())
                .groupBy("user_id").agg(F.sum("count").alias("rows")))
    total = per_user.agg(F.sum("rows")).first()[0] or 0
    if total <= cap:
        return candidates, plays
    # One row per sampled user (<= sample_users): a bounded table.
    counts = to_driver(per_user.select("user_id", "rows", hash_unit("user_id", salt).alias("_h")), "ranker_rows")
    counts = counts.sort_values(["_h", "user_id"], kind="stable")
    kept = counts.loc[counts["rows"].cumsum().to_numpy() <= cap, ["user_id"]]
    kept = candidates.sparkSession.createDataFrame(kept.astype({"user_id": "int64"}), "user_id long")
    return candidates.join(kept, "user_id", "left_semi"), plays.join(kept, "user_id", "left_semi")


def spark_position_propensity(interactions: DataFrame, list_size: int = DISCOVERY_LIST_SIZE,
                              min_propensity: float = 0.05, context: str = DISCOVERY_CONTEXT) -> np.ndarray:
    """``features.position_propensity`` as a Spark aggregate: lists per position (``list_size`` counts)."""
    week = F.floor((F.unix_timestamp("ts") - int(FIRST_MONDAY.timestamp())) / (7 * 86400))
    logged = (interactions.where((F.col("context") == context) & F.col("position").isNotNull()
                                 & F.col("position").between(1, list_size))
              .select("user_id", F.col("position").cast("long").alias("position"), week.alias("week")).distinct())
    rows = logged.groupBy("position").count().collect()
    counts = np.zeros(list_size, np.float64)
    for row in rows:
        counts[int(row["position"]) - 1] = float(row["count"])
    return propensity_from_counts(counts, min_propensity)


# ---------------------------------------------------------------------------- the week's playlists


def user_vectors_of(user_embeddings: DataFrame, users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two-tower user vectors (ids ascending, float32[n, dim]) of ``users`` (a bounded sample: the
    ranker's), joined in Spark so only theirs reach the driver; every user's when None (refused above
    ``DW_DRIVER_ROW_LIMIT``). The one place the ranking reads user vectors (with :func:`user_vector_table`)."""
    return vectors_of(user_embeddings, users)


def user_vector_table(spark, user_embeddings: DataFrame) -> DataFrame:
    """user_id, user_vector (500 M rows at the target): the ``user_embeddings`` table, left in Spark.
    ``spark`` is unused (kept for the callers)."""
    return user_embeddings.select(F.col("user_id").cast("long").alias("user_id"),
                                  F.col("user_vector").cast("array<float>").alias("user_vector"))


def track_context(track_stats: pd.DataFrame, item2vec: pd.DataFrame | Artifact, audio: DataFrame | Artifact,
                  tracks: pd.DataFrame | Artifact) -> FeatureContext:
    """The week's track-side feature context (catalog-sized: shipped to every executor). ``audio``: the
    ``audio_vectors`` table (every track's row comes to the driver: 12.8 GB at 100 M tracks) or an
    artifact that carries the vectors."""
    return FeatureContext.build(None, track_stats, track_vectors_of(item2vec, "item2vec_embeddings"),
                                audio_vectors_of(audio), None,
                                track_vectors_of(tracks, "track_embeddings")).without_users()




# ---------------------------------------------------------------------------- the first week's stand-in


class RetrievalOrder:
    """The stand-in ranker of the first landed week (no week before it to learn from): each candidate's
    score is 1 / its best rank over the retrieval sources, so the re-ranking starts from retrieval order.
    Same interface as ``TrainedRanker.predict``; per candidate, no state (nothing to ship)."""

    def predict(self, features: pd.DataFrame, num_threads: int = 1, engine: str = "auto") -> np.ndarray:
        ranks = features[[f"{source}_rank" for source in SOURCES]].to_numpy(np.float64)
        best = np.fmin.reduce(ranks, axis=1) if len(ranks) else np.zeros(0)  # NaN: not from that source
        return np.where(np.isfinite(best) & (best > 0), 1.0 / np.where(best > 0, best, 1.0), 0.0).astype(np.float32)


def stand_in_ranker(week: str, reason: str) -> TrainedRanker:
    """The ``ranker_model`` of a week without a week before it: no trees, ``report["stand_in"]`` set.
    :func:`build_playlists` scores with :class:`RetrievalOrder` for it (and so does the evaluation's
    control arm, which goes through the same function)."""
    return TrainedRanker("", list(FEATURE_NAMES), {"stand_in": True, "stand_in_reason": reason,
                                                   "stand_in_order": "retrieval", "week": week})


def is_stand_in(ranker: TrainedRanker) -> bool:
    """Whether ``ranker`` is :func:`stand_in_ranker`'s (no trees: scored in retrieval order)."""
    return bool(ranker.report.get("stand_in"))


def _scoring(models: PlaylistModels) -> PlaylistModels:
    """``models`` with the stand-in's trees-free ranker replaced by :class:`RetrievalOrder`."""
    if is_stand_in(models.ranker):
        models.ranker = RetrievalOrder()
    return models


def shipped_playlist_models(key: str, blob: Callable[[], bytes], cache_root: str | Path | None = None
                            ) -> PlaylistModels:
    """The ranking model set of digest ``key`` from this host's cache, its feature context memory-mapped and a
    stand-in's ranker swapped for :class:`RetrievalOrder`; ``blob()`` (the broadcast's value:
    ``PlaylistModels.to_bytes``) is called only by the one process that writes the host's copy."""
    folder = host_cache.materialize(key, lambda target: PlaylistModels.unpack(blob(), target), cache_root)
    return _scoring(PlaylistModels.open(folder))


@dataclass(frozen=True)
class PlaylistSettings:
    rerank: RerankConfig
    fallback_per_country: int = 300
    users_per_task: int = 2_000  # Spark tasks hold this many users' candidates at once


def build_playlists(
    spark, week: str, settings: PlaylistSettings, candidates: DataFrame, ranker: TrainedRanker,
    user_profiles: DataFrame, user_directory: DataFrame, track_stats: pd.DataFrame, context: FeatureContext,
    user_vectors: DataFrame, interactions: DataFrame, earlier_playlists: DataFrame | None,
    with_ranker_order: bool = False,
) -> tuple[DataFrame, DataFrame | None, dict]:
    """Every user's playlist for ``week`` on Spark (persisted), the ranker's own order of every user's
    candidates when ``with_ranker_order`` (persisted; else None), and run statistics for metadata.

    The embeddings, ranker and candidates are one model set: this week's for ``ranked_playlists``,
    last week's for the evaluation's control arm. ``context``: the track-side feature context;
    ``user_vectors``: user_id, user_vector (500 M rows at the target); ``interactions``: the 12-week
    window; ``earlier_playlists``: earlier weeks' playlists (None: no earlier week). The driver
    holds the catalog-sized models (~100 M tracks: the shipped blob, ~85 GB with the track table) and the
    fallback pool; each executor host holds one copy of the models on local disk, memory-mapped by all its
    Python workers (``shipped_playlist_models``, the module docstring). The ranker order
    (``playlists.ranker_order_rows``: the best candidates by ``list_score`` with the hygiene only, the same
    rows and schema as a playlist) comes from the scores the playlists are built from, in the same tasks:
    another 15 G rows at the target, written from the executors like the playlists.
    """
    started = time.perf_counter()
    rerank = settings.rerank
    models = playlist_models(week, settings, ranker, user_directory, track_stats, context, interactions)
    posteriors = exploration_posteriors(earlier_playlists, interactions, rerank, week)
    users = playlist_users(user_profiles, user_directory, user_vectors, interactions, candidates, posteriors)
    n_users = user_profiles.count()
    blob = models.to_bytes()
    key, shipped = payload_key(blob), spark.sparkContext.broadcast(blob)

    def run_batch(batch: pd.DataFrame) -> pd.DataFrame:
        shipped_models = load_once(key, lambda: shipped_playlist_models(key, lambda: shipped.value))
        if not with_ranker_order:
            return rank_users(batch, shipped_models, week)
        orders: list[pd.DataFrame] = []
        lists = rank_users(batch, shipped_models, week, orders=orders)
        return pd.concat([lists.assign(in_ranker_order=False), *[o.assign(in_ranker_order=True) for o in orders]],
                         ignore_index=True)

    partitions = max(1, -(-n_users // settings.users_per_task))
    schema = PLAYLIST_SPARK_SCHEMA + (", in_ranker_order boolean" if with_ranker_order else "")
    # Persisted before the sort: a range-partitioned sort first samples its input, which would rank every
    # user once for the sample and once more for the sort (measured on the demo: 45 s + 39 s).
    scored = map_user_batches(users, run_batch, schema, partitions).persist()
    ranked, order = scored, None
    if with_ranker_order:
        order = (scored.where(F.col("in_ranker_order")).drop("in_ranker_order").withColumn("week", F.lit(week))
                 .orderBy("user_id", "position").persist())
        ranked = scored.where(~F.col("in_ranker_order")).drop("in_ranker_order")
    playlists = ranked.withColumn("week", F.lit(week)).orderBy("user_id", "position").persist()
    per_user = playlists.groupBy("user_id").agg(
        F.count("*").alias("slots"), F.sum(F.col("is_exploration").cast("int")).alias("exploration"),
        F.max((F.col("source") == FALLBACK_SOURCE).cast("int")).alias("fallback"))
    totals = per_user.agg(F.count("*").alias("users"), F.sum("slots").alias("rows"),
                          F.sum((F.col("slots") < rerank.playlist_size).cast("int")).alias("short"),
                          F.sum("exploration").alias("exploration"), F.sum("fallback").alias("fallback")).first()
    order_users = order.select("user_id").distinct().count() if order is not None else 0  # fills its cache
    scored.unpersist()  # the aggregates above have filled the sorted caches
    shipped.unpersist()
    served = int(totals["users"] or 0)
    elapsed = time.perf_counter() - started
    return playlists, order, {
        "users": served,
        "users_with_short_playlists": int(totals["short"] or 0) + int(n_users - served),
        "exploration_slots": int(totals["exploration"] or 0),
        "fallback_users": int(totals["fallback"] or 0),
        "posterior_pairs": int(posteriors.count()) if posteriors is not None else 0,
        **({"ranker_order_users": int(order_users)} if order is not None else {}),
        "users_per_s": round(served / max(elapsed, 1e-9), 1),
        "spark_cores": int(spark.sparkContext.defaultParallelism),
        "shipped_model_mb": round(len(blob) / 2**20, 1),
        "elapsed_s": round(elapsed, 1),
        **({"ranker": "stand-in: retrieval order (first landed week)"} if is_stand_in(ranker) else {}),
    }


def playlist_models(week: str, settings: PlaylistSettings, ranker: TrainedRanker, user_directory: DataFrame,
                    track_stats: pd.DataFrame, context: FeatureContext, interactions: DataFrame) -> PlaylistModels:
    """The ranking model set ``build_playlists`` ships: the context, the ranker, the track table
    (``TRACK_TABLE`` of every track) and the week's fallback pool (counted on Spark from ``interactions``
    since ``week`` started)."""
    tracks = track_stats[list(TRACK_TABLE)].sort_values("track_id").reset_index(drop=True)
    this_week = interactions.where(F.col("ts") >= F.lit(pd.Timestamp(week, tz="UTC")))
    fallback = spark_fallback_pool(this_week, user_directory, tracks, settings.fallback_per_country)
    return PlaylistModels(context=context, ranker=ranker, tracks=tracks, fallback=fallback, rerank=settings.rerank)


def spark_fallback_pool(this_week: DataFrame, user_directory: DataFrame, tracks: pd.DataFrame,
                        per_country: int = 300) -> pd.DataFrame:
    """``playlists.fallback_pool`` with the counting on Spark: distinct positive listeners per (country,
    track) and overall, of which only each country's best ``per_country`` and the global best come to
    the driver (countries x ``per_country`` rows: a per-track table)."""
    positive = this_week.where(F.col("is_positive").cast("boolean")).select("user_id", "track_id").distinct()
    directory = user_directory.select("user_id", "country")
    local = (positive.join(directory.where(F.col("country").isNotNull()), "user_id")
             .groupBy("country", "track_id").agg(F.count("*").alias("score")))
    best = Window.partitionBy("country").orderBy(F.col("score").desc(), "track_id")
    local = local.withColumn("_rank", F.row_number().over(best)).where(F.col("_rank") <= per_country).drop("_rank")
    overall = (positive.groupBy("track_id").agg(F.count("*").alias("score"))
               .orderBy(F.col("score").desc(), "track_id").limit(per_country))
    countries = directory.where(F.col("country").isNotNull()).select("country").distinct().toPandas()["country"]
    counts = local.orderBy("country", F.col("score").desc(), "track_id").toPandas()
    return pool_from_counts(counts.astype({"track_id": "int64", "score": "int64"}),
                            overall.toPandas().astype({"track_id": "int64", "score": "int64"}),
                            countries, tracks, per_country)


def exploration_posteriors(earlier_playlists: DataFrame | None, interactions: DataFrame, rerank: RerankConfig,
                           week: str) -> DataFrame | None:
    """``rerank.update_posteriors`` on Spark: Beta posteriors per (user, genre) (user-scale: they stay on
    the executors) from earlier playlists' exploration slots and the weeks they were listened to;
    None without any evidence. Sums run over each pair's sorted terms with Kahan's compensation (as
    pandas sums), so they do not depend on the partitioning."""
    if earlier_playlists is None:
        return None
    slots = (earlier_playlists.where(F.col("is_exploration").cast("boolean"))
             .select("week", "user_id", "track_id", "genre").dropDuplicates(["week", "user_id", "track_id"])
             .withColumn("listen_week", F.date_add(F.to_date("week"), 7)))
    explored = slots.select("user_id").distinct()
    # Spark truncates to the Monday that starts the week: the listening week.
    listened = (interactions.join(explored, "user_id")
                .select("user_id", "track_id", "is_positive", F.to_date(F.date_trunc("week", "ts")).alias("listen_week")))
    active = listened.select("user_id", "listen_week").distinct()
    positive = (listened.where(F.col("is_positive").cast("boolean")).select("user_id", "track_id", "listen_week")
                .distinct().withColumn("success", F.lit(1.0)))
    as_of = week_start(week).date()
    weights = [float(w) for w in np.power(rerank.posterior_decay, np.arange(rerank.posterior_window_weeks,
                                                                            dtype=np.float64))]
    age = F.floor(F.datediff(F.lit(as_of), F.col("listen_week")) / 7).cast("int")
    evidence = (slots.join(active, ["user_id", "listen_week"])
                .join(positive, ["user_id", "track_id", "listen_week"], "left")
                .withColumn("success", F.coalesce("success", F.lit(0.0)))
                .withColumn("age", age)
                .where((F.col("age") >= 0) & (F.col("age") < rerank.posterior_window_weeks))
                .withColumn("w", F.element_at(F.array(*[F.lit(w) for w in weights]), F.col("age") + 1)))
    totals = evidence.groupBy("user_id", "genre").agg(
        _kahan_sum(F.col("w") * F.col("success")).alias("successes"),
        _kahan_sum(F.col("w") * (1.0 - F.col("success"))).alias("failures"))
    return totals.select(F.col("user_id").cast("long"), F.col("genre").cast("string"),
                         (F.lit(rerank.prior_alpha) + F.col("successes")).alias("alpha"),
                         (F.lit(rerank.prior_beta) + F.col("failures")).alias("beta"))


def _kahan_sum(term):
    """Compensated sum of a group's values in ascending order: the group's order does not matter."""
    start = F.struct(F.lit(0.0).alias("s"), F.lit(0.0).alias("c"))

    def step(acc, x):
        y = x - acc["c"]
        t = acc["s"] + y
        return F.struct(t.alias("s"), ((t - acc["s"]) - y).alias("c"))

    return F.aggregate(F.array_sort(F.collect_list(term.cast("double"))), start, step, lambda acc: acc["s"])


def playlist_users(user_profiles: DataFrame, user_directory: DataFrame, user_vectors: DataFrame,
                   interactions: DataFrame, candidates: DataFrame, posteriors: DataFrame | None) -> DataFrame:
    """One row per user: profile columns, country, heard, user_vector, ``c_*`` candidate and ``p_*`` posterior arrays."""
    country = user_directory.select(F.col("user_id").cast("long"), F.col("country").cast("string"))
    heard = interactions.groupBy("user_id").agg(F.collect_set("track_id").alias("heard"))
    # Arrays of one struct list, sorted by track: the candidate columns stay aligned.
    packed = candidates.groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct(*CANDIDATE_ARRAYS))).alias("c"))
    packed = packed.select("user_id", *[F.col(f"c.{c}").alias(f"c_{c}") for c in CANDIDATE_ARRAYS])
    users = (user_profiles.select(*USER_COLUMNS)
             .join(country, "user_id", "left")
             .join(heard, "user_id", "left")
             .join(user_vectors.select("user_id", "user_vector"), "user_id", "left")
             .join(packed, "user_id", "left")
             .withColumn("heard", F.coalesce("heard", F.array().cast("array<long>"))))
    if posteriors is not None:
        post = posteriors.groupBy("user_id").agg(
            F.sort_array(F.collect_list(F.struct("genre", "alpha", "beta"))).alias("p"))
        post = post.select("user_id", *[F.col(f"p.{c}").alias(f"p_{c}") for c in ("genre", "alpha", "beta")])
        users = users.join(post, "user_id", "left")
    return users


def candidate_version(candidates: DataFrame) -> str:
    """The one model version a Spark candidates table was built with."""
    return one_version([r[0] for r in candidates.select("model_version").distinct().collect()])


def one_version(versions) -> str:
    """The single model version of a table's rows (raises if it holds several or none)."""
    versions = sorted(set(versions))
    if len(versions) != 1:
        raise VersionMismatch(f"expected one model_version in the candidates, found {versions or 'none'}")
    return versions[0]
