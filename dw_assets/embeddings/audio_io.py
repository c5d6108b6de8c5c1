"""Landed WAV clips → equal-length float waveforms, with every unusable file reported and skipped.

A clip is unusable for one of these reasons (``AUDIO_PROBLEMS``), checked in this order:

    unreadable          the file cannot be opened (missing, permissions)
    empty               0 bytes, or a valid header announcing 0 frames
    corrupt             not a RIFF/WAVE PCM file (random bytes, unknown codec, bad sample width)
    truncated           the header is cut short, or announces more frames than the bytes present
    not_mono            more than one channel (the landing contract says mono)
    wrong_sample_rate   a rate other than the expected one (reported and skipped, not resampled:
                        the landing contract fixes the rate, so a different one is an upstream bug)
    silent              RMS around the mean below ``silence_rms`` (full scale = 1.0): all zeros,
                        hiss, or a flat line at a constant (DC) level
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from struct import error as StructError
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from dw_assets.embeddings.audio import AudioConfig

AUDIO_PROBLEMS = (
    "unreadable", "empty", "corrupt", "truncated", "not_mono", "wrong_sample_rate", "silent",
)  # fmt: skip
PROBLEM_COLUMNS = ["track_id", "path", "problem", "detail"]
DEFAULT_SILENCE_RMS = 1e-4
READ_THREADS, READ_CHUNK = 16, 256  # clips fetched through a custom reader (S3): requests in flight, bytes held


@dataclass
class AudioBatch:
    """The readable clips of a set of tracks, cut or looped to one length.

    track_ids: int64[n], sorted; ``waves``: float32[n, length] in [-1, 1], row i is track_ids[i];
    problems: one row per skipped file (track_id int64, path str, problem in AUDIO_PROBLEMS, detail str).
    The clips are kept as read (16-bit PCM stays int16, half the bytes of float32) and turned into
    float rows on demand: ``wave_chunks`` feeds the spectrogram without the whole float matrix.
    """

    track_ids: np.ndarray
    clips: list[np.ndarray]
    length: int
    problems: pd.DataFrame

    @property
    def waves(self) -> np.ndarray:
        """float32[n, length]: every clip at once (small batches; big ones use ``wave_chunks``)."""
        return next(self.wave_chunks(max(len(self.clips), 1)), np.zeros((0, self.length), np.float32))

    def wave_chunks(self, rows: int) -> Iterator[np.ndarray]:
        """float32[≤ rows, length] blocks of consecutive clips, in ``track_ids`` order."""
        for lo in range(0, len(self.clips), rows):
            block = self.clips[lo : lo + rows]
            waves = np.empty((len(block), self.length), np.float32)
            for row, clip in enumerate(block):
                waves[row] = _as_float(fit_length(clip, self.length))
            yield waves


def _as_float(samples: np.ndarray) -> np.ndarray:
    """Samples as read (int16 16-bit PCM, else float32) → float32 in [-1, 1]."""
    return samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16 else samples


def _pcm_samples(frames: bytes, sample_width: int) -> np.ndarray:
    """Little-endian PCM bytes → int16 samples for 16-bit PCM (``_as_float`` scales them), else float32 in [-1, 1]."""
    if sample_width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
    if sample_width == 2:
        return np.frombuffer(frames, "<i2")
    if sample_width == 3:
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3)
        # Place the 3 bytes in the top of an int32 so the sign comes along, then scale back down.
        wide = np.zeros((len(raw), 4), np.uint8)
        wide[:, 1:] = raw
        return (wide.view("<i4").ravel() >> 8).astype(np.float32) / 8388608.0
    return np.frombuffer(frames, "<i4").astype(np.float32) / 2147483648.0


def read_clip(
    path: str | Path, sample_rate: int, silence_rms: float = DEFAULT_SILENCE_RMS
) -> tuple[np.ndarray | None, str | None]:
    """One mono PCM WAV file → (float32[samples] in [-1, 1], None), or (None, problem) if unusable.

    ``problem`` is one of ``AUDIO_PROBLEMS``; use ``diagnose_clip`` for a human-readable detail too.
    """
    samples, problem, _ = diagnose_clip(path, sample_rate, silence_rms)
    return samples, problem


def diagnose_clip(
    path: str | Path, sample_rate: int, silence_rms: float = DEFAULT_SILENCE_RMS
) -> tuple[np.ndarray | None, str | None, str]:
    """Like ``read_clip`` but also returns a detail string ("" for a good clip)."""
    samples, problem, detail = _diagnose(path, sample_rate, silence_rms)
    return (None if samples is None else _as_float(samples)), problem, detail


def _read_file(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _fetch(read: Callable[[str | Path], bytes], location: str | Path) -> bytes | OSError:
    try:
        return read(location)
    except OSError as error:
        return error


def _diagnose(
    path: str | Path, sample_rate: int, silence_rms: float = DEFAULT_SILENCE_RMS, data: bytes | OSError | None = None,
) -> tuple[np.ndarray | None, str | None, str]:
    """``diagnose_clip`` with the samples as read (``_pcm_samples``); ``data``: the file's bytes (or the
    error reading them) when already fetched, else the local file at ``path`` is read."""
    if data is None:
        data = _fetch(_read_file, path)
    if isinstance(data, OSError):
        return None, "unreadable", f"{type(data).__name__}: {data.strerror or data}"
    if not data:
        return None, "empty", "0 bytes"
    try:
        with wave.open(io.BytesIO(data)) as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            announced = reader.getnframes()
            frames = reader.readframes(announced)
    except EOFError:
        return None, "truncated", f"header cut short ({len(data)} bytes)"
    except (wave.Error, ValueError, StructError) as error:  # StructError: a mangled fmt chunk
        return None, "corrupt", str(error) or type(error).__name__
    if width not in (1, 2, 3, 4):
        return None, "corrupt", f"unsupported sample width {width} bytes"
    frame_bytes = channels * width
    present = len(frames) // frame_bytes
    if announced == 0:
        return None, "empty", "header announces 0 frames"
    if present < announced:
        return None, "truncated", f"header announces {announced} frames, {present} present"
    if channels != 1:
        return None, "not_mono", f"{channels} channels"
    if rate != sample_rate:
        return None, "wrong_sample_rate", f"{rate} Hz, expected {sample_rate} Hz"
    samples = _pcm_samples(frames, width)
    # A constant offset (DC) is inaudible: a flat line at any level is silence.
    level = _as_float(samples).astype(np.float64)
    centred = level - float(np.mean(level))
    rms = float(np.sqrt(np.mean(np.square(centred))))
    if rms < silence_rms:
        return None, "silent", f"rms {rms:.2e} (DC removed) below {silence_rms:.0e}"
    return samples, None, ""


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """float32[length]: the middle ``length`` samples of a long clip, or a short clip looped.

    Looping, not zero padding, keeps a short clip's spectrum and rhythm statistics intact.
    """
    n = len(samples)
    if n >= length:
        start = (n - length) // 2
        return samples[start : start + length]
    return np.resize(samples, length)


def _read_all(locations: list[str | Path], read: Callable[[str | Path], bytes] | None) -> Iterator[bytes | OSError]:
    """Each location's bytes (or the OSError reading it), in order. A custom ``read`` (an object store)
    is latency-bound: READ_THREADS requests in flight, READ_CHUNK clips' bytes held at most."""
    if read is None:
        yield from (_fetch(_read_file, location) for location in locations)
        return
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for lo in range(0, len(locations), READ_CHUNK):
            yield from pool.map(lambda location: _fetch(read, location), locations[lo : lo + READ_CHUNK])


