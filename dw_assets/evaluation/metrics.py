"""Offline metrics of top-k recommendation lists against the discovery holdout (docs/evaluation.md).

One system's lists (``recs``: user_id, position 1..k, track_id) are scored against the
discovery-holdout positives (``truth``: user_id, track_id -- liked in week W+1, never played up
to W). Everything is vectorized over the whole batch (sorts, merges, ``bincount``, one sparse
product for the embedding diversity): no Python loop over users except reading the
``genre_share`` lists of ``user_profiles``.

Only slots at positions 1..k count; a track listed twice for a user counts once, at its best
position. Positions are used as given (a gap still discounts the later slots).

| key | users averaged over | definition |
|---|---|---|
| ``precision@k`` | truth users | hits / k (k fixed, not the list length) |
| ``recall@k`` | truth users | hits / \\|truth_u\\| (not capped at k: a user with 40 positives tops out at 30/40) |
| ``ndcg@k`` | truth users | binary gain, ``1 / log2(position + 1)`` discount; ideal DCG over min(\\|truth_u\\|, k) slots |
| ``hit_rate@k`` | truth users | share of users with at least one hit |
| ``map@k`` | truth users | AP@k = sum over hits of precision at the hit's position / min(\\|truth_u\\|, k) |
| ``coverage`` | -- | distinct recommended tracks / catalog_size (default: the tracks of ``tracks``) |
| ``ild`` | users with >= 2 rated slots | intra-list diversity: 1 - mean pairwise cosine of the list's track vectors, or, without vectors, the share of pairs of different genres (``ild_uses_vectors`` says which) |
| ``novelty`` | rec slots (micro) | -log2(popularity_share), the share floored at ``NOVELTY_FLOOR_FACTOR`` x the smallest positive share so unplayed tracks are finite (and the most novel) |
| ``popularity_lift`` | users with recs and a history | mean popularity percentile of the list / the user's history's ``mean_popularity_percentile``; < 1: the list is less popular than what the user hears |
| ``calibration_kl`` | users with recs and a genre history | KL(history genre mix \\|\\| list genre mix) in nats, smoothed as the re-ranker optimises it (``rerank.genre_kl``, alpha ``CALIBRATION_ALPHA``) |
| ``max_tracks_per_artist`` | users with recs | max over users of the most tracks one artist has in the list |
| ``mean_tracks_per_artist`` | users with recs | mean over users of list length / distinct artists |
| ``cold_share`` | rec slots (micro) | share of slots holding a cold track (no plays in the window) |
| ``cold_hit_rate`` | truth positives (micro) | hits on cold positives / cold positives; NaN when truth has no cold positive |

Also returned: ``users`` (truth users), ``users_with_recs``, ``rec_popularity_percentile`` and
``history_popularity_percentile`` (the two means behind ``popularity_lift``, over the same users)
and ``ild_uses_vectors`` (1.0 when ``ild`` is the embedding diversity, 0.0 for the genre one).
Truth users without recs score 0 on every accuracy metric; users with recs but no positives
count only in the beyond-accuracy metrics. A mean over no users is NaN.

A recommended track missing from ``tracks`` is treated as unplayed (share 0, percentile 0), not
cold, of genre ``"unknown"`` and of its own artist.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from dw_assets.ranking.rerank import UNKNOWN_GENRE, RerankConfig

DEFAULT_K = 30
CALIBRATION_ALPHA = RerankConfig.calibration_alpha  # the same smoothing the re-ranker calibrates with
NOVELTY_FLOOR_FACTOR = 0.1  # unplayed tracks: a tenth of the rarest played track's share
SEGMENTS = ("all", "light", "medium", "heavy", "new")
AUXILIARY_KEYS = ("users", "users_with_recs", "rec_popularity_percentile", "history_popularity_percentile",
                  "ild_uses_vectors")  # fmt: skip


def metric_keys(k: int) -> tuple[str, ...]:
    """The metric keys of ``evaluate_lists`` for lists of length k (accuracy keys carry k)."""
    return (f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"hit_rate@{k}", f"map@{k}", "coverage", "ild",
            "novelty", "popularity_lift", "calibration_kl", "max_tracks_per_artist",
            "mean_tracks_per_artist", "cold_share", "cold_hit_rate")  # fmt: skip


METRIC_KEYS = metric_keys(DEFAULT_K)


# --------------------------------------------------------------------------- accuracy


def _top_k(recs: pd.DataFrame, k: int) -> pd.DataFrame:
    """user_id, position, track_id (int64) at positions 1..k, sorted by (user, position), one row per (user, track)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = pd.DataFrame({
        "user_id": recs["user_id"].to_numpy(np.int64),
        "position": recs["position"].to_numpy(np.int64),
        "track_id": recs["track_id"].to_numpy(np.int64),
    })
    if (top["position"] < 1).any():
        raise ValueError("recs.position must be >= 1 (1 = top of the list)")
    top = top[top["position"] <= k].sort_values(["user_id", "position"], kind="stable")
    if top.duplicated(["user_id", "position"]).any():
        raise ValueError("recs hold two tracks at the same (user_id, position)")
    return top.drop_duplicates(["user_id", "track_id"]).reset_index(drop=True)


