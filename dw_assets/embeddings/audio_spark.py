"""The weekly audio step on Spark: a bounded training sample to the driver, the clips embedded and
written on the executors; only the week's uploads are read in the weeks that keep an encoder.

Why a kept encoder needs a new head each week: the embedding head regresses that week's item2vec
vectors, and item2vec is retrained from scratch every week (its axes are arbitrary from one week to
the next), so a vector from last week's head lives in last week's item2vec space and would not be
comparable with this week's (the two-tower's audio inputs, the audio candidate source and the cold-start
neighbours all compare them). The encoder's features do not have that problem: they are this table's
``audio_features``, kept per clip. So a week that keeps the week before's encoder (``kept_encoder``: it
was trained fewer than ``AudioConfig.encoder_weeks`` weeks ago, with the same settings) embeds only the
clips the stored features lack (``unembedded``: the uploads since, a re-uploaded track's new clip and the
clips that could not be read before), refits the linear head on a seeded-hash sample of warm tracks'
stored features (``refit_week``, ridge regression: milliseconds on the driver) and applies it to every
track's features on the executors (``head_vectors``). A week that trains an encoder (the first, and
every ``encoder_weeks``) reads and embeds every clip, as below.

Steps and sizes at the target (100 M tracks with a clip; 1 s clips at 8 kHz, 16 KB of int16 each):

- ``landed_clips``: (track_id, location) of every landed clip: 100 M rows (~10 GB of paths), listed on
  the executors, one upload-date folder per task (``ClipReader.landing``); the driver lists only the
  date folders (one a day: ~3,700 in ten years). The asset keeps the catalog's tracks (a semi-join)
  and cuts them in ``CLIPS_PER_PARTITION`` partitions.
- ``training_clips``: the warm tracks' clips with the ``bounded(AudioConfig.clips_to_read)`` smallest
  seeded hashes (``samples.smallest_hashes``, a per-partition top-k): only those (track_id, location) pairs
  reach the driver, which reads their audio (10 k clips by default; 100 k at most: 1.6 GB of int16 + 1 GB
  of spectrograms).
- ``embedded_frame``: ``mapInPandas`` reads each partition's clips on its executor (``READ_CHUNK`` clips
  at a time: ~16 MB of audio), computes spectrograms, vectors and encoder features with the model
  broadcast as bytes (unpacked once per Python worker), and returns (track_id, vector, features,
  problem): 100 M x 32 float32 = 12.8 GB of vectors and 100 M x 128 = 51 GB of features, written from
  the executors as the ``audio_vectors`` and ``audio_features`` tables (``audio_table``). 1.6 TB of audio
  is read in an encoder's week, all of it on the executors; ~11 GB (700 k uploads) in a week that keeps
  it. ``embedded_problems`` brings back the unusable clips' counts per kind and at most ``max_examples``
  of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame, SparkSession

from dw_assets.embeddings.audio import AudioConfig, AudioModel, EmbeddingHead, fit_head, log_mel
from dw_assets.embeddings.audio_io import PROBLEM_COLUMNS, AudioBatch, load_clips
from dw_assets.embeddings.samples import smallest_hashes
from dw_assets.ingest.spark import load_once, payload_key

CLIP_SCHEMA = "track_id long, location string"
LISTED_SCHEMA = "track_id long, location string, folder string"
EMBEDDED_SCHEMA = ("track_id long, vector array<float>, problem string, detail string, location string, "
                   "features array<float>")
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

    def landing(self):
        """This Python worker's ``LandingFS`` of the root (built once per worker)."""
        from dw_assets.lake.landing_fs import LandingFS

        s3 = self.s3
        if s3 is None:
            return load_once(f"landing:{self.root}", lambda: LandingFS(self.root))
        credentials = {"AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
                       "AWS_SESSION_TOKEN": s3.session_token}
        os.environ.update({name: value for name, value in credentials.items() if value})
        return load_once(f"landing:{self.root}", lambda: LandingFS(self.root, s3=s3))

    def read(self):
        """location → bytes on this worker (None: local files, ``load_clips`` reads them itself)."""
        if not self.root.startswith("s3://"):
            return None
        return self.landing().read_location