def load_clips(
    paths: Mapping[int, str | Path], config: AudioConfig, read: Callable[[str | Path], bytes] | None = None,
    length: int | None = None,
) -> AudioBatch:
    """Read every track's clip; skip and report the unusable ones.

    paths: track_id → WAV location; uses ``config.sample_rate``, ``clip_seconds`` and ``silence_rms``.
    read: location → bytes (``LandingFS.read_location`` for an S3 landing zone); None reads local files.
    Clip length: ``length`` samples if given (a batch read in parts, e.g. one per executor, keeps one
    length), else ``config.clip_seconds`` if set, else the median length of the readable clips;
    longer clips are centre-cropped, shorter ones looped.
    """
    good_ids: list[int] = []
    good: list[np.ndarray] = []
    problems: list[tuple[int, str, str, str]] = []
    ids = sorted(paths)
    for track_id, data in zip(ids, _read_all([paths[t] for t in ids], read), strict=True):
        samples, problem, detail = _diagnose(paths[track_id], config.sample_rate, config.silence_rms, data)
        if samples is None:
            problems.append((int(track_id), str(paths[track_id]), problem, detail))
        else:
            good_ids.append(int(track_id))
            good.append(samples)
    if length is not None:
        length = max(1, int(length))
    elif config.clip_seconds is not None:
        length = max(1, int(round(config.clip_seconds * config.sample_rate)))
    elif good:
        length = int(np.median([len(s) for s in good]))
    else:
        length = 0
    frame = pd.DataFrame(problems, columns=PROBLEM_COLUMNS).astype(
        {"track_id": "int64", "path": "object", "problem": "object", "detail": "object"}
    )
    return AudioBatch(
        track_ids=np.asarray(good_ids, dtype=np.int64),
        clips=good,
        length=length,
        problems=frame,
    )
