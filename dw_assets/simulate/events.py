"""A week of human listening: who is active, sessions, contexts, which
tracks, outcomes and timestamps — all vectorized over the week's plays."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from dw_assets.calendar import week_range
from dw_assets.simulate.behaviour import Outcomes, end_sessions, listen, reach
from dw_assets.simulate.catalog import Catalog
from dw_assets.simulate.config import SimulationConfig
from dw_assets.simulate.discovery import TrackSampler, affinity, discover, ranked_picks
from dw_assets.simulate.playlists import PlaylistIndex
from dw_assets.simulate.population import PLATFORMS, UTC_OFFSET_H, Population

CONTEXTS = ("playlist", "album", "search", "radio", "discover_weekly")
PLAYLIST, ALBUM, SEARCH, RADIO, DISCOVER = range(len(CONTEXTS))
SESSION_CONTEXT_SHARE = np.array([0.3, 0.15, 0.15, 0.4])  # playlist, album, search, radio
MEAN_SESSION_PLAYS = 10
SEARCH_TEMPERATURE = 0.05  # searchers know what they want
RADIO_TEMPERATURE = 0.25  # the radio picks for the listener, less precisely
DISCOVERY_LIST_SIZE = 30
LEGACY_RECOMMENDER_NOISE = 0.25  # the incumbent discovery list is a noisy ranking on affinity
PRIMARY_PLATFORM_SHARE = 0.85
PRE_HISTORY_LIKES = 10  # mean liked tracks of an existing user before the first week
SECOND, HOUR, DAY = 1_000, 3_600_000, 86_400_000
WEEK_MS = 7 * DAY
MIN_SESSION_GAP = 20 * 60 * SECOND
# Relative listening by local hour of day: quiet nights, commute and evening peaks.
DIURNAL = np.array(
    [1.0, 0.6, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 2.2, 2.0, 1.8, 1.9,
     2.3, 2.2, 2.0, 2.0, 2.2, 2.6, 3.0, 3.2, 3.1, 2.8, 2.2, 1.5]
)  # fmt: skip


@dataclass
class Plays:
    """Columnar plays (indices, not ids)."""

    user: np.ndarray  # int64
    track: np.ndarray  # int64
    ts_ms: np.ndarray  # int64, ms since epoch
    ms_played: np.ndarray  # int64
    reason: np.ndarray  # int8, index into behaviour.REASONS
    saved: np.ndarray  # bool
    context: np.ndarray  # int8, index into CONTEXTS
    playlist: np.ndarray  # int64, playlist index or -1
    position: np.ndarray  # int32, 0 = no position
    platform: np.ndarray  # int8, index into PLATFORMS

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx: np.ndarray) -> Plays:
        return Plays(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Plays]) -> Plays:
        return Plays(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Plays)})

    @staticmethod
    def build(n: int, **cols) -> Plays:
        """Plays with defaults for the columns not given."""
        defaults = dict(
            saved=np.zeros(n, dtype=bool),
            playlist=np.full(n, -1, dtype=np.int64),
            position=np.zeros(n, dtype=np.int32),
        )
        defaults.update(cols)
        return Plays(**defaults)


class Favourites:
    """Tracks each user has responded positively to, for repeat listening."""

    def __init__(self, n_tracks: int):
        self.n_tracks = n_tracks
        self.keys = np.zeros(0, dtype=np.int64)  # user * n_tracks + track, sorted and unique

    def add(self, users: np.ndarray, tracks: np.ndarray) -> None:
        new = np.sort(users.astype(np.int64) * self.n_tracks + tracks)
        new = new[np.r_[True, new[1:] != new[:-1]]] if len(new) else new
        at = np.minimum(np.searchsorted(self.keys, new), max(len(self.keys) - 1, 0))
        known = self.keys[at] == new if len(self.keys) else np.zeros(len(new), dtype=bool)
        self.keys = np.insert(self.keys, np.searchsorted(self.keys, new[~known]), new[~known])

    def count(self, users: np.ndarray) -> np.ndarray:
        lo = np.searchsorted(self.keys, users * self.n_tracks)
        return np.searchsorted(self.keys, (users + 1) * self.n_tracks) - lo

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random favourite of each user (who must have at least one)."""
        lo = np.searchsorted(self.keys, users * self.n_tracks)
        pick = lo + (rng.random(len(users)) * self.count(users)).astype(np.int64)
        return self.keys[pick] % self.n_tracks


def week_bounds_ms(config: SimulationConfig, week_index: int) -> tuple[int, int]:
    start = int(np.datetime64(week_range(config.start_week, week_index + 1)[-1], "ms").astype(np.int64))
    return start, start + WEEK_MS


def seed_favourites(
    fav: Favourites, pop: Population, catalog: Catalog, rng: np.random.Generator, playlist_tracks: tuple
) -> None:
    """Listening history from before the simulation: playlist tracks plus a few discoveries."""
    owners, tracks = playlist_tracks
    humans = np.flatnonzero(~pop.is_bot & (pop.signup_week < 0))
    n = rng.poisson(PRE_HISTORY_LIKES, len(humans))
    users = np.repeat(humans, n)
    found = discover(pop, catalog, TrackSampler(catalog, 0), users, rng)
    fav.add(np.r_[owners, users], np.r_[tracks, found])


