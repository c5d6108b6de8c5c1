"""Two-tower training data: vocabularies, track and user features, time-split examples.

Everything here is numpy over pandas frames from the lake (silver interactions
of the 12-week window ending at week W, gold user_profiles and track_stats of
W, and the audio CNN's per-track vectors). The model lives in ``two_tower.py``.

No leakage by construction: the window is cut at ``validation_start`` (the
last ``validation_days`` of week W's window). A training positive at time t
sees only the positives before the start of its history window (the day it
falls in, by default); a validation positive sees the training period only.
Track popularity inputs seen in training are recounted from the training
period, so validation is not helped by the plays it is judged on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from dw_assets.calendar import week_bounds

DAY_MS = 86_400_000
BIRTH_YEAR_FIRST = 1940  # birth-year buckets: 5-year bands from here, clipped at both ends
BIRTH_BUCKET_YEARS = 5
BIRTH_BUCKETS = 16
AGE_SCALE_DAYS = 3650.0  # track age input: log1p(age_days) / log1p(10 years)
POPULARITY_INPUTS = ("listeners_percentile", "log_plays", "log_age")


@dataclass(frozen=True)
class TwoTowerConfig:
    """Model size, training schedule and loss switches. Defaults run the demo worlds."""

    dim: int = 64  # output embedding size of both towers (the ANN index dimension)
    id_dim: int = 32  # track id embedding (shared by the item tower and the user's history)
    hidden: int = 128
    history_len: int = 50  # last N distinct positive tracks of a user
    recency_half_life_days: float = 14.0
    batch_size: int = 1024
    # On `small` validation recall peaked at epoch 1 of 3 in both weeks measured (0.590, 0.587; the id
    # embeddings overfit after) and the best epoch is kept: 1 epoch gives those weights in a third of the
    # time (no LR schedule, epoch 1 draws first). Raise it for bigger worlds.
    epochs: int = 1
    learning_rate: float = 1e-3  # on `small`: 3e-3 over-fits the id embeddings within an epoch
    weight_decay: float = 1e-6
    temperature: float = 0.1  # discovery recall@500 on `small`: 0.05 -> 0.554, 0.1 -> 0.562, 0.2 -> 0.547
    logq_correction: bool = True
    hard_negatives_per_example: int = 2  # the user's early skips, extra softmax columns
    hard_negative_weight: float = 1.0  # each hard negative counts w times in the softmax (log w on its logit)
    validation_days: int = 7  # time split: the last N days of the window validate, never a random split
    history_window_days: int = 1  # a training positive sees history from before its window (day) only
    restore_best_epoch: bool = True  # keep the weights of the epoch with the best validation recall
    max_examples: int | None = 1_000_000  # keep the most recent N training examples (None: all)
    # The training sample, drawn in Spark by seeded user hash (``samples.sample_keys``): whole users' 12-week
    # histories, at most this many users and interaction rows. Both cover the `small` demo (24 k users,
    # ~5 M rows); at 500 M users they bound the driver at ~1 GB of rows however many users there are.
    max_training_users: int = 2_000_000
    max_training_interactions: int = 20_000_000
    seed: int = 7
    # k audio anchors of a warm start. A setting of the trained model, not of serving: training with
    # id_dropout shows warm starts of k anchors, so serving (tower_embeddings, an upload day) takes the model's.
    cold_neighbours: int = 10
    recall_k: int = 500
    # Cold start inside the towers (DropoutNet, Volkovs et al. 2017): each step, this share of the batch's
    # played items (positives, in-batch and hard negatives alike) is shown as serving shows a cold track:
    # id embedding -> its audio warm start (``audio_anchor_neighbours``, self excluded), popularity inputs ->
    # a cold track's (no listeners, no plays, its own age). Items never played in training always are.
    id_dropout: float = 0.1
    artist_dropout: float = 0.1  # a separate share shown with the artist unknown (row 0: a debut release)
    # Mixed negative sampling (Yang et al. 2020): this many tracks per batch drawn uniformly from the whole
    # catalog (never-played ones and new releases included) join the in-batch negatives as extra columns.
    # Off: on `tiny` 16-256 of them lowered both cold and overall recall (docs/evaluation.md, "Cold start
    # inside the two-tower"): never-played tracks are only ever negatives, so the model learns to bury them.
    uniform_negatives: int = 0
    # Popularity out of the dot product: the item MLP no longer sees the popularity inputs; an additive
    # b(track) = linear(popularity inputs) enters the training logits, (u.v + b) / T. Serving scores
    # u.v + popularity_weight * b, folded into the inner product as item [v, w b], user [u, 1]. Off: on `small`
    # w = 0.25 met the cold-recall target and doubled cold saves but cost 3.7 % of saves (docs/evaluation.md).
    popularity_term: bool = False
    popularity_weight: float = 1.0  # 1: the training objective's own weight; 0: no popularity at all
    # The serving query's share λ of the centroid of the item vectors of the user's history:
    # normalize((1 - λ) user tower + λ centroid); users without history keep the tower's vector. A serving
    # setting (no retraining): the tower learns next plays, exposure included; the centroid of what the user
    # liked carries more taste. On `small`: λ 0 / 0.5 / 1 -> pipeline saves 1.316 / 1.362 / 1.285 per user
    # (1 starves the ranker of heard training rows); docs/evaluation.md, "The user's query".
    query_centroid: float = 0.5
    # torch intra-op threads while training (``threads.torch_threads``): fixed, so every process trains the
    # same floats; 2 = the demo machine's cores (torch's default there). None: the process's setting.
    threads: int | None = 2

    def __post_init__(self) -> None:
        for name in ("dim", "id_dim", "hidden", "history_len", "batch_size", "epochs", "validation_days",
                     "history_window_days", "cold_neighbours", "recall_k", "max_training_users",
                     "max_training_interactions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.temperature <= 0 or self.recency_half_life_days <= 0:
            raise ValueError("temperature and recency_half_life_days must be positive")
        if self.hard_negatives_per_example < 0 or self.hard_negative_weight < 0:
            raise ValueError("hard negatives: count and weight must be >= 0")
        for name in ("id_dropout", "artist_dropout", "query_centroid"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.uniform_negatives < 0:
            raise ValueError(f"uniform_negatives must be >= 0, got {self.uniform_negatives}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or None), got {self.threads}")


# The settings that shape the served vectors without retraining: ``tower_embeddings``' run config. With the
# model's version they make the vectors' version (``serving_version``), so an index, an upload day's vectors
# or the A/B control arm served under other settings is refused instead of silently mixed.
SERVING_SETTINGS = ("popularity_weight", "query_centroid")


# What every two-tower trained before its meta recorded ``cold_neighbours``: its asset config had no such field.
UNRECORDED_COLD_NEIGHBOURS = 10


def trained_cold_neighbours(meta: Mapping) -> int:
    """The warm start's anchors (``cold_neighbours``) a ``two_tower_model`` artifact was trained with, from its
    meta (``UNRECORDED_COLD_NEIGHBOURS`` for a model written before the meta held it)."""
    return int(meta.get("cold_neighbours", UNRECORDED_COLD_NEIGHBOURS))


def serving_version(tower_version: str, settings, *, cold_neighbours: int) -> str:
    """The ``model_version`` of vectors served from the two-tower model ``tower_version`` (trained with
    ``cold_neighbours``) under ``settings`` (anything with the ``SERVING_SETTINGS`` attributes: a run config, a
    ``TwoTowerConfig``): ``track_embeddings``, ``user_embeddings``, ``faiss_index`` and the upload days'
    vectors carry it."""
    from dw_assets.versioning import model_version

    # Each as its dataclass type: a run config's 1 and 1.0 are one setting. The model's cold_neighbours stays in
    # the digest (it was a serving setting before): vectors served then keep their version.
    served = {name: type(getattr(TwoTowerConfig, name))(getattr(settings, name)) for name in SERVING_SETTINGS}
    served["cold_neighbours"] = int(cold_neighbours)
    return model_version(tower_version.rsplit("-", 1)[0], [served], (), [tower_version])


def require_served(tower_version: str, settings, asset: str, served: Mapping[str, str], *, cold_neighbours: int) -> str:
    """``serving_version(tower_version, settings, cold_neighbours=...)`` when every version in ``served``
    ({input: version}) is it; else a ``VersionMismatch`` naming the inputs and the settings ``asset`` was given."""
    from dw_assets.versioning import VersionMismatch

    version = serving_version(tower_version, settings, cold_neighbours=cold_neighbours)
    odd = {name: v for name, v in served.items() if v != version}
    if odd:
        given = ", ".join(f"{name}={getattr(settings, name)}" for name in SERVING_SETTINGS)
        raise VersionMismatch(
            f"{', '.join(f'{n}={v}' for n, v in sorted(odd.items()))} was not served from two_tower_model="
            f"{tower_version} (trained with cold_neighbours={cold_neighbours}) under {asset}'s serving settings "
            f"({given}): give {asset} the run config that tower_embeddings had for that week (its "
            f"{', '.join(SERVING_SETTINGS)}), or rebuild tower_embeddings")
    return version


@dataclass
class UserFeatures:
    """User-tower inputs, one row per user (or per user at one history cutoff)."""

    history: np.ndarray  # int64[n, history_len] track rows, newest first, -1 = padding
    history_age_days: np.ndarray  # float32[n, history_len] days between the play and the cutoff
    genre_share: np.ndarray  # float32[n, n_genres] share of positives per genre (row 0 = unknown genre)
    country: np.ndarray  # int64[n] row in FeatureSpace.countries, 0 = unknown
    birth_bucket: np.ndarray  # int64[n] 0 = unknown, 1..BIRTH_BUCKETS = 5-year bands

    def __len__(self) -> int:
        return len(self.country)

    @property
    def history_length(self) -> np.ndarray:
        """int64[n] number of history tracks."""
        return (self.history >= 0).sum(axis=1)

    def take(self, idx: np.ndarray) -> UserFeatures:
        return UserFeatures(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass
class FeatureSpace:
    """Vocabularies and per-track / per-user inputs of the two towers for week ``week``.

    Row 0 of ``artist_ids``, ``genres`` and ``countries`` is "unknown / unseen":
    artists with no plays in the window map there, so a cold track by a new
    artist carries no untrained artist embedding.
    """

    week: str
    track_ids: np.ndarray  # int64[n_tracks], sorted; row i = track_ids[i]
    track_artist: np.ndarray  # int64[n_tracks] row in artist_ids
    track_genre: np.ndarray  # int64[n_tracks] row in genres
    track_audio: np.ndarray  # float32[n_tracks, d_audio] audio CNN vectors as given (zeros where missing)
    track_audio_missing: np.ndarray  # bool[n_tracks]
    track_popularity: np.ndarray  # float32[n_tracks, len(POPULARITY_INPUTS)] from the window's track_stats
    track_age_days: np.ndarray  # float32[n_tracks] days since release at the window end
    track_is_cold: np.ndarray  # bool[n_tracks] no plays in the window
    artist_ids: np.ndarray  # int64[n_artists], [0] = -1 (unseen artist)
    genres: list[str]  # [0] = "" (unknown)
    countries: list[str]  # [0] = "" (unknown)
    window_end_ms: int  # end of week W, ms since epoch UTC
    # Training only, never serialized: the profiles of the sampled users (country and birth band of the
    # examples' states). Inference computes user inputs from user_profiles rows (``profile_user_features``).
    user_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64[n_users], sorted
    users: UserFeatures | None = None

    @property
    def n_tracks(self) -> int:
        return len(self.track_ids)

    def track_rows(self, track_ids) -> np.ndarray:
        """int64[n] rows of ``track_ids``; -1 where not in the catalog."""
        return _rows(self.track_ids, track_ids)

    def user_rows(self, user_ids) -> np.ndarray:
        return _rows(self.user_ids, user_ids)

    def to_arrays(self) -> tuple[dict, dict]:
        """(numpy arrays, JSON-able metadata) for serialization: vocabularies and per-track inputs, no user."""
        arrays, meta = {}, {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in USER_FIELDS:
                continue
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
            else:
                meta[f.name] = value
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict, meta: dict) -> FeatureSpace:
        plain = {k: v for k, v in arrays.items() if k not in USER_FIELDS and not k.startswith("users.")}
        return cls(**plain, **{k: v for k, v in meta.items() if k not in USER_FIELDS})


USER_FIELDS = ("user_ids", "users")  # FeatureSpace fields that are training-only (per user, not shipped)


@dataclass
class ExampleSplit:
    """Positive (user, track) examples of one side of the time split."""

    state: np.ndarray  # int64[n] row in Examples.states (the user's history at the cutoff)
    user: np.ndarray  # int64[n] row in Examples.user_ids
    track: np.ndarray  # int64[n] track row of the positive
    weight: np.ndarray  # float32[n] graded interaction weight (0.5 late skip, 1 full play, 5 saved)
    ts_ms: np.ndarray  # int64[n] event time, ms since epoch UTC

    def __len__(self) -> int:
        return len(self.track)

    def take(self, idx: np.ndarray) -> ExampleSplit:
        return ExampleSplit(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass
class Examples:
    """Time-split training and validation examples with leakage-free user states."""

    user_ids: np.ndarray  # int64[m] users of the interactions
    states: UserFeatures  # one row per (user, history cutoff)
    state_user: np.ndarray  # int64[S] row in user_ids
    state_cutoff_ms: np.ndarray  # int64[S] history uses positives strictly before this time
    train: ExampleSplit
    validation: ExampleSplit
    hard_negative_ptr: np.ndarray  # int64[m + 1] CSR over user rows: the user's early-skipped tracks
    hard_negative_tracks: np.ndarray  # int64[h] track rows (never one the user also liked)
    sampling_probability: np.ndarray  # float64[n_tracks] q(track): share of training positives (logQ)
    train_popularity: np.ndarray  # float32[n_tracks, len(POPULARITY_INPUTS)] from the training period only
    train_popularity_percentile: np.ndarray  # float64[n_tracks] listeners percentile in the training period
    validation_users: np.ndarray  # int64[v] user rows judged by recall@k
    validation_state: np.ndarray  # int64[v] their state (history = the training period)
    validation_target_ptr: np.ndarray  # int64[v + 1] CSR: validation positives new to the user
    validation_target_tracks: np.ndarray  # int64[t] track rows
    validation_seen_ptr: np.ndarray  # int64[v + 1] CSR: tracks the user played in the training period
    validation_seen_tracks: np.ndarray  # int64[s] track rows (excluded from retrieval)
    validation_start_ms: int
    stats: dict = field(default_factory=dict)


def _rows(vocab: np.ndarray, ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if len(vocab) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    idx = np.minimum(np.searchsorted(vocab, ids), len(vocab) - 1)
    return np.where(vocab[idx] == ids, idx, -1).astype(np.int64)


def _ms(ts: pd.Series) -> np.ndarray:
    """int64 ms since epoch of a (tz-aware or naive UTC) timestamp column."""
    values = pd.to_datetime(ts, utc=True).dt.tz_localize(None)
    return values.to_numpy(dtype="datetime64[ms]").astype(np.int64)


def percent_rank(values: np.ndarray) -> np.ndarray:
    """float64[n] (rank - 1) / (n - 1) with ties sharing their lowest rank (Spark's percent_rank)."""
    values = np.asarray(values)
    if len(values) <= 1:
        return np.zeros(len(values))
    return np.searchsorted(np.sort(values), values, side="left") / (len(values) - 1)


def popularity_inputs(listeners: np.ndarray, plays: np.ndarray, age_days: np.ndarray) -> np.ndarray:
    """float32[n, 3] item-tower popularity inputs, all in about [0, 1].

    One function for training (counts of the training period) and inference
    (the window's track_stats): listeners percentile, log plays relative to the
    most played track, log track age.
    """
    plays = np.asarray(plays, dtype=np.float64)
    log_plays = np.log1p(plays) / np.log1p(max(plays.max(initial=0.0), 1.0))
    log_age = np.log1p(np.clip(np.asarray(age_days, dtype=np.float64), 0, None)) / np.log1p(AGE_SCALE_DAYS)
    return np.stack([percent_rank(listeners), log_plays, log_age], axis=1).astype(np.float32)


def birth_buckets(birth_year) -> np.ndarray:
    """int64[n] 0 = unknown, else 1 + 5-year band since 1940 (clipped)."""
    year = pd.to_numeric(pd.Series(birth_year), errors="coerce").to_numpy(dtype=np.float64)
    band = np.clip((np.nan_to_num(year, nan=BIRTH_YEAR_FIRST) - BIRTH_YEAR_FIRST) // BIRTH_BUCKET_YEARS,
                   0, BIRTH_BUCKETS - 1)
    return np.where(np.isnan(year), 0, band + 1).astype(np.int64)


def _vocab(values, unknown) -> tuple[list, dict]:
    names = sorted({v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))})
    vocab = [unknown, *names]
    return vocab, {v: i for i, v in enumerate(vocab)}