def landed_clips(landing, reader: ClipReader, until: dt.date | None = None, since: dt.date | None = None,
                 spark: SparkSession | None = None) -> DataFrame:
    """track_id, location of the clips uploaded in [since, until] (``landing/audio/<date>/<track_id>.wav``),
    a later upload of a track winning, as ``embeddings.landing.landed_audio`` but listed on the executors:
    the driver lists the date folders only. Names that are not a date folder / a track id are ignored."""
    spark = spark or SparkSession.getActiveSession()
    folders = []
    for folder in landing.list_folders("audio"):
        try:
            uploaded = dt.date.fromisoformat(folder)
        except ValueError:
            continue
        if not ((until and uploaded > until) or (since and uploaded < since)):
            folders.append(folder)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        fs = reader.landing()
        for batch in batches:
            for folder in batch["folder"]:
                found = [(int(stem), clip) for clip in fs.list_files(f"audio/{folder}", suffix=".wav")
                         if (stem := clip.rsplit("/", 1)[-1].removesuffix(".wav")).isdigit()]
                yield pd.DataFrame({"track_id": np.array([t for t, _ in found], np.int64),
                                    "location": pd.Series([c for _, c in found], dtype=object), "folder": folder})

    days = spark.createDataFrame(pd.DataFrame({"folder": pd.Series(folders, dtype=object)}), "folder string")
    listed = days.repartition(max(1, min(len(folders), 4 * spark.sparkContext.defaultParallelism)), "folder") \
        .mapInPandas(run, LISTED_SCHEMA)
    # Date folders sort by name: the latest folder holding a track is its latest upload.
    return listed.groupBy("track_id").agg(F.max_by("location", "folder").alias("location"))


def partitioned_clips(clips: DataFrame, rows: int) -> DataFrame:
    """``clips`` hash-partitioned by track in partitions of about ``CLIPS_PER_PARTITION`` of its ``rows``
    (at least the session's parallelism)."""
    spark = clips.sparkSession
    partitions = max(spark.sparkContext.defaultParallelism, math.ceil(rows / CLIPS_PER_PARTITION))
    return clips.repartition(partitions, "track_id")


def clip_frame(spark: SparkSession, clips: Mapping[int, str]) -> DataFrame:
    """(track_id, location) of ``clips`` (a mapping on the driver: tests, small worlds) as a Spark frame,
    partitioned as ``partitioned_clips``."""
    frame = pd.DataFrame({"track_id": np.fromiter(clips.keys(), np.int64, len(clips)),
                          "location": pd.Series(list(clips.values()), dtype=object)})
    return partitioned_clips(spark.createDataFrame(frame, CLIP_SCHEMA), len(frame))


def training_clips(clips: DataFrame, warm_ids: np.ndarray, cap: int, seed: int) -> dict[int, str]:
    """track_id → location of the warm tracks (``warm_ids``: those with a target vector) whose seeded hash is
    among the ``bounded(cap)`` smallest: the clips the driver reads to train the CNN. A cap above the
    warm tracks' count takes them all."""
    spark = clips.sparkSession
    warm = spark.createDataFrame(pd.DataFrame({"track_id": np.unique(np.asarray(warm_ids, np.int64))}),
                                 "track_id long")
    picked = smallest_hashes(clips.join(warm, "track_id", "left_semi"), "track_id", cap, seed).toPandas()
    return dict(zip(picked["track_id"].astype("int64").tolist(), picked["location"].tolist(), strict=True))


def embedded_frame(clips: DataFrame, model: AudioModel, settings: AudioConfig, length: int,
                   reader: ClipReader) -> DataFrame:
    """``EMBEDDED_SCHEMA`` rows of every clip in ``clips``, computed on the executors (lazy): a unit vector,
    or the problem of an unusable clip (``audio_io.PROBLEM_COLUMNS``).

    Each clip is read, cut or looped to ``length`` samples (the training clips' length, so every
    executor uses the same) and embedded; a vector depends on its clip only, not on the partition or
    chunk it lands in (``AudioModel.embed`` runs fixed-shape batches), so the partitioning never
    changes the output.
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

    return clips.mapInPandas(run, EMBEDDED_SCHEMA)


def unembedded(listed: DataFrame, known: DataFrame) -> DataFrame:
    """The listed clips (track_id, location) the stored features lack: the uploads since the features were
    computed, a re-uploaded track's new clip, and the clips that could not be read before (tried again)."""
    return listed.join(known.select("track_id", "location"), ["track_id", "location"], "left_anti")


