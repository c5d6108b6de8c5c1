"""Re-ranking: from a user's scored candidates to the 30-track discovery playlist.

Per user, in one greedy pass over the candidate pool (O(playlist_size x pool) numpy work):

1. **MMR** (Carbonell & Goldstein 1998) turns the LightGBM score into a marginal relevance,
   ``mmr_lambda * rel - (1 - mmr_lambda) * redundancy(track, list)``, where ``rel`` is the score
   min-max normalized within the user's pool and the redundancy is 1 if the track's artist is
   already listed plus ``genre_similarity`` times the share of the list already in the track's
   genre. (Plain max-similarity would stop spreading genres once each genre has one track; a
   share keeps pushing against a genre that fills the list.) At most ``max_per_artist`` tracks
   of an artist ever enter the list (a hard cap, not a penalty).
2. **Calibration** (Steck 2018, "Calibrated recommendations") picks, greedily, the track that
   maximizes ``(1 - calibration_lambda) * sum(marginal relevance)
   - calibration_lambda * KL(p || q~)`` where ``p`` is the user's history genre mix and
   ``q~ = (1 - calibration_alpha) * q + calibration_alpha * p`` the list's mix, smoothed.
   MMR's marginal relevance is the item utility of Steck's objective, so the two stages compose
   in one pass; ``calibration_lambda=0`` gives pure MMR, ``mmr_lambda=1`` pure calibration, both
   together the plain score order under the artist cap.
3. **Value-based exploration** (``uncertainty``): before the greedy, each candidate's ranker
   prediction m becomes a Beta posterior Beta(m s, (1 - m) s) whose strength
   s = ``prior_strength`` + ``strength_per_play`` x the track's plays grows with the evidence
   behind it: a cold track (no plays) is the least certain. In a genre the user has little
   history in (share < ``exploration_max_history_share``) the candidate is as uncertain as a
   cold track until the user's own exploration outcomes in that genre (the per (user, genre)
   posteriors, ``update_posteriors``) narrow it. The list score gets an uncertainty bonus:
   ``ucb_z`` x the posterior's sd relative to a cold track's x the user's spread of list scores
   (UCB, the default; Thompson: that width times a seeded normal draw). The ranker's output need
   not be a calibrated probability (an outcome regression is not), so the bonus is measured in the
   ranker's own spread for the user; ``bonus_scale="probability"`` uses the Beta on m itself.
   Cold and little-heard tracks so compete with the rest on expected value plus an uncertainty
   bonus and no slot is reserved: one enters when it is likely enough to be saved. Such a
   little-heard genre's track is marked ``is_exploration`` (the posteriors learn from it)
   unless fixed exploration slots are configured (then those slots are the exploration).
   The earlier behaviour (``RerankConfig.fixed_slots``): 2-3 slots go to Thompson-sampled
   little-heard genres at fixed, spread positions (10 and 20 of 30; 8, 15 and 23 for three) and
   the 2 best-scored cold candidates (``cold_slots``) end the list.
4. **Fill**: when a user's pool runs dry under these rules, the same greedy continues over the
   popularity pool of the user's country (``source="popularity_fallback"``), with the same
   artist cap and never a heard track or a duplicate. Users with no candidates at all (no
   history) get that pool as their whole pool, with the same rules and exploration.

If even the country pool runs dry, the playlist is *shorter* than ``playlist_size``
(positions stay 1..n without gaps): the artist cap and the heard filter are never relaxed.

Randomness (the number of fixed exploration slots when it is a range, the Beta draws) comes from
generators seeded with ``(config.seed, user_id, week)``, so re-running a week reproduces every
playlist and a user's playlist does not depend on which other users share the batch.

Measured on the `tiny` world's north star (363 users, 10 listener seeds, simulated saves per user;
catalog oracle 1.50, cold 0.21), with the lake's ranker / one retrained by the current code: fixed
slots with MMR 0.7 (before) 0.471 / 0.509, cold saves 0.034 / 0.025; no exploration, no cold slots
0.493 / 0.547; the same with MMR 0.9 0.555 / 0.578, cold 0.039 / 0.024; the UCB value order (the
defaults) 0.535 / 0.570, cold 0.065 / 0.039. Thompson costs more for the same cold saves (one
week's north star counts no learning). Fixed genre slots on top cost 7 % of saves.

Size at the target: per user, O(pool) for the value order (one pass, ~500 candidates) plus the
greedy's O(playlist_size x pool); nothing here is user-scale on one machine (a Spark task's batch).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dw_assets.calendar import week_start

FALLBACK_SOURCE = "popularity_fallback"
UNKNOWN_GENRE = "unknown"
_ANY_COUNTRY = "\x00any"  # pool key of the all-countries fallback pool (never a real country code)
_CANDIDATES, _FALLBACK = 0, 1  # which table a playlist row comes from

UNCERTAINTY = ("thompson", "ucb", "none")
_P_FLOOR = 1e-6  # as playlists.list_score clips the ranker's probability
OUTPUT_COLUMNS = ("user_id", "position", "track_id", "score", "source", "is_exploration", "artist_id", "genre")


@dataclass(frozen=True)
class RerankConfig:
    playlist_size: int = 30
    max_per_artist: int = 2  # hard cap, also on fallback fill
    # Weight of relevance against redundancy; 1 = no MMR penalty. 0.9, not 0.7: on `tiny` 0.7 cost 11 % of
    # simulated saves against 0.9 (0.493 vs 0.555 per user, 10 listener seeds) for 28 vs 26 artists a list.
    mmr_lambda: float = 0.9
    genre_similarity: float = 1.0  # MMR redundancy of a genre filling the whole list (artist listed: 1)
    calibration_lambda: float = 0.75  # weight of KL(history || list); 0 = no calibration
    calibration_alpha: float = 0.01  # Steck's smoothing of the list's genre mix toward the history
    # Fixed exploration slots (the earlier behaviour: (2, 3)): n, or an inclusive range drawn per user. 0: no
    # slot is reserved; little-heard genres compete on value like every other candidate (``uncertainty``).
    exploration_slots: int | tuple[int, int] = 0
    exploration_max_history_share: float = 0.05  # genres below this history share are explorable
    # Explore the country's popular tracks when the candidates hold no little-heard genre. Off: on
    # `small` it cost 9 % of simulated saves for 2-3 slots of popular tracks outside the user's taste.
    explore_country_pool: bool = False
    cold_slots: int = 0  # fixed slots for the best-scored cold candidates, at the end (the earlier behaviour: 2)
    # Value-based exploration: a candidate's P(positive) is Beta(m s, (1 - m) s) with m the ranker's
    # prediction and s = prior_strength + strength_per_play x the track's plays (a cold track: s =
    # prior_strength, the widest). "ucb" adds ucb_z sd to the list score, "thompson" a draw, "none"
    # nothing (the ranker alone).
    uncertainty: str = "ucb"
    prior_strength: float = 1.0  # pseudo-observations behind the ranker's prediction of a track nobody played
    strength_per_play: float = 1.0  # ... and added by each play of the track
    # UCB's bonus in posterior sds (Thompson with bonus_scale="spread": the draws' sd factor). 0.2: on `tiny`
    # it lifted cold saves by 2/3 for 1.4-3.6 % of saves with either of two rankers (0.3: x2, 3.6-6.7 %).
    ucb_z: float = 0.2
    # "spread": the sd is measured relative to a cold track's and in units of the user's spread of list
    # scores (the ranker's output need not be a probability); "probability": the Beta on the ranker's P.
    bonus_scale: str = "spread"
    genre_uncertainty: bool = True  # a little-heard genre's candidate is as uncertain as a cold track
    # bonus_scale="probability": the ranker's prediction counts as this many of the user's exploration
    # outcomes in a little-heard genre (with "spread" those outcomes only narrow the uncertainty).
    genre_prior_strength: float = 10.0
    # Added to log P(positive) for the list order: the ranker learns taste given exposure (trained on
    # heard candidates), the two-tower score how likely a user meets a track. 0 = ranker alone.
    two_tower_prior: float = 0.2
    prior_alpha: float = 1.0  # Beta prior of a (user, genre) exploration success rate
    prior_beta: float = 1.0
    posterior_decay: float = 0.8  # weight of evidence one week older (toward the prior)
    posterior_window_weeks: int = 12  # evidence older than this is dropped
    seed: int = 7

    def __post_init__(self) -> None:
        if self.playlist_size < 1 or self.max_per_artist < 1:
            raise ValueError("playlist_size and max_per_artist must be >= 1")
        for name in ("mmr_lambda", "genre_similarity", "calibration_lambda", "calibration_alpha",
                     "exploration_max_history_share", "posterior_decay"):  # fmt: skip
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.calibration_alpha <= 0.0:
            raise ValueError("calibration_alpha must be > 0 (it keeps the KL finite)")
        low, high = self.exploration_range
        if not 0 <= low <= high < self.playlist_size:
            raise ValueError(f"exploration_slots must lie in [0, playlist_size), got {self.exploration_slots}")
        if self.prior_alpha <= 0 or self.prior_beta <= 0:
            raise ValueError("prior_alpha and prior_beta must be > 0")
        if self.cold_slots < 0 or low + self.cold_slots >= self.playlist_size:
            raise ValueError(f"cold_slots must be >= 0 and leave room beside exploration, got {self.cold_slots}")
        if self.two_tower_prior < 0:
            raise ValueError(f"two_tower_prior must be >= 0, got {self.two_tower_prior}")
        if self.posterior_window_weeks < 1:
            raise ValueError("posterior_window_weeks must be >= 1")
        if self.bonus_scale not in ("spread", "probability"):
            raise ValueError(f"bonus_scale must be spread or probability, got {self.bonus_scale!r}")
        if self.uncertainty not in UNCERTAINTY:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTY}, got {self.uncertainty!r}")
        if min(self.prior_strength, self.genre_prior_strength) <= 0 or self.strength_per_play < 0 or self.ucb_z < 0:
            raise ValueError("prior_strength and genre_prior_strength must be > 0, strength_per_play and ucb_z >= 0")

    @classmethod
    def fixed_slots(cls, **changes) -> RerankConfig:
        """The earlier re-ranker: 2-3 Thompson-sampled genre slots and 2 cold slots at fixed places, no
        uncertainty in the order, MMR at 0.7 (the ablation's baseline)."""
        return cls(**{"exploration_slots": (2, 3), "cold_slots": 2, "uncertainty": "none", "mmr_lambda": 0.7,
                      **changes})

    @property
    def exploration_range(self) -> tuple[int, int]:
        """(fewest, most) exploration slots, inclusive."""
        slots = self.exploration_slots
        if isinstance(slots, int | np.integer):
            return int(slots), int(slots)
        low, high = slots
        return int(low), int(high)


# --------------------------------------------------------------------------- metrics


def genre_kl(history_share: dict[str, float], playlist_genres: Sequence[str], alpha: float = 0.01) -> float:
    """KL(p || q~) in nats between a history genre mix and a playlist's, as calibration optimizes it.

    ``history_share``: genre -> share (renormalized to sum 1); ``playlist_genres``: one genre per
    track. ``q~ = (1 - alpha) * q + alpha * p``. Genres absent from the history add nothing
    directly but dilute ``q`` on the history's genres. NaN when the history is empty.
    """
    genres = [g for g, share in history_share.items() if share > 0]
    if not genres:
        return float("nan")
    p = np.array([history_share[g] for g in genres], dtype=np.float64)
    p /= p.sum()
    counts = Counter(playlist_genres)
    q = np.array([counts[g] for g in genres], dtype=np.float64) / max(len(playlist_genres), 1)
    q_smooth = (1.0 - alpha) * q + alpha * p
    return float(np.sum(p * np.log(p / q_smooth)))


def max_per_artist(playlist: pd.DataFrame | Sequence[int]) -> int:
    """Most tracks any one artist has in a playlist (a frame with ``artist_id``, or the ids)."""
    artists = playlist["artist_id"] if isinstance(playlist, pd.DataFrame) else pd.Series(list(playlist))
    return int(artists.value_counts().max()) if len(artists) else 0


# --------------------------------------------------------------------------- greedy state


class _Playlist:
    """One user's list under construction: its rows, artist counts and genre counts."""

    def __init__(self, history: np.ndarray, config: RerankConfig):
        self.config = config
        self.on_history = np.flatnonzero(history > 0)
        self.p = history[self.on_history]
        self.calibrates = bool(self.p.size) and config.calibration_lambda > 0.0
        self.genre_counts = np.zeros(history.size, dtype=np.float64)
        self.artist_counts: dict[int, int] = {}
        self.tracks: set[int] = set()
        self.rows: list[tuple[int, int, bool]] = []  # (table, row, is_exploration) in pick order
        keep = 1.0 - config.calibration_lambda
        self.genre_penalty = keep * (1.0 - config.mmr_lambda) * config.genre_similarity
        self._bonus = np.zeros(history.size, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.rows)

    def genre_gain(self) -> np.ndarray | None:
        """float64[n_genres]: the part of the greedy gain of a track that depends on its genre only.

        MMR: ``-(1 - calibration_lambda) * (1 - mmr_lambda) * genre_similarity * share of the
        list in the genre``. Calibration: ``calibration_lambda * (KL now - KL after adding a
        track of the genre)`` up to a constant shared by all genres, which is
        ``p_g * log(1 + k / base_g)`` with ``base = k * counts + alpha * p`` and
        ``k = (1 - alpha) / (|S| + 1)`` (adding a genre outside the history only dilutes q~,
        the same for all such genres: 0). None when both are zero (empty list, no calibration).
        """
        size = len(self.rows)
        if not self.calibrates:
            return -self.genre_penalty / size * self.genre_counts if size and self.genre_penalty else None
        alpha = self.config.calibration_alpha
        k = (1.0 - alpha) / (size + 1)
        base = k * self.genre_counts[self.on_history] + alpha * self.p
        self._bonus[self.on_history] = self.config.calibration_lambda * self.p * np.log1p(k / base)
        if not size or not self.genre_penalty:
            return self._bonus
        return self._bonus - self.genre_penalty / size * self.genre_counts

    def add(self, table: int, row: int, track: int, artist: int, genre: int, is_exploration: bool) -> int:
        """Append a track; returns the artist's count in the list afterwards."""
        self.rows.append((table, row, is_exploration))
        self.tracks.add(track)
        self.genre_counts[genre] += 1.0
        count = self.artist_counts.get(artist, 0) + 1
        self.artist_counts[artist] = count
        return count


class _Pool:
    """Tracks one user may get from one table, with the track-level part of their greedy gain.

    Arrays are views of the sorted table (score descending), so the first allowed row of a
    genre is its best-scored track. ``gain`` is ``(1 - calibration_lambda) * (mmr_lambda * rel
    - (1 - mmr_lambda) * [artist already listed])`` and -inf for a track that may not enter the
    list (heard, listed, or its artist capped); the genre-level part comes from the playlist.
    """

    def __init__(self, table: int, first_row: int, track: np.ndarray, artist: np.ndarray,
                 genre: np.ndarray, score: np.ndarray, allowed: np.ndarray,
                 playlist: _Playlist, config: RerankConfig):  # fmt: skip
        self.table, self.first_row = table, first_row
        self.track, self.artist, self.genre = track, artist, genre
        self.playlist, self.config = playlist, config
        rel = np.ones(track.size, dtype=np.float64)
        if table == _FALLBACK and track.size > 1:
            # popularity is heavy-tailed: min-max would flatten all but the head, so use its rank
            rel = 1.0 - np.arange(track.size, dtype=np.float64) / (track.size - 1)
        elif allowed.any():  # ranker scores: min-max keeps the model's confidence gaps
            low, high = score[allowed].min(), score[allowed].max()
            if high > low:
                rel = (score - low) / (high - low)
        keep = 1.0 - config.calibration_lambda
        self.gain = keep * config.mmr_lambda * rel
        self.artist_penalty = keep * (1.0 - config.mmr_lambda)
        if len(playlist):  # a pool opened mid-list (fallback fill) starts from the list's state
            listed = np.fromiter(playlist.tracks, dtype=np.int64)
            artists = np.fromiter(playlist.artist_counts, dtype=np.int64)
            capped = np.array([a for a, c in playlist.artist_counts.items() if c >= config.max_per_artist],
                              dtype=np.int64)  # fmt: skip
            allowed = allowed & ~np.isin(track, listed) & ~np.isin(artist, capped)
            self.gain[np.isin(artist, artists)] -= self.artist_penalty
        self.gain[~allowed] = -np.inf

    @property
    def allowed(self) -> np.ndarray:
        """bool[n]: tracks that may still enter the list."""
        return self.gain > -np.inf

    def best(self) -> int | None:
        """Row (within the pool) with the highest greedy gain, None when nothing is allowed."""
        if not self.track.size:
            return None
        gain = self.gain
        by_genre = self.playlist.genre_gain()
        if by_genre is not None:
            gain = gain + by_genre[self.genre]
        j = int(np.argmax(gain))
        return j if gain[j] > -np.inf else None

    def take(self, j: int, is_exploration: bool) -> None:
        artist = int(self.artist[j])
        count = self.playlist.add(self.table, self.first_row + j, int(self.track[j]), artist,
                                  int(self.genre[j]), is_exploration)  # fmt: skip
        self.gain[self.track == self.track[j]] = -np.inf  # a track listed twice in the input stays unique
        if count >= self.config.max_per_artist:
            self.gain[self.artist == artist] = -np.inf
        elif count == 1:
            self.gain[self.artist == artist] -= self.artist_penalty

    def fill(self, slots: int) -> int:
        """Greedily add up to ``slots`` tracks; returns how many were added."""
        added = 0
        while added < slots:
            j = self.best()
            if j is None:
                break
            self.take(j, is_exploration=False)
            added += 1
        return added

    def explore(self, slots: int, history: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                rng: np.random.Generator) -> int:  # fmt: skip
        """Thompson sampling over little-heard genres; returns how many slots were filled.

        ``history``, ``alpha``, ``beta``: float64[n_genres] for this user. Genres are visited in
        code order (= name order), so the draws do not depend on the rest of the batch.
        """
        if slots == 0:
            return 0
        allowed = self.allowed
        open_genres = np.unique(self.genre[allowed])
        explorable = open_genres[history[open_genres] < self.config.exploration_max_history_share]
        if not explorable.size:
            return 0
        theta = rng.beta(alpha[explorable], beta[explorable])
        added = 0
        for genre in explorable[np.argsort(-theta, kind="stable")]:
            in_genre = self.allowed & (self.genre == genre)  # re-read: the last pick may cap an artist
            if in_genre.any():
                self.take(int(np.argmax(in_genre)), is_exploration=True)
                added += 1
                if added == slots:
                    break
        return added


def _open_pool(source: tuple, heard: np.ndarray, playlist: _Playlist, config: RerankConfig,
               only: np.ndarray | None = None, unheard: np.ndarray | None = None) -> _Pool:
    """A pool over one table's slice for one user; opened now, it starts from the list's current state.

    only: bool over the whole table (e.g. cold tracks), restricting the pool further. unheard:
    bool over the whole table when already known (the candidates' heard filter is computed once
    per batch), else the slice is checked against ``heard`` here.
    """
    table, a, b, track, artist, genre, score = source
    if unheard is not None:
        allowed = unheard[a:b].copy()
    else:
        allowed = ~np.isin(track[a:b], heard) if heard.size else np.ones(b - a, dtype=bool)
    if only is not None:
        allowed &= only[a:b]
    return _Pool(table, a, track[a:b], artist[a:b], genre[a:b], score[a:b], allowed, playlist, config)


def exploration_positions(n_exploration: int, length: int) -> np.ndarray:
    """1-based positions of ``n_exploration`` slots spread over a list of ``length``: int64[n]."""
    if n_exploration == 0:
        return np.zeros(0, dtype=np.int64)
    spread = np.floor(np.arange(1, n_exploration + 1) * length / (n_exploration + 1) + 0.5).astype(np.int64)
    return np.clip(spread, 1, length)


def _ordered(rows: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    """Pick order -> playlist order: exploration rows at their spread positions, the rest in pick order."""
    exploration = [r for r in rows if r[2]]
    ranked = [r for r in rows if not r[2]]
    slots = set(exploration_positions(len(exploration), len(rows)).tolist())
    explore_iter, ranked_iter = iter(exploration), iter(ranked)
    return [next(explore_iter) if position in slots else next(ranked_iter) for position in range(1, len(rows) + 1)]


def user_rng(config: RerankConfig, user_id: int, week: str, stream: int = 0) -> np.random.Generator:
    """The generator of one user's draws in one week (stable across processes and batches). ``stream`` 0:
    the fixed slots' draws; 1: the value order's Thompson draws (independent of them)."""
    day = week_start(week).date().toordinal()
    key = [config.seed, int(user_id) & 0xFFFFFFFFFFFFFFFF, day]
    return np.random.default_rng(key + [stream] if stream else key)


def value_scores(score: np.ndarray, probability: np.ndarray, plays: np.ndarray, genre_successes: np.ndarray,
                 genre_trials: np.ndarray, little_heard: np.ndarray, config: RerankConfig,
                 rng: np.random.Generator | None) -> np.ndarray:
    """float64[n]: one user's candidates' list scores plus an uncertainty bonus (``ucb``) or a draw
    (``thompson``) from the posterior of each; ``score`` itself for ``none``.

    score: the list score (``playlists.list_score``: log m + the two-tower prior); probability: the
    ranker's prediction m, the posterior's mean; plays: the track's plays so far (0: cold), giving the
    strength s = prior_strength + strength_per_play x plays. A candidate in a genre the user has little
    history in (``little_heard``) is as uncertain as a cold track until the user's own outcomes in that
    genre (``genre_successes`` of ``genre_trials`` weighted exploration outcomes, ``update_posteriors``'s
    evidence) narrow it: s at most prior_strength + trials.

    ``bonus_scale="spread"`` (the default): the posterior's sd relative to a cold track's,
    sqrt((prior_strength + 1) / (s + 1)), times ``ucb_z`` and the user's spread (std) of list scores,
    added (UCB) or times a standard normal draw (Thompson). The mean stays the ranker's: its output
    need not be a probability, so a genre's observed success rate cannot be set against it.
    ``"probability"``: the ranker's output read as P(positive); the Beta itself gives the bound or
    the draw, and the genre outcomes also move the mean, m = (genre_prior_strength m + successes) /
    (genre_prior_strength + trials). A track the ranker ranks a little low but that nobody (or not
    this user) has tried can so earn a slot; a well-known one stays at its score. All float64[n];
    ``rng`` draws in the order given (the caller's track order), so the draws are reproducible.
    """
    if config.uncertainty == "none":
        return score.astype(np.float64, copy=True)
    p = np.clip(probability, _P_FLOOR, 1.0 - _P_FLOOR)
    strength = config.prior_strength + config.strength_per_play * np.maximum(np.nan_to_num(plays, nan=0.0), 0.0)
    trials = np.where(little_heard, genre_trials, 0.0)
    strength = np.where(little_heard, np.minimum(strength, config.prior_strength + trials), strength)
    if config.bonus_scale == "probability":  # the Beta itself, the ranker's output read as a probability
        mean = np.where(little_heard, (config.genre_prior_strength * p + np.where(little_heard, genre_successes, 0.0))
                        / (config.genre_prior_strength + trials), p)
        mean = np.clip(mean, _P_FLOOR, 1.0 - _P_FLOOR)
        if config.uncertainty == "thompson":
            draw = rng.beta(mean * strength, (1.0 - mean) * strength)
        else:
            draw = mean + config.ucb_z * np.sqrt(mean * (1.0 - mean) / (strength + 1.0))
        return score - np.log(p) + np.log(np.clip(draw, _P_FLOOR, 1.0))
    # "spread": the posterior's sd relative to a cold track's (1 for a cold track, -> 0 with plays) in
    # units of the user's own score spread, so the bonus does not hang on the ranker's scale
    relative = np.sqrt((config.prior_strength + 1.0) / (strength + 1.0))
    width = config.ucb_z * relative * (float(np.std(score)) if score.size > 1 else 0.0)
    if config.uncertainty == "thompson":
        return score + width * rng.standard_normal(score.size)
    return score + width


# --------------------------------------------------------------------------- batch


def _unheard(cand_user: np.ndarray, cand_track: np.ndarray, user_ids: np.ndarray,
             heard_by_user: list[np.ndarray]) -> np.ndarray:
    """bool[n]: candidate rows whose track is not in their user's heard list, for the whole batch at once.

    cand_user: int64[n] (each in ``user_ids``, ascending); heard_by_user[i]: the heard tracks of user_ids[i].
    (row, track) pairs pack into one int64 key: track ids below 2**40, as in candidate generation.
    """
    lengths = np.fromiter((len(h) for h in heard_by_user), dtype=np.int64, count=len(heard_by_user))
    if not lengths.sum() or not len(cand_user):
        return np.ones(len(cand_user), dtype=bool)
    heard_keys = np.repeat(np.arange(len(user_ids), dtype=np.int64), lengths) << 40 | np.concatenate(heard_by_user)
    cand_keys = np.searchsorted(user_ids, cand_user).astype(np.int64) << 40 | cand_track
    return ~np.isin(cand_keys, heard_keys)


def _factorize(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes int64[n], -1 where missing; names str[k]) of a genre column."""
    codes, names = pd.factorize(values)
    return codes.astype(np.int64), np.asarray(names, dtype=object).astype(str)


def _global_codes(codes: np.ndarray, names: np.ndarray, genres: np.ndarray) -> np.ndarray:
    """Local factor codes -> codes into the sorted batch genre list (missing -> UNKNOWN_GENRE)."""
    unknown = np.searchsorted(genres, UNKNOWN_GENRE)
    lookup = np.append(np.searchsorted(genres, names), unknown)  # code -1 picks the last entry
    return lookup[codes]


def _history_shares(users: pd.DataFrame) -> pd.DataFrame:
    """users.genre_share exploded to rows: row (position in users), genre, share."""
    shares = users["genre_share"].reset_index(drop=True)
    shares = shares.map(lambda v: v if isinstance(v, list | tuple | np.ndarray) else [])
    exploded = shares.explode().dropna()
    return pd.DataFrame({
        "row": exploded.index.to_numpy(np.int64),
        "genre": [entry["genre"] for entry in exploded],
        "share": np.array([entry["share"] for entry in exploded], dtype=np.float64),
    })


def _fallback_pools(fallback: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[int, int]]]:
    """Country pools (score descending, one row per track) plus an all-countries pool.

    Returns the stacked table and pool key -> [start, stop) rows. The all-countries pool (for
    users whose country has no pool) ranks a track by its best score in any country.
    """
    columns = ["track_id", "artist_id", "genre", "score"]
    by_country = fallback.assign(country=fallback["country"].astype(str))
    by_country = by_country.sort_values(["country", "score", "track_id"], ascending=[True, False, True])
    by_country = by_country.drop_duplicates(["country", "track_id"])
    anywhere = fallback.sort_values(["score", "track_id"], ascending=[False, True]).drop_duplicates("track_id")
    stacked = pd.concat([by_country[["country", *columns]], anywhere[columns].assign(country=_ANY_COUNTRY)],
                        ignore_index=True)  # fmt: skip
    keys, starts, counts = np.unique(stacked["country"].to_numpy(object), return_index=True, return_counts=True)
    return stacked, {key: (int(a), int(a + n)) for key, a, n in zip(keys, starts, counts, strict=True)}


def _candidate_values(scored: pd.DataFrame, cand_rows: np.ndarray, cand_score: np.ndarray, cand_cold: np.ndarray,
                      cand_genre: np.ndarray, cand_start: np.ndarray, cand_stop: np.ndarray, shares: np.ndarray,
                      user_ids: np.ndarray, post_user: np.ndarray, post_genre: np.ndarray, post_alpha: np.ndarray,
                      post_beta: np.ndarray, config: RerankConfig, week: str) -> np.ndarray:
    """float64[n]: ``value_scores`` of every candidate row (rows in (user, track) order), one user at a time.

    Without a ``probability`` column (a scored table from elsewhere) the score is the value. A track's
    plays come from ``plays`` when given, else 0 for ``is_cold`` tracks and known (no uncertainty) for the rest.
    """
    if config.uncertainty == "none" or "probability" not in scored:
        return cand_score.copy()
    probability = scored["probability"].to_numpy(np.float64)[cand_rows]
    if "plays" in scored:
        plays = scored["plays"].to_numpy(np.float64)[cand_rows]
    else:
        plays = np.where(cand_cold, 0.0, np.inf)
    # Per (user, genre) exploration evidence above the prior: weighted successes and trials.
    successes = np.zeros(shares.shape, dtype=np.float64)
    trials = np.zeros(shares.shape, dtype=np.float64)
    at = np.searchsorted(user_ids, post_user)
    successes[at, post_genre] = post_alpha - config.prior_alpha
    trials[at, post_genre] = post_alpha + post_beta - config.prior_alpha - config.prior_beta
    owner = np.repeat(np.arange(len(user_ids)), cand_stop - cand_start)
    little = shares[owner, cand_genre] < config.exploration_max_history_share
    little &= config.genre_uncertainty
    values = np.empty(len(cand_rows), dtype=np.float64)
    for u, user_id in enumerate(user_ids):
        a, b = cand_start[u], cand_stop[u]
        if b == a:
            continue
        rng = user_rng(config, user_id, week, stream=1) if config.uncertainty == "thompson" else None
        values[a:b] = value_scores(cand_score[a:b], probability[a:b], plays[a:b], successes[u, cand_genre[a:b]],
                                   trials[u, cand_genre[a:b]], little[a:b], config, rng)
    return values


def _empty_output() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": pd.Series(dtype=np.int64), "position": pd.Series(dtype=np.int16),
        "track_id": pd.Series(dtype=np.int64), "score": pd.Series(dtype=np.float32),
        "source": pd.Series(dtype=object), "is_exploration": pd.Series(dtype=bool),
        "artist_id": pd.Series(dtype=np.int64), "genre": pd.Series(dtype=object),
    })


def rerank_batch(scored: pd.DataFrame, users: pd.DataFrame, posteriors: pd.DataFrame,
                 fallback: pd.DataFrame, config: RerankConfig, week: str) -> pd.DataFrame:  # fmt: skip
    """Playlists of ``config.playlist_size`` tracks for every user of ``users``.

    scored: user_id, track_id, score (ranker score, any scale), sources (str, e.g.
        "item2vec|two_tower"), artist_id, genre[, popularity_percentile][, is_cold] -- heard
        tracks already removed (they are removed again here, defensively). With ``probability``
        (the ranker's P(positive), the value order's mean) and ``plays`` (the track's plays so far;
        without it ``is_cold`` tracks count 0 and the rest as certain) the candidates are ordered
        by value (``uncertainty``); without ``probability`` by ``score``. ``config.cold_slots``
        of each list go to the best-scored ``is_cold`` candidates, after the ranked and
        exploration picks (so at the end of the list).
    users: user_id, country, genre_share (list of {"genre", "share"}), heard (list of int64):
        exactly the users to build playlists for; scored rows of other users are ignored.
    posteriors: user_id, genre, alpha, beta (``update_posteriors``'s output; may be empty).
    fallback: country, track_id, artist_id, genre, score (popularity)[, popularity_percentile].
    week: the partition key the playlists are built in (seeds the draws).

    Returns one row per playlist slot: user_id int64, position int16 (1..n), track_id int64,
    score float32 (the ranker's, or the popularity score for fallback rows), source str (the
    candidate's sources, or "popularity_fallback"), is_exploration bool, artist_id int64,
    genre str. n is ``playlist_size`` unless the user's pool and country pool together run dry.
    """
    week_start(week)  # validates the key before any work
    users = users.drop_duplicates("user_id").sort_values("user_id", kind="stable").reset_index(drop=True)
    user_ids = users["user_id"].to_numpy(np.int64)
    if not len(users):
        return _empty_output()

    # Candidates of the batch's users, as arrays sorted by (user, score desc, track).
    all_users = scored["user_id"].to_numpy(np.int64)
    at = np.minimum(np.searchsorted(user_ids, all_users), len(user_ids) - 1)
    cand_rows = np.flatnonzero(user_ids[at] == all_users)
    cand_score = scored["score"].to_numpy(np.float64)[cand_rows]
    if not np.isfinite(cand_score).all():
        raise ValueError("scored.score must be finite for every candidate")
    cand_track = scored["track_id"].to_numpy(np.int64)[cand_rows]
    cand_user = all_users[cand_rows]
    # (user, track) order first: the value order's draws run over a user's tracks in this order.
    order = np.lexsort((cand_track, cand_user))
    cand_rows, cand_user, cand_track, cand_score = cand_rows[order], cand_user[order], cand_track[order], cand_score[order]
    cand_cold = (scored["is_cold"].fillna(False).to_numpy(bool)[cand_rows] if "is_cold" in scored
                 else np.zeros(len(cand_rows), dtype=bool))
    cand_codes, cand_names = _factorize(scored["genre"])
    cand_codes = cand_codes[cand_rows]
    cand_start = np.searchsorted(cand_user, user_ids, side="left")
    cand_stop = np.searchsorted(cand_user, user_ids, side="right")

    pools, pool_rows = _fallback_pools(fallback)
    pool_codes, pool_names = _factorize(pools["genre"])
    history = _history_shares(users)
    history_codes, history_names = _factorize(history["genre"])
    posteriors = posteriors[posteriors["user_id"].isin(user_ids)].sort_values(["user_id", "genre"])
    post_codes, post_names = _factorize(posteriors["genre"])

    # Codes follow genre names in sorted order, so a user's draws never depend on the batch.
    genres = np.unique(np.concatenate([cand_names, pool_names, history_names, post_names, [UNKNOWN_GENRE]]))
    n_genres = len(genres)
    cand_genre = _global_codes(cand_codes, cand_names, genres)
    pool_genre = _global_codes(pool_codes, pool_names, genres)

    pool_track = pools["track_id"].to_numpy(np.int64)
    pool_artist = pools["artist_id"].to_numpy(np.int64)
    pool_score = pools["score"].to_numpy(np.float64)

    shares = np.zeros((len(users), n_genres), dtype=np.float64)
    np.add.at(shares, (history["row"].to_numpy(), _global_codes(history_codes, history_names, genres)),
              np.clip(history["share"].to_numpy(), 0.0, None))  # fmt: skip
    totals = shares.sum(axis=1, keepdims=True)
    np.divide(shares, totals, out=shares, where=totals > 0)

    post_user = posteriors["user_id"].to_numpy(np.int64)
    post_genre = _global_codes(post_codes, post_names, genres)
    post_alpha = posteriors["alpha"].to_numpy(np.float64)
    post_beta = posteriors["beta"].to_numpy(np.float64)
    post_start = np.searchsorted(post_user, user_ids, side="left")
    post_stop = np.searchsorted(post_user, user_ids, side="right")

    valued = config.uncertainty != "none" and "probability" in scored
    # With fixed exploration slots those slots are the exploration (and the posteriors' evidence).
    mark_little_heard = valued and config.exploration_range[1] == 0
    cand_value = _candidate_values(scored, cand_rows, cand_score, cand_cold, cand_genre, cand_start, cand_stop,
                                   shares, user_ids, post_user, post_genre, post_alpha, post_beta, config, week)
    # Then (user, value desc, track): the greedy's order. Stable, so duplicates keep the input's order.
    order = np.lexsort((cand_track, -cand_value, cand_user))
    cand_rows, cand_user, cand_track, cand_score = cand_rows[order], cand_user[order], cand_track[order], cand_score[order]
    cand_value, cand_cold, cand_genre = cand_value[order], cand_cold[order], cand_genre[order]
    cand_artist = scored["artist_id"].to_numpy(np.int64)[cand_rows]

    countries = users["country"].astype(str).to_numpy(object)
    heard_lists = users["heard"] if "heard" in users else pd.Series([[]] * len(users))
    heard_by_user = [np.asarray(listed if isinstance(listed, list | tuple | np.ndarray) else [], dtype=np.int64)
                     for listed in heard_lists.tolist()]
    cand_unheard = _unheard(cand_user, cand_track, user_ids, heard_by_user)
    low, high = config.exploration_range
    size = config.playlist_size

    out_user: list[int] = []
    out_position: list[int] = []
    out_rows: list[tuple[int, int, bool]] = []
    for u, user_id in enumerate(user_ids):
        rng = user_rng(config, user_id, week)
        n_exploration = int(rng.integers(low, high + 1)) if high > low else low
        heard = heard_by_user[u]
        playlist = _Playlist(shares[u], config)
        alpha = np.full(n_genres, config.prior_alpha)
        beta = np.full(n_genres, config.prior_beta)
        alpha[post_genre[post_start[u]:post_stop[u]]] = post_alpha[post_start[u]:post_stop[u]]
        beta[post_genre[post_start[u]:post_stop[u]]] = post_beta[post_start[u]:post_stop[u]]

        start, stop = pool_rows.get(countries[u], pool_rows.get(_ANY_COUNTRY, (0, 0)))
        country_pool = (_FALLBACK, start, stop, pool_track, pool_artist, pool_genre, pool_score)
        if cand_stop[u] > cand_start[u]:
            sources = [(_CANDIDATES, cand_start[u], cand_stop[u], cand_track, cand_artist, cand_genre, cand_value),
                       country_pool]  # fmt: skip
        else:  # no candidates (no history): the country's popular tracks are the whole pool
            sources = [country_pool]

        cold = config.cold_slots if len(sources) > 1 else 0
        known = [cand_unheard if source[0] == _CANDIDATES else None for source in sources]
        first = _open_pool(sources[0], heard, playlist, config, unheard=known[0])
        first.fill(size - n_exploration - cold)
        left = n_exploration - first.explore(n_exploration, shares[u], alpha, beta, rng)
        if left and len(sources) > 1 and config.explore_country_pool:
            # The candidates hold no little-heard genre (a narrow taste): explore the country's popular tracks.
            _open_pool(sources[1], heard, playlist, config).explore(left, shares[u], alpha, beta, rng)
        if cold:  # tracks nobody has played yet: only the audio model vouches for them
            _open_pool(sources[0], heard, playlist, config, only=cand_cold, unheard=known[0]).fill(cold)
        for source, unheard in zip(sources, known, strict=True):
            if len(playlist) == size:
                break
            _open_pool(source, heard, playlist, config, unheard=unheard).fill(size - len(playlist))

        rows = _ordered(playlist.rows)
        if mark_little_heard:  # a little-heard genre's track that won its slot on value explores it
            little = shares[u] < config.exploration_max_history_share
            rows = [(t, r, e or (t == _CANDIDATES and bool(little[cand_genre[r]]))) for t, r, e in rows]
        out_user.extend([int(user_id)] * len(playlist))
        out_position.extend(range(1, len(playlist) + 1))
        out_rows.extend(rows)

    if not out_rows:
        return _empty_output()
    table = np.fromiter((r[0] for r in out_rows), dtype=np.int8, count=len(out_rows))
    row = np.fromiter((r[1] for r in out_rows), dtype=np.int64, count=len(out_rows))
    from_candidates = table == _CANDIDATES
    picked = row[from_candidates]  # only the picked candidates' sources become strings
    cand_sources = np.empty(len(cand_rows), dtype=object)
    cand_sources[picked] = scored["sources"].to_numpy(object)[cand_rows[picked]].astype(str)

    def gather(from_scored: np.ndarray, from_pool: np.ndarray) -> np.ndarray:
        values = np.empty(len(row), dtype=from_scored.dtype)
        values[from_candidates] = from_scored[row[from_candidates]]
        values[~from_candidates] = from_pool[row[~from_candidates]]
        return values

    return pd.DataFrame({
        "user_id": np.asarray(out_user, dtype=np.int64),
        "position": np.asarray(out_position, dtype=np.int16),
        "track_id": gather(cand_track, pool_track),
        "score": gather(cand_score, pool_score).astype(np.float32),
        "source": gather(cand_sources, np.full(len(pool_track), FALLBACK_SOURCE, dtype=object)),
        "is_exploration": np.fromiter((r[2] for r in out_rows), dtype=bool, count=len(out_rows)),
        "artist_id": gather(cand_artist, pool_artist),
        "genre": genres.astype(object)[gather(cand_genre, pool_genre)],
    })


# --------------------------------------------------------------------------- posteriors


def empty_posteriors() -> pd.DataFrame:
    """No (user, genre) evidence yet: every user is at the prior."""
    return pd.DataFrame({"user_id": pd.Series(dtype=np.int64), "genre": pd.Series(dtype=object),
                         "alpha": pd.Series(dtype=np.float64), "beta": pd.Series(dtype=np.float64)})


def update_posteriors(past_exploration: pd.DataFrame, outcomes: pd.DataFrame, config: RerankConfig,
                      as_of_week: str | None = None) -> pd.DataFrame:  # fmt: skip
    """Beta posteriors of each (user, genre) exploration success rate, recomputed from a window.

    past_exploration: week (the week the playlist was built), user_id, track_id, genre -- the
        exploration slots of earlier playlists.
    outcomes: user_id, track_id, week, is_positive -- all interactions of the weeks the
        playlists were listened to (a playlist built in week W is listened to in week W+1).
    as_of_week: the newest listening week the posterior reflects; default the newest one with
        outcomes. Evidence from listening week L weighs ``posterior_decay ** (weeks from L to
        as_of_week)``, so without new evidence a posterior drifts back to the prior; evidence
        older than ``posterior_window_weeks`` (or newer than as_of_week) is dropped.

    A slot is a success when the user had a positive interaction with the track in its
    listening week, a failure when the user was active that week but not positive on it. Slots
    of users with no interaction at all that week are no evidence (they never saw the playlist).
    Returns user_id int64, genre str, alpha float64, beta float64 for every (user, genre) with
    evidence; everyone else is at the prior (``prior_alpha``, ``prior_beta``).
    """
    empty = empty_posteriors()
    if past_exploration.empty or outcomes.empty:
        return empty
    slots = past_exploration[["week", "user_id", "track_id", "genre"]].drop_duplicates(["week", "user_id", "track_id"])
    slots = slots.assign(listen_week=pd.to_datetime(slots["week"].astype(str)) + pd.Timedelta(weeks=1))
    listened = outcomes[outcomes["user_id"].isin(slots["user_id"].unique())]  # a week's log is large
    listened = listened.assign(listen_week=pd.to_datetime(listened["week"].astype(str)))
    active = listened[["user_id", "listen_week"]].drop_duplicates()
    positive = listened.loc[listened["is_positive"].astype(bool), ["user_id", "track_id", "listen_week"]]
    positive = positive.drop_duplicates().assign(success=1.0)

    evidence = slots.merge(active, on=["user_id", "listen_week"], how="inner")
    evidence = evidence.merge(positive, on=["user_id", "track_id", "listen_week"], how="left")
    evidence["success"] = evidence["success"].fillna(0.0)

    if as_of_week:
        as_of = pd.Timestamp(week_start(as_of_week).date())
    else:
        as_of = pd.to_datetime(pd.Series(outcomes["week"].unique()).astype(str)).max()
    age_weeks = (as_of - evidence["listen_week"]).dt.days // 7
    evidence = evidence[(age_weeks >= 0) & (age_weeks < config.posterior_window_weeks)]
    if evidence.empty:
        return empty
    weight = np.power(config.posterior_decay, age_weeks[evidence.index].to_numpy(np.float64))
    evidence = evidence.assign(successes=weight * evidence["success"], failures=weight * (1.0 - evidence["success"]))
    totals = evidence.groupby(["user_id", "genre"], as_index=False)[["successes", "failures"]].sum()
    return pd.DataFrame({
        "user_id": totals["user_id"].to_numpy(np.int64),
        "genre": totals["genre"].astype(str).to_numpy(object),
        "alpha": config.prior_alpha + totals["successes"].to_numpy(np.float64),
        "beta": config.prior_beta + totals["failures"].to_numpy(np.float64),
    })

