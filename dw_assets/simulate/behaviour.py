"""How a listener reacts to a track: the one behaviour model behind both the
landed logs and :func:`dw_assets.simulate.respond`.

A play's perceived quality is the true affinity (taste . style), minus a
little fatigue deeper in a list, plus per-play noise. Quality bands decide
early skip (< 10 s), short skip (10-30 s), late skip (30 s to 80 % of the
track) or a full play; saves rise steeply with quality. In ordered lists
(playlists, discovery lists) attention decays with position and bad tracks
make the listener quit sooner, which is the position bias the logs carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REASONS = ("trackdone", "fwdbtn", "backbtn", "endplay", "logout")
TRACKDONE, FWDBTN, BACKBTN, ENDPLAY, LOGOUT = range(len(REASONS))
EARLY_SKIP_MS = 10_000
POSITIVE_MS = 30_000


@dataclass(frozen=True)
class ListenerModel:
    judgement_noise: float = 0.08  # per-play noise on perceived quality
    early_skip_below: float = 0.47  # quality bands
    short_skip_below: float = 0.53
    late_skip_below: float = 0.62
    save_midpoint: float = 0.85
    save_steepness: float = 14.0
    save_ceiling: float = 0.5
    position_fatigue: float = 0.08  # quality lost between list positions 1 and 30
    backbtn_share: float = 0.1  # skips made with the back button
    session_end_share: float = 0.25  # sessions whose last play ends by endplay/logout
    stop_base: float = 0.02  # chance to stop listening to a list after any track
    stop_per_position: float = 0.004
    stop_after_early_skip: float = 0.12
    stop_after_short_skip: float = 0.06


LISTENER = ListenerModel()


@dataclass
class Outcomes:
    ms_played: np.ndarray  # int64[n]
    reason: np.ndarray  # int8[n], index into REASONS
    saved: np.ndarray  # bool[n]

    @property
    def early_skip(self) -> np.ndarray:
        return self.ms_played < EARLY_SKIP_MS

    @property
    def skipped(self) -> np.ndarray:
        return self.reason != TRACKDONE

    @property
    def positive(self) -> np.ndarray:
        return (self.ms_played > POSITIVE_MS) | self.saved


def listen(
    affinity: np.ndarray,
    duration_ms: np.ndarray,
    position: np.ndarray,
    rng: np.random.Generator,
    model: ListenerModel = LISTENER,
) -> Outcomes:
    """Outcome of each play. ``position``: int[n], 1-based list position, 0 outside lists."""
    n = len(affinity)
    position = np.asarray(position)
    fatigue = np.where(position > 0, model.position_fatigue * np.clip(position - 1, 0, 29) / 29.0, 0.0)
    quality = affinity - fatigue + rng.normal(0.0, model.judgement_noise, n)
    early = quality < model.early_skip_below
    short = ~early & (quality < model.short_skip_below)
    late = ~early & ~short & (quality < model.late_skip_below)
    u = rng.random(n)
    duration = duration_ms.astype(np.float64)
    ms = duration.copy()
    ms[early] = 1_000 + u[early] * 8_999
    ms[short] = EARLY_SKIP_MS + u[short] * 19_999
    ms[late] = POSITIVE_MS + 1 + u[late] * (0.8 * duration[late] - POSITIVE_MS - 1)
    skip = early | short | late
    reason = np.where(skip, FWDBTN, TRACKDONE).astype(np.int8)
    reason[skip & (rng.random(n) < model.backbtn_share)] = BACKBTN
    p_save = save_probability(quality, model)
    saved = ~early & (rng.random(n) < p_save)
    return Outcomes(ms_played=ms.astype(np.int64), reason=reason, saved=saved)


def save_probability(quality: np.ndarray, model: ListenerModel = LISTENER) -> np.ndarray:
    """P(save) of a heard track that is not early-skipped, given its perceived quality: a logistic
    that reaches half of ``save_ceiling`` at ``save_midpoint``."""
    return model.save_ceiling / (1.0 + np.exp(-model.save_steepness * (quality - model.save_midpoint)))


def end_sessions(
    outcomes: Outcomes, last_in_session: np.ndarray, rng: np.random.Generator, model: ListenerModel = LISTENER
) -> None:
    """Some sessions end mid-track (app closed or logged out): cut the last play short, in place."""
    ends = np.flatnonzero(last_in_session & (rng.random(len(last_in_session)) < model.session_end_share))
    outcomes.reason[ends] = np.where(rng.random(len(ends)) < 0.7, ENDPLAY, LOGOUT)
    cut = rng.uniform(0.05, 1.0, len(ends))
    outcomes.ms_played[ends] = (outcomes.ms_played[ends] * cut).astype(np.int64)


def reach(
    list_id: np.ndarray,
    position: np.ndarray,
    outcomes: Outcomes,
    rng: np.random.Generator,
    model: ListenerModel = LISTENER,
) -> np.ndarray:
    """Which rows of ordered lists the listener gets to: bool[n].

    Rows must be sorted by (list_id, position). The first row of each list is
    always reached; after each track the listener stops with a probability
    that grows with position and after skips.
    """
    n = len(list_id)
    if n == 0:
        return np.zeros(0, dtype=bool)
    early = outcomes.early_skip
    short = ~early & (outcomes.ms_played <= POSITIVE_MS)
    p_stop = (
        model.stop_base
        + model.stop_per_position * np.asarray(position, dtype=np.float64)
        + model.stop_after_early_skip * early
        + model.stop_after_short_skip * short
    )
    stop = (rng.random(n) < p_stop).astype(np.int64)
    stops_before = np.cumsum(stop) - stop
    first = np.r_[True, list_id[1:] != list_id[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    return stops_before == stops_before[group_start]
