"""The discovery holdout (docs/evaluation.md) and recall of top-k lists against it."""

from __future__ import annotations

import numpy as np
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


def recall_at_k(user_ids: np.ndarray, top: np.ndarray, truth: dict[int, np.ndarray]) -> dict:
    """Mean per-user recall of ``top`` (int64[n_users, k], -1 padding) over users with holdout positives.

    Users of ``truth`` missing from ``user_ids`` count with recall 0 (the system had nothing for them).
    """
    row_of = {int(u): i for i, u in enumerate(user_ids)}
    recalls, hits = [], 0
    for user, liked in truth.items():
        row = row_of.get(user)
        found = 0 if row is None else int(np.isin(liked, top[row]).sum())
        hits += found
        recalls.append(found / len(liked))
    return {
        "recall": float(np.mean(recalls)) if recalls else 0.0,
        "users": len(recalls),
        "users_covered": sum(1 for u in truth if u in row_of),
        "hits": hits,
        "k": int(top.shape[1]) if top.ndim == 2 else 0,
    }