def build_tower_features(
    interactions: pd.DataFrame,
    user_profiles: pd.DataFrame,
    track_stats: pd.DataFrame,
    audio_ids: np.ndarray,
    audio_vectors: np.ndarray,
    week: str,
    config: TwoTowerConfig,
    countries: list | None = None,
) -> FeatureSpace:
    """Vocabularies and features for week ``week`` (the window's last week).

    ``track_stats`` defines the catalog (every track, cold ones included);
    ``audio_ids: int64[n_a]``, ``audio_vectors: float32[n_a, d_audio]`` the audio
    CNN output (tracks without a vector get zeros and the missing flag);
    ``user_profiles`` the (sampled) users of ``interactions``: their country and
    birth band enter the examples; ``countries`` the country vocabulary of every
    user (Spark's distinct countries; None: those of ``user_profiles``).
    ``interactions`` only extends the vocabularies: a played track missing
    from the catalog is added so no play is lost.
    """
    _, end = week_bounds(week)
    stats = track_stats.sort_values("track_id").drop_duplicates("track_id").reset_index(drop=True)
    played = np.unique(interactions["track_id"].to_numpy(dtype=np.int64)) if len(interactions) else []
    extra = np.setdiff1d(played, stats["track_id"].to_numpy(dtype=np.int64))
    if len(extra):
        meta = interactions.drop_duplicates("track_id").set_index("track_id").loc[extra, ["artist_id", "genre"]]
        stats = pd.concat([stats, meta.reset_index()], ignore_index=True).sort_values("track_id")
        stats = stats.reset_index(drop=True)
    track_ids = stats["track_id"].to_numpy(dtype=np.int64)
    n = len(track_ids)

    plays = stats["plays"].fillna(0).to_numpy(dtype=np.float64) if "plays" in stats else np.zeros(n)
    listeners = stats["listeners"].fillna(0).to_numpy(dtype=np.float64) if "listeners" in stats else plays
    age_days = stats["age_days"].fillna(0).to_numpy(dtype=np.float64) if "age_days" in stats else np.zeros(n)
    is_cold = plays == 0

    # Artists with no played track are "unseen" (row 0): their embedding would never be trained.
    artist = stats["artist_id"].fillna(-1).to_numpy(dtype=np.int64)
    artist_ids = np.r_[-1, np.unique(artist[~is_cold & (artist >= 0)])].astype(np.int64)
    track_artist = np.maximum(_rows(artist_ids, artist), 0)
    genres, genre_row = _vocab(stats["genre"].tolist(), "")
    track_genre = np.array([genre_row.get(g, 0) for g in stats["genre"].tolist()], dtype=np.int64)

    audio_ids = np.asarray(audio_ids, dtype=np.int64)
    audio_vectors = np.asarray(audio_vectors, dtype=np.float32).reshape(len(audio_ids), -1)
    track_audio = np.zeros((n, audio_vectors.shape[1]), dtype=np.float32)
    at = _rows(track_ids, audio_ids)
    ok = (at >= 0) & np.isfinite(audio_vectors).all(axis=1)
    track_audio[at[ok]] = audio_vectors[ok]
    missing = np.ones(n, dtype=bool)
    missing[at[ok]] = False

    profiles = user_profiles.sort_values("user_id").drop_duplicates("user_id").reset_index(drop=True)
    if countries is None:
        countries = profiles["country"].tolist() if "country" in profiles else []
    countries, _ = _vocab(countries, "")
    space = FeatureSpace(
        week=week,
        track_ids=track_ids,
        track_artist=track_artist,
        track_genre=track_genre,
        track_audio=track_audio,
        track_audio_missing=missing,
        track_popularity=popularity_inputs(listeners, plays, age_days),
        track_age_days=age_days.astype(np.float32),
        track_is_cold=is_cold,
        artist_ids=artist_ids,
        genres=genres,
        countries=countries,
        user_ids=profiles["user_id"].to_numpy(dtype=np.int64),
        users=UserFeatures(
            history=np.zeros((0, config.history_len), dtype=np.int64),
            history_age_days=np.zeros((0, config.history_len), dtype=np.float32),
            genre_share=np.zeros((0, len(genres)), dtype=np.float32),
            country=np.zeros(0, dtype=np.int64),
            birth_bucket=np.zeros(0, dtype=np.int64),
        ),
        window_end_ms=int(np.datetime64(end.replace(tzinfo=None), "ms").astype(np.int64)),
    )
    space.users = profile_user_features(profiles, space, config.history_len)
    return space


