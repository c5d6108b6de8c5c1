"""The weekly audio step's clips on Spark: a bounded training sample to the driver, every track embedded
on the executors.

Why every track is embedded again each week, not only the week's uploads: the CNN is trained afresh
every week (seeded init) to regress that week's item2vec vectors, and item2vec is itself retrained
from scratch (its axes are arbitrary from one week to the next). A vector from last week's CNN lives
in last week's item2vec space: carried over, it would sit beside this week's vectors without being
comparable to them (the two-tower's audio inputs, the audio candidate source and the cold-start
neighbours all compare them), and the demo's outputs would change. So all tracks are recomputed with
the week's model, but on the executors: the driver never reads the catalog's audio.

Steps and sizes at the target (100 M tracks with a clip; 1 s clips at 8 kHz, 16 KB of int16 each):

- ``clip_frame``: (track_id, location) of every landed clip: 100 M rows (~10 GB), from the driver's
  listing (a per-track table, like the catalog) into Spark, cut in ``CLIPS_PER_PARTITION`` partitions.
- ``training_clips``: the warm tracks' clips with the ``bounded(max_training_clips)`` smallest seeded
  hashes (``samples.smallest_hashes``, a per-partition top-k): only those (track_id, location) pairs
  reach the driver, which reads their audio (100 k clips: 1.6 GB of int16 + 1 GB of spectrograms).
- ``embed_tracks``: ``mapInPandas`` reads each partition's clips on its executor (``READ_CHUNK`` clips
  at a time: ~16 MB of audio), computes spectrograms and vectors with the model broadcast as bytes
  (unpacked once per Python worker), and returns (track_id, vector, problem): 100 M x 32 float32 =
  12.8 GB of vectors, the per-track ``audio_embeddings`` artifact the driver writes. 1.6 TB of audio
  is read, all of it on the executors.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from dw_assets.embeddings.audio import AudioConfig, AudioModel, log_mel
from dw_assets.embeddings.audio_io import PROBLEM_COLUMNS, AudioBatch, load_clips
from dw_assets.embeddings.samples import smallest_hashes
from dw_assets.ingest.spark import load_once, payload_key

CLIP_SCHEMA = "track_id long, location string"
EMBEDDED_SCHEMA = "track_id long, vector array<float>, problem string, detail string, location string"
CLIPS_PER_PARTITION = 20_000  # a task's share: ~320 MB of 1 s clips, read READ_CHUNK at a time
READ_CHUNK = 1_024  # clips read, turned into spectrograms and embedded at once on an executor


@dataclasses.dataclass(frozen=True)
class ClipReader:
    """How an executor reads a landed clip: local files directly, ``s3://`` through its own boto3 client,
    built once per Python worker from the driver's S3 settings. Those travel inside the task (never in
    Spark conf or logs), credentials included, as the publish step's do: boto3 takes credentials from the
    environment only, so they are put there on the worker."""

    root: str
    s3: object | None = dataclasses.field(default=None, repr=False)  # lake.s3.S3Settings for an s3:// root

    @classmethod
    def of(cls, landing) -> ClipReader:
        if not landing.is_s3:
            return cls(landing.root)
        from dw_assets.lake.s3 import S3Settings

        return cls(landing.root, landing.s3 or S3Settings.from_env())

    def read(self):
        """location → bytes on this worker (None: local files, ``load_clips`` reads them itself)."""
        if not self.root.startswith("s3://"):
            return None
        from dw_assets.lake.landing_fs import LandingFS

        s3 = self.s3
        credentials = {"AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
                       "AWS_SESSION_TOKEN": s3.session_token}
        os.environ.update({name: value for name, value in credentials.items() if value})
        return load_once(f"landing:{self.root}", lambda: LandingFS(self.root, s3=s3)).read_location


def clip_frame(spark: SparkSession, clips: Mapping[int, str]) -> DataFrame:
    """(track_id, location) of ``clips`` as a Spark frame, hash-partitioned by track in partitions of about
    ``CLIPS_PER_PARTITION`` rows (at least the session's parallelism)."""
    frame = pd.DataFrame({"track_id": np.fromiter(clips.keys(), np.int64, len(clips)),
                          "location": pd.Series(list(clips.values()), dtype=object)})
    partitions = max(spark.sparkContext.defaultParallelism, math.ceil(len(frame) / CLIPS_PER_PARTITION))
    return spark.createDataFrame(frame, CLIP_SCHEMA).repartition(partitions, "track_id")


def training_clips(clips: DataFrame, warm_ids: np.ndarray, cap: int, seed: int) -> dict[int, str]:
    """track_id → location of the warm tracks (``warm_ids``: those with a target vector) whose seeded hash is
    among the ``bounded(cap)`` smallest: the clips the driver reads to train the CNN. A cap above the
    warm tracks' count takes them all."""
    spark = clips.sparkSession
    warm = spark.createDataFrame(pd.DataFrame({"track_id": np.unique(np.asarray(warm_ids, np.int64))}),
                                 "track_id long")
    picked = smallest_hashes(clips.join(warm, "track_id", "left_semi"), "track_id", cap, seed).toPandas()
    return dict(zip(picked["track_id"].astype("int64").tolist(), picked["location"].tolist(), strict=True))


def embed_tracks(clips: DataFrame, model: AudioModel, settings: AudioConfig, length: int,
                 reader: ClipReader) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(track_ids int64[n] ascending, unit vectors float32[n, d], problems) of every clip in ``clips``.

    Each clip is read, cut or looped to ``length`` samples (the training clips' length, so every
    executor uses the same) and embedded on the executors; unusable clips come back as problems
    (``audio_io.PROBLEM_COLUMNS``), sorted by track. A vector depends on its clip only, not on the
    partition or chunk it lands in (``AudioModel.embed`` runs fixed-shape batches), so the
    partitioning never changes the output.
    """
    spark = clips.sparkSession
    model_bytes = model.to_bytes()
    key, shipped = payload_key(model_bytes), spark.sparkContext.broadcast(model_bytes)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        loaded = load_once(key, lambda: AudioModel.from_bytes(shipped.value))
        read = reader.read()
        for batch in batches:
            for lo in range(0, len(batch), READ_CHUNK):
                chunk = batch.iloc[lo : lo + READ_CHUNK]
                paths = dict(zip(chunk["track_id"].astype("int64").tolist(), chunk["location"].tolist(), strict=True))
                yield _embedded_rows(load_clips(paths, settings, read, length=length), loaded, settings, paths)

    rows = clips.mapInPandas(run, EMBEDDED_SCHEMA).toPandas()  # track-scale: the per-track artifact's rows
    rows = rows.sort_values("track_id", kind="mergesort")
    good = rows[rows["problem"].isna()]
    d = model.network.embedding_head.out_features
    vectors = np.stack(good["vector"].to_numpy()).astype(np.float32) if len(good) else np.zeros((0, d), np.float32)
    bad = rows[rows["problem"].notna()]
    problems = pd.DataFrame({"track_id": bad["track_id"].to_numpy(np.int64), "path": bad["location"].to_numpy(),
                             "problem": bad["problem"].to_numpy(), "detail": bad["detail"].to_numpy()},
                            columns=PROBLEM_COLUMNS).astype(
        {"track_id": "int64", "path": "object", "problem": "object", "detail": "object"})
    return good["track_id"].to_numpy(np.int64), vectors, problems.reset_index(drop=True)


def _embedded_rows(batch: AudioBatch, model: AudioModel, settings: AudioConfig, paths: Mapping[int, str]) -> pd.DataFrame:
    vectors = model.embed(log_mel(batch, settings)) if len(batch.track_ids) else np.zeros((0, 0), np.float32)
    good = pd.DataFrame({"track_id": batch.track_ids, "vector": list(vectors), "problem": None, "detail": None,
                         "location": [paths[int(t)] for t in batch.track_ids]})
    bad = pd.DataFrame({"track_id": batch.problems["track_id"].to_numpy(np.int64), "vector": None,
                        "problem": batch.problems["problem"], "detail": batch.problems["detail"],
                        "location": batch.problems["path"]})
    return pd.concat([good, bad], ignore_index=True) if len(bad) else good
