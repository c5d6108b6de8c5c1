"""The systems the weekly evaluation compares, and the tables ``dw evaluate`` prints (docs/evaluation.md).

Every system gets the same users (drawn by seeded hash: ``batch.EvaluationSample``), the same
heard-track exclusion (the whole history window) and the same 30 slots; all are scored against the
discovery holdout of the week after.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dw_assets.evaluation.baselines import (
    AlsConfig,
    ItemCfConfig,
    als_top_k,
    embedding_top_k,
    item_cf_top_k,
    popularity_top_k,
    top_k_frame,
)
from dw_assets.evaluation.holdout import discovery_holdout
from dw_assets.evaluation.metrics import metric_keys

SYSTEMS = ("pipeline", "retrieval", "popularity", "item_cf", "als", "last_week")
LIST_COLUMNS = ["user_id", "position", "track_id"]


def holdout_truth(history: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    """user_id, track_id: week W+1 positives the user never played up to W."""
    truth = discovery_holdout(holdout, history)
    if not truth:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "track_id": pd.Series(dtype="int64")})
    return pd.DataFrame({
        "user_id": np.concatenate([np.full(len(t), u, np.int64) for u, t in truth.items()]),
        "track_id": np.concatenate(list(truth.values())).astype(np.int64),
    })


def track_table(track_stats: pd.DataFrame) -> pd.DataFrame:
    """track_id, artist_id, genre, popularity_share (share of the window's plays), popularity_percentile, is_cold."""
    plays = track_stats["plays"].to_numpy(np.float64)
    total = plays.sum()
    return pd.DataFrame({
        "track_id": track_stats["track_id"].to_numpy(np.int64),
        "artist_id": track_stats["artist_id"].to_numpy(np.int64),
        "genre": track_stats["genre"].astype(str).to_numpy(),
        "popularity_share": plays / total if total > 0 else np.zeros(len(plays)),
        "popularity_percentile": track_stats["popularity_percentile"].to_numpy(np.float64),
        "is_cold": track_stats["is_cold"].to_numpy(bool),
    })


def baseline_lists(
    history: pd.DataFrame, users: np.ndarray, user_vectors: tuple[np.ndarray, np.ndarray],
    track_vectors: tuple[np.ndarray, np.ndarray], k: int = 30, als: AlsConfig | None = None,
    item_cf: ItemCfConfig | None = None, popular: np.ndarray | None = None,
) -> dict[str, pd.DataFrame]:
    """Top-k lists (user_id, position, track_id) of retrieval (two-tower order), popularity, item-item CF and ALS.

    users: int64[n] the users to recommend for (the holdout's); each system skips users it cannot serve.
    user_vectors / track_vectors: (ids, float32[., dim]) of this week's two-tower model.
    popular: track ids by listeners, most first (default: counted in ``history``).
    """
    users = np.asarray(users, np.int64)
    user_ids, vectors = user_vectors
    known = np.isin(user_ids, users)
    lists = {"retrieval": top_k_frame(user_ids[known], embedding_top_k(
        vectors[known], *track_vectors, user_ids[known], history, k))}
    lists["popularity"] = top_k_frame(users, popularity_top_k(history, users, k, popular))
    for name, (ids, top) in {"item_cf": item_cf_top_k(history, k, item_cf or ItemCfConfig()),
                             "als": als_top_k(history, k, als or AlsConfig())}.items():
        keep = np.isin(ids, users)
        lists[name] = top_k_frame(ids[keep], top[keep])
    return lists


def evaluation_json(table: pd.DataFrame, k: int = 30) -> dict:
    """The ``dw evaluate --json`` object from an ``offline_evaluation`` table (a contract: tools read these names)."""
    overall = table[table["segment"] == "all"].set_index("system")
    keys = [key for key in metric_keys(k) if key in overall.columns]
    first = overall.iloc[0]
    return {
        "week": str(first["week"]),
        "holdout_week": str(first["holdout_week"]),
        "systems": {system: {key: _plain(overall.at[system, key]) for key in keys} for system in overall.index},
        "retrieval_recall@500": _plain(first.get("retrieval_recall@500")),
        "ann_recall@500": _plain(first.get("ann_recall@500")),
    }


def _plain(value):
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


def quality_targets(table: pd.DataFrame, k: int = 30, uncalibrated: str = "retrieval") -> pd.DataFrame:
    """The holdout's sanity targets for the pipeline, each with its value, requirement and whether it is met.

    No NDCG-vs-ALS target: the holdout rewards predicting exposure (a perfect taste ranker scores 0.30 x
    ALS there), so NDCG is an exposure monitor; quality is judged by the north star's saves
    (``north_star.north_star_targets``).

    ``uncalibrated``: the system whose genre KL the calibrated playlists must beat (model order, no re-ranking).
    """
    overall = table[table["segment"] == "all"].set_index("system")
    pipe = overall.loc["pipeline"]
    ndcg = f"ndcg@{k}"

    def ratio(other: str) -> float:
        base = overall.at[other, ndcg] if other in overall.index else np.nan
        return float(pipe[ndcg] / base) if base and base > 0 else np.nan

    rows = [
        ("pipeline NDCG vs popularity", ratio("popularity"), ">= 2x"),
        ("popularity lift (recommended / own history)", pipe.get("popularity_lift", np.nan), "< 1"),
        ("max tracks per artist", pipe.get("max_tracks_per_artist", np.nan), "<= 2"),
        (f"calibration KL vs {uncalibrated}", pipe.get("calibration_kl", np.nan), "< "
         + (f"{overall.at[uncalibrated, 'calibration_kl']:.3f}" if uncalibrated in overall.index else "n/a")),
        ("cold-track share of slots", pipe.get("cold_share", np.nan), ">= 0.05"),
        ("cold-track hit rate", pipe.get("cold_hit_rate", np.nan), "> 0"),
    ]
    reference_kl = overall.at[uncalibrated, "calibration_kl"] if uncalibrated in overall.index else np.nan
    met = [
        rows[0][1] >= 2.0, rows[1][1] < 1.0, rows[2][1] <= 2,
        rows[3][1] < reference_kl, rows[4][1] >= 0.05, rows[5][1] > 0,
    ]
    return pd.DataFrame({"target": [r[0] for r in rows], "value": [float(r[1]) for r in rows],
                         "required": [r[2] for r in rows], "met": [bool(m) for m in met]})
