"""Audio embeddings: broken clips are reported and skipped, log-mel features, a CNN that really
maps audio into the target space (cold tracks land near their hidden style), determinism, persistence."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dw_assets.embeddings.audio import (
    AudioConfig,
    AudioModel,
    load_clips,
    log_mel,
    mel_filterbank,
    read_clip,
    train_audio_model,
)
from dw_assets.simulate import load_truth

# Cheaper than the defaults (coarser hop, thinner conv blocks, fewer epochs) so the suite stays quick.
FAST = dict(hop_length=128, channels=(8, 16, 32), epochs=10, batch_size=128, threads=1)
COLD_SHARE = 0.2  # tracks the test keeps away from training entirely


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def truth(tiny_world):
    return load_truth(tiny_world)


@pytest.fixture(scope="module")
def config(truth) -> AudioConfig:
    # The hidden style vectors stand in for the collaborative embedding, so the dims must match.
    return AudioConfig(embedding_dim=truth.track_style.shape[1], **FAST)


@pytest.fixture(scope="module")
def clip_paths(tiny_world) -> dict[int, Path]:
    return {int(p.stem): p for p in (tiny_world / "landing" / "audio").glob("*/*.wav")}


@pytest.fixture(scope="module")
def batch(clip_paths, config):
    return load_clips(clip_paths, config)


@pytest.fixture(scope="module")
def mels(batch, config) -> torch.Tensor:
    return log_mel(batch.waves, config)


@pytest.fixture(scope="module")
def labels(batch, truth):
    """(hidden style float32[n, dim], genre name object[n]) aligned with batch.track_ids."""
    rows = truth.track_index(batch.track_ids)
    return truth.track_style[rows], np.asarray(truth.genres, dtype=object)[truth.track_genre[rows]]


@pytest.fixture(scope="module")
def cold(batch, config) -> np.ndarray:
    """bool[n]: tracks given no target and no genre, i.e. never seen in training."""
    rng = np.random.default_rng(123)
    return rng.random(len(batch.track_ids)) < COLD_SHARE


@pytest.fixture(scope="module")
def model(batch, mels, labels, cold, config) -> AudioModel:
    style, genre = labels
    warm = ~cold
    targets = {int(t): v for t, v in zip(batch.track_ids[warm], style[warm], strict=True)}
    genres = {int(t): g for t, g in zip(batch.track_ids[warm], genre[warm], strict=True)}
    return train_audio_model(mels, batch.track_ids, targets, genres, config)


def _wav(path: Path, samples: np.ndarray, sample_rate: int = 8000, channels: int = 1, width: int = 2,
         announced: int | None = None) -> Path:  # fmt: skip
    """A PCM WAV file; ``announced`` overrides the frame count the header claims."""
    if width == 1:
        data = (np.clip(samples, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = (np.clip(samples, -1, 1) * 8388607).astype("<i4")
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    frames = len(samples) // channels if announced is None else announced
    size = frames * channels * width
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + size, b"WAVE", b"fmt ", 16, 1, channels, sample_rate,
        sample_rate * channels * width, channels * width, 8 * width, b"data", size,
    )  # fmt: skip
    path.write_bytes(header + data)
    return path


def _tone(hz: float, seconds: float = 0.5, sample_rate: int = 8000, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# ---------------------------------------------------------------- reading


def test_every_broken_clip_from_the_landing_zone_is_reported_and_skipped(tiny_world, clip_paths, batch):
    bad = json.loads((tiny_world / "landing" / "manifest.json").read_text())["bad_audio"]
    expected = {track_id: kind for kind, ids in bad.items() for track_id in ids}
    assert set(bad) == {"corrupt", "truncated", "empty", "silent"} and all(bad.values())

    reported = dict(zip(batch.problems.track_id.tolist(), batch.problems.problem.tolist(), strict=True))
    assert reported == expected
    assert batch.problems.detail.str.len().gt(0).all()
    assert not set(expected) & set(batch.track_ids.tolist())
    # Every other landed clip loads, in track order, as a full-length waveform in [-1, 1].
    assert batch.track_ids.tolist() == sorted(set(clip_paths) - set(expected))
    assert batch.waves.dtype == np.float32 and batch.waves.shape == (len(batch.track_ids), 4000)
    assert np.isfinite(batch.waves).all() and np.abs(batch.waves).max() <= 1.0
    assert (np.sqrt(np.mean(batch.waves**2, axis=1)) > 0.01).all()


def test_spectrograms_stream_from_the_clips_as_read(batch, config, mels):
    # 16-bit clips stay int16 until a chunk is turned into floats: the same spectrograms, a fraction of the memory.
    assert {clip.dtype for clip in batch.clips} == {np.dtype(np.int16)}
    assert sum(clip.nbytes for clip in batch.clips) <= batch.waves.nbytes // 2
    assert torch.equal(log_mel(batch, config, chunk_clips=7), mels)
    blocks = list(batch.wave_chunks(7))
    assert [len(b) for b in blocks[:-1]] == [7] * (len(blocks) - 1) and np.array_equal(np.vstack(blocks), batch.waves)


def test_contract_violations_are_reported_not_raised(tmp_path):
    tone = _tone(440.0)
    files = {
        1: _wav(tmp_path / "stereo.wav", np.repeat(tone, 2), channels=2),
        2: _wav(tmp_path / "16k.wav", _tone(440.0, sample_rate=16000), sample_rate=16000),
        3: _wav(tmp_path / "promises_more.wav", tone, announced=2 * len(tone)),
        4: tmp_path / "header_cut.wav",
        5: _wav(tmp_path / "no_frames.wav", np.zeros(0, np.float32)),
        6: tmp_path / "never_landed.wav",
        7: tmp_path / "zero_bytes.wav",
        8: tmp_path / "noise.wav",
        9: _wav(tmp_path / "hiss.wav", np.full(4000, 1e-5, np.float32), width=3),
        10: _wav(tmp_path / "good.wav", tone),
    }
    files[4].write_bytes(files[10].read_bytes()[:20])
    files[7].write_bytes(b"")
    files[8].write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())

    problems = {tid: read_clip(path, 8000)[1] for tid, path in files.items()}
    assert problems == {
        1: "not_mono", 2: "wrong_sample_rate", 3: "truncated", 4: "truncated", 5: "empty",
        6: "unreadable", 7: "empty", 8: "corrupt", 9: "silent", 10: None,
    }  # fmt: skip
    batch = load_clips(files, AudioConfig())
    assert batch.track_ids.tolist() == [10]
    assert sorted(batch.problems.track_id) == list(range(1, 10))


def test_pcm_widths_decode_to_the_same_waveform_and_lengths_are_unified(tmp_path):
    tone = _tone(300.0)
    for width in (1, 2, 3):
        samples, problem = read_clip(_wav(tmp_path / f"w{width}.wav", tone, width=width), 8000)
        assert problem is None
        assert np.abs(samples - tone).max() < 0.02  # 8-bit quantization is the coarsest

    paths = {
        1: _wav(tmp_path / "short.wav", _tone(300.0, seconds=0.25)),
        2: _wav(tmp_path / "median.wav", _tone(300.0, seconds=0.5)),
        3: _wav(tmp_path / "long.wav", _tone(300.0, seconds=1.0)),
    }
    assert load_clips(paths, AudioConfig()).waves.shape == (3, 4000)  # the median length
    fixed = load_clips(paths, AudioConfig(clip_seconds=0.75))
    assert fixed.waves.shape == (3, 6000)
    # A short clip is looped, never padded with silence.
    assert np.abs(fixed.waves[0, -2000:]).max() > 0.4


def test_no_readable_clip_gives_an_empty_batch(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    batch = load_clips({5: tmp_path / "a.wav"}, AudioConfig())
    assert batch.waves.shape[0] == 0 and len(batch.track_ids) == 0
    assert batch.problems.problem.tolist() == ["empty"]


# ---------------------------------------------------------------- features


def test_log_mel_shape_determinism_and_pitch(batch, mels, config):
    frames = 1 + batch.waves.shape[1] // config.hop_length
    assert mels.dtype == torch.float32 and tuple(mels.shape) == (len(batch.track_ids), config.n_mels, frames)
    assert torch.isfinite(mels).all()
    assert torch.equal(log_mel(batch.waves[:50], config), mels[:50])

    # A pure tone's energy sits in the mel band whose filter peaks nearest its frequency.
    filters = mel_filterbank(config).numpy()
    bins = np.linspace(0, config.sample_rate / 2, filters.shape[1])
    for hz in (200.0, 1000.0, 3000.0):
        loudest = int(log_mel(_tone(hz)[None, :], config)[0].mean(dim=1).argmax())
        assert abs(bins[filters[loudest].argmax()] - hz) <= 2 * bins[1]
    assert (filters.sum(axis=1) > 0).all()  # no dead mel band


# ---------------------------------------------------------------- model


def test_cnn_puts_unseen_tracks_near_their_hidden_style_and_genre(batch, mels, labels, cold, model):
    style, genre = labels
    vectors = model.embed(mels[torch.from_numpy(cold)])
    assert vectors.shape == (int(cold.sum()), style.shape[1]) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    truth = style[cold] / np.linalg.norm(style[cold], axis=1, keepdims=True)
    cosine = np.einsum("ij,ij->i", vectors, truth).mean()
    shuffled = np.einsum("ij,ij->i", vectors, truth[np.random.default_rng(0).permutation(len(truth))]).mean()
    assert cosine > shuffled + 0.4, (cosine, shuffled)

    accuracy = (model.predict_genres(mels[torch.from_numpy(cold)]) == genre[cold]).mean()
    assert accuracy > 0.6  # chance is 1/16

    # The report's held-out split (warm tracks kept out of training) says the same.
    report = model.report
    assert report["holdout_cosine"] > report["holdout_cosine_shuffled"] + 0.4
    assert report["holdout_genre_accuracy"] > 0.6 and report["holdout_r2"] > 0.2
    assert report["train_tracks"] + report["holdout_tracks"] == int((~cold).sum())


def test_training_is_deterministic_for_a_seed(batch, mels, labels, config):
    style, genre = labels
    rows = np.arange(400)
    quick = dataclasses.replace(config, epochs=2)
    targets = (batch.track_ids[rows], style[rows])

    def train(cfg):
        return train_audio_model(mels[rows], batch.track_ids[rows], targets, genre[rows], cfg)

    before = torch.get_rng_state()
    first, second = train(quick), train(quick)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is left alone
    timing = {"train_seconds", "clips_per_second"}
    assert {k: v for k, v in first.report.items() if k not in timing} == {
        k: v for k, v in second.report.items() if k not in timing
    }
    np.testing.assert_array_equal(first.embed(mels[:100]), second.embed(mels[:100]))
    other = train(dataclasses.replace(quick, seed=8))
    assert not np.array_equal(first.embed(mels[:100]), other.embed(mels[:100]))


def test_the_configs_thread_count_wins_over_the_processs_and_is_restored(batch, mels, labels, config):
    """A process that set its own torch threads (pytest: 1; ``dw run``: all cores) trains the same floats."""
    style, genre = labels
    rows = np.arange(300)
    quick = dataclasses.replace(config, epochs=1, threads=2)

    def train(process_threads: int) -> np.ndarray:
        torch.set_num_threads(process_threads)
        model = train_audio_model(mels[rows], batch.track_ids[rows], (batch.track_ids[rows], style[rows]),
                                  genre[rows], quick)
        assert torch.get_num_threads() == process_threads  # restored after training
        vectors = model.embed(mels[:64])
        assert torch.get_num_threads() == process_threads  # and after embedding
        return vectors

    try:
        np.testing.assert_array_equal(train(1), train(3))
    finally:
        torch.set_num_threads(1)  # the module's setting


def test_model_round_trips_through_bytes(mels, model):
    restored = AudioModel.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(restored.embed(mels[:300]), model.embed(mels[:300]))
    assert restored.config == model.config
    assert restored.genres == model.genres and restored.report == model.report


def test_targets_of_another_dimension_are_refused(batch, mels, config):
    wrong = (batch.track_ids[:10], np.ones((10, config.embedding_dim + 1), np.float32))
    with pytest.raises(ValueError, match="dim"):
        train_audio_model(mels[:10], batch.track_ids[:10], wrong, [None] * 10, config)
