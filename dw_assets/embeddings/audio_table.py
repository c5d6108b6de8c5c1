"""The ``audio_vectors`` table: the audio CNN's vector of every track with a usable clip, as Parquet.

Columns ``track_id long, vector array<float>, model_version string`` (one version: the week's
``audio_embeddings`` model), sorted by track_id, written from the executors that embedded the clips
(``audio_spark.embedded_frame``): 100 M rows x 32 float32 = 12.8 GB at the target, never on the driver
while it is written. Readers join it in Spark, or load the per-track rows they need through
``audio_vectors_of`` (the one loader: it also reads the older ``audio_embeddings`` artifact files).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from dw_assets.lake.storage import Artifact, vectors_from

ASSET = "audio_vectors"
AUDIO_VECTORS_SCHEMA = "track_id long, vector array<float>, model_version string"


def audio_vectors_table(embedded: DataFrame, version: str) -> DataFrame:
    """The ``audio_vectors`` asset from ``audio_spark.embedded_frame`` rows: the usable clips' vectors,
    sorted by track_id (a range-partitioned sort on the executors). Persist ``embedded`` first: the
    sort's sampling pass would read and embed the clips once more."""
    return (embedded.where(F.col("problem").isNull())
            .select(F.col("track_id").cast("long"), F.col("vector").cast("array<float>"),
                    F.lit(version).alias("model_version"))
            .orderBy("track_id"))


def audio_vectors_of(source: DataFrame | pd.DataFrame | Artifact,
                     track_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(track ids int64[n] ascending, vectors float32[n, d]) of ``track_ids`` (every track's when None).

    ``source``: the ``audio_vectors`` table (Spark: the wanted ids are joined on the executors and only
    their rows come back; pandas: as read by the lake), or an ``audio_embeddings`` artifact that still
    carries ``ids.npy``/``vectors.npy``. A per-track table on the driver: every track is 100 M x 32
    float32 = 12.8 GB at the target, so readers that need only some (the cold pool) pass them.
    """
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
    rows = to_driver(frame.orderBy("track_id"), ASSET)
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
