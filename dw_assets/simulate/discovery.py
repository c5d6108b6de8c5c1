"""How listeners come across tracks: genre- and popularity-driven candidate
draws, then a softmax choice on true affinity (Gumbel-max over a few
candidates, vectorized over all plays at once)."""

from __future__ import annotations

import numpy as np

from dw_assets.simulate.catalog import Catalog
from dw_assets.simulate.population import MAX_MIX, Population

CANDIDATES_PER_PLAY = 8
CHOICE_TEMPERATURE = 0.08  # softmax temperature on affinity
EXPLORE_SHARE = 0.1  # candidates from any genre, by global popularity
FRESH_BOOST = 3.0  # extra exposure of tracks released in the last two weeks
AFFINITY_CHUNK = 1_000_000
LIST_EXPLORE_SHARE = 0.05  # list candidates from outside the owner's genres
SECOND_GENRE_PICKS = 0.35  # share of a two-genre list drawn from its second genre
LISTS_PER_BATCH = 50_000
SCORE_STEPS = 1 << 16  # score resolution when ranking candidates with integer sorts


def affinity(pop: Population, catalog: Catalog, users: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """True affinity taste . style for index pairs: float32[n], in [-1, 1]."""
    out = np.empty(len(users), dtype=np.float32)
    for lo in range(0, len(users), AFFINITY_CHUNK):
        hi = lo + AFFINITY_CHUNK
        out[lo:hi] = np.einsum("ij,ij->i", pop.taste[users[lo:hi]], catalog.style[tracks[lo:hi]])
    return out


class TrackSampler:
    """Popularity-weighted draws among the tracks playable in one week, optionally within a genre."""

    def __init__(self, catalog: Catalog, week_index: int):
        available = np.flatnonzero(catalog.release_week < week_index)
        fresh = catalog.release_week[available] >= week_index - 2
        weight = catalog.popularity[available] * np.where(fresh, FRESH_BOOST, 1.0)
        order = np.argsort(catalog.genre[available], kind="stable")
        self.tracks = available[order]
        self.cum = np.cumsum(weight[order])
        genre = catalog.genre[self.tracks]
        edges = np.searchsorted(genre, np.arange(catalog.n_genres + 1))
        cum0 = np.r_[0.0, self.cum]
        self.lo = cum0[edges[:-1]]
        self.hi = cum0[edges[1:]]
        self.total = self.cum[-1]

    def draw(self, genre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One track per entry of ``genre`` (int[n]; -1 = any genre)."""
        genre = np.asarray(genre)
        g = np.maximum(genre, 0)
        lo = np.where(genre >= 0, self.lo[g], 0.0)
        hi = np.where(genre >= 0, self.hi[g], self.total)
        empty = hi <= lo  # a genre with nothing released yet
        lo, hi = np.where(empty, 0.0, lo), np.where(empty, self.total, hi)
        u = lo + rng.random(len(genre)) * (hi - lo)
        idx = np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.cum) - 1)
        return self.tracks[idx]


def mix_genres(
    pop: Population, users: np.ndarray, rng: np.random.Generator, explore: float = EXPLORE_SHARE
) -> np.ndarray:
    """A genre per entry drawn from each user's taste mix; -1 (any genre) with prob ``explore``."""
    cum = np.cumsum(pop.mix_weight[users], axis=1)
    slot = np.minimum((rng.random(len(users))[:, None] > cum).sum(axis=1), MAX_MIX - 1)
    genre = pop.mix_genre[users, slot].astype(np.int64)
    genre[genre < 0] = pop.mix_genre[users[genre < 0], 0]
    genre[rng.random(len(users)) < explore] = -1
    return genre


def discover(
    pop: Population,
    catalog: Catalog,
    sampler: TrackSampler,
    users: np.ndarray,
    rng: np.random.Generator,
    temperature: float = CHOICE_TEMPERATURE,
    candidates: int = CANDIDATES_PER_PLAY,
) -> np.ndarray:
    """One discovered track per entry of ``users``: the softmax(affinity / T) pick among candidates."""
    n = len(users)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    flat_users = np.repeat(users, candidates)
    cand = sampler.draw(mix_genres(pop, flat_users, rng), rng)
    score = affinity(pop, catalog, flat_users, cand) / temperature + rng.gumbel(size=len(cand))
    best = score.reshape(n, candidates).argmax(axis=1)
    return cand.reshape(n, candidates)[np.arange(n), best]


def ranked_picks(
    pop: Population,
    catalog: Catalog,
    sampler: TrackSampler,
    owners: np.ndarray,
    sizes: np.ndarray,
    rng: np.random.Generator,
    genres: np.ndarray | None = None,
    oversample: int = 3,
    noise: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct tracks per list: the ``sizes[i]`` best of ``oversample * sizes[i]`` candidates
    by noisy affinity to owner ``owners[i]``, optionally restricted to ``genres[i]`` (int[n, 2], -1 = none).

    Returns (list index int64[m], track index int64[m]) grouped by list, best first.
    """
    if len(owners) > LISTS_PER_BATCH:  # bound memory: candidates of a batch of lists at a time
        parts = [
            ranked_picks(
                pop,
                catalog,
                sampler,
                owners[lo : lo + LISTS_PER_BATCH],
                sizes[lo : lo + LISTS_PER_BATCH],
                rng,
                None if genres is None else genres[lo : lo + LISTS_PER_BATCH],
                oversample,
                noise,
            )
            for lo in range(0, len(owners), LISTS_PER_BATCH)
        ]
        offsets = range(0, len(owners), LISTS_PER_BATCH)
        return (
            np.concatenate([lists + lo for (lists, _), lo in zip(parts, offsets, strict=True)]),
            np.concatenate([tracks for _, tracks in parts]),
        )
    n_cand = sizes * oversample
    list_idx = np.repeat(np.arange(len(owners)), n_cand)
    users = owners[list_idx]
    if genres is None:
        genre = mix_genres(pop, users, rng, explore=LIST_EXPLORE_SHARE)
    else:
        pick = genres[list_idx]
        second = (rng.random(len(list_idx)) < SECOND_GENRE_PICKS) & (pick[:, 1] >= 0)
        genre = np.where(second, pick[:, 1], pick[:, 0])
    tracks = sampler.draw(genre, rng)
    score = affinity(pop, catalog, users, tracks) + rng.normal(0.0, noise, len(tracks))
    # Sortable ints: (list, track) for dedup, then (list, score desc) for ranking.
    demerit = np.round((1.0 - np.clip(score, -1.0, 1.0)) * 0.5 * (SCORE_STEPS - 1)).astype(np.int64)
    pair = list_idx * catalog.n_tracks + tracks
    order = np.argsort(pair * SCORE_STEPS + demerit)
    best = order[np.r_[True, pair[order][1:] != pair[order][:-1]]]
    best = best[np.argsort(list_idx[best] * SCORE_STEPS + demerit[best], kind="stable")]
    list_idx, tracks = list_idx[best], tracks[best]
    rank = np.arange(len(list_idx)) - np.searchsorted(list_idx, list_idx)
    keep = rank < sizes[list_idx]
    return list_idx[keep], tracks[keep]