def head_vectors(features: DataFrame, head: EmbeddingHead) -> DataFrame:
    """track_id, vector (``head.apply`` of each row's stored features), on the executors: the head is
    ``hidden_units x embedding_dim`` floats, shipped in the closure."""
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            stacked = (np.stack(batch["features"].to_numpy()) if len(batch)
                       else np.zeros((0, len(head.weight)), np.float32))
            yield pd.DataFrame({"track_id": batch["track_id"].to_numpy(np.int64), "vector": list(head.apply(stacked))})

    return features.select("track_id", "features").mapInPandas(run, "track_id long, vector array<float>")


def embedded_problems(embedded: DataFrame, max_examples: int) -> tuple[dict[str, int], pd.DataFrame]:
    """(unusable clips per problem, at most ``max_examples`` of them sorted by track: ``PROBLEM_COLUMNS``),
    counted on the executors; only the counts and the examples reach the driver."""
    bad = embedded.where(F.col("problem").isNotNull())
    counts = {r["problem"]: int(r["count"]) for r in bad.groupBy("problem").count().orderBy("problem").collect()}
    rows = bad.select("track_id", "location", "problem", "detail").orderBy("track_id").limit(max_examples).toPandas()
    return counts, _problems(rows)


def embed_tracks(clips: DataFrame, model: AudioModel, settings: AudioConfig, length: int,
                 reader: ClipReader) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(track_ids int64[n] ascending, unit vectors float32[n, d], problems sorted by track) of every clip in
    ``clips``: ``embedded_frame`` collected, for tests and small worlds (the asset writes the frame from
    the executors instead: ``audio_table.audio_vectors_table``)."""
    rows = embedded_frame(clips, model, settings, length, reader).toPandas()
    rows = rows.sort_values("track_id", kind="mergesort")
    good = rows[rows["problem"].isna()]
    d = model.network.embedding_head.out_features
    vectors = np.stack(good["vector"].to_numpy()).astype(np.float32) if len(good) else np.zeros((0, d), np.float32)
    return good["track_id"].to_numpy(np.int64), vectors, _problems(rows[rows["problem"].notna()])


def _problems(bad: pd.DataFrame) -> pd.DataFrame:
    problems = pd.DataFrame({"track_id": bad["track_id"].to_numpy(np.int64), "path": bad["location"].to_numpy(),
                             "problem": bad["problem"].to_numpy(), "detail": bad["detail"].to_numpy()},
                            columns=PROBLEM_COLUMNS)
    return problems.astype({"track_id": "int64", "path": "object", "problem": "object",
                            "detail": "object"}).reset_index(drop=True)


def _embedded_rows(batch: AudioBatch, model: AudioModel, settings: AudioConfig, paths: Mapping[int, str]) -> pd.DataFrame:
    if len(batch.track_ids):
        vectors, features = model.embed_with_features(log_mel(batch, settings))
    else:
        vectors, features = np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    good = pd.DataFrame({"track_id": batch.track_ids, "vector": list(vectors), "problem": None, "detail": None,
                         "location": [paths[int(t)] for t in batch.track_ids], "features": list(features)})
    bad = pd.DataFrame({"track_id": batch.problems["track_id"].to_numpy(np.int64), "vector": None,
                        "problem": batch.problems["problem"], "detail": batch.problems["detail"],
                        "location": batch.problems["path"], "features": None})
    return pd.concat([good, bad], ignore_index=True) if len(bad) else good


@dataclasses.dataclass
class KeptEncoder:
    """The week before's encoder, reused: its model (this week's settings), the week it was trained, its
    version and the clip length (samples) every clip is cut or looped to."""

    model: AudioModel
    week: str
    version: str
    clip_samples: int


def kept_encoder(previous_meta: Mapping | None, previous_model: bytes | None, week: str,
                 settings: AudioConfig) -> KeptEncoder | None:
    """The week before's encoder when this week may keep it: it was trained fewer than ``encoder_weeks``
    weeks before ``week`` with the same encoder settings (``AudioConfig.encoder_settings``); else None."""
    if settings.encoder_weeks <= 1 or previous_meta is None or previous_model is None:
        return None
    trained = previous_meta.get("encoder_week")
    if trained is None or previous_meta.get("encoder_settings") != settings.encoder_settings():
        return None
    if (dt.date.fromisoformat(week) - dt.date.fromisoformat(trained)).days // 7 >= settings.encoder_weeks:
        return None
    loaded = AudioModel.from_bytes(previous_model)
    model = AudioModel(network=loaded.network, config=settings, genres=loaded.genres, report=loaded.report)
    return KeptEncoder(model, trained, previous_meta["encoder_version"], int(previous_meta["clip_samples"]))


@dataclasses.dataclass
class RefitWeek:
    """A week on a kept encoder: the clips read this week (``EMBEDDED_SCHEMA``: the new ones and the ones that
    failed before), every usable clip's features (the stored ones of clips still listed + the new ones), and
    the model with its refitted head. ``embedded`` and ``features`` are persisted: ``release()`` when written."""

    model: AudioModel
    head: EmbeddingHead
    embedded: DataFrame
    features: DataFrame
    training_tracks: int

    def vectors(self) -> DataFrame:
        """track_id, vector of every usable clip with this week's head."""
        return head_vectors(self.features, self.head)

    def release(self) -> None:
        self.embedded.unpersist()
        self.features.unpersist()


