"""Bounded training samples drawn in Spark by a seeded hash: only the sample reaches the driver.

A sample is the ``cap`` keys (sessions, playlists, users, tracks) with the smallest
``xxhash64(seed, key)`` — Spark's own stable hash, so the same data and seed draw the same keys on
any cluster, in any partitioning — taken with ``orderBy(...).limit(cap)``, which Spark runs as a
per-partition top-k (never a global sort of the table). Every cap goes through
``driver_guard.bounded`` so ``DW_DRIVER_ROW_LIMIT`` bounds it too. Sizes at 500 M users: the
tables read stay on the executors; the driver holds ``cap`` keys and their rows.
"""

from __future__ import annotations

import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from dw_assets.lake.driver_guard import bounded

HASH_COLUMN = "_sample_hash"


def seeded_hash(key: str, seed: int):
    """Spark column: xxhash64 of ``key`` salted with ``seed`` (stable across runs and clusters)."""
    return F.xxhash64(F.lit(int(seed)), F.col(key))


def smallest_hashes(frame: DataFrame, key: str, cap: int, seed: int, keep_hash: bool = False) -> DataFrame:
    """The rows of ``frame`` (one per ``key``) whose seeded hash is among the ``bounded(cap)`` smallest."""
    picked = frame.withColumn(HASH_COLUMN, seeded_hash(key, seed)).orderBy(HASH_COLUMN, key).limit(bounded(cap))
    return picked if keep_hash else picked.drop(HASH_COLUMN)


def sample_keys(rows: DataFrame, key: str, max_keys: int, max_rows: int, seed: int) -> list[int]:
    """Up to ``bounded(max_keys)`` values of ``key`` (e.g. users) drawn by seeded hash, cut so that their rows
    in ``rows`` total at most ``bounded(max_rows)``: whole groups (a user's whole history), never part of one.

    Spark counts rows per key; the driver gets at most ``max_keys`` (key, count) pairs and walks them in
    hash order. Returned sorted ascending.
    """
    counts = smallest_hashes(rows.groupBy(key).count(), key, max_keys, seed, keep_hash=True).toPandas()
    counts = counts.sort_values([HASH_COLUMN, key], kind="mergesort")
    within = counts["count"].cumsum().to_numpy() <= bounded(max_rows)
    return sorted(int(k) for k in counts.loc[within, key])


def rows_of(rows: DataFrame, key: str, keys: list[int], columns: list[str]) -> pd.DataFrame:
    """``columns`` of the rows of ``rows`` whose ``key`` is in ``keys`` (a bounded sample), on the driver.

    The sampled keys are broadcast (they are at most a cap, not a table); the semi-join runs on the executors.
    """
    spark = rows.sparkSession
    wanted = spark.createDataFrame(pd.DataFrame({key: pd.Series(keys, dtype="int64")}))
    return rows.join(F.broadcast(wanted), key, "left_semi").select(*columns).toPandas()


def sampled_groups(rows: DataFrame, key: str, order: list[str], value: str, cap: int, seed: int) -> pd.DataFrame:
    """``key`` and the ``value`` column of its rows in ``order`` (an array), for at most ``bounded(cap)``
    groups drawn by seeded hash; sorted by ``key`` so what the driver sees never depends on partitioning.

    One row per group crosses to the driver; the grouping and the ordering inside a group run on the
    executors (``sort_array`` of structs sorts by ``order`` then ``value``).
    """
    fields = [*order, value] if value not in order else order
    grouped = rows.groupBy(key).agg(F.sort_array(F.collect_list(F.struct(*fields))).alias("_items"))
    picked = smallest_hashes(grouped, key, cap, seed).select(key, F.col(f"_items.{value}").alias(value))
    return picked.toPandas().sort_values(key, kind="mergesort").reset_index(drop=True)


def explode_groups(groups: pd.DataFrame, key: str, value: str, position: str = "pos") -> pd.DataFrame:
    """One row per (``key``, element of ``value``) with its ``position`` in the group (0-based)."""
    lengths = groups[value].map(len).to_numpy() if len(groups) else []
    flat = groups.explode(value, ignore_index=True).dropna(subset=[value])
    out = pd.DataFrame({key: flat[key].to_numpy(), value: flat[value].astype("int64").to_numpy()})
    out[position] = [i for n in lengths for i in range(n)]
    return out
