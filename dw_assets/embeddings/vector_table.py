"""Track vector tables: one Parquet row per track, ``track_id long, vector array<float>, model_version string``.

The embeddings of tracks (``item2vec_embeddings``, ``track_embeddings``, ``audio_vectors``) are stored
this way, not as one pickled blob: Spark joins them on the executors and writes them in part files
(no single multi-GB object). At 100 M tracks a table is 100 M x (32..65) float32 = 12.8..26 GB.

Their consumers (the ANN index, the ranker's track features, candidate sources) need them per track
on the driver, by design: ``track_vectors_of`` is the one loader, from a Spark table (only the asked-for
tracks are joined and collected), from the pandas frame the lake IO manager reads for an input annotated
``pd.DataFrame``, or from an older artifact carrying ``ids.npy``/``vectors.npy``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from dw_assets.lake.storage import Artifact, vectors_from

TRACK_VECTORS_SCHEMA = "track_id long, vector array<float>, model_version string"


def track_vectors_table(vectors: DataFrame, version: str) -> DataFrame:
    """The stored form of a Spark frame with ``track_id`` and ``vector``: cast, stamped with ``version`` and
    sorted by track_id (a range-partitioned sort on the executors; persist ``vectors`` first when computing
    it is costly, the sort samples it once more)."""
    return (vectors.select(F.col("track_id").cast("long"), F.col("vector").cast("array<float>"),
                           F.lit(version).alias("model_version"))
            .orderBy("track_id"))


def driver_vectors_table(spark, track_ids: np.ndarray, vectors: np.ndarray, version: str) -> DataFrame:
    """The stored form of vectors trained on the driver (item2vec): sorted there, handed to Spark as Arrow
    batches and written by the executors in part files."""
    order = np.argsort(np.asarray(track_ids, np.int64), kind="stable")
    frame = pd.DataFrame({"track_id": np.asarray(track_ids, np.int64)[order],
                          "vector": list(np.asarray(vectors, np.float32)[order]),
                          "model_version": version})
    return spark.createDataFrame(frame, TRACK_VECTORS_SCHEMA)


def track_vectors_of(source: DataFrame | pd.DataFrame | Artifact, asset: str,
                     track_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(track ids int64[n] ascending, vectors float32[n, d]) of ``track_ids`` (every track's when None).

    ``source``: a track vector table (Spark: the wanted ids are joined on the executors and only their rows
    come back; pandas: as read by the lake), or an artifact carrying ``ids.npy``/``vectors.npy``. Per track on
    the driver (exempt from the driver guard): readers that need only some tracks pass them."""
    wanted = None if track_ids is None else np.unique(np.asarray(track_ids, np.int64))
    if isinstance(source, Artifact):
        ids, vectors = vectors_from(source)
        keep = np.ones(len(ids), bool) if wanted is None else np.isin(ids, wanted)
        order = np.argsort(ids[keep], kind="stable")
        return ids[keep][order], vectors[keep][order]
    if isinstance(source, pd.DataFrame):
        frame = source if wanted is None else source[source["track_id"].isin(wanted)]
        return _as_arrays(frame.sort_values("track_id", kind="mergesort"), _dim_of(source))
    from dw_assets.lake.driver_guard import to_driver

    frame = source.select(F.col("track_id").cast("long"), "vector")
    if wanted is not None:
        ids = source.sparkSession.createDataFrame(pd.DataFrame({"track_id": wanted}), "track_id long")
        frame = frame.join(ids, "track_id", "left_semi")
    rows = to_driver(frame.orderBy("track_id"), asset)
    if len(rows):
        return _as_arrays(rows, 0)
    first = source.select(F.size("vector").alias("d")).limit(1).collect()  # the width of an empty selection
    return _as_arrays(rows, int(first[0]["d"]) if first else 0)


def _dim_of(frame: pd.DataFrame) -> int:
    return len(frame["vector"].iloc[0]) if len(frame) else 0


def _as_arrays(frame: pd.DataFrame, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = frame["track_id"].to_numpy(np.int64)
    vectors = (np.stack(frame["vector"].to_numpy()).astype(np.float32) if len(frame)
               else np.zeros((0, dim), np.float32))
    return ids, vectors
