"""Retrieval baselines on the same training data: global popularity and ``implicit`` ALS."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass(frozen=True)
class AlsConfig:
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 10.0  # confidence = 1 + alpha * summed positive weight
    iterations: int = 15
    seed: int = 7


def _user_items(interactions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """Positive graded weights summed per (user, track) as a CSR matrix (users x tracks)."""
    positive = interactions.loc[interactions["weight"] > 0, ["user_id", "track_id", "weight"]]
    users, user_rows = np.unique(positive["user_id"].to_numpy(np.int64), return_inverse=True)
    tracks, track_cols = np.unique(positive["track_id"].to_numpy(np.int64), return_inverse=True)
    matrix = sp.csr_matrix(
        (positive["weight"].to_numpy(np.float32), (user_rows, track_cols)), shape=(len(users), len(tracks))
    )
    matrix.sum_duplicates()
    return users, tracks, matrix


def heard_matrix(interactions: pd.DataFrame, users: np.ndarray, tracks: np.ndarray) -> sp.csr_matrix:
    """1 where the user played the track at all (to exclude already-heard tracks)."""
    frame = interactions[["user_id", "track_id"]].drop_duplicates()
    rows = np.searchsorted(users, frame["user_id"].to_numpy(np.int64))
    cols = np.searchsorted(tracks, frame["track_id"].to_numpy(np.int64))
    keep = (rows < len(users)) & (cols < len(tracks))
    keep[keep] &= (users[rows[keep]] == frame["user_id"].to_numpy(np.int64)[keep]) & (
        tracks[cols[keep]] == frame["track_id"].to_numpy(np.int64)[keep]
    )
    data = np.ones(int(keep.sum()), dtype=np.float32)
    return sp.csr_matrix((data, (rows[keep], cols[keep])), shape=(len(users), len(tracks)))


def als_top_k(interactions: pd.DataFrame, k: int, config: AlsConfig) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids int64[n], top int64[n, k]) from ``implicit`` ALS, already-heard tracks excluded."""
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    users, tracks, matrix = _user_items(interactions)
    model = AlternatingLeastSquares(
        factors=config.factors, regularization=config.regularization, alpha=config.alpha,
        iterations=config.iterations, random_state=config.seed,
    )
    # implicit warns (and slows down) when BLAS runs its own threads beside its own.
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=False)
    heard = heard_matrix(interactions, users, tracks)
    k_eff = min(k, len(tracks))
    cols, _ = model.recommend(np.arange(len(users)), heard, N=k_eff, filter_already_liked_items=True)
    top = np.full((len(users), k), -1, dtype=np.int64)
    top[:, :k_eff] = np.where(cols >= 0, tracks[np.clip(cols, 0, len(tracks) - 1)], -1)
    return users, top


def popularity_top_k(interactions: pd.DataFrame, users: np.ndarray, k: int) -> np.ndarray:
    """The k tracks with the most listeners, minus each user's heard tracks: int64[n, k]."""
    listeners = interactions.groupby("track_id")["user_id"].nunique().sort_values(ascending=False, kind="stable")
    ranked = listeners.index.to_numpy(np.int64)
    heard = interactions.groupby("user_id")["track_id"].agg(lambda s: set(s.tolist()))
    top = np.full((len(users), k), -1, dtype=np.int64)
    for row, user in enumerate(users):
        seen = heard.get(int(user), set())
        fresh = [t for t in ranked[: k + len(seen)] if t not in seen][:k]
        top[row, : len(fresh)] = fresh
    return top


def embedding_top_k(
    user_vectors: np.ndarray, track_ids: np.ndarray, track_vectors: np.ndarray, user_ids: np.ndarray,
    interactions: pd.DataFrame, k: int, batch: int = 1024,
) -> np.ndarray:
    """Exact inner-product top-k per user with already-heard tracks excluded: int64[n, k]."""
    order = np.argsort(track_ids)
    track_ids, track_vectors = track_ids[order], track_vectors[order]
    heard = heard_matrix(interactions, np.asarray(user_ids, np.int64), track_ids).tocsr()
    top = np.full((len(user_ids), k), -1, dtype=np.int64)
    k_eff = min(k, len(track_ids))
    for start in range(0, len(user_ids), batch):
        scores = user_vectors[start : start + batch] @ track_vectors.T
        block = heard[start : start + batch]
        scores[block.nonzero()] = -np.inf
        best = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        ranked = np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, 1), axis=1), 1)
        top[start : start + batch, :k_eff] = track_ids[ranked]
    return top