def _active_users(
    config: SimulationConfig, pop: Population, week_index: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Active humans of the week and their play budgets."""
    start, end = week_bounds_ms(config, week_index)
    joined = pop.signup_ms < end
    this_week = pop.signup_week == week_index
    eligible = ~pop.is_bot & joined & ~(pop.dormant & this_week)
    # New users play in their first weeks; dormant signups of last week start now.
    forced = (pop.signup_week == week_index - 1) | this_week
    active = eligible & (forced | (rng.random(pop.n_users) < config.weekly_active_share))
    users = np.flatnonzero(active)
    window = (end - np.maximum(pop.signup_ms[users], start)) / WEEK_MS
    plays = 1 + rng.poisson(pop.activity[users] * np.clip(window, 0.15, 1.0))
    return users, plays


def _hour_cdf() -> np.ndarray:
    """cdf[country, hour of week in UTC] of session starts."""
    local = np.arange(7 * 24)[None, :] + UTC_OFFSET_H[:, None]
    weekend = ((local // 24) % 7 >= 5) * 0.15 + 1.0
    w = DIURNAL[local % 24] * weekend
    return np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True)


HOUR_CDF = _hour_cdf()


def _session_starts(users: np.ndarray, pop: Population, start: int, rng: np.random.Generator) -> np.ndarray:
    """Diurnal start times inside each user's window (not before signup)."""
    lo = np.maximum(pop.signup_ms[users], start)
    first_hour = np.minimum((lo - start) // HOUR, 7 * 24 - 1)
    u = rng.random(len(users))
    hour = np.empty(len(users), dtype=np.int64)
    country = pop.country[users]
    for c in np.unique(country):
        sel = np.flatnonzero(country == c)
        cdf = HOUR_CDF[c]
        # Inverse-cdf draw restricted to the hours after the window opens.
        floor = np.where(first_hour[sel] > 0, cdf[np.maximum(first_hour[sel] - 1, 0)], 0.0)
        hour[sel] = np.searchsorted(cdf, floor + u[sel] * (1.0 - floor), side="right")
    hour = np.minimum(hour, 7 * 24 - 1)
    return np.maximum(start + hour * HOUR + rng.integers(0, HOUR, len(users)), lo)


def _lay_out_sessions(sess_user: np.ndarray, sess_start: np.ndarray, sess_len: np.ndarray) -> np.ndarray:
    """Push each user's sessions apart so they never overlap; returns new starts."""
    order = np.lexsort((sess_start, sess_user))
    u, s, d = sess_user[order], sess_start[order].copy(), sess_len[order]
    first = np.r_[True, u[1:] != u[:-1]]
    rank = np.arange(len(u)) - np.maximum.accumulate(np.where(first, np.arange(len(u)), 0))
    for r in range(1, int(rank.max(initial=0)) + 1):
        idx = np.flatnonzero(rank == r)
        s[idx] = np.maximum(s[idx], s[idx - 1] + d[idx - 1] + MIN_SESSION_GAP)
    out = np.empty_like(s)
    out[order] = s
    return out


def simulate_listening(
    config: SimulationConfig,
    pop: Population,
    catalog: Catalog,
    playlists: PlaylistIndex,
    favourites: Favourites,
    week_index: int,
    rng: np.random.Generator,
) -> Plays:
    """Human plays of one week, in no particular order."""
    start, end = week_bounds_ms(config, week_index)
    sampler = TrackSampler(catalog, week_index)
    users, n_plays = _active_users(config, pop, week_index, rng)

    # Free listening: plays spread over sessions, each with one context.
    n_sess = 1 + rng.poisson((n_plays - 1) / MEAN_SESSION_PLAYS)
    owner = np.repeat(np.arange(len(users)), n_plays)
    first_sess = np.cumsum(n_sess) - n_sess
    raw_sess = first_sess[owner] + (rng.random(len(owner)) * n_sess[owner]).astype(np.int64)
    order = np.argsort(raw_sess, kind="stable")
    sess_keys, sess = np.unique(raw_sess[order], return_inverse=True)
    owner = owner[order]
    sess_first = np.searchsorted(sess, np.arange(len(sess_keys)))
    k = np.arange(len(sess)) - sess_first[sess]
    sess_user = users[owner[sess_first]]
    user = sess_user[sess]

    ctx_sess = rng.choice(4, size=len(sess_keys), p=SESSION_CONTEXT_SHARE).astype(np.int8)
    ctx_sess[(ctx_sess == PLAYLIST) & (playlists.count(sess_user) == 0)] = RADIO
    ctx = ctx_sess[sess]
    track = np.full(len(sess), -1, dtype=np.int64)
    position = np.zeros(len(sess), dtype=np.int32)
    plist = np.full(len(sess), -1, dtype=np.int64)

    # Playlist sessions walk the list from the top or a random point, wrapping around.
    ps = np.flatnonzero(ctx_sess == PLAYLIST)
    p_of = playlists.pick(sess_user[ps], rng)
    size = playlists.list_size[p_of]
    offset = np.where(rng.random(len(ps)) < 0.5, 0, (rng.random(len(ps)) * size).astype(np.int64))
    sel = np.flatnonzero(ctx == PLAYLIST)
    slot = np.searchsorted(ps, sess[sel])
    pos0 = (offset[slot] + k[sel]) % size[slot]
    track[sel] = playlists.tracks[playlists.list_start[p_of[slot]] + pos0]
    position[sel] = pos0 + 1
    plist[sel] = p_of[slot]

    # Album sessions: discover a track, then play on through its album.
    al = np.flatnonzero(ctx_sess == ALBUM)
    seed_track = discover(pop, catalog, sampler, sess_user[al], rng)
    album = catalog.album[seed_track]
    first, n_album = catalog.album_first[album], catalog.album_size[album]
    sel = np.flatnonzero(ctx == ALBUM)
    slot = np.searchsorted(al, sess[sel])
    track[sel] = first[slot] + (seed_track[slot] - first[slot] + k[sel]) % n_album[slot]

    # Search and radio: repeats of favourites or fresh discoveries.
    free = (ctx == SEARCH) | (ctx == RADIO)
    repeat = free & (rng.random(len(sess)) < config.repeat_share) & (favourites.count(user) > 0)
    track[repeat] = favourites.sample(user[repeat], rng)
    for context, temperature in ((SEARCH, SEARCH_TEMPERATURE), (RADIO, RADIO_TEMPERATURE)):
        sel = np.flatnonzero((ctx == context) & ~repeat)
        track[sel] = discover(pop, catalog, sampler, user[sel], rng, temperature=temperature)

    outcome = listen(affinity(pop, catalog, user, track), catalog.duration_ms[track], position, rng)

    # The incumbent discovery list: 30 tracks per user, consumed top-down with decaying attention.
    dw_users = users[rng.random(len(users)) < config.discover_weekly_share]
    lists, dw_track = ranked_picks(
        pop,
        catalog,
        sampler,
        dw_users,
        np.full(len(dw_users), DISCOVERY_LIST_SIZE),
        rng,
        noise=LEGACY_RECOMMENDER_NOISE,
    )
    dw_pos = (np.arange(len(lists)) - np.searchsorted(lists, lists) + 1).astype(np.int32)
    dw_user = dw_users[lists]
    dw_out = listen(affinity(pop, catalog, dw_user, dw_track), catalog.duration_ms[dw_track], dw_pos, rng)
    got = reach(lists, dw_pos, dw_out, rng)

    sess_all = np.r_[sess, len(sess_keys) + lists[got]]
    sess_user_all = np.r_[sess_user, dw_users]
    plays = Plays.build(
        len(sess_all),
        user=np.r_[user, dw_user[got]],
        track=np.r_[track, dw_track[got]],
        ts_ms=np.zeros(len(sess_all), dtype=np.int64),
        ms_played=np.r_[outcome.ms_played, dw_out.ms_played[got]],
        reason=np.r_[outcome.reason, dw_out.reason[got]],
        saved=np.r_[outcome.saved, dw_out.saved[got]],
        context=np.r_[ctx, np.full(int(got.sum()), DISCOVER, dtype=np.int8)],
        playlist=np.r_[plist, np.full(int(got.sum()), -1)],
        position=np.r_[position, dw_pos[got]],
        platform=np.zeros(len(sess_all), dtype=np.int8),
    )
    last = np.r_[sess_all[1:] != sess_all[:-1], True]
    end_sessions(Outcomes(plays.ms_played, plays.reason, plays.saved), last, rng)
    return _timestamps(plays, sess_all, sess_user_all, pop, start, end, rng)


def _timestamps(
    plays: Plays,
    sess: np.ndarray,
    sess_user: np.ndarray,
    pop: Population,
    start: int,
    end: int,
    rng: np.random.Generator,
) -> Plays:
    """Consecutive plays of a session are ms_played plus a short gap apart; drop what spills past the week."""
    n_sess = len(sess_user)
    step = plays.ms_played + rng.integers(200, 3_000, len(plays))
    cum = np.cumsum(step)
    sess_first = np.searchsorted(sess, np.arange(n_sess))
    before = cum - step
    offset = before - before[sess_first[sess]]
    length = np.bincount(sess, weights=step, minlength=n_sess).astype(np.int64)
    starts = _lay_out_sessions(sess_user, _session_starts(sess_user, pop, start, rng), length)
    plays.ts_ms = starts[sess] + offset
    primary = pop.platform[sess_user]
    other = rng.integers(0, len(PLATFORMS), n_sess).astype(np.int8)
    plays.platform = np.where(rng.random(n_sess) < PRIMARY_PLATFORM_SHARE, primary, other)[sess]
    return plays.take(np.flatnonzero(plays.ts_ms < end))
