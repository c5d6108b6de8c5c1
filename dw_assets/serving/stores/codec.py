"""The stored value of one user's playlist and the checks every store runs before writing.

One value per (week, user): the user's tracks ordered by position, encoded once at publish time as
the JSON array the HTTP API returns, zlib-compressed (4.3 kB -> ~1 kB for 30 tracks; inflating costs
~10 us), so a GET is one key lookup and no JSON re-encoding.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import orjson
import pandas as pd

from dw_assets.calendar import week_start

TRACK_FIELDS = ("position", "track_id", "score", "source", "is_exploration", "artist_id", "genre")
PLAYLIST_COLUMNS = ("user_id", *TRACK_FIELDS)
MAX_POSITION = 30
MAX_USER_ID = 2**63 - 1  # user ids are int64
WEEK_S = 7 * 86400
_ZLIB_LEVEL = 6  # level 1 saves ~10 us per user at publish for 12 % more bytes

Progress = Callable[[int], None]




def check_week(week: str) -> str:
    """``week`` if it is a week key (ISO date of a Monday), else ValueError."""
    week_start(week)
    return week


def validate_playlists(playlists: pd.DataFrame) -> None:
    """Raise ValueError unless ``playlists`` has PLAYLIST_COLUMNS, no nulls, finite scores,
    non-negative user ids, positions in 1..30 and at most one track per (user_id, position)."""
    missing = [c for c in PLAYLIST_COLUMNS if c not in playlists.columns]
    if missing:
        raise ValueError(f"playlists lack columns {missing}")
    nulls = [c for c in PLAYLIST_COLUMNS if playlists[c].isna().any()]
    if nulls:
        raise ValueError(f"playlists have nulls in {nulls}")
    position = playlists["position"].to_numpy()
    if ((position < 1) | (position > MAX_POSITION)).any():
        raise ValueError(f"positions must be in 1..{MAX_POSITION}")
    if (playlists["user_id"].to_numpy() < 0).any():
        raise ValueError("user ids must be non-negative")
    if not np.isfinite(playlists["score"].to_numpy(np.float64)).all():
        raise ValueError("scores must be finite")
    if playlists.duplicated(["user_id", "position"]).any():
        raise ValueError("a user has two tracks at the same position")


def _sorted_frame(playlists: pd.DataFrame) -> pd.DataFrame:
    return playlists.sort_values(["user_id", "position"], kind="stable", ignore_index=True)


def _user_bounds(sorted_playlists: pd.DataFrame) -> np.ndarray:
    """Row offsets where each user's rows start, plus the end: int64[n_users + 1]."""
    users = sorted_playlists["user_id"].to_numpy(np.int64)
    if not len(users):
        return np.zeros(1, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return np.r_[starts, len(users)].astype(np.int64)


def _encode_sorted(frame: pd.DataFrame, bounds: np.ndarray) -> list[tuple[int, bytes]]:
    columns = (
        frame["position"].astype(np.int64).tolist(),
        frame["track_id"].astype(np.int64).tolist(),
        frame["score"].astype(np.float64).tolist(),  # float32 -> float64 is exact, so reads compare equal
        frame["source"].astype(str).tolist(),
        frame["is_exploration"].astype(bool).tolist(),
        frame["artist_id"].astype(np.int64).tolist(),
        frame["genre"].astype(str).tolist(),
    )
    tracks = [dict(zip(TRACK_FIELDS, values, strict=True)) for values in zip(*columns, strict=True)]
    offsets = bounds - bounds[0]  # bounds may describe a slice of a bigger frame
    users = frame["user_id"].to_numpy(np.int64)[offsets[:-1]].tolist()
    starts, stops = offsets[:-1].tolist(), offsets[1:].tolist()
    dumps, compress = orjson.dumps, zlib.compress
    return [(user, compress(dumps(tracks[a:b]), _ZLIB_LEVEL)) for user, a, b in zip(users, starts, stops, strict=True)]


def encode_playlists(playlists: pd.DataFrame) -> list[tuple[int, bytes]]:
    """(user_id, stored value) per user, ascending user_id: the zlib-compressed JSON array of the
    user's tracks ordered by position, each an object with TRACK_FIELDS.

    playlists: PLAYLIST_COLUMNS rows (any order). Scores are written as float64, so a float32
    score reads back as the same number.
    """
    frame = _sorted_frame(playlists)
    return _encode_sorted(frame, _user_bounds(frame))


def tracks_json(blob: bytes) -> bytes:
    """A stored value as the tracks JSON array (UTF-8 bytes)."""
    return zlib.decompress(blob)


def decode_tracks(blob: bytes) -> list[dict]:
    """A stored value back to ``[{"position", "track_id", ...}, ...]``."""
    return orjson.loads(zlib.decompress(blob))


def iter_user_batches(playlists: pd.DataFrame, batch_users: int) -> Iterator[list[tuple[int, bytes]]]:
    """encode_playlists in batches of at most ``batch_users`` users (bounded memory for big weeks)."""
    frame = _sorted_frame(playlists)
    bounds = _user_bounds(frame)
    n_users = len(bounds) - 1
    for first in range(0, n_users, batch_users):
        last = min(first + batch_users, n_users)
        a, b = int(bounds[first]), int(bounds[last])
        yield _encode_sorted(frame.iloc[a:b], bounds[first : last + 1])


def new_version() -> str:
    """A fresh write version: milliseconds since the epoch (hex, sortable) + random suffix."""
    return f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:8]}"
