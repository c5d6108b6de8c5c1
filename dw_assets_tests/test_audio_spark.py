"""The weekly audio step on Spark: the driver's training clips are a seeded-hash draw of warm tracks under
its cap and the driver guard; the executors' vectors equal the driver's, whatever the partitioning."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dw_assets.embeddings import audio_spark
from dw_assets.embeddings.audio import (
    AudioCNN,
    AudioConfig,
    AudioModel,
    load_clips,
    log_mel,
    train_audio_model,
)
from dw_assets.embeddings.audio_table import audio_vectors_of, audio_vectors_table
from dw_assets.embeddings.landing import landed_audio
from dw_assets.lake.driver_guard import ROW_LIMIT_ENV
from dw_assets.lake.landing_fs import LandingFS
from dw_assets.lake.storage import vectors_artifact
from dw_assets.simulate import load_truth
from dw_assets.versioning import table_version
from dw_assets_tests.test_s3_lake import _bucket, aws  # noqa: F401 (aws: a fixture)

# A quick model: the test is about where the clips are read and embedded, not about its quality.
QUICK = dict(hop_length=128, channels=(4, 8), hidden_units=16, epochs=1, batch_size=64, threads=1)


@pytest.fixture(scope="module")
def landed(tiny_world) -> dict[int, str]:
    return {int(p.stem): str(p) for p in sorted((tiny_world / "landing" / "audio").glob("*/*.wav"))}


@pytest.fixture(scope="module")
def clips(spark, landed):
    return audio_spark.clip_frame(spark, landed)


@pytest.fixture(scope="module")
def warm_ids(landed) -> np.ndarray:
    ids = np.array(sorted(landed), np.int64)
    return ids[np.random.default_rng(5).random(len(ids)) < 0.6]  # the tracks with a target vector


def test_training_clips_are_a_seeded_hash_draw_of_warm_tracks_under_the_cap_and_the_guard(clips, warm_ids,
                                                                                         landed, monkeypatch):
    monkeypatch.delenv(ROW_LIMIT_ENV, raising=False)
    drawn = audio_spark.training_clips(clips, warm_ids, 50, seed=7)
    assert len(drawn) == 50 and set(drawn) <= set(warm_ids.tolist())
    assert all(drawn[t] == landed[t] for t in drawn)
    assert drawn == audio_spark.training_clips(clips.repartition(3), warm_ids, 50, seed=7)  # any partitioning
    assert set(drawn) != set(audio_spark.training_clips(clips, warm_ids, 50, seed=8))
    everything = audio_spark.training_clips(clips, warm_ids, 10**6, seed=7)
    assert sorted(everything) == sorted(set(warm_ids.tolist()) & set(landed))

    monkeypatch.setenv(ROW_LIMIT_ENV, "20")  # the guard bounds the cap: the 20 smallest hashes of the same draw
    assert set(audio_spark.training_clips(clips, warm_ids, 50, seed=7)) < set(drawn)
    assert len(audio_spark.training_clips(clips, warm_ids, 50, seed=7)) == 20


def test_executors_embed_every_clip_as_the_driver_would(tiny_world, clips, landed, warm_ids):
    truth = load_truth(tiny_world)
    settings = AudioConfig(embedding_dim=truth.track_style.shape[1], **QUICK)
    sample = audio_spark.training_clips(clips, warm_ids, 300, seed=7)
    batch = load_clips(sample, settings)
    rows = truth.track_index(batch.track_ids)
    model = train_audio_model(log_mel(batch, settings), batch.track_ids, (batch.track_ids, truth.track_style[rows]),
                              {}, settings)

    everything = load_clips(landed, settings, length=batch.length)  # the driver path, for the comparison only
    expected = model.embed(log_mel(everything, settings))
    reader = audio_spark.ClipReader.of(LandingFS(str(tiny_world / "landing")))
    for partitions in (2, 7):
        ids, vectors, problems = audio_spark.embed_tracks(clips.repartition(partitions), model, settings,
                                                          batch.length, reader)
        assert np.array_equal(ids, everything.track_ids)
        assert np.array_equal(vectors, expected), partitions  # bit for bit: the chunking never shows
        assert problems.equals(everything.problems)
    assert set(problems["problem"]) == {"corrupt", "truncated", "empty", "silent"}
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # The asset's path: the same rows written as the audio_vectors table, problems counted in Spark.
    embedded = audio_spark.embedded_frame(clips, model, settings, batch.length, reader).persist()
    table = audio_vectors_table(embedded, "v1")
    assert table_version(table, "audio_vectors") == "v1"
    table_ids, table_vectors = audio_vectors_of(table)
    assert np.array_equal(table_ids, ids) and np.array_equal(table_vectors, vectors)
    some = ids[::3]
    assert np.array_equal(audio_vectors_of(table, some)[1], vectors[::3])  # only the wanted rows come back
    assert audio_vectors_of(table, np.array([-1]))[1].shape == (0, vectors.shape[1])
    artifact = vectors_artifact(ids[::-1], vectors[::-1], {"model_version": "v1"})
    assert np.array_equal(audio_vectors_of(artifact, some)[1], vectors[::3])  # the artifact's files, same answer
    counts, examples = audio_spark.embedded_problems(embedded, max_examples=2)
    assert counts == problems["problem"].value_counts().to_dict()
    assert examples.equals(problems.head(2))
    embedded.unpersist()


def test_executors_list_the_landed_clips_as_the_driver_listing_does(spark, tmp_path):
    root = tmp_path / "landing"
    for relative in ("audio/2026-01-05/11.wav", "audio/2026-01-05/12.wav", "audio/2026-01-05/notes.txt",
                     "audio/2026-01-05/x1.wav", "audio/2026-01-12/12.wav", "audio/2026-01-12/13.wav",
                     "audio/uploads-tmp/14.wav", "audio/2026-02-02/15.wav"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"RIFF")
    landing = LandingFS(str(root))
    reader = audio_spark.ClipReader.of(landing)
    for until in (None, dt.date(2026, 1, 12), dt.date(2026, 1, 11)):
        listed = audio_spark.landed_clips(landing, reader, until=until, spark=spark).toPandas()
        assert dict(zip(listed["track_id"], listed["location"], strict=True)) == landed_audio(landing, until=until)
    listed = audio_spark.landed_clips(landing, reader, spark=spark).toPandas()
    assert listed.set_index("track_id")["location"][12].endswith("2026-01-12/12.wav")  # the later upload wins


def test_a_vector_does_not_depend_on_the_batch_it_is_embedded_in(tiny_world, landed):
    settings = AudioConfig(embedding_dim=8, **QUICK)
    batch = load_clips(dict(list(landed.items())[:40]), settings)
    mels = log_mel(batch, settings)
    torch.manual_seed(0)
    model = AudioModel(AudioCNN(settings, 1).eval(), settings, [])
    whole = model.embed(mels, batch_size=32)
    for size in (1, 2, 3, 5, 13, 17):  # small batches pick other CPU kernels unless padded to one shape
        parts = np.vstack([model.embed(mels[lo : lo + size], batch_size=32) for lo in range(0, len(mels), size)])
        assert np.array_equal(parts, whole), size



@pytest.mark.usefixtures("aws")
def test_executors_read_s3_clips_with_the_drivers_settings(spark, tiny_world, landed):
    """The Python workers do not have the test's AWS settings in their environment: the reader carries them."""
    import shutil

    bad = {t for ids in json.loads((tiny_world / "landing" / "manifest.json").read_text())["bad_audio"].values()
           for t in ids}
    picked = sorted(landed)[:30] + sorted(bad)  # a few good clips and every kind of broken one
    local = tiny_world.parent / "s3_upload"
    for track in picked:
        target = local / Path(landed[track]).relative_to(tiny_world / "landing")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(landed[track], target)
    remote = LandingFS(f"s3://{_bucket('dw-audio-spark')}/landing")
    remote.upload_dir(local)
    on_s3 = {t: remote.location(str(Path(landed[t]).relative_to(tiny_world / "landing"))) for t in picked}
    settings = AudioConfig(embedding_dim=8, **QUICK)
    torch.manual_seed(0)
    model = AudioModel(AudioCNN(settings, 1).eval(), settings, [])
    expected = load_clips({t: landed[t] for t in on_s3}, settings)

    ids, vectors, problems = audio_spark.embed_tracks(audio_spark.clip_frame(spark, on_s3), model, settings,
                                                      expected.length, audio_spark.ClipReader.of(remote))
    assert np.array_equal(ids, expected.track_ids) and len(ids) > 0
    assert np.array_equal(vectors, model.embed(log_mel(expected, settings)))
    assert problems["track_id"].tolist() == expected.problems["track_id"].tolist() == sorted(bad)
    assert all(path.startswith("s3://dw-audio-spark/") for path in problems["path"])
    # The executors list the bucket's date folders as the driver's listing does.
    listed = audio_spark.landed_clips(remote, audio_spark.ClipReader.of(remote), spark=spark).toPandas()
    assert dict(zip(listed["track_id"], listed["location"], strict=True)) == landed_audio(remote) == on_s3


