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

from dw_assets.embeddings.vector_table import TRACK_VECTORS_SCHEMA, track_vectors_of, track_vectors_table
from dw_assets.lake.storage import Artifact

ASSET = "audio_vectors"
AUDIO_VECTORS_SCHEMA = TRACK_VECTORS_SCHEMA


def audio_vectors_table(embedded: DataFrame, version: str) -> DataFrame:
    """The ``audio_vectors`` asset from ``audio_spark.embedded_frame`` rows: the usable clips' vectors,
    sorted by track_id (a range-partitioned sort on the executors). Persist ``embedded`` first: the
    sort's sampling pass would read and embed the clips once more."""
    return track_vectors_table(embedded.where(F.col("problem").isNull()), version)


def audio_features_table(rows: DataFrame, encoder_version: str) -> DataFrame:
    """The ``audio_features`` asset: track_id, location, features (the encoder's output: the embedding head's
    input) of usable clips, stamped with the encoder's version and sorted by track_id on the executors (persist
    ``rows`` first when computing them is costly). A later week with the same encoder embeds only the clips this
    table lacks and refits the head on it. 100 M x 128 float32 = 51 GB at the target, read only by the next
    week's audio step, on the executors."""
    return (rows.select(F.col("track_id").cast("long"), F.col("location").cast("string"),
                        F.col("features").cast("array<float>"), F.lit(encoder_version).alias("encoder_version"))
            .orderBy("track_id"))


def audio_vectors_of(source: DataFrame | pd.DataFrame | Artifact,
                     track_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(track ids int64[n] ascending, vectors float32[n, d]) of ``track_ids`` (every track's when None):
    ``vector_table.track_vectors_of`` of the ``audio_vectors`` table (or an ``audio_embeddings`` artifact
    that still carries ``ids.npy``/``vectors.npy``). Every track is 100 M x 32 float32 = 12.8 GB at the
    target, so readers that need only some (the cold pool) pass them."""
    return track_vectors_of(source, ASSET, track_ids)