def _positives(truth: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": truth["user_id"].to_numpy(np.int64),
        "track_id": truth["track_id"].to_numpy(np.int64),
    }).drop_duplicates()


def _hits(top: pd.DataFrame, positives: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``top`` whose track is a positive of the user, sorted by (user, position)."""
    return top.merge(positives, on=["user_id", "track_id"], how="inner").sort_values(["user_id", "position"])


def ranking_metrics(recs: pd.DataFrame, truth: pd.DataFrame, k: int = DEFAULT_K) -> pd.DataFrame:
    """Per-user accuracy of top-k lists, one row per truth user (index user_id, sorted).

    recs: user_id, position (1..k, 1 = top), track_id; truth: user_id, track_id (positives).
    Columns: positives (int64, |truth_u|), hits (int64), precision (hits / k), recall
    (hits / |truth_u|), ndcg (binary gain, log2 discount, ideal over min(|truth_u|, k)), hit
    (0.0 / 1.0), ap (AP@k with denominator min(|truth_u|, k)); all float64 but the counts.
    Users of ``recs`` absent from ``truth`` are not rows; truth users without recs score 0.
    """
    top = _top_k(recs, k)
    positives = _positives(truth)
    users, n_positives = np.unique(positives["user_id"].to_numpy(np.int64), return_counts=True)
    hits = _hits(top, positives)
    row = np.searchsorted(users, hits["user_id"].to_numpy(np.int64))  # every hit user is a truth user
    position = hits["position"].to_numpy(np.float64)
    n = len(users)

    n_hits = np.bincount(row, minlength=n)
    dcg = np.bincount(row, weights=1.0 / np.log2(position + 1.0), minlength=n)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))  # ideal[i]: i + 1 relevant slots
    depth = np.minimum(n_positives, k)
    idcg = ideal[np.maximum(depth, 1) - 1]
    # precision at a hit = (hits so far, this one included) / its position
    hit_rank = hits.groupby("user_id", sort=False).cumcount().to_numpy(np.float64) + 1.0
    ap_sum = np.bincount(row, weights=hit_rank / position, minlength=n)

    frame = pd.DataFrame({
        "positives": n_positives.astype(np.int64),
        "hits": n_hits.astype(np.int64),
        "precision": n_hits / float(k),
        "recall": n_hits / n_positives,
        "ndcg": dcg / idcg,
        "hit": (n_hits > 0).astype(np.float64),
        "ap": ap_sum / np.maximum(depth, 1),
    }, index=pd.Index(users, name="user_id"))
    return frame


# --------------------------------------------------------------------------- track and user attributes


def _catalog(tracks: pd.DataFrame) -> pd.DataFrame:
    """tracks sorted by unique track_id with the attributes the metrics read, defaults filled."""
    catalog = tracks.drop_duplicates("track_id").sort_values("track_id")
    if "popularity_share" in catalog:
        share = catalog["popularity_share"].to_numpy(np.float64)
    else:  # a raw track_stats table: derive the share from its play counts
        plays = catalog["plays"].to_numpy(np.float64)
        share = plays / plays.sum() if plays.sum() > 0 else np.zeros(len(catalog))
    return pd.DataFrame({
        "track_id": catalog["track_id"].to_numpy(np.int64),
        "artist_id": catalog["artist_id"].to_numpy(np.int64),
        "genre": catalog["genre"].fillna(UNKNOWN_GENRE).astype(str).to_numpy(object),
        "popularity_share": np.nan_to_num(share, nan=0.0),
        "popularity_percentile": catalog["popularity_percentile"].to_numpy(np.float64),
        "is_cold": catalog["is_cold"].fillna(False).to_numpy(bool),
    })


def _lookup(catalog: pd.DataFrame, track_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in catalog, found) for each track id."""
    ids = catalog["track_id"].to_numpy(np.int64)
    row = np.minimum(np.searchsorted(ids, track_ids), max(len(ids) - 1, 0))
    found = ids[row] == track_ids if len(ids) else np.zeros(len(track_ids), dtype=bool)
    return row, found


def _slots(top: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """``top`` with each slot's artist_id, genre, popularity_share, popularity_percentile, is_cold."""
    track = top["track_id"].to_numpy(np.int64)
    row, found = _lookup(catalog, track)

    def column(name: str, missing) -> np.ndarray:
        values = catalog[name].to_numpy()
        if not len(values):
            return np.full(len(track), missing)
        return np.where(found, values[row], missing)

    return top.assign(
        artist_id=np.where(found, column("artist_id", 0), -1 - track).astype(np.int64),  # unknown: its own artist
        genre=column("genre", UNKNOWN_GENRE).astype(object),
        popularity_share=column("popularity_share", 0.0).astype(np.float64),
        popularity_percentile=column("popularity_percentile", 0.0).astype(np.float64),
        is_cold=column("is_cold", False).astype(bool),
    )


def _genre_mix(value) -> list[tuple[str, float]]:
    """(genre, share) pairs of a genre_share cell: a dict, a list/array of {genre, share}, or empty."""
    if isinstance(value, Mapping):
        return [(str(g), float(s)) for g, s in value.items()]
    if isinstance(value, list | tuple | np.ndarray):
        return [(str(entry["genre"]), float(entry["share"])) for entry in value]
    return []  # None / NaN: no history


def history_genre_mix(history: pd.DataFrame) -> pd.DataFrame:
    """user_id, genre, p: each user's history genre mix (shares > 0, renormalized to sum 1).

    ``history.genre_share`` is a dict genre -> share or a list of {"genre", "share"} (as stored
    in ``user_profiles``); a genre listed twice sums. Users with no positive share have no rows.
    """
    users: list[int] = []
    genres: list[str] = []
    shares: list[float] = []
    for user, value in zip(history["user_id"].to_numpy(np.int64), history["genre_share"].to_numpy(object),
                           strict=True):  # fmt: skip
        for genre, share in _genre_mix(value):
            users.append(int(user))
            genres.append(genre)
            shares.append(share)
    mix = pd.DataFrame({"user_id": np.asarray(users, dtype=np.int64), "genre": pd.Series(genres, dtype=object),
                        "p": np.asarray(shares, dtype=np.float64)})  # fmt: skip
    mix = mix[mix["p"] > 0].groupby(["user_id", "genre"], as_index=False, sort=True)["p"].sum()
    return mix.assign(p=mix["p"] / mix.groupby("user_id")["p"].transform("sum"))


# --------------------------------------------------------------------------- beyond accuracy


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _ild_vectors(slots: pd.DataFrame, vectors: tuple[np.ndarray, np.ndarray]) -> pd.Series:
    """Per-user 1 - mean pairwise cosine over the list's tracks that have a non-zero vector (>= 2 of them).

    With unit vectors v_i, sum_{i != j} cos(v_i, v_j) = |sum v|^2 - n, so one sparse
    (users x tracks) @ (tracks x dim) product gives every list's pairwise mean.
    """
    ids, matrix = vectors
    ids = np.asarray(ids, dtype=np.int64)
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1)
    usable = norms > 0
    order = np.argsort(ids[usable], kind="stable")
    ids, unit = ids[usable][order], (matrix[usable] / norms[usable, None])[order]
    if not len(ids):
        return pd.Series(np.empty(0), index=pd.Index(np.empty(0, np.int64), name="user_id"))
    track = slots["track_id"].to_numpy(np.int64)
    col = np.minimum(np.searchsorted(ids, track), len(ids) - 1)
    has = ids[col] == track
    users, row = np.unique(slots["user_id"].to_numpy(np.int64)[has], return_inverse=True)
    membership = sp.csr_matrix((np.ones(len(row)), (row, col[has])), shape=(len(users), len(ids)))
    sums = np.asarray(membership @ unit)
    n = np.bincount(row, minlength=len(users)).astype(np.float64)
    rated = n >= 2
    mean_cosine = ((sums[rated] ** 2).sum(axis=1) - n[rated]) / (n[rated] * (n[rated] - 1.0))
    return pd.Series(1.0 - mean_cosine, index=pd.Index(users[rated], name="user_id"))


def _ild_genres(slots: pd.DataFrame) -> pd.Series:
    """Per-user share of slot pairs of different genres (lists of >= 2 slots)."""
    counts = slots.groupby(["user_id", "genre"], sort=False).size()
    same = (counts * (counts - 1)).groupby(level="user_id").sum()
    n = counts.groupby(level="user_id").sum()
    rated = n >= 2
    return (1.0 - same[rated] / (n[rated] * (n[rated] - 1))).astype(np.float64)


def _calibration_kl(slots: pd.DataFrame, mix: pd.DataFrame, alpha: float) -> pd.Series:
    """Per-user KL(p || q~) in nats for users with recs and a genre history, exactly ``rerank.genre_kl``.

    p: history mix; q: the list's share of each history genre (slots of other genres only
    dilute it); q~ = (1 - alpha) q + alpha p.
    """
    length = slots.groupby("user_id").size().rename("length")
    counts = slots.groupby(["user_id", "genre"]).size().rename("count").reset_index()
    frame = mix[mix["user_id"].isin(length.index)].merge(counts, on=["user_id", "genre"], how="left")
    frame = frame.join(length, on="user_id")
    p = frame["p"].to_numpy(np.float64)
    q = frame["count"].fillna(0).to_numpy(np.float64) / frame["length"].to_numpy(np.float64)
    q_smooth = (1.0 - alpha) * q + alpha * p
    return frame.assign(term=p * np.log(p / q_smooth)).groupby("user_id")["term"].sum().astype(np.float64)


def _has_history(history: pd.DataFrame) -> pd.Series:
    mean = pd.to_numeric(history["mean_popularity_percentile"], errors="coerce")
    known = mean.notna() & (mean > 0)
    if "history_level" in history:
        known &= history["history_level"].astype(str) != "none"
    return known


def evaluate_lists(recs: pd.DataFrame, truth: pd.DataFrame, tracks: pd.DataFrame, history: pd.DataFrame,
                   k: int = DEFAULT_K, vectors: tuple[np.ndarray, np.ndarray] | None = None,
                   catalog_size: int | None = None) -> dict[str, float]:  # fmt: skip
    """All metrics of one system's top-k lists (keys ``metric_keys(k)`` + ``AUXILIARY_KEYS``).

    recs: user_id int64, position (1..k, 1 = top), track_id int64 -- up to k slots per user.
    truth: user_id, track_id -- the discovery-holdout positives; accuracy is averaged over its users.
    tracks: track_id, artist_id, genre, popularity_share (share of all plays in the history
        window, 0 when unplayed; derived from ``plays`` when absent), popularity_percentile
        (0..1), is_cold (bool).
    history: user_id, genre_share (dict or list of {genre, share}), mean_popularity_percentile
        (0..1), history_level (none/light/medium/heavy) -- one row per user.
    vectors: (track_ids int64[n], vectors float32[n, dim]) for the embedding ILD; None: genre ILD.
    catalog_size: the denominator of coverage (default: distinct tracks of ``tracks``).
    See the module table for each definition.
    """
    top = _top_k(recs, k)
    positives = _positives(truth)
    per_user = ranking_metrics(top, positives, k)
    catalog = _catalog(tracks)
    slots = _slots(top, catalog)
    rec_users = slots["user_id"].unique()

    result: dict[str, float] = {
        f"precision@{k}": _mean(per_user["precision"].to_numpy()),
        f"recall@{k}": _mean(per_user["recall"].to_numpy()),
        f"ndcg@{k}": _mean(per_user["ndcg"].to_numpy()),
        f"hit_rate@{k}": _mean(per_user["hit"].to_numpy()),
        f"map@{k}": _mean(per_user["ap"].to_numpy()),
    }
    size = len(catalog) if catalog_size is None else int(catalog_size)
    result["coverage"] = slots["track_id"].nunique() / size if size > 0 else float("nan")

    if vectors is not None:
        result["ild"] = _mean(_ild_vectors(slots, vectors).to_numpy(np.float64))
    else:
        result["ild"] = _mean(_ild_genres(slots).to_numpy(np.float64))

    share = slots["popularity_share"].to_numpy(np.float64)
    played = catalog["popularity_share"].to_numpy(np.float64)
    played = played[played > 0]
    floor = NOVELTY_FLOOR_FACTOR * (played.min() if len(played) else 1.0 / max(len(catalog), 1))
    result["novelty"] = _mean(-np.log2(np.maximum(share, floor)))

    profiles = history.drop_duplicates("user_id")
    known = profiles[_has_history(profiles) & profiles["user_id"].isin(rec_users)]
    rec_percentile = slots.groupby("user_id")["popularity_percentile"].mean()
    own = known.set_index("user_id")["mean_popularity_percentile"].astype(np.float64)
    listed = rec_percentile.reindex(own.index).to_numpy(np.float64)
    result["popularity_lift"] = _mean(listed / own.to_numpy(np.float64))

    mix = history_genre_mix(profiles)
    result["calibration_kl"] = _mean(_calibration_kl(slots, mix, CALIBRATION_ALPHA).to_numpy(np.float64))

    per_artist = slots.groupby(["user_id", "artist_id"], sort=False).size()
    most = per_artist.groupby(level="user_id").max()
    result["max_tracks_per_artist"] = float(most.max()) if len(most) else float("nan")
    artists = per_artist.groupby(level="user_id").size()
    lengths = per_artist.groupby(level="user_id").sum()
    result["mean_tracks_per_artist"] = _mean((lengths / artists).to_numpy(np.float64))

    result["cold_share"] = _mean(slots["is_cold"].to_numpy(np.float64))
    truth_row, truth_found = _lookup(catalog, positives["track_id"].to_numpy(np.int64))
    cold_truth = positives[truth_found & catalog["is_cold"].to_numpy(bool)[truth_row]] if len(catalog) else positives[:0]
    cold_hits = len(_hits(top, cold_truth))
    result["cold_hit_rate"] = cold_hits / len(cold_truth) if len(cold_truth) else float("nan")

    result["users"] = float(len(per_user))
    result["users_with_recs"] = float(len(rec_users))
    result["rec_popularity_percentile"] = _mean(listed)
    result["history_popularity_percentile"] = _mean(own.to_numpy(np.float64))
    result["ild_uses_vectors"] = 1.0 if vectors is not None else 0.0
    return result


def segment_users(history: pd.DataFrame) -> dict[str, np.ndarray]:
    """Segment name -> user ids (int64): light/medium/heavy by history_level, new by is_new_user.

    "all" is not listed: it is every user of the lists and the truth, profiled or not.
    """
    level = history["history_level"].astype(str)
    user_ids = history["user_id"].to_numpy(np.int64)
    segments = {name: np.unique(user_ids[(level == name).to_numpy()]) for name in ("light", "medium", "heavy")}
    segments["new"] = np.unique(user_ids[history["is_new_user"].fillna(False).to_numpy(bool)])
    return segments


def evaluate_segments(recs: pd.DataFrame, truth: pd.DataFrame, tracks: pd.DataFrame, history: pd.DataFrame,
                      k: int = DEFAULT_K, vectors: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:  # fmt: skip
    """``evaluate_lists`` per user segment: rows "all", "light", "medium", "heavy", "new" (index ``segment``).

    Columns: ``users`` (truth users of the segment), then ``metric_keys(k)`` and the other
    auxiliary keys. A user with history_level "none" is in "all" only (and in "new" when
    ``is_new_user``). Coverage stays relative to the whole catalog in every segment.
    """
    catalog_size = tracks["track_id"].nunique()
    rows = {"all": evaluate_lists(recs, truth, tracks, history, k, vectors, catalog_size)}
    for name, users in segment_users(history).items():
        rows[name] = evaluate_lists(recs[recs["user_id"].isin(users)], truth[truth["user_id"].isin(users)], tracks,
                                    history[history["user_id"].isin(users)], k, vectors, catalog_size)  # fmt: skip
    columns = ["users", *metric_keys(k), *[key for key in AUXILIARY_KEYS if key != "users"]]
    table = pd.DataFrame.from_dict(rows, orient="index").loc[list(SEGMENTS), columns]
    table.index.name = "segment"
    return table.astype({"users": np.int64, "users_with_recs": np.int64})


# --------------------------------------------------------------------------- per user (the Spark path)

# One row per (user) of a batch: what the aggregates of ``evaluate_lists`` are sums, means or maxima
# of. NaN marks "not in that mean" (e.g. accuracy of a user with no holdout positive).
PER_USER_COLUMNS = ("user_id", "is_truth", "has_recs", "precision", "recall", "ndcg", "hit", "ap", "ild", "slots",
                    "novelty_values", "cold_slots", "listed", "own", "kl", "max_artist",
                    "tracks_per_artist", "cold_positives", "cold_hits")  # fmt: skip


def novelty_floor(tracks: pd.DataFrame) -> float:
    """The share unplayed tracks get in ``novelty``: a fraction of the rarest played track's share (whole catalog)."""
    catalog = _catalog(tracks)
    played = catalog["popularity_share"].to_numpy(np.float64)
    played = played[played > 0]
    return NOVELTY_FLOOR_FACTOR * (played.min() if len(played) else 1.0 / max(len(catalog), 1))


def per_user_metrics(recs: pd.DataFrame, truth: pd.DataFrame, tracks: pd.DataFrame, history: pd.DataFrame,
                     floor: float, k: int = DEFAULT_K,
                     vectors: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:  # fmt: skip
    """The per-user terms of ``evaluate_lists`` for a batch of users (one row per user of ``recs`` or
    ``truth``, sorted; columns ``PER_USER_COLUMNS``), so that any batching of users aggregates to its values.

    tracks: the attributes of (at least) the batch's listed and truth tracks, as ``evaluate_lists``;
    a track absent from it is unplayed, not cold (as there). floor: ``novelty_floor`` of the whole catalog.
    """
    top = _top_k(recs, k)
    positives = _positives(truth)
    accuracy = ranking_metrics(top, positives, k)
    catalog = _catalog(tracks)
    slots = _slots(top, catalog)
    users = np.union1d(top["user_id"].to_numpy(np.int64), positives["user_id"].to_numpy(np.int64))
    out = pd.DataFrame(index=pd.Index(users, name="user_id"))
    out["is_truth"] = out.index.isin(accuracy.index)
    for column in ("precision", "recall", "ndcg", "hit", "ap"):
        out[column] = accuracy[column].reindex(out.index).astype(np.float64)
    per_slot = slots.assign(novelty=-np.log2(np.maximum(slots["popularity_share"].to_numpy(np.float64), floor)),
                            cold=slots["is_cold"].to_numpy(np.float64))  # fmt: skip
    grouped = per_slot.groupby("user_id")
    out["slots"] = grouped.size().reindex(out.index).fillna(0).astype(np.int64)
    out["has_recs"] = out["slots"] > 0
    ild = _ild_vectors(slots, vectors) if vectors is not None else _ild_genres(slots)
    out["ild"] = ild.reindex(out.index).astype(np.float64)
    # Each slot's surprisal in position order: a mean over slots taken in the same order is evaluate_lists'.
    cuts = np.cumsum(out["slots"].to_numpy())[:-1]
    out["novelty_values"] = np.split(per_slot["novelty"].to_numpy(np.float64), cuts) if len(out) else []
    out["cold_slots"] = grouped["cold"].sum().reindex(out.index).fillna(0.0)

    profiles = history.drop_duplicates("user_id")
    known = profiles[_has_history(profiles) & profiles["user_id"].isin(out.index[out["has_recs"]])]
    own = known.set_index("user_id")["mean_popularity_percentile"].astype(np.float64)
    out["listed"] = grouped["popularity_percentile"].mean().reindex(own.index).reindex(out.index)
    out["own"] = own.reindex(out.index)
    out["kl"] = _calibration_kl(slots, history_genre_mix(profiles), CALIBRATION_ALPHA).reindex(out.index)

    per_artist = slots.groupby(["user_id", "artist_id"], sort=False).size()
    out["max_artist"] = per_artist.groupby(level="user_id").max().reindex(out.index).astype(np.float64)
    lengths = per_artist.groupby(level="user_id").sum()
    out["tracks_per_artist"] = (lengths / per_artist.groupby(level="user_id").size()).reindex(out.index)

    truth_row, truth_found = _lookup(catalog, positives["track_id"].to_numpy(np.int64))
    cold_truth = positives[truth_found & catalog["is_cold"].to_numpy(bool)[truth_row]] if len(catalog) else positives[:0]
    out["cold_positives"] = cold_truth.groupby("user_id").size().reindex(out.index).fillna(0).astype(np.int64)
    out["cold_hits"] = _hits(top, cold_truth).groupby("user_id").size().reindex(out.index).fillna(0).astype(np.int64)
    return out.reset_index()[list(PER_USER_COLUMNS)]