def refit_week(listed: DataFrame, known: DataFrame, kept: KeptEncoder, targets: tuple[np.ndarray, np.ndarray],
               settings: AudioConfig, reader: ClipReader) -> RefitWeek:
    """Embed only the listed clips ``known`` (the week before's ``audio_features``) lacks, on the executors,
    and refit the embedding head on a seeded-hash sample of the warm tracks' stored features
    (``bounded(clips_to_read)`` rows of ``hidden_units`` floats reach the driver: 51 MB at 100 k).

    Sizes at the target: the week's uploads (~700 k clips, ~1 % of the catalog) are read and embedded,
    instead of all 100 M; the 100 M feature rows are carried over by a semi-join on the executors."""
    spark = listed.sparkSession
    missing = unembedded(listed, known)
    embedded = embedded_frame(partitioned_clips(missing, missing.count()), kept.model, settings, kept.clip_samples,
                              reader).persist()
    carried = known.join(listed, ["track_id", "location"], "left_semi").select("track_id", "location", "features")
    features = carried.unionByName(embedded.where(F.col("problem").isNull()).select("track_id", "location", "features"))
    features = features.persist()
    warm_ids = np.unique(np.asarray(targets[0], np.int64))
    warm = spark.createDataFrame(pd.DataFrame({"track_id": warm_ids}), "track_id long")
    sampled = smallest_hashes(features.join(warm, "track_id", "left_semi").select("track_id", "features"),
                              "track_id", settings.clips_to_read, settings.seed).toPandas()
    sampled = sampled.sort_values("track_id", kind="mergesort")  # the fit sees the same rows in the same order
    hidden = settings.hidden_units
    matrix = (np.stack(sampled["features"].to_numpy()).astype(np.float32) if len(sampled)
              else np.zeros((0, hidden), np.float32))
    head, report = fit_head(matrix, sampled["track_id"].to_numpy(np.int64), targets, settings)
    kept_report = {k: v for k, v in kept.model.report.items() if k.startswith("holdout_genre") or k == "genre_majority_share"}
    model = kept.model.with_head(head, {**kept_report, **report, "head_only": True, "encoder_week": kept.week})
    return RefitWeek(model=model, head=head, embedded=embedded, features=features, training_tracks=len(sampled))
