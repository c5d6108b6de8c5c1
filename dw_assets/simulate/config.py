"""Size and shape of the synthetic music world, plus named presets.

Every random draw in the simulator is seeded from ``SimulationConfig.seed``
through :func:`rng_for`, which derives an independent stream per component
(and per week), so changing one part of the world does not shift the others.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

from dw_assets.calendar import week_range, week_start


@dataclass(frozen=True)
class SimulationConfig:
    """World size and behaviour knobs. Defaults are the ``small`` demo world.

    ``weeks`` counts the TRAINING weeks; one holdout week is always generated
    after them.
    """

    seed: int = 7
    preset: str | None = None
    users: int = 20_000
    tracks: int = 50_000
    weeks: int = 8
    new_tracks_per_week: int = 600
    new_users_per_week: int = 500
    bots: int = 20
    bad_event_rate: float = 0.005  # fraction of landed lines that are malformed
    audio_seconds: float = 1.0
    sample_rate: int = 8000
    start_week: str = "2026-01-05"  # first training week key (a Monday)
    n_genres: int = 16
    dim: int = 16  # hidden taste/style space
    plays_per_user_week: float = 10.0  # median weekly plays of an active human
    activity_sigma: float = 1.0  # lognormal spread of user activity
    weekly_active_share: float = 0.8
    dormant_new_user_share: float = 0.4  # new users with no plays in their signup week
    discover_weekly_share: float = 0.35  # active users who open the legacy discovery list
    repeat_share: float = 0.3  # plays that revisit an already-liked track
    playlists_per_user: float = 1.0  # mean playlists per user at the start
    new_playlist_rate: float = 0.03  # per active user per week
    popularity_tail: float = 1.1  # Pareto exponent of track popularity (smaller = heavier)
    bot_min_plays: int = 300  # plays per bot per week
    bot_max_plays: int = 3000
    hijacked_sessions_per_week: int = 3
    replay_rate: float = 0.002  # valid events re-sent with a new event_id
    bad_audio_per_kind: int = 3
    lines_per_file: int = 500_000

    def __post_init__(self) -> None:
        week_start(self.start_week)  # raises unless a Monday
        if self.seed < 0:
            raise ValueError("seed must be non-negative")
        positive = ("users", "tracks", "weeks", "n_genres", "dim", "sample_rate", "lines_per_file")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.bad_event_rate < 0.5:
            raise ValueError("bad_event_rate must be in [0, 0.5)")
        if self.audio_seconds <= 0:
            raise ValueError("audio_seconds must be positive")
        if self.bot_min_plays > self.bot_max_plays:
            raise ValueError("bot_min_plays must not exceed bot_max_plays")

    @property
    def training_weeks(self) -> list[str]:
        return week_range(self.start_week, self.weeks)

    @property
    def all_weeks(self) -> list[str]:
        """Training weeks followed by the holdout week."""
        return week_range(self.start_week, self.weeks + 1)

    @property
    def holdout_week(self) -> str:
        return self.all_weeks[-1]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, SimulationConfig] = {
    "tiny": SimulationConfig(
        preset="tiny",
        users=300,
        tracks=2_000,
        weeks=4,
        new_tracks_per_week=40,
        new_users_per_week=15,
        bots=3,
        audio_seconds=0.5,
        bot_min_plays=200,
        bot_max_plays=800,
        hijacked_sessions_per_week=1,
        bad_audio_per_kind=2,
    ),
    "small": SimulationConfig(preset="small"),
    "large": SimulationConfig(
        preset="large",
        users=200_000,
        tracks=500_000,
        weeks=8,
        new_tracks_per_week=5_000,
        new_users_per_week=4_000,
        bots=100,
        audio_seconds=0.5,
        hijacked_sessions_per_week=10,
        bad_audio_per_kind=5,
        lines_per_file=1_000_000,
    ),
}


def config_for(preset: str | None = "small", **overrides) -> SimulationConfig:
    """The named preset with explicit overrides applied; ``None`` overrides are ignored."""
    if preset is None:
        base = SimulationConfig()
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(SimulationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown simulation settings: {unknown}")
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def rng_for(seed: int, component: str, *index: int) -> np.random.Generator:
    """Independent generator for one component (and e.g. one week) of the world."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(component.encode()), *index]))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that spreads every input bit over the output."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class KeyedDraws:
    """Random draws that belong to keyed rows, not to the rows' place in a batch.

    Element i of every call depends only on (seed, component, index, ``keys[i]``, the call's number), so
    the same row draws the same numbers whatever other rows share the batch. Offline evaluation keys the
    listener's draws by (user, list position): two systems' lists for a user meet the same listener
    mood at each slot (common random numbers), and identical lists get identical outcomes.
    Offers the two ``np.random.Generator`` methods the listener uses: ``random`` and ``normal``.
    """

    def __init__(self, seed: int, component: str, index: int, keys: np.ndarray):
        words = np.random.SeedSequence([seed, zlib.crc32(component.encode()), index]).generate_state(1, np.uint64)
        with np.errstate(over="ignore"):
            self._keys = _mix64(np.asarray(keys, np.uint64) ^ words[0])
        self._calls = 0

    def random(self, n: int) -> np.ndarray:
        """float64[n] uniform in [0, 1); ``n`` must be the number of keys."""
        if n != len(self._keys):
            raise ValueError(f"KeyedDraws has {len(self._keys)} keys, asked for {n} draws")
        self._calls += 1
        with np.errstate(over="ignore"):
            bits = _mix64(self._keys + np.uint64(self._calls) * _GOLDEN)
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: int | None = None) -> np.ndarray:
        from scipy.special import ndtri

        u = self.random(len(self._keys) if size is None else size)
        return loc + scale * ndtri(np.clip(u, 2.0**-54, 1.0 - 2.0**-53))


def row_keys(*columns: np.ndarray) -> np.ndarray:
    """One uint64 key per row from int64 columns (e.g. user_id, position)."""
    key = np.zeros(len(columns[0]), np.uint64)
    with np.errstate(over="ignore"):
        for column in columns:
            key = _mix64(key * _GOLDEN + np.asarray(column, np.int64).astype(np.uint64))
    return key