def profile_user_features(profiles: pd.DataFrame, features: FeatureSpace, history_len: int) -> UserFeatures:
    """User-tower inputs from gold user_profiles rows (in the frame's row order).

    ``recent_tracks`` / ``recent_age_days`` (newest first) give the history,
    ``genre_share`` (list of {genre, share}) the genre vector; tracks and
    genres outside the vocabularies are dropped.
    """
    m = len(profiles)
    history = np.full((m, history_len), -1, dtype=np.int64)
    ages = np.zeros((m, history_len), dtype=np.float32)
    recent = profiles["recent_tracks"].tolist() if "recent_tracks" in profiles else [[]] * m
    recent_age = profiles["recent_age_days"].tolist() if "recent_age_days" in profiles else [[]] * m
    lengths = np.array([0 if t is None else len(t) for t in recent], dtype=np.int64)
    if lengths.sum():
        flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in recent if t is not None and len(t)])
        flat_age = np.concatenate(
            [np.asarray(a, dtype=np.float32) for t, a in zip(recent, recent_age, strict=True)
             if t is not None and len(t)]
        )
        owner = np.repeat(np.arange(m), lengths)
        rows = features.track_rows(flat)
        keep = rows >= 0
        owner, rows, flat_age = owner[keep], rows[keep], flat_age[keep]
        # Position within the user's (still newest-first) list after dropping unknown tracks.
        first = np.searchsorted(owner, np.arange(m))
        slot = np.arange(len(owner)) - first[owner]
        fits = slot < history_len
        history[owner[fits], slot[fits]] = rows[fits]
        ages[owner[fits], slot[fits]] = flat_age[fits]

    genre_row = {g: i for i, g in enumerate(features.genres)}
    share = np.zeros((m, len(features.genres)), dtype=np.float32)
    shares = profiles["genre_share"].tolist() if "genre_share" in profiles else [[]] * m
    for i, entries in enumerate(shares):
        for entry in entries if entries is not None else []:
            share[i, genre_row.get(entry["genre"], 0)] += entry["share"]

    country_row = {c: i for i, c in enumerate(features.countries)}
    countries = profiles["country"].tolist() if "country" in profiles else [None] * m
    return UserFeatures(
        history=history,
        history_age_days=ages,
        genre_share=share,
        country=np.array([country_row.get(c, 0) for c in countries], dtype=np.int64),
        birth_bucket=birth_buckets(profiles["birth_year"] if "birth_year" in profiles else [None] * m),
    )


