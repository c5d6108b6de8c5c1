"""Ranking features of (user, candidate track) rows: one function for training and inference.

:func:`build_ranker_features` turns a batch of candidates into a float32 matrix with the
columns :data:`FEATURE_NAMES`, one row per candidate, in candidate order. The ranker
is trained on week W-1's candidates through this function and scores week W's
candidates through it again, so a feature cannot differ between the two paths.

Inputs are split by how they scale:

* Track-side inputs (track stats, item2vec / audio / two-tower track vectors) live in
  a :class:`FeatureContext`, built once per week and shipped to Spark executors as
  bytes (:meth:`FeatureContext.to_bytes`), then unpacked once per host as ``.npy`` files
  that every Python worker memory-maps (:meth:`FeatureContext.unpack` / :meth:`FeatureContext.open`).
  Its size grows with the catalog, not with the users.
* Per-user inputs (the gold ``user_profiles`` row and the two-tower user vector) can
  be held by the context too (one machine, all users), or arrive with each batch as
  a per-user frame (``users=``): at 500M users nothing per-user can be broadcast, so
  the batch carries the profiles of exactly its own users.

Every output row depends only on its own candidate row, its user's inputs and its
track's inputs: a user's candidates may be split across batches and the rows come
out the same (no per-batch statistics).

Training examples come from the next week's interactions (:func:`training_examples`): by
default the candidates the user heard, labelled by what they did (outcome grades, or positive or not), carrying the discovery-list slot
they were heard at (``list_position``, the one feature that is an observation: fixed to 1 at
inference); alternatively every candidate, with inverse-propensity weights for list positives
(:func:`position_propensity`, :func:`position_weights`). :mod:`dw_assets.ranking.ranker` explains
the choice.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dw_assets.lake import host_cache

CANDIDATE_COLUMNS = [
    "user_id", "track_id", "two_tower_rank", "item2vec_rank", "audio_rank",
    "two_tower_score", "item2vec_score", "audio_score",
]  # fmt: skip
USER_COLUMNS = [
    "user_id", "is_new_user", "positives", "weeks_active", "history_level", "recent_tracks",
    "genre_share", "top_artists", "mean_popularity_percentile", "saved_tracks", "early_skipped_tracks",
    "user_save_rate", "user_skip_rate", "user_early_skip_rate", "genre_outcomes",
]  # fmt: skip
OUTCOME_RATE_NAMES = ("save_rate", "skip_rate", "early_skip_rate")  # genre_outcomes fields / user_<name> columns
USER_VECTOR_COLUMN = "user_vector"  # optional in a per-user frame: the two-tower user vector, float[dim]
TRACK_COLUMNS = [
    "track_id", "artist_id", "genre", "age_days", "is_new_release", "plays", "listeners",
    "plays_last_week", "save_rate", "skip_rate", "early_skip_rate", "popularity_percentile", "is_cold",
]  # fmt: skip

SOURCES = ("two_tower", "item2vec", "audio")
HISTORY_LEVELS = {"none": 0, "light": 1, "medium": 2, "heavy": 3}
TRACK_FEATURES = (
    "popularity_percentile", "log_plays", "log_listeners", "log_plays_last_week", "save_rate",
    "skip_rate", "early_skip_rate", "age_days", "is_new_release", "is_cold",
    # the artist's outcome rates over all its tracks' plays, and the track's rates shrunk toward them
    "artist_save_rate", "artist_skip_rate", "artist_early_skip_rate", "artist_log_plays",
    "shrunk_save_rate", "shrunk_skip_rate", "shrunk_early_skip_rate",
)  # fmt: skip
RATE_COLUMNS = ("save_rate", "skip_rate", "early_skip_rate")  # track_stats rates shrunk toward the artist's
USER_FEATURES = ("history_level", "weeks_active", "log_user_positives", "is_new_user")
# the user's save / skip / early-skip rates in the candidate's genre (Beta-shrunk in user_profiles)
GENRE_OUTCOME_FEATURES = tuple(f"user_genre_{name}" for name in OUTCOME_RATE_NAMES)
CONTRAST_FEATURES = ("item2vec_contrast", "audio_contrast", "item2vec_saved_max_similarity",
                     "audio_saved_max_similarity")

FEATURE_NAMES = (
    # where the candidate came from: flags, 1-based source ranks and source scores
    "from_two_tower", "from_item2vec", "from_audio", "n_sources",
    "two_tower_rank", "item2vec_rank", "audio_rank", "item2vec_score", "audio_score",
    # user-track affinity in each embedding space
    "two_tower_score", "item2vec_affinity", "audio_affinity", "audio_item2vec_affinity",
    # beyond the user's own tracks: the artist's centroid against the user's taste, and the nearest
    # of the user's recent positives (a taste with several modes is not its mean)
    "artist_item2vec_affinity", "artist_audio_affinity", "item2vec_max_similarity", "audio_max_similarity",
    # contrastive taste: like what the user saved, unlike what they rejected within seconds
    *CONTRAST_FEATURES,
    # the track
    *TRACK_FEATURES,
    # the track against the user's habits, and what the user did with the track's genre
    "artist_history_share", "is_top_artist", "genre_share", "popularity_gap", *GENRE_OUTCOME_FEATURES,
    # the user
    *USER_FEATURES,
    # attention: the discovery-list slot a training play was heard at; fixed at inference
    "list_position",
)  # fmt: skip

# The direction a feature can move expected saves, everything else equal (the ranker's monotone
# constraints): more similar to the user's taste, more of the user's genre or artist, a better outcome
# record of the track or its artist. Heard rows are few (a user meets few new tracks a week), and
# unconstrained trees fit wiggles of these against the label's noise.
MONOTONE_FEATURES = {
    "two_tower_score": 1, "item2vec_affinity": 1, "audio_affinity": 1, "audio_item2vec_affinity": 1,
    "artist_item2vec_affinity": 1, "artist_audio_affinity": 1, "item2vec_max_similarity": 1,
    "audio_max_similarity": 1, "genre_share": 1, "artist_history_share": 1, "is_top_artist": 1,
    "artist_save_rate": 1, "shrunk_save_rate": 1, "artist_skip_rate": -1, "shrunk_skip_rate": -1,
    "artist_early_skip_rate": -1, "shrunk_early_skip_rate": -1,
    "user_genre_save_rate": 1, "user_genre_skip_rate": -1, "user_genre_early_skip_rate": -1,
    "item2vec_contrast": 1, "audio_contrast": 1, "item2vec_saved_max_similarity": 1, "audio_saved_max_similarity": 1,
}  # fmt: skip

# NaN means "does not apply" here, and LightGBM learns where missing values go.
# Every other feature is finite for a user and a track the context knows.
NULLABLE_FEATURES = frozenset({
    "two_tower_rank", "item2vec_rank", "audio_rank", "item2vec_score", "audio_score",  # not from that source
    "two_tower_score",  # no user vector and not a two-tower candidate
    "item2vec_affinity", "audio_affinity", "audio_item2vec_affinity",  # no vector, or no history with vectors
    "artist_item2vec_affinity", "artist_audio_affinity", "item2vec_max_similarity", "audio_max_similarity",
    "save_rate", "skip_rate", "early_skip_rate",  # no plays in the window
    "artist_save_rate", "artist_skip_rate", "artist_early_skip_rate",  # no play of the artist in the window
    "popularity_gap",  # user without history
    *CONTRAST_FEATURES,  # no saved (nor, for the contrast, early-skipped) track with a vector
    *GENRE_OUTCOME_FEATURES,  # nobody played anything in the window
})  # fmt: skip

LIST_POSITION_COLUMN = "list_position"  # optional candidate column, training only (observed_exposure)
INFERENCE_POSITION = 1.0  # the slot every candidate is scored at: full attention
DISCOVERY_CONTEXT = "discover_weekly"  # the legacy discovery list: ordered, 1-based positions
DISCOVERY_LIST_SIZE = 30
FIRST_MONDAY = pd.Timestamp("1970-01-05", tz="UTC")  # weeks of the logs start on Mondays
TRAINING_ROWS = ("exposed", "all")  # training_examples: heard candidates only, or every candidate
DOT_CHUNK_ROWS = 65_536  # rows per gathered block in row-wise dot products: bounds temporary memory
MAX_KEY_PART = 1 << 31  # user rows / artist ids / genre codes packed two to an int64 key


# ---------------------------------------------------------------------------- per-user inputs


@dataclass(frozen=True)
class UserInputs:
    """Per-user inputs, rows sorted by user id.

    user_ids: int64[u]. scalars: float32[u, len(USER_FEATURES)]. mean_popularity: float32[u]
    (NaN without history). Ragged lists as offsets int64[u+1] into flat arrays:
    recent_tracks int64 (last-50 positive track ids), genre_codes int32 / genre_shares float32
    (codes index the context's genre vocabulary), top_artists int64, saved_tracks / skipped_tracks
    int64 (last-50 saved / early-skipped track ids), outcome_codes int32 (genres) with outcome_rates
    float32[k, 3] (the user's shrunk rates of :data:`OUTCOME_RATE_NAMES` in that genre).
    user_rates: float32[u, 3], the user's shrunk rates over all genres (NaN: nobody played anything).
    vectors: float32[u, dim] two-tower user vectors with has_vector bool[u], or None.
    """

    user_ids: np.ndarray
    scalars: np.ndarray
    mean_popularity: np.ndarray
    recent_offsets: np.ndarray
    recent_tracks: np.ndarray
    genre_offsets: np.ndarray
    genre_codes: np.ndarray
    genre_shares: np.ndarray
    artist_offsets: np.ndarray
    top_artists: np.ndarray
    saved_offsets: np.ndarray
    saved_tracks: np.ndarray
    skipped_offsets: np.ndarray
    skipped_tracks: np.ndarray
    user_rates: np.ndarray
    outcome_offsets: np.ndarray
    outcome_codes: np.ndarray
    outcome_rates: np.ndarray
    vectors: np.ndarray | None = None
    has_vector: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_frame(
        cls,
        users: pd.DataFrame,
        genres: np.ndarray,
        vectors: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> UserInputs:
        """From ``user_profiles`` rows (columns :data:`USER_COLUMNS`, one row per user).

        Two-tower user vectors come from ``vectors`` = (ids int64[m], float32[m, dim]) or from a
        ``user_vector`` column of the frame (array per row, null for users without one).
        ``genres``: str[g], the context's sorted genre vocabulary.
        """
        users, user_ids = _sorted_by_id(users, "user_id", USER_COLUMNS, "user frame")
        level = users["history_level"].map(HISTORY_LEVELS).to_numpy(np.float32)
        scalars = np.column_stack([
            level,
            users["weeks_active"].to_numpy(np.float32),
            np.log1p(users["positives"].to_numpy(np.float64)).astype(np.float32),
            users["is_new_user"].to_numpy(np.float32),
        ]).astype(np.float32)  # fmt: skip
        recent_offsets, recent = _ragged(users["recent_tracks"], pa.int64())
        recent_tracks = recent.to_numpy(zero_copy_only=False).astype(np.int64)
        genre_offsets, genre_codes, (genre_shares,) = _genre_structs(users["genre_share"], genres, ("share",))
        artist_offsets, artists = _ragged(users["top_artists"], pa.int64())
        saved_offsets, saved = _ragged(users["saved_tracks"], pa.int64())
        skipped_offsets, skipped = _ragged(users["early_skipped_tracks"], pa.int64())
        outcome_offsets, outcome_codes, outcome_rates = _genre_structs(users["genre_outcomes"], genres, OUTCOME_RATE_NAMES)
        user_rates = np.column_stack([users[f"user_{name}"].to_numpy(np.float32) for name in OUTCOME_RATE_NAMES])
        user_vectors, has_vector = None, None
        if vectors is not None:
            user_vectors, has_vector = _aligned_vectors(user_ids, *vectors)
        elif USER_VECTOR_COLUMN in users.columns:
            user_vectors, has_vector = _vector_column(users[USER_VECTOR_COLUMN])
        return cls(
            user_ids=user_ids,
            scalars=scalars,
            mean_popularity=users["mean_popularity_percentile"].to_numpy(np.float32),
            recent_offsets=recent_offsets,
            recent_tracks=recent_tracks,
            genre_offsets=genre_offsets,
            genre_codes=genre_codes,
            genre_shares=genre_shares,
            artist_offsets=artist_offsets,
            top_artists=artists.to_numpy(zero_copy_only=False).astype(np.int64),
            saved_offsets=saved_offsets,
            saved_tracks=saved.to_numpy(zero_copy_only=False).astype(np.int64),
            skipped_offsets=skipped_offsets,
            skipped_tracks=skipped.to_numpy(zero_copy_only=False).astype(np.int64),
            user_rates=user_rates.astype(np.float32).reshape(len(user_ids), len(OUTCOME_RATE_NAMES)),
            outcome_offsets=outcome_offsets,
            outcome_codes=outcome_codes,
            outcome_rates=np.column_stack(outcome_rates).astype(np.float32).reshape(-1, len(OUTCOME_RATE_NAMES)),
            vectors=user_vectors,
            has_vector=has_vector,
        )

    def take(self, rows: np.ndarray) -> UserInputs:
        """The users at ``rows`` (int64[k], ascending), ragged lists gathered without a Python loop."""
        recent_offsets, recent_idx = _take_ragged(self.recent_offsets, rows)
        genre_offsets, genre_idx = _take_ragged(self.genre_offsets, rows)
        artist_offsets, artist_idx = _take_ragged(self.artist_offsets, rows)
        saved_offsets, saved_idx = _take_ragged(self.saved_offsets, rows)
        skipped_offsets, skipped_idx = _take_ragged(self.skipped_offsets, rows)
        outcome_offsets, outcome_idx = _take_ragged(self.outcome_offsets, rows)
        return UserInputs(
            user_ids=self.user_ids[rows],
            scalars=self.scalars[rows],
            mean_popularity=self.mean_popularity[rows],
            recent_offsets=recent_offsets,
            recent_tracks=self.recent_tracks[recent_idx],
            genre_offsets=genre_offsets,
            genre_codes=self.genre_codes[genre_idx],
            genre_shares=self.genre_shares[genre_idx],
            artist_offsets=artist_offsets,
            top_artists=self.top_artists[artist_idx],
            saved_offsets=saved_offsets,
            saved_tracks=self.saved_tracks[saved_idx],
            skipped_offsets=skipped_offsets,
            skipped_tracks=self.skipped_tracks[skipped_idx],
            user_rates=self.user_rates[rows],
            outcome_offsets=outcome_offsets,
            outcome_codes=self.outcome_codes[outcome_idx],
            outcome_rates=self.outcome_rates[outcome_idx],
            vectors=None if self.vectors is None else self.vectors[rows],
            has_vector=None if self.has_vector is None else self.has_vector[rows],
        )


def _sorted_by_id(frame: pd.DataFrame, key: str, columns: list[str], what: str) -> tuple[pd.DataFrame, np.ndarray]:
    """``frame`` sorted by ``key`` and its ids int64[n]; raises if columns are missing or ids repeat."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")
    frame = frame.sort_values(key, kind="stable")
    ids = frame[key].to_numpy(np.int64)
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        raise ValueError(f"{what} has duplicate {key.removesuffix('_id')} ids")
    return frame, ids


def _ragged(series: pd.Series, value_type: pa.DataType | None) -> tuple[np.ndarray, pa.Array]:
    """(offsets int64[n+1], flat values) of a list column; null lists count as empty."""
    if value_type is None:
        # Spark hands empty struct lists over as empty float arrays, which Arrow cannot mix with structs.
        series = series.map(lambda v: None if v is None or len(v) == 0 else list(v))
    lists = pa.array(series, type=None if value_type is None else pa.list_(value_type), from_pandas=True)
    if lists.type == pa.null():  # no rows, or every row null
        return np.zeros(len(series) + 1, np.int64), pa.array([], type=value_type or pa.null())
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.r_[0, np.cumsum(lengths)].astype(np.int64), lists.flatten()


def _genre_structs(series: pd.Series, genres: np.ndarray, fields: tuple[str, ...]
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(offsets int64[n+1], genre codes int32[k] into ``genres``, float32[k] per field) of a column of
    lists of structs with a ``genre`` field."""
    offsets, flat = _ragged(series, None)
    if not len(flat):
        return offsets, np.zeros(0, np.int32), [np.zeros(0, np.float32) for _ in fields]
    names = flat.field("genre").to_numpy(zero_copy_only=False)
    codes = pd.Categorical(names, categories=genres).codes.astype(np.int32)
    return offsets, codes, [flat.field(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in fields]


def _take_ragged(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new offsets, flat indices into the old values) for the lists at ``rows``."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    new_offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    flat = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return new_offsets, flat


def _owners(offsets: np.ndarray) -> np.ndarray:
    """Row of each flat value: int64[offsets[-1]]."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def _vector_column(column: pd.Series) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A column of per-row vectors (null allowed) as float32[n, dim] + bool[n]."""
    present = column.notna().to_numpy()
    if not present.any():
        return None, None
    dim = len(column[present].iloc[0])
    out = np.zeros((len(column), dim), np.float32)
    out[present] = np.stack(column[present].to_numpy()).astype(np.float32)
    return out, present


# ---------------------------------------------------------------------------- the context


@dataclass(frozen=True)
class FeatureContext:
    """Everything :func:`build_ranker_features` looks up, built once per week.

    genres: str[g], sorted vocabulary. track_ids: int64[t] sorted; track_artist int64[t];
    track_genre int32[t] (-1 unknown genre); track_features float32[t, len(TRACK_FEATURES)].
    item2vec / audio: (ids int64[n] sorted, float32[n, dim] unit vectors) — audio vectors live in
    the item2vec space. two_tower: (ids int64[n] sorted, float32[n, dim] raw item-tower outputs).
    users: every user's inputs, or None when per-user inputs come with each batch.
    """

    genres: np.ndarray
    track_ids: np.ndarray
    track_artist: np.ndarray
    track_genre: np.ndarray
    track_features: np.ndarray
    item2vec_ids: np.ndarray
    item2vec_vectors: np.ndarray
    audio_ids: np.ndarray
    audio_vectors: np.ndarray
    two_tower_ids: np.ndarray
    two_tower_vectors: np.ndarray
    artist_ids: np.ndarray
    artist_item2vec: np.ndarray
    artist_audio: np.ndarray
    users: UserInputs | None = None

    @classmethod
    def build(
        cls,
        user_profiles: pd.DataFrame | None,
        track_stats: pd.DataFrame,
        item2vec: tuple[np.ndarray, np.ndarray],
        audio: tuple[np.ndarray, np.ndarray],
        two_tower_users: tuple[np.ndarray, np.ndarray] | None,
        two_tower_tracks: tuple[np.ndarray, np.ndarray],
    ) -> FeatureContext:
        """From week W's gold tables and model vectors, each (ids int64[n], float32[n, dim]).

        ``user_profiles`` None (and ``two_tower_users`` None): a track-only context, for batches
        that bring their users' profiles with them.
        """
        stats, track_ids = _sorted_by_id(track_stats, "track_id", TRACK_COLUMNS, "track_stats")
        genres = np.array(sorted(stats["genre"].dropna().unique().tolist()), dtype=str)
        track_artist = stats["artist_id"].to_numpy(np.int64)
        if len(track_artist) and (track_artist.min() < 0 or track_artist.max() >= MAX_KEY_PART):
            raise ValueError("artist ids must be in [0, 2**31)")
        track_features = np.column_stack([
            stats["popularity_percentile"].to_numpy(np.float64),
            np.log1p(stats["plays"].to_numpy(np.float64)),
            np.log1p(stats["listeners"].to_numpy(np.float64)),
            np.log1p(stats["plays_last_week"].to_numpy(np.float64)),
            stats["save_rate"].to_numpy(np.float64),
            stats["skip_rate"].to_numpy(np.float64),
            stats["early_skip_rate"].to_numpy(np.float64),
            stats["age_days"].to_numpy(np.float64),
            stats["is_new_release"].to_numpy(np.float64),
            stats["is_cold"].to_numpy(np.float64),
            *_artist_rates(stats, track_artist),
        ]).astype(np.float32)  # fmt: skip
        users = None
        if user_profiles is not None:
            users = UserInputs.from_frame(user_profiles, genres, two_tower_users)
        item2vec_ids, item2vec_vectors = _sorted_vectors(*item2vec, unit=True)
        audio_ids, audio_vectors = _sorted_vectors(*audio, unit=True)
        two_tower_ids, two_tower_vectors = _sorted_vectors(*two_tower_tracks, unit=False)
        artist_ids = np.unique(track_artist)
        return cls(
            genres=genres,
            track_ids=track_ids,
            track_artist=track_artist,
            track_genre=pd.Categorical(stats["genre"], categories=genres).codes.astype(np.int32),
            track_features=track_features,
            item2vec_ids=item2vec_ids,
            item2vec_vectors=item2vec_vectors,
            audio_ids=audio_ids,
            audio_vectors=audio_vectors,
            two_tower_ids=two_tower_ids,
            two_tower_vectors=two_tower_vectors,
            artist_ids=artist_ids,
            artist_item2vec=_artist_centroids(artist_ids, track_ids, track_artist, item2vec_ids, item2vec_vectors),
            artist_audio=_artist_centroids(artist_ids, track_ids, track_artist, audio_ids, audio_vectors),
            users=users,
        )

    def without_users(self) -> FeatureContext:
        """The track-side part, small enough to broadcast whatever the number of users."""
        return replace(self, users=None)

    def to_bytes(self) -> bytes:
        """An uncompressed ``.npz`` (no pickle), for shipping to executors."""
        arrays = {name: getattr(self, name) for name in _CONTEXT_ARRAYS}
        if self.users is not None:
            for name in _USER_ARRAYS:
                value = getattr(self.users, name)
                if value is not None:
                    arrays[f"user__{name}"] = value
        return npz_bytes({**arrays, "_meta": np.frombuffer(json.dumps({"version": 1}).encode(), np.uint8)})

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureContext:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        users = None
        if "user__user_ids" in arrays:
            users = UserInputs(**{name: arrays.get(f"user__{name}") for name in _USER_ARRAYS})
        return cls(**{name: arrays[name] for name in _CONTEXT_ARRAYS}, users=users)

    @classmethod
    def unpack(cls, data: bytes | str | Path | BinaryIO, folder: str | Path) -> None:
        """Write what ``to_bytes`` wrote (the bytes, or a seekable file or path holding them) as plain files
        ``open`` memory-maps: every array as ``<name>.npy`` (per-user ones as ``user__<name>.npy``), one
        array in memory at a time."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with np.load(io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False) as npz:
            for name in npz.files:
                np.save(folder / f"{name}.npy", npz[name], allow_pickle=False)

    @classmethod
    def open(cls, folder: str | Path, mmap: bool = True) -> FeatureContext:
        """Open what ``unpack`` wrote; with ``mmap`` every array stays in its file (read-only), so all
        processes of a host share one copy through the page cache. Features are identical to
        ``from_bytes``'s context's."""
        folder = Path(folder)

        def load(name: str) -> np.ndarray | None:
            path = folder / f"{name}.npy"
            return host_cache.load_array(path, mmap) if path.exists() else None

        users = None
        if (folder / "user__user_ids.npy").exists():
            users = UserInputs(**{name: load(f"user__{name}") for name in _USER_ARRAYS})
        arrays = {name: load(name) for name in _CONTEXT_ARRAYS}
        missing = [name for name, value in arrays.items() if value is None]
        if missing:
            raise FileNotFoundError(f"{folder} lacks context arrays {missing}")
        return cls(**arrays, users=users)


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # every member's zip timestamp: equal models give equal bytes


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez``'s uncompressed ``.npz`` (``np.load`` reads it), but the same bytes for the same arrays:
    the members' timestamps are fixed, so the content digest naming a shipped set (``payload_key``, the host
    cache's folder) does not change from one run to the next."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", ZIP_EPOCH), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


_CONTEXT_ARRAYS = (
    "genres", "track_ids", "track_artist", "track_genre", "track_features", "item2vec_ids",
    "item2vec_vectors", "audio_ids", "audio_vectors", "two_tower_ids", "two_tower_vectors", "artist_ids",
    "artist_item2vec", "artist_audio",
)  # fmt: skip
_USER_ARRAYS = tuple(UserInputs.__dataclass_fields__)


def _artist_rates(stats: pd.DataFrame, track_artist: np.ndarray) -> list[np.ndarray]:
    """Artist-level outcome rates and the track's rates shrunk toward them: 3 + 1 + 3 float64[t] columns
    (``TRACK_FEATURES`` order). A track with few plays says little about itself; its artist's other
    tracks say more (the same artist tends to please or bore the same listeners), and a track
    nobody has played yet gets its artist's rates.

    Empirical Bayes, per rate: the prior strength (in plays) is a method-of-moments Beta fit to the
    play-weighted spread of the rates themselves, m (1 - m) / var - 1, so it follows from the week's
    data: artists shrink toward the catalog's rate, tracks toward their (shrunk) artist's.
    """
    plays = stats["plays"].to_numpy(np.float64)
    _, artist_row = np.unique(track_artist, return_inverse=True)
    artist_plays = np.bincount(artist_row, weights=plays)
    artist, shrunk = [], []
    for name in RATE_COLUMNS:
        rate = np.nan_to_num(stats[name].to_numpy(np.float64), nan=0.0)
        hits = rate * plays
        prior = _beta_strength(rate, plays)
        overall = hits.sum() / plays.sum() if plays.sum() > 0 else np.nan
        per_artist = (np.bincount(artist_row, weights=hits) + prior * overall) / (artist_plays + prior)
        artist.append(per_artist[artist_row])
        shrunk.append((hits + prior * per_artist[artist_row]) / (plays + prior))
    return [*artist, np.log1p(artist_plays[artist_row]), *shrunk]


def _beta_strength(rate: np.ndarray, plays: np.ndarray) -> float:
    """Prior strength (pseudo-plays) of a Beta fitted by moments to play-weighted rates, at least 1."""
    played = plays > 0
    if played.sum() < 2:
        return 1.0
    mean = np.average(rate[played], weights=plays[played])
    var = np.average((rate[played] - mean) ** 2, weights=plays[played])
    if var <= 0 or not 0.0 < mean < 1.0:
        return 1.0
    return float(max(mean * (1.0 - mean) / var - 1.0, 1.0))


def _artist_centroids(artist_ids: np.ndarray, track_ids: np.ndarray, track_artist: np.ndarray,
                      ids: np.ndarray, unit_vectors: np.ndarray) -> np.ndarray:
    """Unit mean vector of each artist's tracks that have a vector: float32[a, dim] (zeros: none)."""
    rows = _index_of(ids, track_ids)
    has = rows >= 0
    artist_row = np.searchsorted(artist_ids, track_artist[has])
    sums = np.zeros((len(artist_ids), unit_vectors.shape[1]), np.float64)
    np.add.at(sums, artist_row, unit_vectors[rows[has]])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def _sorted_vectors(ids: np.ndarray, vectors: np.ndarray, unit: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64[n] ascending, float32[n, dim]); rows scaled to unit L2 norm when ``unit``."""
    ids = np.asarray(ids, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    if unit:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def _aligned_vectors(user_ids: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors in ``user_ids`` order: float32[u, dim] (zeros where absent) and bool[u]."""
    ids, vectors = _sorted_vectors(ids, vectors, unit=False)
    rows = _index_of(ids, user_ids)
    out = np.zeros((len(user_ids), vectors.shape[1]), np.float32)
    out[rows >= 0] = vectors[rows[rows >= 0]]
    return out, rows >= 0


def _index_of(sorted_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each wanted id in ``sorted_ids``: int64[q], -1 where absent."""
    wanted = np.asarray(wanted, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == wanted, pos, -1).astype(np.int64)


# ---------------------------------------------------------------------------- features


def build_ranker_features(
    candidates: pd.DataFrame, context: FeatureContext, users: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Feature matrix of a batch of candidates: float32[n, len(FEATURE_NAMES)], index and row order of ``candidates``.

    candidates: columns :data:`CANDIDATE_COLUMNS` (ranks int, 1-based, 0 = not from that source;
    scores float, NaN = not from that source), optionally ``list_position`` (training rows only, see
    :func:`training_examples`; absent or null = :data:`INFERENCE_POSITION`). ``users``: the batch's per-user frame (columns
    :data:`USER_COLUMNS`, optional ``user_vector``); None uses ``context.users``. Users or tracks
    the inputs do not know get NaN in the features that need them.
    """
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidates lack columns {missing}")
    if users is not None:
        inputs = UserInputs.from_frame(users, context.genres)
    elif context.users is not None:
        inputs = context.users
    else:
        raise ValueError("no per-user inputs: pass users= or build the context with user_profiles")
    user_id = candidates["user_id"].to_numpy(np.int64)
    track_id = candidates["track_id"].to_numpy(np.int64)
    # Only the batch's own users: per-user work below is then proportional to the batch.
    batch_users = _index_of(inputs.user_ids, np.unique(user_id))
    inputs = inputs.take(batch_users[batch_users >= 0])
    user_row = _index_of(inputs.user_ids, user_id)
    track_row = _index_of(context.track_ids, track_id)
    known_user = user_row >= 0
    n = len(candidates)
    out: dict[str, np.ndarray] = {}

    ranks = {s: candidates[f"{s}_rank"].to_numpy(np.float32) for s in SOURCES}
    for source in SOURCES:
        out[f"from_{source}"] = (ranks[source] > 0).astype(np.float32)
    out["n_sources"] = sum(out[f"from_{s}"] for s in SOURCES).astype(np.float32)
    for source in SOURCES:
        out[f"{source}_rank"] = np.where(ranks[source] > 0, ranks[source], np.nan).astype(np.float32)
    for source in ("item2vec", "audio"):
        out[f"{source}_score"] = candidates[f"{source}_score"].to_numpy(np.float32)

    listed_score = candidates["two_tower_score"].to_numpy(np.float32)
    if inputs.vectors is not None and len(context.two_tower_ids):
        if inputs.vectors.shape[1] != context.two_tower_vectors.shape[1]:
            raise ValueError("two-tower user and track vectors differ in dimension")
        with_vector = np.where(known_user & inputs.has_vector[np.maximum(user_row, 0)], user_row, -1)
        tt_row = _index_of(context.two_tower_ids, track_id)
        score = _rowwise_dot(inputs.vectors, with_vector, context.two_tower_vectors, tt_row)
        out["two_tower_score"] = np.where(np.isnan(score), listed_score, score).astype(np.float32)
    else:
        out["two_tower_score"] = listed_score

    # History affinity: cosine of the track to the mean of the user's recent tracks.
    recent = (inputs.recent_offsets, inputs.recent_tracks)
    i2v_taste, i2v_ok = _history_mean(recent, context.item2vec_ids, context.item2vec_vectors)
    audio_taste, audio_ok = _history_mean(recent, context.audio_ids, context.audio_vectors)
    i2v_user = np.where(known_user & i2v_ok[np.maximum(user_row, 0)], user_row, -1)
    audio_user = np.where(known_user & audio_ok[np.maximum(user_row, 0)], user_row, -1)
    i2v_track = _index_of(context.item2vec_ids, track_id)
    audio_track = _index_of(context.audio_ids, track_id)
    out["item2vec_affinity"] = _rowwise_dot(i2v_taste, i2v_user, context.item2vec_vectors, i2v_track)
    out["audio_affinity"] = _rowwise_dot(audio_taste, audio_user, context.audio_vectors, audio_track)
    # Audio vectors are regressed into the item2vec space: reaches cold tracks without item2vec vectors.
    if i2v_taste.shape[1] == context.audio_vectors.shape[1]:
        out["audio_item2vec_affinity"] = _rowwise_dot(i2v_taste, i2v_user, context.audio_vectors, audio_track)
    else:
        out["audio_item2vec_affinity"] = np.full(n, np.nan, np.float32)
    # The artist's centroid reaches tracks of an artist the user knows only by its other tracks,
    # and cold tracks (audio vectors cover the whole catalog).
    artist_row = _index_of(context.artist_ids, np.where(track_row >= 0, context.track_artist[np.maximum(track_row, 0)], -1))
    out["artist_item2vec_affinity"] = _rowwise_dot(i2v_taste, i2v_user, context.artist_item2vec, artist_row)
    out["artist_audio_affinity"] = _rowwise_dot(audio_taste, audio_user, context.artist_audio, artist_row)
    out["item2vec_max_similarity"] = _max_similarity(recent, user_row, context.item2vec_ids,
                                                     context.item2vec_vectors, i2v_track)
    out["audio_max_similarity"] = _max_similarity(recent, user_row, context.audio_ids, context.audio_vectors, audio_track)
    # Contrastive taste: positives include tracks merely tolerated; a save and a rejection within
    # seconds are the user's clearest signals, in both directions.
    saved = (inputs.saved_offsets, inputs.saved_tracks)
    skipped = (inputs.skipped_offsets, inputs.skipped_tracks)
    for space, ids, vectors, track in (("item2vec", context.item2vec_ids, context.item2vec_vectors, i2v_track),
                                       ("audio", context.audio_ids, context.audio_vectors, audio_track)):
        out[f"{space}_contrast"] = _contrast(saved, skipped, user_row, ids, vectors, track)
        out[f"{space}_saved_max_similarity"] = _max_similarity(saved, user_row, ids, vectors, track)

    known_track = track_row >= 0
    track_features = np.full((n, len(TRACK_FEATURES)), np.nan, np.float32)
    track_features[known_track] = context.track_features[track_row[known_track]]
    for j, name in enumerate(TRACK_FEATURES):
        out[name] = track_features[:, j]

    artist = np.where(known_track, context.track_artist[np.maximum(track_row, 0)], -1)
    genre = np.where(known_track, context.track_genre[np.maximum(track_row, 0)], -1)
    out["artist_history_share"] = _artist_history_share(inputs, context, user_row, artist)
    top_keys = _pair_keys(_owners(inputs.artist_offsets), inputs.top_artists)
    top_keys = top_keys[top_keys >= 0]
    out["is_top_artist"] = np.isin(_pair_keys(user_row, artist), top_keys).astype(np.float32)
    genre_keys = _pair_keys(_owners(inputs.genre_offsets), inputs.genre_codes)
    out["genre_share"] = _lookup(genre_keys, inputs.genre_shares, _pair_keys(user_row, genre), default=0.0)
    # The user's outcome rates in the candidate's genre; the user's overall rates in a genre they never played.
    outcome_keys = _pair_keys(_owners(inputs.outcome_offsets), inputs.outcome_codes)
    wanted = _pair_keys(user_row, genre)
    for j, name in enumerate(GENRE_OUTCOME_FEATURES):
        overall = np.where(known_user, inputs.user_rates[np.maximum(user_row, 0), j], np.nan)
        found = _lookup(outcome_keys, inputs.outcome_rates[:, j], wanted, default=np.nan)
        out[name] = np.where(known_track, np.where(np.isnan(found), overall, found), np.nan).astype(np.float32)
    user_popularity = np.where(known_user, inputs.mean_popularity[np.maximum(user_row, 0)], np.nan)
    out["popularity_gap"] = (out["popularity_percentile"] - user_popularity).astype(np.float32)
    for name in ("artist_history_share", "is_top_artist", "genre_share"):
        out[name] = np.where(known_user & known_track, out[name], np.nan).astype(np.float32)

    user_scalars = np.full((n, len(USER_FEATURES)), np.nan, np.float32)
    user_scalars[known_user] = inputs.scalars[user_row[known_user]]
    for j, name in enumerate(USER_FEATURES):
        out[name] = user_scalars[:, j]

    if LIST_POSITION_COLUMN in candidates.columns:
        out["list_position"] = candidates[LIST_POSITION_COLUMN].fillna(INFERENCE_POSITION).to_numpy(np.float32)
    else:
        out["list_position"] = np.full(n, INFERENCE_POSITION, np.float32)

    return pd.DataFrame({name: out[name] for name in FEATURE_NAMES}, index=candidates.index, dtype=np.float32)


def _rowwise_dot(left: np.ndarray, left_rows: np.ndarray, right: np.ndarray, right_rows: np.ndarray) -> np.ndarray:
    """left[left_rows[i]] . right[right_rows[i]]: float32[n], NaN where either row is -1."""
    out = np.full(len(left_rows), np.nan, np.float32)
    both = np.flatnonzero((left_rows >= 0) & (right_rows >= 0))
    for lo in range(0, len(both), DOT_CHUNK_ROWS):
        sel = both[lo : lo + DOT_CHUNK_ROWS]
        out[sel] = np.einsum("ij,ij->i", left[left_rows[sel]], right[right_rows[sel]])
    return out


def _max_similarity(lists: tuple[np.ndarray, np.ndarray], user_row: np.ndarray, ids: np.ndarray,
                    unit_vectors: np.ndarray, track_rows: np.ndarray) -> np.ndarray:
    """Cosine of each candidate to the nearest track with a vector of its user's list (``lists`` =
    (offsets, track ids), e.g. the recent positives): float32[n], NaN where the user or the track has
    none. One (list x candidates) product per user of the batch."""
    offsets, tracks = lists
    out = np.full(len(user_row), np.nan, np.float32)
    if len(ids) == 0 or len(user_row) == 0:
        return out
    recent_rows = _index_of(ids, tracks)
    rows = np.flatnonzero((user_row >= 0) & (track_rows >= 0))
    rows = rows[np.argsort(user_row[rows], kind="stable")]
    users, starts = np.unique(user_row[rows], return_index=True)
    for user, a, b in zip(users.tolist(), starts.tolist(), [*starts[1:].tolist(), len(rows)], strict=True):
        mine = recent_rows[offsets[user] : offsets[user + 1]]
        mine = mine[mine >= 0]
        if len(mine):
            sel = rows[a:b]
            out[sel] = (unit_vectors[track_rows[sel]] @ unit_vectors[mine].T).max(axis=1)
    return out


def _history_mean(lists: tuple[np.ndarray, np.ndarray], ids: np.ndarray,
                  unit_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean vector of the tracks with a vector of each user's list (``lists`` = (offsets, track
    ids), e.g. the recent positives): float32[u, dim] (zeros without one), bool[u]."""
    offsets, tracks = lists
    users = len(offsets) - 1
    if len(ids) == 0:
        return np.zeros((users, 1), np.float32), np.zeros(users, bool)
    owner = _owners(offsets)
    rows = _index_of(ids, tracks)
    keep = rows >= 0
    weights = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (owner[keep], rows[keep])), shape=(users, len(ids))
    )
    sums = np.asarray(weights @ unit_vectors, dtype=np.float32).reshape(users, unit_vectors.shape[1])
    norms = np.linalg.norm(sums, axis=1)
    ok = norms > 1e-12
    sums[ok] /= norms[ok, None]
    return sums, ok


def _contrast(liked: tuple[np.ndarray, np.ndarray], disliked: tuple[np.ndarray, np.ndarray], user_row: np.ndarray,
              ids: np.ndarray, unit_vectors: np.ndarray, track_rows: np.ndarray) -> np.ndarray:
    """cos(candidate, centroid of the user's ``liked`` tracks) - cos(candidate, centroid of ``disliked``):
    float32[n]; a side without tracks with vectors counts 0, NaN where neither side has one (or the
    track has no vector)."""
    like, like_ok = _history_mean(liked, ids, unit_vectors)
    dislike, dislike_ok = _history_mean(disliked, ids, unit_vectors)
    if len(ids) == 0:
        return np.full(len(user_row), np.nan, np.float32)
    known = user_row >= 0
    either = np.where(known & (like_ok | dislike_ok)[np.maximum(user_row, 0)], user_row, -1)
    return (_rowwise_dot(like, either, unit_vectors, track_rows)
            - _rowwise_dot(dislike, either, unit_vectors, track_rows)).astype(np.float32)


def _pair_keys(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(row, value) packed into one int64 per pair; -1 where either part is negative."""
    rows = np.asarray(rows, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    return np.where((rows >= 0) & (values >= 0), rows * MAX_KEY_PART + values, -1)


def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, default: float) -> np.ndarray:
    """values at the first occurrence of each wanted key (float32[q]); ``default`` where absent."""
    out = np.full(len(wanted), default, np.float32)
    order = np.argsort(keys, kind="stable")
    pos = _index_of(keys[order], wanted)
    hit = (wanted >= 0) & (pos >= 0)
    out[hit] = values[order][pos[hit]]
    return out


def _artist_history_share(
    inputs: UserInputs, context: FeatureContext, user_row: np.ndarray, artist: np.ndarray
) -> np.ndarray:
    """Share of the user's recent tracks by the candidate's artist: float32[n], 0 without history."""
    owner = _owners(inputs.recent_offsets)
    rows = _index_of(context.track_ids, inputs.recent_tracks)
    recent_artist = np.where(rows >= 0, context.track_artist[np.maximum(rows, 0)], -1)
    keys, counts = np.unique(_pair_keys(owner, recent_artist), return_counts=True)
    counts = np.where(keys >= 0, counts, 0)
    found = _lookup(keys, counts.astype(np.float32), _pair_keys(user_row, artist), default=0.0)
    history = np.diff(inputs.recent_offsets).astype(np.float32)
    size = np.where(user_row >= 0, history[np.maximum(user_row, 0)], 0.0)
    return np.where(size > 0, found / np.maximum(size, 1.0), 0.0).astype(np.float32)


# ---------------------------------------------------------------------------- training targets


def _positive_pairs(interactions_next: pd.DataFrame) -> pd.DataFrame:
    return interactions_next.loc[interactions_next["is_positive"].astype(bool)]


LABEL_SCHEMES = ("positive", "saved", "outcome")
# Outcome grades (label_scheme="outcome"): what a heard track did, worst to best. A save is what the
# product counts; an early skip also costs reach (the listener is likelier to stop the list).
EARLY_SKIP, SHORT_SKIP, LATE_SKIP, FULL_PLAY, SAVE = range(5)
OUTCOME_COLUMNS = ("is_early_skip", "is_skip")  # interactions columns the outcome grades need


def outcome_grades(plays: pd.DataFrame) -> np.ndarray:
    """Grade of each play (int8[n]): saved 4 > full play 3 > late skip (> 30 s, not full) 2 > short skip
    (10-30 s) 1 > early skip (< 10 s) 0, from the silver interactions' labels."""
    missing = [c for c in ("is_positive", "saved", *OUTCOME_COLUMNS) if c not in plays.columns]
    if missing:
        raise ValueError(f"outcome grades need interactions columns {missing}")
    saved = plays["saved"].astype(bool).to_numpy()
    positive = plays["is_positive"].astype(bool).to_numpy()
    skip = plays["is_skip"].astype(bool).to_numpy()
    early = plays["is_early_skip"].astype(bool).to_numpy()
    return np.select([saved, positive & ~skip, positive, ~early], [SAVE, FULL_PLAY, LATE_SKIP, SHORT_SKIP],
                     EARLY_SKIP).astype(np.int8)


def training_labels(
    candidates_prev: pd.DataFrame, interactions_next: pd.DataFrame, graded: bool = False, scheme: str | None = None
) -> pd.Series:
    """Relevance of each candidate of week W-1 from week W's interactions: int8[n], index of ``candidates_prev``.

    ``scheme`` (default "positive", or "saved" when ``graded``): "positive": 1 when the user has a
    positive interaction (play > 30 s or save) with the track in week W, else 0; "saved": 2 when one
    of those positives is a save; "outcome": the best :func:`outcome_grades` of the user's plays of the
    track in week W (0 = early skip ... 4 = saved), 0 for unheard candidates (rows="all" would treat
    them as early skips: use it with rows="exposed").
    """
    scheme = scheme or ("saved" if graded else "positive")
    if scheme not in LABEL_SCHEMES:
        raise ValueError(f"scheme must be one of {LABEL_SCHEMES}, got {scheme!r}")
    if scheme == "outcome":
        plays, grade = interactions_next, outcome_grades(interactions_next)
    else:
        plays = _positive_pairs(interactions_next)
        grade = (1 + plays["saved"].astype(np.int8)).to_numpy() if scheme == "saved" else np.ones(len(plays))
    best = (
        plays[["user_id", "track_id"]]
        .assign(label=np.asarray(grade, np.int8))
        .groupby(["user_id", "track_id"], as_index=False)["label"]
        .max()
    )
    merged = candidates_prev[["user_id", "track_id"]].merge(best, on=["user_id", "track_id"], how="left")
    return pd.Series(merged["label"].fillna(0).to_numpy(np.int8), index=candidates_prev.index, name="label")


def position_propensity(
    interactions: pd.DataFrame,
    list_size: int = DISCOVERY_LIST_SIZE,
    min_propensity: float = 0.05,
    context: str = DISCOVERY_CONTEXT,
) -> np.ndarray:
    """Examination propensity of each position of the legacy discovery list: float64[list_size], [0] = 1.

    A list's first track is always played, and a play is logged only when the listener got that
    far, so the share of (user, week) lists with a logged play at position p estimates the chance
    that position p is examined at all. Made non-increasing (a listener reaching p reached p-1;
    this also absorbs sampling noise) and clipped below at ``min_propensity`` to bound the weights.
    No discovery-list logs: all ones (no correction).
    """
    logged = interactions.loc[(interactions["context"] == context) & interactions["position"].notna()]
    position = logged["position"].to_numpy(np.int64)
    logged = logged.loc[(position >= 1) & (position <= list_size)]
    if logged.empty:
        return np.ones(list_size)
    week = 0  # one list per user and week: plays of a list may spread over several sessions
    if "ts" in logged.columns:
        week = (pd.to_datetime(logged["ts"], utc=True) - FIRST_MONDAY).dt.days.to_numpy() // 7
    lists = logged[["user_id", "position"]].assign(week=week).drop_duplicates()
    counts = np.bincount(lists["position"].to_numpy(np.int64) - 1, minlength=list_size).astype(np.float64)
    return propensity_from_counts(counts, min_propensity)


def propensity_from_counts(counts: np.ndarray, min_propensity: float = 0.05) -> np.ndarray:
    """The propensity of :func:`position_propensity` from its (user, week) list counts per position
    (float64[list_size]; also counted on Spark by ``ranking.batch.spark_position_propensity``)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts[0] == 0:
        return np.ones(len(counts))
    reached = np.minimum.accumulate(np.minimum(counts / counts[0], 1.0))
    return np.clip(reached, min_propensity, 1.0)


def position_weights(
    candidates_prev: pd.DataFrame,
    interactions_next: pd.DataFrame,
    propensity: np.ndarray,
    context: str = DISCOVERY_CONTEXT,
) -> pd.Series:
    """Inverse-propensity training weight of each candidate: float32[n], index of ``candidates_prev``.

    A positive seen only in the legacy discovery list at position p weighs 1 / propensity[p-1]
    (positions past the list use the last value); a positive also seen elsewhere weighs 1 (its
    discovery did not depend on the list position); negatives weigh 1.
    """
    positives = _positive_pairs(interactions_next)
    position = positives["position"].to_numpy(np.float64)
    in_list = (positives["context"] == context).to_numpy() & np.isfinite(position)
    slot = np.clip(np.nan_to_num(position, nan=1.0).astype(np.int64), 1, len(propensity)) - 1
    seen = np.where(in_list, np.asarray(propensity, dtype=np.float64)[slot], 1.0)
    best = (
        positives[["user_id", "track_id"]]
        .assign(seen=seen)
        .groupby(["user_id", "track_id"], as_index=False)["seen"]
        .max()
    )
    merged = candidates_prev[["user_id", "track_id"]].merge(best, on=["user_id", "track_id"], how="left")
    weight = 1.0 / merged["seen"].fillna(1.0).to_numpy(np.float64)
    return pd.Series(weight.astype(np.float32), index=candidates_prev.index, name="weight")


def observed_exposure(
    candidates_prev: pd.DataFrame, interactions_next: pd.DataFrame, context: str = DISCOVERY_CONTEXT
) -> pd.DataFrame:
    """Which candidates of week W-1 the user actually heard in week W, and with how much attention.

    Returns, index of ``candidates_prev``: exposed bool (any play of the pair in week W, positive or
    not) and list_position float32 (the discovery-list position when the pair was heard only from
    that list, lowest if several; 1 = full attention, for plays the user reached elsewhere and for
    unheard pairs).
    """
    plays = interactions_next[["user_id", "track_id"]].copy()
    position = interactions_next["position"].to_numpy(np.float64)
    in_list = (interactions_next["context"] == context).to_numpy() & np.isfinite(position)
    plays["list_position"] = np.where(in_list, np.maximum(position, 1.0), INFERENCE_POSITION)
    plays["organic"] = ~in_list
    pairs = plays.groupby(["user_id", "track_id"], as_index=False).agg(
        list_position=("list_position", "min"), organic=("organic", "any")
    )
    pairs.loc[pairs["organic"], "list_position"] = INFERENCE_POSITION
    merged = candidates_prev[["user_id", "track_id"]].merge(
        pairs[["user_id", "track_id", "list_position"]].assign(exposed=True), on=["user_id", "track_id"], how="left"
    )
    return pd.DataFrame(
        {
            "exposed": merged["exposed"].notna().to_numpy(),
            "list_position": merged["list_position"].fillna(INFERENCE_POSITION).to_numpy(np.float32),
        },
        index=candidates_prev.index,
    )


def training_examples(
    candidates_prev: pd.DataFrame,
    interactions_next: pd.DataFrame,
    rows: str = "exposed",
    graded: bool = False,
    min_propensity: float = 0.05,
    propensity: np.ndarray | None = None,
    scheme: str | None = None,
) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Week W-1's candidates as training examples labelled by week W: (candidates, labels, weights).

    rows="exposed": only the candidates the user heard in week W, positive or not, with their
    ``list_position`` column (the discovery-list slot they were heard at, 1 elsewhere); weights 1.
    The model learns P(positive | heard), which is what a delivered playlist decides.
    rows="all": every candidate, unheard ones as negatives; positives seen only in the legacy list
    weigh 1 / examination propensity of their position (no ``list_position``: it would only mark
    the played rows). This learns P(heard and positive), mostly exposure (see ranker.py).
    The candidates keep their index; featurize them with week W-1's context. ``propensity``: rows="all"'s
    position propensity when counted elsewhere (on Spark, over every user, when the candidates are a sample).
    ``graded`` / ``scheme``: the labels of :func:`training_labels`.
    """
    if rows not in TRAINING_ROWS:
        raise ValueError(f"rows must be one of {TRAINING_ROWS}, got {rows!r}")
    labels = training_labels(candidates_prev, interactions_next, graded=graded, scheme=scheme)
    if rows == "all":
        if propensity is None:
            propensity = position_propensity(interactions_next, min_propensity=min_propensity)
        return candidates_prev, labels, position_weights(candidates_prev, interactions_next, propensity)
    exposure = observed_exposure(candidates_prev, interactions_next)
    heard = exposure["exposed"].to_numpy()
    examples = candidates_prev.loc[heard].assign(**{LIST_POSITION_COLUMN: exposure["list_position"].loc[heard]})
    return examples, labels.loc[heard], pd.Series(1.0, index=examples.index, dtype=np.float32, name="weight")
