"""Baselines on the same training data: global popularity, item-item cosine CF and ``implicit`` ALS.

They run on the driver, on the evaluated users' histories only (``batch.EvaluationSample``: a seeded-hash
sample drawn in Spark; at 500 M users at most ``sample_users`` 1 M users and ``sample_rows`` 100 M rows,
every user of a demo world), and recommend for those users only; popularity's ranking is counted in
Spark over the whole window (one row per track).
"""

from __future__ import annotations

import warnings
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
    """1 where the user played the track at all (to exclude already-heard tracks); users and tracks sorted."""
    for name, ids in (("users", users), ("tracks", tracks)):
        if len(ids) > 1 and (np.diff(ids) <= 0).any():
            raise ValueError(f"heard_matrix needs unique {name} in ascending order")
    frame = interactions[["user_id", "track_id"]].drop_duplicates()
    rows = np.searchsorted(users, frame["user_id"].to_numpy(np.int64))
    cols = np.searchsorted(tracks, frame["track_id"].to_numpy(np.int64))
    keep = (rows < len(users)) & (cols < len(tracks))
    keep[keep] &= (users[rows[keep]] == frame["user_id"].to_numpy(np.int64)[keep]) & (
        tracks[cols[keep]] == frame["track_id"].to_numpy(np.int64)[keep]
    )
    data = np.ones(int(keep.sum()), dtype=np.float32)
    return sp.csr_matrix((data, (rows[keep], cols[keep])), shape=(len(users), len(tracks)))


@dataclass(frozen=True)
class ItemCfConfig:
    neighbours: int = 100  # similar items kept per item


def als_top_k(interactions: pd.DataFrame, k: int, config: AlsConfig) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids int64[n], top int64[n, k]) from ``implicit`` ALS, already-heard tracks excluded."""
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit checks the BLAS threads when the model is made
        model = AlternatingLeastSquares(
            factors=config.factors, regularization=config.regularization, alpha=config.alpha,
            iterations=config.iterations, random_state=config.seed,
        )
    return _implicit_top_k(model, interactions, k)


def item_cf_top_k(interactions: pd.DataFrame, k: int, config: ItemCfConfig | None = None,
                  batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids int64[n], top int64[n, k]) from item-item cosine CF, every heard track excluded.

    Similarities are ``implicit``'s cosine over the users' positive weights, ``neighbours`` per item;
    a user's score for a track sums its similarity to each of the user's positive tracks times the
    user's weight for it.
    """
    from implicit.nearest_neighbours import CosineRecommender
    from implicit.utils import ParameterWarning
    from threadpoolctl import threadpool_limits

    users, tracks, matrix = _user_items(interactions)
    model = CosineRecommender(K=(config or ItemCfConfig()).neighbours)
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ParameterWarning)  # implicit converts its own transpose
        model.fit(matrix, show_progress=False)
    similarity = model.similarity.tocsr()
    heard = heard_matrix(interactions, users, tracks)
    top = np.full((len(users), k), -1, dtype=np.int64)
    for start in range(0, len(users), batch):
        scores = (matrix[start : start + batch] @ similarity).toarray()
        scores[heard[start : start + batch].nonzero()] = -np.inf
        top[start : start + batch] = _top_columns(scores, tracks, k)
    return users, top


def _top_columns(scores: np.ndarray, columns: np.ndarray, k: int) -> np.ndarray:
    """Per row, the ids of the k highest finite, positive scores in descending order (-1 padded)."""
    k_eff = min(k, scores.shape[1])
    best = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    best_scores = np.take_along_axis(scores, best, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best, best_scores = np.take_along_axis(best, order, 1), np.take_along_axis(best_scores, order, 1)
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    out[:, :k_eff] = np.where(best_scores > 0, columns[best], -1)
    return out


def _implicit_top_k(model, interactions: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    from threadpoolctl import threadpool_limits

    users, tracks, matrix = _user_items(interactions)
    # implicit warns (and slows down) when BLAS runs its own threads beside its own.
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=False)
    heard = heard_matrix(interactions, users, tracks)
    k_eff = min(k, len(tracks))
    cols, _ = model.recommend(np.arange(len(users)), heard, N=k_eff, filter_already_liked_items=True)
    top = np.full((len(users), k), -1, dtype=np.int64)
    top[:, :k_eff] = np.where(cols >= 0, tracks[np.clip(cols, 0, len(tracks) - 1)], -1)
    return users, top


def popularity_top_k(interactions: pd.DataFrame, users: np.ndarray, k: int,
                     ranked: np.ndarray | None = None) -> np.ndarray:
    """The k tracks with the most listeners, minus each user's heard tracks: int64[n, k].

    ranked: track ids by listeners, most first (``evaluation.batch.popularity_ranking`` counts them in
    Spark over the whole history); default: counted in ``interactions``."""
    if ranked is None:
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
    # heard_matrix looks users up by binary search: it needs them sorted (embedding ids are not).
    user_ids = np.asarray(user_ids, np.int64)
    by_user = np.argsort(user_ids, kind="stable")
    heard = heard_matrix(interactions, user_ids[by_user], track_ids).tocsr()
    user_vectors = np.asarray(user_vectors)[by_user]
    top = np.full((len(user_ids), k), -1, dtype=np.int64)
    k_eff = min(k, len(track_ids))
    for start in range(0, len(user_ids), batch):
        scores = user_vectors[start : start + batch] @ track_vectors.T
        block = heard[start : start + batch]
        scores[block.nonzero()] = -np.inf
        best = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        ranked = np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, 1), axis=1), 1)
        top[by_user[start : start + batch], :k_eff] = track_ids[ranked]
    return top


def top_k_frame(user_ids: np.ndarray, top: np.ndarray) -> pd.DataFrame:
    """A top-k matrix as list rows: user_id, position (1-based), track_id; -1 padding dropped."""
    k = top.shape[1] if top.ndim == 2 else 0
    frame = pd.DataFrame({
        "user_id": np.repeat(np.asarray(user_ids, np.int64), k),
        "position": np.tile(np.arange(1, k + 1, dtype=np.int64), len(user_ids)),
        "track_id": top.reshape(-1).astype(np.int64),
    })
    return frame[frame["track_id"] >= 0].reset_index(drop=True)
