"""Short synthesized clips whose spectrum carries each track's hidden style.

A clip is a harmonic tone (fundamental from the style, harmonic amplitudes
from genre timbre + artist + style, tilted by brightness) plus coloured
noise, both pulsing at the track's tempo with a style-dependent articulation.
Rendered by wavetable lookup so thousands of clips take seconds.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from dw_assets.simulate.catalog import N_HARMONICS, Catalog
from dw_assets.simulate.config import SimulationConfig, rng_for

TABLE_BITS, ENVELOPE_BITS = 10, 8
TABLE_SIZE = 2**TABLE_BITS  # samples in one period of the wavetable
ENVELOPE_SIZE = 2**ENVELOPE_BITS  # samples in one beat of the envelope table
CHUNK_TRACKS = 500
PEAK = 0.9 * 32767
BAD_AUDIO_KINDS = ("corrupt", "truncated", "empty", "silent")


@dataclass
class ClipBatch:
    """What one worker needs to render and write a chunk of clips."""

    track_id: np.ndarray
    upload_date: list[str]
    pitch_hz: np.ndarray
    timbre: np.ndarray
    brightness: np.ndarray
    tempo_bpm: np.ndarray
    articulation: np.ndarray
    noisiness: np.ndarray
    bad_kind: list[str]  # "" for a good clip
    sample_rate: int
    samples: int
    seed: int
    chunk: int


def wav_header(n_samples: int, sample_rate: int) -> bytes:
    """Canonical 44-byte RIFF header of a mono 16-bit PCM file."""
    data = 2 * n_samples
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16, b"data", data,
    )  # fmt: skip


def _phase_index(
    freq_per_sample: np.ndarray, samples: int, bits: int, rng: np.random.Generator
) -> np.ndarray:
    """Wavetable indices int[n, samples] for a phase advancing ``freq_per_sample`` cycles per sample.

    32-bit fixed-point phase accumulation: unsigned overflow is the wrap-around.
    """
    step = np.round(freq_per_sample * 2.0**32).astype(np.uint32)
    start = rng.integers(0, 2**32, len(step), dtype=np.uint32)
    phase = np.arange(samples, dtype=np.uint32)[None, :] * step[:, None] + start[:, None]
    return phase >> np.uint32(32 - bits)


def _lookup(tables: np.ndarray, idx: np.ndarray) -> np.ndarray:
    rows = (np.arange(len(tables), dtype=np.uint32) * np.uint32(tables.shape[1]))[:, None]
    return tables.ravel()[idx + rows]


def synthesize(batch: ClipBatch, rng: np.random.Generator) -> np.ndarray:
    """int16[n, samples] clips."""
    n, sr, s = len(batch.track_id), batch.sample_rate, batch.samples
    harm = np.arange(1, N_HARMONICS + 1)
    tilt = 2.2 - 2.0 * batch.brightness  # dull tracks lose their upper harmonics fast
    amp = np.exp(batch.timbre) * harm[None, :] ** -tilt[:, None]
    amp[harm[None, :] * batch.pitch_hz[:, None] > 0.45 * sr] = 0.0  # no aliasing
    phase = rng.random((n, N_HARMONICS)) * 2 * np.pi
    grid = 2 * np.pi * np.outer(harm, np.arange(TABLE_SIZE) / TABLE_SIZE)
    table = (amp * np.cos(phase)) @ np.sin(grid) + (amp * np.sin(phase)) @ np.cos(grid)
    table = (table / (np.abs(table).max(axis=1, keepdims=True) + 1e-9)).astype(np.float32)
    tone = _lookup(table, _phase_index(batch.pitch_hz / sr, s, TABLE_BITS, rng))

    beat = np.arange(ENVELOPE_SIZE) / ENVELOPE_SIZE
    env_table = (0.25 + 0.75 * np.exp(-batch.articulation[:, None] * beat[None, :])).astype(np.float32)
    env = _lookup(env_table, _phase_index(batch.tempo_bpm / (60.0 * sr), s, ENVELOPE_BITS, rng))

    white = rng.standard_normal((n, s + 1), dtype=np.float32)
    bright = batch.brightness[:, None].astype(np.float32)
    # Bright noise leans on the first difference (high-pass), dull noise on the sum (low-pass).
    noise = white[:, 1:] * np.float32(0.5) + white[:, :-1] * (np.float32(0.5) - bright)

    mix = batch.noisiness[:, None].astype(np.float32)
    clip = env * ((1 - mix) * tone + mix * noise)
    clip *= PEAK / (np.abs(clip).max(axis=1, keepdims=True) + 1e-9)
    return clip.astype("<i2")


def write_batch(batch: ClipBatch, root: str) -> int:
    """Render and write one chunk of clips under ``root/<upload_date>/<track_id>.wav``; returns files written."""
    rng = rng_for(batch.seed, "audio", batch.chunk)
    clips = synthesize(batch, rng)
    header = wav_header(batch.samples, batch.sample_rate)
    for day in set(batch.upload_date):
        os.makedirs(os.path.join(root, day), exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i, (track_id, day, bad) in enumerate(
        zip(batch.track_id.tolist(), batch.upload_date, batch.bad_kind, strict=True)
    ):
        data = _broken(bad, header, clips[i], rng) if bad else header + clips[i].tobytes()
        fd = os.open(os.path.join(root, day, f"{track_id}.wav"), flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return len(batch.track_id)


def _broken(kind: str, header: bytes, clip: np.ndarray, rng: np.random.Generator) -> bytes:
    if kind == "corrupt":
        return b"JUNK" + rng.integers(0, 256, 2_000, dtype=np.uint8).tobytes()
    if kind == "truncated":  # header promises the whole clip, a third of it arrived
        return header + clip[: len(clip) // 3].tobytes()
    if kind == "empty":
        return b""
    if kind == "silent":
        return header + np.zeros_like(clip).tobytes()
    raise ValueError(kind)


def choose_bad_audio(config: SimulationConfig, catalog: Catalog) -> dict[str, list[int]]:
    """A handful of deliberately broken clips per kind (track ids), disjoint."""
    rng = rng_for(config.seed, "bad-audio")
    n = min(config.bad_audio_per_kind * len(BAD_AUDIO_KINDS), catalog.n_tracks)
    picked = np.sort(rng.choice(catalog.n_tracks, size=n, replace=False)) + 1
    rng.shuffle(picked)
    per = config.bad_audio_per_kind
    return {kind: sorted(picked[i * per : (i + 1) * per].tolist()) for i, kind in enumerate(BAD_AUDIO_KINDS)}


def audio_batches(config: SimulationConfig, catalog: Catalog, bad: dict[str, list[int]]) -> list[ClipBatch]:
    kind_of = {tid: kind for kind, ids in bad.items() for tid in ids}
    days = np.datetime_as_string(catalog.upload_date, unit="D").tolist()
    samples = int(round(config.audio_seconds * config.sample_rate))
    track_ids = catalog.track_id
    out = []
    for c, lo in enumerate(range(0, catalog.n_tracks, CHUNK_TRACKS)):
        sl = slice(lo, lo + CHUNK_TRACKS)
        ids = track_ids[sl].copy()
        out.append(
            ClipBatch(
                track_id=ids,
                upload_date=days[sl],
                pitch_hz=catalog.pitch_hz[sl].astype(np.float64),
                timbre=catalog.timbre[sl].astype(np.float64),
                brightness=catalog.brightness[sl].astype(np.float32),
                tempo_bpm=catalog.tempo_bpm[sl].astype(np.float64),
                articulation=catalog.articulation[sl].astype(np.float64),
                noisiness=catalog.noisiness[sl].astype(np.float32),
                bad_kind=[kind_of.get(t, "") for t in ids.tolist()],
                sample_rate=config.sample_rate,
                samples=samples,
                seed=config.seed,
                chunk=c,
            )
        )
    return out


class AudioWriter:
    """Writes all clips, in background processes when ``workers`` > 0 (output is identical either way)."""

    def __init__(self, batches: list[ClipBatch], root: Path, workers: int):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.pool = None
        self.futures = []
        self.batches = batches
        if workers > 0 and len(batches) > 1:
            # spawn, not fork: the caller may be a threaded process (Dagster, a web server).
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            self.futures = [self.pool.submit(write_batch, b, str(root)) for b in batches]

    def finish(self) -> int:
        if self.pool is None:
            return sum(write_batch(b, str(self.root)) for b in self.batches)
        try:
            return sum(f.result() for f in self.futures)
        finally:
            self.pool.shutdown()
