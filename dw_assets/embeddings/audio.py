"""Audio embeddings for cold start: log-mel spectrograms → a small CNN → the collaborative space.

The CNN is trained to regress the warm (played) tracks' collaborative vectors (e.g. item2vec,
L2-normalized) from their audio, with an auxiliary genre head. Applied to any clip, played or
not, it yields a vector comparable to the played tracks' vectors, which is what makes a new
release retrievable before anyone has heard it. Its encoder (convolutions and shared layer) is
trained every ``encoder_weeks``; in between, a week refits only the linear embedding head to that
week's collaborative vectors on the stored encoder features (``fit_head``), so only new clips are
read and embedded.

Reading the landed WAV files lives in ``audio_io``; its public names are re-exported here so
``dw_assets.embeddings.audio`` is the one import point.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dw_assets.embeddings.audio_io import AUDIO_PROBLEMS, AudioBatch, diagnose_clip, load_clips, read_clip
from dw_assets.embeddings.device import device
from dw_assets.embeddings.threads import check_threads, torch_threads

__all__ = [
    "AUDIO_PROBLEMS", "AudioBatch", "AudioCNN", "AudioConfig", "AudioModel", "diagnose_clip",
    "load_clips", "log_mel", "mel_filterbank", "read_clip", "train_audio_model",
]  # fmt: skip

IGNORE_GENRE = -100  # label of a track without a known genre; skipped by the genre loss
LOG_FLOOR = 1e-6  # added to mel power before the log: ~100 dB below a full-scale tone


@dataclass(frozen=True)
class AudioConfig:
    """Feature, network and training settings. ``embedding_dim`` must equal the target (collaborative) dim."""

    sample_rate: int = 8000  # Hz; clips at another rate are reported, not resampled
    clip_seconds: float | None = None  # None: the median length of the clips found
    n_fft: int = 256  # samples per STFT window (32 ms at 8 kHz)
    hop_length: int = 128  # samples between frames (16 ms at 8 kHz; 8 ms costs 2x for ~+0.01 cosine)
    n_mels: int = 40
    f_min: float = 30.0  # Hz
    f_max: float | None = None  # Hz; None: Nyquist
    channels: tuple[int, ...] = (16, 32, 64)  # conv blocks, each halving frequency and time
    hidden_units: int = 128  # shared layer feeding the embedding and genre heads
    embedding_dim: int = 32
    # 10 epochs x 10 k warm tracks, sized for the 2-core demo: held-out cosine 0.76 vs 0.80 at
    # 20 epochs x 25 k tracks, 4x faster.
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    genre_loss_weight: float = 0.3
    holdout_share: float = 0.15  # of the warm tracks, held out for the report
    max_warm_tracks: int | None = 10_000  # seeded sample of the warm tracks used (cost cap); None: all
    # Warm tracks whose clips the driver reads to train (a seeded-hash sample drawn in Spark, also bounded by
    # DW_DRIVER_ROW_LIMIT), and never more than ``max_warm_tracks`` (``clips_to_read``): at 100 M tracks it
    # bounds the driver at ~1.6 GB of 1 s clips.
    max_training_clips: int = 100_000
    seed: int = 7
    # Weeks one trained encoder (the convolutions and the shared layer) serves. A week whose previous week's
    # encoder was trained fewer weeks ago, with the same settings, keeps it: it embeds only the clips its
    # features table lacks (the week's uploads) and refits only the embedding head, by ridge regression of
    # this week's item2vec vectors on the stored features. 1: the CNN is trained afresh every week.
    encoder_weeks: int = 4
    head_ridge: float = 1e-3  # the head's L2 penalty, relative to the features' mean square
    silence_rms: float = 1e-4  # full scale = 1.0
    # torch intra-op threads for training and embedding (``threads.torch_threads``): fixed, so every process
    # computes the same floats; 2 = the demo machine's cores (torch's default there). None: the process's.
    threads: int | None = 2

    @property
    def clips_to_read(self) -> int:
        """How many warm tracks' clips the driver reads to train: the ones it uses, not more (reading and
        transforming 47 k clips of `small` to use 10 k cost ~0.6 GB of spectrograms on the driver)."""
        if self.max_warm_tracks is None:
            return self.max_training_clips
        return min(self.max_training_clips, self.max_warm_tracks)

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_share < 1.0:
            raise ValueError("holdout_share must be in [0, 1)")
        nyquist = self.sample_rate / 2
        if not 0.0 <= self.f_min < (self.f_max or nyquist) <= nyquist:
            raise ValueError(f"need 0 <= f_min < f_max <= {nyquist} Hz")
        if not self.channels:
            raise ValueError("channels must name at least one conv block")
        if self.max_warm_tracks is not None and self.max_warm_tracks < 2:
            raise ValueError("max_warm_tracks must be at least 2 (or None)")
        if self.max_training_clips < 2:
            raise ValueError("max_training_clips must be at least 2")
        if self.encoder_weeks < 1:
            raise ValueError("encoder_weeks must be at least 1 (1: a new encoder every week)")
        if self.head_ridge < 0:
            raise ValueError("head_ridge must be >= 0")
        check_threads(self.threads)

    def encoder_settings(self) -> dict:
        """What makes two encoders interchangeable: every setting but the reuse policy and the threads."""
        out = dataclasses.asdict(self)
        for name in ("encoder_weeks", "head_ridge", "threads"):
            out.pop(name)
        out["channels"] = list(out["channels"])
        return out


# ---------------------------------------------------------------- features


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(config: AudioConfig) -> torch.Tensor:
    """Triangular HTK-mel filters, float32[n_mels, n_fft // 2 + 1], rows peaking at 1.

    A filter narrower than one FFT bin (possible at low frequencies) would be all zero; it
    takes the bin nearest its centre instead, so no mel band is dead.
    """
    f_max = config.f_max or config.sample_rate / 2
    bins = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(config.f_min), _hz_to_mel(f_max), config.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    for row in np.flatnonzero(weights.sum(axis=1) == 0):
        weights[row, np.argmin(np.abs(bins - edges[row + 1]))] = 1.0
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(waves: np.ndarray | torch.Tensor | AudioBatch, config: AudioConfig, chunk_clips: int = 1024) -> torch.Tensor:
    """Log-mel power spectrograms: float32[n, n_mels, frames] on the CPU, frames = 1 + samples // hop_length.

    waves: float32[n, samples] in [-1, 1], or an ``AudioBatch`` (its clips turned into floats a
    chunk at a time, so the float waveforms of a whole catalog are never held at once). Natural log
    of mel power (+ ``LOG_FLOOR``); computed ``chunk_clips`` at a time on ``device()`` so the
    complex STFT never holds the whole batch.
    """
    if isinstance(waves, AudioBatch):
        n, samples, blocks = len(waves.clips), waves.length, waves.wave_chunks(chunk_clips)
    else:
        waves = torch.as_tensor(waves, dtype=torch.float32)
        if waves.ndim != 2:
            raise ValueError(f"waves must be [n, samples], got shape {tuple(waves.shape)}")
        n, samples = waves.shape
        blocks = (waves[lo : lo + chunk_clips] for lo in range(0, n, chunk_clips))
    with torch_threads(config.threads):
        return _log_mel(blocks, n, samples, config)


def _log_mel(blocks, n: int, samples: int, config: AudioConfig) -> torch.Tensor:
    dev = device()
    window = torch.hann_window(config.n_fft, periodic=True, device=dev)
    filters = mel_filterbank(config).to(dev)
    out = torch.empty((n, config.n_mels, 1 + samples // config.hop_length), dtype=torch.float32)
    lo = 0
    for block in blocks:
        spec = torch.stft(
            torch.as_tensor(block).to(dev),
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            window=window,
            center=True,
            pad_mode="constant",  # reflect padding fails on clips shorter than n_fft / 2
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [chunk, n_fft // 2 + 1, frames]
        out[lo : lo + len(block)] = torch.log(torch.matmul(filters, power) + LOG_FLOOR).cpu()
        lo += len(block)
    return out


# ---------------------------------------------------------------- network


class AudioCNN(nn.Module):
    """Log-mel spectrogram → (embedding float32[B, embedding_dim], genre logits float32[B, n_genres]).

    Input is standardized per mel band with statistics of the training clips (buffers, saved with
    the weights). Conv blocks (3x3 conv, batch norm, ReLU, 2x2 max pool) keep a coarse frequency
    axis; time is pooled away (mean and max), so any clip length works. Weights and activations are
    channels-last: on CPU the max pools run 3x and the forward pass 2x faster than in NCHW (training 1.3x);
    the same layout on every machine keeps the floats the same everywhere.
    """

    def __init__(self, config: AudioConfig, n_genres: int):
        super().__init__()
        self.register_buffer("mel_mean", torch.zeros(config.n_mels))
        self.register_buffer("mel_std", torch.ones(config.n_mels))
        blocks: list[nn.Module] = []
        c_in, bands = 1, config.n_mels
        for c_out in config.channels:
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c_in, bands = c_out, math.ceil(bands / 2)
        self.features = nn.Sequential(*blocks)
        self.shared = nn.Sequential(nn.Linear(2 * c_in * bands, config.hidden_units), nn.ReLU(inplace=True))
        self.embedding_head = nn.Linear(config.hidden_units, config.embedding_dim)
        self.genre_head = nn.Linear(config.hidden_units, max(n_genres, 1))
        self.to(memory_format=torch.channels_last)  # load_state_dict and .to(device) keep the layout

    def encode(self, mels: torch.Tensor) -> torch.Tensor:
        """The encoder's output (the heads' input): float32[B, hidden_units]."""
        x = (mels - self.mel_mean[:, None]) / self.mel_std[:, None]
        x = self.features(x.unsqueeze(1).contiguous(memory_format=torch.channels_last))  # [B, C, bands, time]
        x = torch.cat([x.mean(dim=3), x.amax(dim=3)], dim=1).flatten(1)
        return self.shared(x)

    def forward(self, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encode(mels)
        return self.embedding_head(hidden), self.genre_head(hidden)


@dataclass
class AudioModel:
    """A trained ``AudioCNN`` with what it needs to be applied and audited.

    genres: the genre head's classes, in logit order. report: holdout_cosine (mean cos(pred, target)
    over held-out warm tracks), holdout_cosine_shuffled (same, targets shuffled: the chance level),
    holdout_r2, holdout_genre_accuracy, genre_majority_share (its chance level), warm_tracks, train_tracks,
    holdout_tracks, epochs, train_seconds, clips_per_second (training throughput), device.
    """

    network: AudioCNN
    config: AudioConfig
    genres: list[str]
    report: dict = field(default_factory=dict)

    def embed(self, mels: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Unit-length audio embeddings float32[n, embedding_dim] for log-mel spectrograms [n, n_mels, frames]."""
        with torch_threads(self.config.threads):
            return _predict(self.network, mels, batch_size)[0]

    def embed_with_features(self, mels: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(unit embeddings float32[n, embedding_dim], encoder features float32[n, hidden_units])."""
        with torch_threads(self.config.threads):
            vectors, _, features = _predict(self.network, mels, batch_size)
        return vectors, features

    def with_head(self, head: EmbeddingHead, report: dict) -> AudioModel:
        """This encoder with ``head`` as its embedding head (a copy; the genre head kept)."""
        network = copy.deepcopy(self.network)
        with torch.no_grad():
            network.embedding_head.weight.copy_(torch.from_numpy(head.weight.T.astype(np.float32)))
            network.embedding_head.bias.copy_(torch.from_numpy(head.bias.astype(np.float32)))
        return AudioModel(network=network, config=self.config, genres=list(self.genres), report=report)

    def predict_genres(self, mels: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Most likely genre name per clip: object[n]."""
        with torch_threads(self.config.threads):
            labels = _predict(self.network, mels, batch_size)[1]
        return np.asarray(self.genres, dtype=object)[labels] if self.genres else np.full(len(labels), None)

    def to_bytes(self) -> bytes:
        """torch.save of weights + config + genres + report (loadable with ``weights_only=True``)."""
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(
            {
                "state_dict": state,
                "config": dataclasses.asdict(self.config),
                "genres": list(self.genres),
                "report": dict(self.report),
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> AudioModel:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        settings = dict(payload["config"])
        settings["channels"] = tuple(settings["channels"])
        config = AudioConfig(**settings)
        network = AudioCNN(config, len(payload["genres"]))
        network.load_state_dict(payload["state_dict"])
        network.to(device()).eval()
        return cls(network=network, config=config, genres=list(payload["genres"]), report=payload["report"])


@torch.no_grad()
def _predict(network: AudioCNN, mels: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit embeddings float32[n, d], genre index int64[n], encoder features float32[n, hidden]) with the
    network in eval mode."""
    dev = next(network.parameters()).device
    was_training = network.training
    network.eval()
    vectors, labels, hidden = [], [], []
    for lo in range(0, len(mels), batch_size):
        batch = mels[lo : lo + batch_size]
        rows = len(batch)
        if rows < batch_size:
            # Every forward pass has the same shape: CPU kernels picked for small batches (1-17 rows) round
            # differently, and a vector must not depend on the batch its clip lands in (executors' chunks).
            batch = torch.cat([batch, batch.new_zeros((batch_size - rows, *batch.shape[1:]))])
        encoded = network.encode(batch.to(dev))
        raw, logits = network.embedding_head(encoded), network.genre_head(encoded)
        vectors.append(F.normalize(raw[:rows], dim=1).cpu())
        labels.append(logits[:rows].argmax(dim=1).cpu())
        hidden.append(encoded[:rows].cpu())
    network.train(was_training)
    d, h = network.embedding_head.out_features, network.embedding_head.in_features
    if not vectors:
        return np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros((0, h), np.float32)
    return (torch.cat(vectors).numpy().astype(np.float32), torch.cat(labels).numpy(),
            torch.cat(hidden).numpy().astype(np.float32))


# ---------------------------------------------------------------- training


def _align_targets(
    track_ids: np.ndarray, targets: Mapping[int, np.ndarray] | tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(unit target vectors float32[n, d] aligned to track_ids, has_target bool[n])."""
    if isinstance(targets, Mapping):
        ids = np.fromiter(targets.keys(), dtype=np.int64, count=len(targets))
        vectors = np.stack([np.asarray(v, dtype=np.float32) for v in targets.values()]) if len(ids) else None
    else:
        ids, vectors = np.asarray(targets[0], dtype=np.int64), np.asarray(targets[1], dtype=np.float32)
    if vectors is None or len(ids) == 0:
        raise ValueError("no target vectors given")
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError("targets must be (ids int64[m], vectors float32[m, d])")
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    pos = np.clip(np.searchsorted(ids, track_ids), 0, len(ids) - 1)
    norms = np.linalg.norm(vectors, axis=1)
    found = (ids[pos] == track_ids) & (norms[pos] > 0) & np.isfinite(vectors[pos]).all(axis=1)
    aligned = np.zeros((len(track_ids), vectors.shape[1]), np.float32)
    aligned[found] = vectors[pos[found]] / norms[pos[found], None]
    return aligned, found


def _genre_labels(
    track_ids: np.ndarray, genres: Mapping[int, str] | Sequence | np.ndarray, vocabulary: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """(sorted genre names, label int64[n] indexing them, ``IGNORE_GENRE`` where unknown or outside
    ``vocabulary``; None: the names given)."""
    if isinstance(genres, Mapping):
        names = [genres.get(int(t)) for t in track_ids]
    else:
        names = list(genres)
        if len(names) != len(track_ids):
            raise ValueError(f"genres has {len(names)} entries for {len(track_ids)} tracks")

    def known(name) -> bool:
        return isinstance(name, str) and name != ""

    vocabulary = sorted({n for n in (names if vocabulary is None else vocabulary) if known(n)})
    index = {name: i for i, name in enumerate(vocabulary)}
    labels = np.array([index.get(n, IGNORE_GENRE) if known(n) else IGNORE_GENRE for n in names], dtype=np.int64)
    return vocabulary, labels


@contextlib.contextmanager
def _reproducible(seed: int, dev: torch.device) -> Iterator[None]:
    """Seed torch for a block without disturbing the caller's RNG or cuDNN settings."""
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _split(n_warm: int, config: AudioConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, holdout positions) into the warm tracks; seeded, by track.

    At most ``max_warm_tracks`` are used, so the weekly training cost is bounded whatever the
    catalog size (small world: 10k tracks x 10 epochs → 0.76 held-out cosine, 20k x 20 → 0.80).
    """
    order = np.random.default_rng(config.seed).permutation(n_warm)
    if config.max_warm_tracks is not None:
        order = order[: config.max_warm_tracks]
    n_used = len(order)
    n_holdout = int(round(config.holdout_share * n_used))
    if config.holdout_share > 0:
        n_holdout = min(max(n_holdout, 1), n_used - 1)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def train_audio_model(
    mels: torch.Tensor,
    track_ids: np.ndarray,
    targets: Mapping[int, np.ndarray] | tuple[np.ndarray, np.ndarray],
    genres: Mapping[int, str] | Sequence | np.ndarray,
    config: AudioConfig,
    genre_names: Sequence[str] | None = None,
) -> AudioModel:
    """Fit an ``AudioCNN`` so a track's audio predicts its collaborative vector.

    mels: float32[n, n_mels, frames] (``log_mel``), row i is track_ids[i] (int64[n]).
    targets: collaborative vectors of the warm tracks, {track_id: float32[d]} or (ids, float32[m, d]),
    d = ``config.embedding_dim``; L2-normalized here; tracks without one are not trained on.
    genres: {track_id: name} or one name per row of ``mels`` (None where unknown). genre_names: the genre
    head's classes (e.g. the catalog's genres, when ``mels`` holds a sample of it); None: the genres given.
    Loss: mean (1 - cos(pred, target)) + ``genre_loss_weight`` * cross-entropy(genre).
    A seeded ``holdout_share`` of the warm tracks is held out and only scored (``AudioModel.report``).
    Runs with ``config.threads`` torch threads (the caller's setting is restored after).
    """
    with torch_threads(config.threads):
        return _train(mels, track_ids, targets, genres, config, genre_names)


def _train(mels, track_ids, targets, genres, config: AudioConfig, genre_names: Sequence[str] | None) -> AudioModel:
    track_ids = np.asarray(track_ids, dtype=np.int64)
    mels = torch.as_tensor(mels, dtype=torch.float32)
    if mels.ndim != 3 or len(mels) != len(track_ids) or mels.shape[1] != config.n_mels:
        raise ValueError(f"mels must be [{len(track_ids)}, {config.n_mels}, frames], got {tuple(mels.shape)}")
    target_matrix, warm = _align_targets(track_ids, targets)
    if target_matrix.shape[1] != config.embedding_dim:
        raise ValueError(
            f"targets have dim {target_matrix.shape[1]}, config.embedding_dim is {config.embedding_dim}"
        )
    genre_names, labels = _genre_labels(track_ids, genres, genre_names)
    warm_rows = np.flatnonzero(warm)
    if len(warm_rows) < 2:
        raise ValueError(f"need at least 2 tracks with both audio and a target, got {len(warm_rows)}")
    train_pos, holdout_pos = _split(len(warm_rows), config)
    train_rows, holdout_rows = warm_rows[train_pos], warm_rows[holdout_pos]

    dev = device()
    x_train = mels[train_rows].to(dev)
    y_train = torch.from_numpy(target_matrix[train_rows]).to(dev)
    g_train = torch.from_numpy(labels[train_rows]).to(dev)
    use_genres = config.genre_loss_weight > 0 and bool(genre_names)

    started = time.perf_counter()
    with _reproducible(config.seed, dev):
        network = AudioCNN(config, len(genre_names)).to(dev)
        network.mel_mean.copy_(x_train.mean(dim=(0, 2)))
        network.mel_std.copy_(x_train.std(dim=(0, 2)).clamp_min(1e-3))
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=max(1, config.epochs * steps_per_epoch)
        )
        shuffler = torch.Generator().manual_seed(config.seed)
        network.train()
        for _ in range(config.epochs):
            for batch in torch.randperm(len(train_rows), generator=shuffler).split(config.batch_size):
                batch = batch.to(dev)
                raw, logits = network(x_train[batch])
                loss = (1.0 - F.cosine_similarity(raw, y_train[batch], dim=1)).mean()
                labelled = g_train[batch] != IGNORE_GENRE
                if use_genres and bool(labelled.any()):
                    loss = loss + config.genre_loss_weight * F.cross_entropy(
                        logits[labelled], g_train[batch][labelled]
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        network.eval()
    train_seconds = time.perf_counter() - started

    report = _holdout_report(network, mels[holdout_rows], target_matrix[holdout_rows], labels, holdout_rows,
                             config.seed)  # fmt: skip
    report.update(
        warm_tracks=len(warm_rows),
        train_tracks=len(train_rows),
        holdout_tracks=len(holdout_rows),
        epochs=config.epochs,
        train_seconds=round(train_seconds, 3),
        clips_per_second=round(config.epochs * len(train_rows) / max(train_seconds, 1e-9), 1),
        device=str(dev),
    )
    known = labels[warm_rows][labels[warm_rows] != IGNORE_GENRE]
    report["genre_majority_share"] = (
        float(np.bincount(known).max() / len(known)) if len(known) else float("nan")
    )
    return AudioModel(network=network, config=config, genres=genre_names, report=report)


def _holdout_report(
    network: AudioCNN,
    mels: torch.Tensor,
    targets: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    seed: int,
) -> dict:
    """Regression and genre quality on held-out warm tracks (NaN when there are none)."""
    if len(rows) == 0:
        return {**_regression_report(np.zeros((0, 0)), targets, seed), "holdout_genre_accuracy": float("nan")}
    predicted, genre, _ = _predict(network, mels, batch_size=512)
    truth = labels[rows]
    labelled = truth != IGNORE_GENRE
    return {**_regression_report(predicted, targets, seed),
            "holdout_genre_accuracy": float((genre[labelled] == truth[labelled]).mean()) if labelled.any()
            else float("nan")}


def _regression_report(predicted: np.ndarray, targets: np.ndarray, seed: int) -> dict:
    """holdout_cosine (mean cos(pred, target)), holdout_cosine_shuffled (targets shuffled: the chance level) and
    holdout_r2 of held-out unit vectors (NaN when there are none)."""
    nan = float("nan")
    if len(targets) == 0:
        return {"holdout_cosine": nan, "holdout_cosine_shuffled": nan, "holdout_r2": nan}
    shuffled = targets[np.random.default_rng(seed).permutation(len(targets))]
    spread = np.square(targets - targets.mean(axis=0)).sum()
    return {"holdout_cosine": float(np.einsum("ij,ij->i", predicted, targets).mean()),
            "holdout_cosine_shuffled": float(np.einsum("ij,ij->i", predicted, shuffled).mean()),
            "holdout_r2": float(1.0 - np.square(targets - predicted).sum() / spread) if spread > 0 else nan}


# ---------------------------------------------------------------- a new head on a kept encoder


@dataclass(frozen=True)
class EmbeddingHead:
    """A linear embedding head over stored encoder features: vector = unit(features @ weight + bias)."""

    weight: np.ndarray  # float64[hidden_units, embedding_dim]
    bias: np.ndarray  # float64[embedding_dim]

    def apply(self, features: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Unit vectors float32[n, d]. Each row is summed in a fixed order in float64 (no BLAS blocking), so a
        track's vector does not depend on the batch or executor it is computed in."""
        x = np.asarray(features, np.float64)
        out = np.empty((len(x), len(self.bias)), np.float32)
        for lo in range(0, len(x), chunk):
            raw = (x[lo:lo + chunk, :, None] * self.weight[None]).sum(axis=1) + self.bias
            out[lo:lo + chunk] = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
        return out


def fit_head(features: np.ndarray, track_ids: np.ndarray,
             targets: Mapping[int, np.ndarray] | tuple[np.ndarray, np.ndarray],
             config: AudioConfig) -> tuple[EmbeddingHead, dict]:
    """A new embedding head for a kept encoder: ridge regression of the warm tracks' unit collaborative vectors
    on their encoder ``features`` (float32[n, hidden], row i is ``track_ids[i]``), the warm tracks split as
    :func:`train_audio_model` splits them; (head, report with the holdout numbers of ``AudioModel.report``)."""
    track_ids = np.asarray(track_ids, np.int64)
    target_matrix, warm = _align_targets(track_ids, targets)
    warm_rows = np.flatnonzero(warm)
    if len(warm_rows) < 2:
        raise ValueError(f"need at least 2 tracks with both audio features and a target, got {len(warm_rows)}")
    train_pos, holdout_pos = _split(len(warm_rows), config)
    train_rows, holdout_rows = warm_rows[train_pos], warm_rows[holdout_pos]
    x = np.hstack([np.asarray(features, np.float64)[train_rows], np.ones((len(train_rows), 1))])
    y = target_matrix[train_rows].astype(np.float64)
    penalty = np.eye(x.shape[1]) * config.head_ridge * float(np.mean(np.square(x[:, :-1]))) * len(x)
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    solved = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    head = EmbeddingHead(weight=solved[:-1], bias=solved[-1])
    predicted = head.apply(np.asarray(features, np.float32)[holdout_rows])
    report = _regression_report(predicted, target_matrix[holdout_rows], config.seed)
    report.update(warm_tracks=len(warm_rows), train_tracks=len(train_rows), holdout_tracks=len(holdout_rows))
    return head, report
