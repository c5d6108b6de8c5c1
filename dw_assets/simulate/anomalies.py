"""Valid-but-unwanted traffic: stream-fraud bots, hijacked sessions on real
accounts, and client replays (same play re-sent under a new event_id).

All of it passes bronze validation; silver has to catch it.
"""

from __future__ import annotations

import numpy as np

from dw_assets.simulate.behaviour import ENDPLAY, FWDBTN
from dw_assets.simulate.catalog import Catalog
from dw_assets.simulate.events import ALBUM, DAY, HOUR, RADIO, WEEK_MS, Plays
from dw_assets.simulate.population import PLATFORMS, Population

BOT_COVERAGE = (0.6, 0.95)  # share of the week a bot's steady loop spans
BOT_MS_PLAYED = (30_200, 32_500)  # just over the 30 s royalty threshold
BOT_JITTER_MS = 150
HIJACK_PLAYS = (20, 60)
HIJACK_MS_PLAYED = (30_000, 35_000)
HIJACK_QUIET_MS = HOUR // 2  # the owner's own plays this close to the burst are removed
WEB = PLATFORMS.index("web")


def _fraud_pool(catalog: Catalog, week_index: int, rng: np.random.Generator) -> np.ndarray:
    pool = np.flatnonzero(catalog.is_fraud & (catalog.release_week < week_index))
    if len(pool) == 0:  # a catalog too small for fraud artists: push a few obscure tracks instead
        pool = np.argsort(catalog.popularity)[:5]
    return pool


def bot_plays(
    pop: Population,
    catalog: Catalog,
    week_index: int,
    start: int,
    rng: np.random.Generator,
    min_plays: int,
    max_plays: int,
) -> Plays:
    """Each bot loops a handful of fraud tracks around the clock with a near-constant period."""
    bots = np.flatnonzero(pop.is_bot)
    pool = _fraud_pool(catalog, week_index, rng)
    n = rng.integers(min_plays, max_plays + 1, len(bots))
    cover = rng.uniform(*BOT_COVERAGE, len(bots)) * WEEK_MS
    period = np.maximum(cover / n, BOT_MS_PLAYED[1] + 1_000).astype(np.int64)
    n = np.minimum(n, (cover // period).astype(np.int64))
    first = start + (rng.random(len(bots)) * (WEEK_MS - n * period - 2 * BOT_JITTER_MS)).astype(np.int64)
    owner = np.repeat(np.arange(len(bots)), n)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)
    jitter = np.clip(rng.normal(0, BOT_JITTER_MS / 3, len(owner)), -BOT_JITTER_MS, BOT_JITTER_MS).astype(
        np.int64
    )
    ts = first[owner] + k * period[owner] + BOT_JITTER_MS + jitter
    # Each bot streams its own few tracks from the fraud pool.
    own = rng.integers(0, len(pool), (len(bots), 6))
    track = pool[own[owner, rng.integers(0, own.shape[1], len(owner))]]
    return Plays.build(
        len(owner),
        user=bots[owner],
        track=track,
        ts_ms=ts,
        ms_played=rng.integers(*BOT_MS_PLAYED, len(owner)),
        reason=np.where(rng.random(len(owner)) < 0.8, ENDPLAY, FWDBTN).astype(np.int8),
        context=np.full(len(owner), ALBUM, dtype=np.int8),
        platform=np.full(len(owner), WEB, dtype=np.int8),
    )


def hijacked_plays(
    pop: Population, catalog: Catalog, week_index: int, start: int, count: int, rng: np.random.Generator
) -> tuple[Plays, list[tuple[int, int, int, int]]]:
    """Bot-like bursts on real long-standing accounts.

    Returns the plays and (user index, first ts, last ts, n events) per burst.
    """
    veterans = np.flatnonzero(~pop.is_bot & (pop.signup_ms < start - DAY))
    if count <= 0 or len(veterans) == 0:
        return Plays.build(0, **_empty_cols()), []
    users = rng.choice(veterans, size=min(count, len(veterans)), replace=False)
    pool = _fraud_pool(catalog, week_index, rng)
    parts, records = [], []
    for user in users:
        n = int(rng.integers(HIJACK_PLAYS[0], HIJACK_PLAYS[1] + 1))
        ms = rng.integers(*HIJACK_MS_PLAYED, n)
        period = int(rng.integers(36_000, 40_000))  # regular: ms_played plus a scripted pause
        first = start + HOUR + int(rng.integers(0, WEEK_MS - 2 * HOUR - n * period))
        ts = first + np.arange(n) * period + rng.integers(-20, 21, n)
        parts.append(
            Plays.build(
                n,
                user=np.full(n, user),
                track=pool[rng.integers(0, len(pool), n)],
                ts_ms=ts,
                ms_played=ms,
                reason=np.full(n, ENDPLAY, dtype=np.int8),
                context=np.full(n, RADIO, dtype=np.int8),
                platform=np.full(n, WEB, dtype=np.int8),
            )
        )
        records.append((int(user), int(ts.min()), int(ts.max()), n))
    return Plays.concat(parts), records


def clear_around(plays: Plays, bursts: list[tuple[int, int, int, int]]) -> Plays:
    """Drop the owner's own plays near a hijacked burst so the burst stands as its own session."""
    keep = np.ones(len(plays), dtype=bool)
    for user, first, last, _ in bursts:
        near = (plays.ts_ms > first - HIJACK_QUIET_MS) & (plays.ts_ms < last + HIJACK_QUIET_MS)
        keep &= ~((plays.user == user) & near)
    return plays.take(np.flatnonzero(keep))


def replays(plays: Plays, rate: float, rng: np.random.Generator) -> Plays:
    """Copies of some plays, to be landed under fresh event ids."""
    n = rng.binomial(len(plays), rate) if len(plays) else 0
    return plays.take(np.sort(rng.choice(len(plays), size=n, replace=False)))


def _empty_cols() -> dict:
    z = np.zeros(0, dtype=np.int64)
    return dict(
        user=z,
        track=z,
        ts_ms=z,
        ms_played=z,
        reason=np.zeros(0, dtype=np.int8),
        context=np.zeros(0, dtype=np.int8),
        platform=np.zeros(0, dtype=np.int8),
    )
