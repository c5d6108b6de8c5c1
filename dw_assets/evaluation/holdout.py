"""The discovery holdout (docs/evaluation.md) and the one batch recall@k of top-k lists."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: retrieval.ann imports recall_of_lists without pandas
    import pandas as pd


def discovery_holdout(holdout: pd.DataFrame, history: pd.DataFrame) -> dict[int, np.ndarray]:
    """user_id → sorted track ids the user liked in week W+1 and never played up to W.

    holdout: interactions of week W+1 (user_id, track_id, is_positive);
    history: every interaction up to W (user_id, track_id), positive or not.
    """
    liked = holdout.loc[holdout["is_positive"], ["user_id", "track_id"]].drop_duplicates()
    heard = history[["user_id", "track_id"]].drop_duplicates().assign(_heard=True)
    fresh = liked.merge(heard, on=["user_id", "track_id"], how="left")
    fresh = fresh[fresh["_heard"].isna()]
    return {int(u): np.sort(g.to_numpy(np.int64)) for u, g in fresh.groupby("user_id")["track_id"]}


def recall_of_lists(top: np.ndarray, target_ptr: np.ndarray, target_tracks: np.ndarray) -> dict:
    """The one batch recall@k: mean over users of |top-k ∩ targets| / |targets| (users without targets
    skipped), vectorized over the batch. Used for the holdout (``recall_at_k``), the two-tower's
    validation and ANN vs exact search (``retrieval.ann.search_recall``).

    ``top``: [n_users, k] the users' lists (track ids or rows; padding must match no target, e.g. -1);
    ``target_ptr``: int64[n_users + 1] CSR over the users; ``target_tracks``: [t] their targets, in the same
    id space as ``top``. Returns recall, users (with targets), hits and k.
    """
    n_targets = np.diff(np.asarray(target_ptr, dtype=np.int64))
    owner = np.repeat(np.arange(len(n_targets)), n_targets)
    top = np.asarray(top)
    hits = _in_rows(top, owner, np.asarray(target_tracks))
    per_user = np.bincount(owner, weights=hits, minlength=len(n_targets))
    has = n_targets > 0
    return {"recall": float((per_user[has] / n_targets[has]).mean()) if has.any() else float("nan"),
            "users": int(has.sum()), "hits": int(hits.sum()), "k": int(top.shape[1])}


def _in_rows(top: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """bool[t]: ``values[i]`` is in ``top[rows[i]]``. A binary search in each sorted row, so memory stays
    linear in top + values: comparing each target with its whole row takes t x k (ANN recall, k targets
    per query: 4 GB at 2,000 queries and k = 500)."""
    k = top.shape[1]
    if k == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    ordered = np.sort(top, axis=1)
    lo, hi = np.zeros(len(values), np.int64), np.full(len(values), k, np.int64)
    while (active := lo < hi).any():  # lower bound; at most log2(k) + 1 rounds
        mid = (lo + hi) // 2
        below = ordered[rows, np.minimum(mid, k - 1)] < values
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    return (lo < k) & (ordered[rows, np.minimum(lo, k - 1)] == values)


def recall_at_k(user_ids: np.ndarray, top: np.ndarray, truth: dict[int, np.ndarray]) -> dict:
    """``recall_of_lists`` of ``top`` (int64[n_users, k] track ids, -1 padding; row i = ``user_ids[i]``)
    against a ``discovery_holdout`` dict, over the users with holdout positives.

    Users of ``truth`` missing from ``user_ids`` count with recall 0 (the system had nothing for them);
    an empty ``truth`` gives recall 0.
    """
    top = np.asarray(top, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    users = np.fromiter(truth, np.int64, len(truth))
    order = np.argsort(user_ids, kind="stable")
    at = np.minimum(np.searchsorted(user_ids[order], users), max(len(user_ids) - 1, 0))
    covered = user_ids[order][at] == users if len(user_ids) else np.zeros(len(users), bool)
    lists = np.full((len(users), top.shape[1] if top.ndim == 2 else 0), -1, dtype=np.int64)
    lists[covered] = top[order[at[covered]]]
    liked = [np.asarray(truth[int(u)], dtype=np.int64) for u in users]
    ptr = np.r_[0, np.cumsum([len(t) for t in liked])].astype(np.int64)
    result = recall_of_lists(lists, ptr, np.concatenate(liked) if liked else np.zeros(0, np.int64))
    return {**result, "recall": result["recall"] if len(users) else 0.0, "users_covered": int(covered.sum())}