def test_a_kept_encoder_embeds_only_the_clips_its_features_lack_and_refits_the_head(spark, tiny_world, clips, landed,
                                                                                    warm_ids):
    """The week after an encoder was trained: only the clips the stored features lack are read (here: 25
    'uploads' and the clips that could not be read before), every usable clip keeps the features the encoder
    gave it, the new head's vectors are what the refitted model embeds, whatever the partitioning."""
    import pyspark.sql.functions as F

    truth = load_truth(tiny_world)
    settings = AudioConfig(embedding_dim=truth.track_style.shape[1], **QUICK)
    sample = audio_spark.training_clips(clips, warm_ids, 300, seed=7)
    batch = load_clips(sample, settings)
    model = train_audio_model(log_mel(batch, settings), batch.track_ids,
                              (batch.track_ids, truth.track_style[truth.track_index(batch.track_ids)]), {}, settings)
    reader = audio_spark.ClipReader.of(LandingFS(str(tiny_world / "landing")))
    everything = audio_spark.embedded_frame(clips, model, settings, batch.length, reader).toPandas()
    good = everything[everything["problem"].isna()].sort_values("track_id")
    uploads = set(good["track_id"].to_numpy()[::40].tolist())  # not in last week's features
    known = spark.createDataFrame(good[~good["track_id"].isin(uploads)][["track_id", "location", "features"]],
                                  "track_id long, location string, features array<float>")

    meta = {"encoder_week": "2026-01-05", "encoder_version": "e1", "clip_samples": batch.length,
            "encoder_settings": settings.encoder_settings()}
    assert audio_spark.kept_encoder(meta, model.to_bytes(), "2026-02-02", settings) is None  # 4 weeks old
    assert audio_spark.kept_encoder({**meta, "encoder_settings": {}}, model.to_bytes(), "2026-01-12", settings) is None
    one_week = AudioConfig(embedding_dim=settings.embedding_dim, encoder_weeks=1, **QUICK)
    assert audio_spark.kept_encoder(meta, model.to_bytes(), "2026-01-12", one_week) is None
    kept = audio_spark.kept_encoder(meta, model.to_bytes(), "2026-01-12", settings)
    assert kept is not None and (kept.week, kept.version, kept.clip_samples) == ("2026-01-05", "e1", batch.length)

    targets = (warm_ids, truth.track_style[truth.track_index(warm_ids)])
    listed = clips.select("track_id", "location")
    refit = audio_spark.refit_week(listed, known, kept, targets, settings, reader)
    read = refit.embedded.toPandas()
    failed_before = set(everything.loc[everything["problem"].notna(), "track_id"].tolist())
    assert set(read["track_id"].tolist()) == uploads | failed_before  # nothing else was read
    features = refit.features.toPandas().sort_values("track_id")
    assert features["track_id"].tolist() == good["track_id"].tolist()
    assert all(np.array_equal(a, b) for a, b in zip(features["features"], good["features"], strict=True))
    vectors = refit.vectors().toPandas().sort_values("track_id")
    matrix = np.stack(vectors["vector"].to_numpy())
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    report = refit.model.report
    assert report["head_only"] and report["encoder_week"] == "2026-01-05"
    assert report["holdout_cosine"] > report["holdout_cosine_shuffled"] + 0.1  # the head learnt the targets
    # The refitted model (what the day's-uploads path loads) embeds a clip as the table holds it.
    new = dict(list((t, landed[t]) for t in sorted(uploads))[:10])
    direct = refit.model.embed(log_mel(load_clips(new, settings, length=batch.length), settings))
    assert np.allclose(direct, matrix[np.searchsorted(vectors["track_id"].to_numpy(), sorted(new))], atol=1e-5)
    again = audio_spark.refit_week(listed.repartition(5), known.repartition(3), kept, targets, settings, reader)
    assert np.array_equal(np.stack(again.vectors().orderBy("track_id").toPandas()["vector"].to_numpy()), matrix)
    assert refit.embedded.where(F.col("problem").isNull()).count() == len(uploads)
    refit.release()
    again.release()