def _csr(owner: np.ndarray, values: np.ndarray, n_owners: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr int64[n_owners + 1], values sorted by owner) for unsorted (owner, value) pairs."""
    order = np.lexsort((values, owner))
    counts = np.bincount(owner, minlength=n_owners)
    return np.r_[0, np.cumsum(counts)].astype(np.int64), values[order].astype(np.int64)


def history_states(
    pos_user: np.ndarray,
    pos_ms: np.ndarray,
    pos_track: np.ndarray,
    state_user: np.ndarray,
    state_cutoff_ms: np.ndarray,
    history_len: int,
    n_genres: int,
    track_genre: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users' histories at cutoffs, computed like gold user_profiles but from positives before each cutoff.

    ``pos_*``: positives sorted by (user, time). Returns history int64[S, L]
    (last L distinct tracks by latest play, newest first, -1 padded), ages
    float32[S, L] (days before the cutoff) and genre share float32[S, G]
    (share of positive plays per genre).
    """
    s = len(state_user)
    history = np.full((s, history_len), -1, dtype=np.int64)
    ages = np.zeros((s, history_len), dtype=np.float32)
    share = np.zeros((s, n_genres), dtype=np.float32)
    if s == 0:
        return history, ages, share
    n_users = int(max(pos_user.max(initial=-1), state_user.max())) + 1
    user_first = np.searchsorted(pos_user, np.arange(n_users + 1))
    lo = user_first[state_user]
    # Per-user binary search for the cutoff, vectorised via an offset time key.
    span = np.int64(pos_ms.max(initial=0) - min(pos_ms.min(initial=0), state_cutoff_ms.min()) + 2)
    base = min(pos_ms.min(initial=0), state_cutoff_ms.min())
    key = pos_user.astype(np.int64) * span + (pos_ms - base)
    hi = np.searchsorted(key, state_user.astype(np.int64) * span + (state_cutoff_ms - base), side="left")

    # A play is the latest of its (user, track) before a cutoff iff its next repeat is at or after the cutoff.
    order = np.lexsort((np.arange(len(pos_track)), pos_track, pos_user))
    next_repeat = np.full(len(pos_track), np.iinfo(np.int64).max, dtype=np.int64)
    same = (pos_user[order][1:] == pos_user[order][:-1]) & (pos_track[order][1:] == pos_track[order][:-1])
    next_repeat[order[:-1][same]] = order[1:][same]

    filled = np.zeros(s, dtype=np.int64)
    cursor = hi - 1
    active = np.flatnonzero(cursor >= lo)
    while len(active):
        j = cursor[active]
        take = next_repeat[j] >= hi[active]
        got = active[take]
        history[got, filled[got]] = pos_track[j[take]]
        ages[got, filled[got]] = (state_cutoff_ms[got] - pos_ms[j[take]]) / DAY_MS
        filled[got] += 1
        cursor[active] -= 1
        active = active[(cursor[active] >= lo[active]) & (filled[active] < history_len)]

    genre = track_genre[pos_track]
    for g in range(n_genres):
        cum = np.r_[0, np.cumsum(genre == g)]
        share[:, g] = cum[hi] - cum[lo]
    total = share.sum(axis=1, keepdims=True)
    np.divide(share, total, out=share, where=total > 0)
    return history, ages, share


def most_recent(split: ExampleSplit, max_examples: int | None) -> ExampleSplit:
    """The latest ``max_examples`` examples (all when None), in their original order."""
    if max_examples is None or len(split) <= max_examples:
        return split
    return split.take(np.sort(np.argsort(split.ts_ms, kind="stable")[len(split) - max_examples :]))


def sampling_probability(tracks: np.ndarray, n_tracks: int) -> np.ndarray:
    """float64[n_tracks] q(track): how often a track is drawn as an in-batch candidate = its share of examples."""
    counts = np.bincount(tracks, minlength=n_tracks).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def build_examples(interactions: pd.DataFrame, features: FeatureSpace, config: TwoTowerConfig) -> Examples:
    """Positive examples split by time, with each example's leakage-free user state.

    ``interactions``: silver rows of the window (user_id, track_id, ts,
    is_positive, is_early_skip, weight). Validation = the last
    ``validation_days`` before the end of week ``features.week``; training =
    everything before. A training positive's history is the user's positives
    before the start of its ``history_window_days`` window; a validation
    positive's history is the whole training period. Hard negatives: the
    user's early skips in the training period (tracks they never liked there).
    Examples without any history are dropped (nothing to personalise from).
    """
    end_ms = features.window_end_ms
    val_start = end_ms - config.validation_days * DAY_MS
    window_ms = config.history_window_days * DAY_MS
    frame = interactions[["user_id", "track_id", "ts", "is_positive", "is_early_skip", "weight"]]
    ts = _ms(frame["ts"]) if len(frame) else np.zeros(0, dtype=np.int64)
    track = features.track_rows(frame["track_id"].to_numpy(dtype=np.int64))
    keep = (track >= 0) & (ts < end_ms)
    dropped_unknown = int((track < 0).sum())
    user_ids, user = np.unique(frame["user_id"].to_numpy(dtype=np.int64)[keep], return_inverse=True)
    user = user.astype(np.int64)
    track, ts = track[keep], ts[keep]
    positive = frame["is_positive"].to_numpy(dtype=bool)[keep]
    early_skip = frame["is_early_skip"].to_numpy(dtype=bool)[keep]
    weight = np.maximum(frame["weight"].to_numpy(dtype=np.float32)[keep], 0.0)
    in_train = ts < val_start
    m = len(user_ids)

    # Training-period positives, sorted by (user, time): the source of every history.
    tp = np.flatnonzero(positive & in_train)
    tp = tp[np.lexsort((ts[tp], user[tp]))]
    pos_user, pos_ms, pos_track = user[tp], ts[tp], track[tp]

    train_idx = tp
    val_idx = np.flatnonzero(positive & ~in_train)
    val_idx = val_idx[np.lexsort((ts[val_idx], user[val_idx]))]
    # Windows align on the validation start, so no training window straddles the split.
    train_cutoff = val_start - ((val_start - ts[train_idx] + window_ms - 1) // window_ms) * window_ms
    cutoff = np.r_[train_cutoff, np.full(len(val_idx), val_start, dtype=np.int64)]
    ex_user = np.r_[user[train_idx], user[val_idx]]
    state_key, state_of = np.unique(np.stack([ex_user, cutoff], axis=1), axis=0, return_inverse=True)
    state_of = state_of.reshape(-1)
    state_user, state_cutoff = state_key[:, 0].copy(), state_key[:, 1].copy()
    history, ages, share = history_states(
        pos_user, pos_ms, pos_track, state_user, state_cutoff, config.history_len,
        len(features.genres), features.track_genre,
    )
    prof = features.user_rows(user_ids[state_user])
    has_profile = prof >= 0
    country = np.where(has_profile, features.users.country[np.maximum(prof, 0)], 0)
    birth = np.where(has_profile, features.users.birth_bucket[np.maximum(prof, 0)], 0)
    states = UserFeatures(history, ages, share, country.astype(np.int64), birth.astype(np.int64))
    has_history = states.history_length > 0

    def split(idx: np.ndarray, state: np.ndarray) -> ExampleSplit:
        ok = has_history[state]
        return ExampleSplit(state=state[ok], user=user[idx][ok], track=track[idx][ok],
                            weight=weight[idx][ok], ts_ms=ts[idx][ok])

    train = split(train_idx, state_of[: len(train_idx)])
    validation = split(val_idx, state_of[len(train_idx):])
    n_train_with_history = len(train)
    train = most_recent(train, config.max_examples)
    q = sampling_probability(train.track, features.n_tracks)

    # Hard negatives: early skips in the training period of tracks the user never liked there.
    liked = np.unique(pos_user * features.n_tracks + pos_track)
    es = np.flatnonzero(early_skip & in_train)
    skip_key = np.unique(user[es] * features.n_tracks + track[es])
    skip_key = skip_key[~np.isin(skip_key, liked)]
    hn_ptr, hn_tracks = _csr(skip_key // features.n_tracks, skip_key % features.n_tracks, m)

    # Training-period popularity (what the model may know when validation starts).
    tr = np.flatnonzero(in_train)
    plays_t = np.bincount(track[tr], minlength=features.n_tracks)
    heard = np.unique(user[tr] * features.n_tracks + track[tr])  # (user, track) pairs played in training
    listeners_t = np.bincount(heard % features.n_tracks, minlength=features.n_tracks)
    age_shift = (end_ms - val_start) / DAY_MS
    age_t = np.clip(features.track_age_days - age_shift, 0, None)

    # Validation users: judged on positives new to them, with the training period's plays excluded.
    v_key = np.unique(validation.user * features.n_tracks + validation.track)
    new_key = v_key[~np.isin(v_key, heard)]
    v_users = np.unique(new_key // features.n_tracks)
    v_row = np.searchsorted(v_users, new_key // features.n_tracks)
    target_ptr, target_tracks = _csr(v_row, new_key % features.n_tracks, len(v_users))
    seen_sel = np.isin(heard // features.n_tracks, v_users)
    seen_user = np.searchsorted(v_users, heard[seen_sel] // features.n_tracks)
    seen_ptr, seen_tracks = _csr(seen_user, heard[seen_sel] % features.n_tracks, len(v_users))
    v_state_of_user = np.zeros(m, dtype=np.int64)
    v_state_of_user[validation.user] = validation.state  # one state per user: history = training period
    stats = {
        "interactions": int(len(frame)),
        "interactions_unknown_track": dropped_unknown,
        "users": int(m),
        "train_positives": int(len(train_idx)),
        "train_examples": int(len(train)),
        "train_examples_without_history": int(len(train_idx) - n_train_with_history),
        "validation_positives": int(len(val_idx)),
        "validation_examples": int(len(validation)),
        "validation_users": int(len(v_users)),
        "validation_targets": int(len(target_tracks)),
        "history_states": int(len(state_user)),
        "users_with_hard_negatives": int((np.diff(hn_ptr) > 0).sum()),
        "hard_negative_tracks": int(len(hn_tracks)),
    }
    return Examples(
        user_ids=user_ids,
        states=states,
        state_user=state_user,
        state_cutoff_ms=state_cutoff,
        train=train,
        validation=validation,
        hard_negative_ptr=hn_ptr,
        hard_negative_tracks=hn_tracks,
        sampling_probability=q,
        train_popularity=popularity_inputs(listeners_t, plays_t, age_t),
        train_popularity_percentile=percent_rank(listeners_t),
        validation_users=v_users,
        validation_state=v_state_of_user[v_users],
        validation_target_ptr=target_ptr,
        validation_target_tracks=target_tracks,
        validation_seen_ptr=seen_ptr,
        validation_seen_tracks=seen_tracks,
        validation_start_ms=int(val_start),
        stats=stats,
    )



TRAINING_COLUMNS = ["user_id", "track_id", "ts", "is_positive", "is_early_skip", "weight", "session_id", "genre",
                    "artist_id"]
PROFILE_COLUMNS = ["user_id", "country", "birth_year", "recent_tracks", "recent_age_days", "genre_share", "events"]


@dataclass
class TowerTrainingSample:
    """What the driver holds to train: the sampled users' interactions and profiles, the country vocabulary."""

    interactions: pd.DataFrame  # TRAINING_COLUMNS, sorted by (user_id, ts, track_id, session_id)
    profiles: pd.DataFrame  # the sampled users' user_profiles rows, sorted by user_id
    countries: list  # distinct countries of every profile (a vocabulary: ~200 values)
    stats: dict = field(default_factory=dict)


def tower_training_sample(interactions, user_profiles, config: TwoTowerConfig) -> TowerTrainingSample:
    """The two-tower's training data from Spark frames (the 12-week window's interactions, week W's
    profiles): whole histories of at most ``max_training_users`` users and ``max_training_interactions``
    rows, drawn by seeded user hash in Spark (``samples.sample_keys``). At 500 M users only the caps and
    the country vocabulary reach the driver. Rows are sorted so the examples never depend on partitioning.
    """
    from dw_assets.embeddings.samples import rows_of, sample_keys

    users = sample_keys(interactions, "user_id", config.max_training_users, config.max_training_interactions,
                        config.seed)
    columns = [c for c in TRAINING_COLUMNS if c in interactions.columns]
    rows = rows_of(interactions, "user_id", users, columns)
    rows = rows.sort_values(["user_id", "ts", "track_id", "session_id"], kind="mergesort").reset_index(drop=True)
    profile_columns = [c for c in PROFILE_COLUMNS if c in user_profiles.columns]
    profiles = rows_of(user_profiles, "user_id", users, profile_columns).sort_values("user_id", kind="mergesort")
    countries = ([r[0] for r in user_profiles.select("country").distinct().collect()]
                 if "country" in user_profiles.columns else [])
    stats = {"sampled_users": len(users), "sampled_interactions": len(rows)}
    return TowerTrainingSample(rows, profiles.reset_index(drop=True), countries, stats)
