"""The north star on a simulated world: how many tracks of each system's playlist listeners save.

The world's hidden listeners (``dw_assets.simulate.respond``, the behaviour model behind the logs) play
every system's 30 tracks top-down; per user we count saves, positive plays (> 30 s or saved), early
skips among played tracks, slots and saves on cold tracks. Each system is played by several listener
seeds; a user's value is the mean over the seeds and the interval is the normal approximation of the
mean of those per-user values (the user is the unit, the seeds only reduce the listener noise inside a
user). Ratios of two systems (the efficiencies) get the delta method's interval over users instead.

Two oracles are built from the hidden truth with the product's hygiene (``playlist_size`` unique
tracks the user has not heard, at most ``max_per_artist`` per artist):

* the **catalog oracle**: the best unheard tracks of the whole catalog by true affinity;
* the **candidate oracle**: the best of the user's own candidates by true affinity.

They rank by true affinity because under the listener model a track's expected saves in a given slot
are a strictly increasing function of its affinity alone (perceived quality = affinity - position
fatigue + noise; early skips fall and P(save) rises with quality; duration only changes ms played),
so the top tracks by affinity, best first, are the top tracks by expected saves — exactly, without a
Monte-Carlo estimate of each track, and the same list under every perturbed listener model.

The pipeline's saves decompose exactly:
pipeline / catalog oracle = retrieval efficiency (candidate oracle / catalog oracle)
× ranking efficiency (ranker order / candidate oracle) × re-rank efficiency (pipeline / ranker order).

Popularity bias: tracks are binned by last week's popularity decile (cold tracks their own bin). A
track a user "would truly like" has an affinity at or above the listener's ``save_midpoint`` (P(save |
heard) at position 1 without noise reaches half its ceiling there). Per bin, the true-positive rate is
the share of those (user, track) pairs a system's playlists surface.

Size at the target (500 M users, 100 M tracks): the per-user functions here (``per_user_north_star``) run
on the executors over hash buckets of a **user sample** the evaluation draws in Spark by a seeded hash
(``NorthStarConfig.max_users``, 1 M: every user of the demo worlds), each call with one bucket's rows
(``users_per_bucket`` users × 30 per list, × history, × 500 candidates); the driver gets only the sums
over users (``north_star_moments``, ``efficiency_moments``: a few dozen rows) and builds the report from
them (``north_star_report``). The catalog oracle scores a bucket's users against the whole catalog in
chunks of ``chunk_users`` users: memory chunk × tracks float32 (``small``: 512 × 55 k = 113 MB), time
users × tracks × dim. Only a simulated world has a hidden truth, and those hold up to ~10^6 tracks
(``large``: 500 k); a 100 M-track world would need the oracle as an exact top-k search over the true
styles (FAISS) instead. :func:`north_star` runs the same steps in one process (the bench tools).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from dw_assets.ranking.playlists import hygienic_top_k
from dw_assets.simulate.behaviour import LISTENER, ListenerModel
from dw_assets.simulate.truth import Truth
from dw_assets.simulate.world import listening

CATALOG_ORACLE, CANDIDATE_ORACLE = "catalog_oracle", "candidate_oracle"
PIPELINE, RANKER_ORDER = "pipeline", "ranker_order"
COLD_BIN = "cold"
DECILES = tuple(f"d{i}" for i in range(1, 11))  # d1 = least played last week, d10 = most
BINS = (*DECILES, COLD_BIN)
LIKED = "liked"  # the per-user row whose ``surfaced`` counts hold the user's liked unheard tracks per bin
METRICS = ("saves", "positives", "cold_saves", "early_skip_share")  # per-user values, averaged over seeds
# The issue's keys in the ``dw evaluate --json`` object (pipeline's values, the oracles', the decomposition).
SUMMARY_KEYS = ("saves_per_user", "cold_saves_per_user", "oracle_saves_per_user", "candidate_oracle_saves_per_user",
                "retrieval_efficiency", "ranking_efficiency", "rerank_efficiency")
EFFICIENCY_KEYS = ("retrieval_efficiency", "ranking_efficiency", "rerank_efficiency", "oracle_efficiency")
# Where each summary key lives in the stored table: (system, metric).
SUMMARY_SOURCES = {
    "saves_per_user": (PIPELINE, "saves_per_user"),
    "cold_saves_per_user": (PIPELINE, "cold_saves_per_user"),
    "oracle_saves_per_user": (CATALOG_ORACLE, "saves_per_user"),
    "oracle_cold_saves_per_user": (CATALOG_ORACLE, "cold_saves_per_user"),
    "candidate_oracle_saves_per_user": (CANDIDATE_ORACLE, "saves_per_user"),
    **{key: (PIPELINE, key) for key in EFFICIENCY_KEYS},
}
BASE_LISTENER = "base"


@dataclass(frozen=True)
class NorthStarConfig:
    seeds: tuple[int, ...] = (0, 1, 2)  # listener seeds; each system is played once per seed
    playlist_size: int = 30
    max_per_artist: int = 2
    confidence: float = 0.95
    # The users played (a seeded-hash sample drawn in Spark; every user of the demo worlds): each is
    # played on an executor, only sums over users reach the driver.
    max_users: int = 1_000_000
    sample_seed: int = 2101  # the draw's hash seed
    users_per_bucket: int = 1_000  # users played by one pandas call on an executor (hash buckets)
    chunk_users: int = 512  # catalog oracle: users scored against the whole catalog at once
    oracle_pool: int = 150  # catalog oracle: best tracks per user kept before the artist cap (more if short)
    save_midpoint_shift: float = 0.05  # robustness: listener models with save_midpoint ± this
    noise_factor: float = 1.5  # robustness: a listener model with judgement_noise × this

    def __post_init__(self) -> None:
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if min(self.playlist_size, self.max_per_artist, self.chunk_users, self.max_users, self.users_per_bucket) < 1:
            raise ValueError("playlist_size, max_per_artist, chunk_users, max_users and users_per_bucket must be >= 1")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


def listener_models(config: NorthStarConfig = NorthStarConfig(), base: ListenerModel = LISTENER) -> dict[str, ListenerModel]:
    """The listener models the numbers are reported under: ``base`` and its perturbations."""
    shift, factor = config.save_midpoint_shift, config.noise_factor
    return {
        "base": base,
        f"save_midpoint+{shift:g}": dataclasses.replace(base, save_midpoint=base.save_midpoint + shift),
        f"save_midpoint-{shift:g}": dataclasses.replace(base, save_midpoint=base.save_midpoint - shift),
        f"judgement_noise_x{factor:g}": dataclasses.replace(base, judgement_noise=base.judgement_noise * factor),
    }


# ---------------------------------------------------------------------------- lists with the product's hygiene


def _heard_pairs(heard: pd.DataFrame, catalog_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user_id, catalog row) of heard tracks that are in the catalog, sorted by user."""
    users = heard["user_id"].to_numpy(np.int64)
    tracks = heard["track_id"].to_numpy(np.int64)
    rows = np.searchsorted(catalog_ids, tracks)
    inside = (rows < len(catalog_ids)) & (catalog_ids[np.minimum(rows, len(catalog_ids) - 1)] == tracks)
    order = np.argsort(users[inside], kind="stable")
    return users[inside][order], rows[inside][order]


@dataclass
class CatalogPass:
    """What one pass of the sample over the whole catalog yields: the catalog oracle's lists and, per user
    and popularity bin, how many unheard tracks the user would truly like (the TPR's denominators)."""

    oracle: pd.DataFrame  # user_id, position, track_id
    liked: np.ndarray  # int64[users, len(BINS)], rows in the order of the sorted unique users


def catalog_oracle(
    truth: Truth, users: np.ndarray, heard: pd.DataFrame, catalog: pd.DataFrame,
    config: NorthStarConfig = NorthStarConfig(), like_threshold: float = LISTENER.save_midpoint,
) -> CatalogPass:
    """The best unheard catalog tracks per user by true affinity, with the product's hygiene.

    users: int64[n] (the bounded sample); heard: user_id, track_id (the users' listening up to the
    week); catalog: track_id, artist_id, popularity, is_cold (``catalog_frame``). Scores
    ``chunk_users`` users × the catalog at a time (memory: chunk × tracks float32).
    """
    catalog = catalog.sort_values("track_id").reset_index(drop=True)
    ids = catalog["track_id"].to_numpy(np.int64)
    artists = catalog["artist_id"].to_numpy(np.int64)
    style = truth.track_style[truth.track_index(ids)]
    bins = popularity_bins(catalog)
    bin_codes = pd.Categorical(bins, categories=list(BINS)).codes
    one_hot = np.eye(len(BINS), dtype=np.float32)[bin_codes]  # tracks x bins
    users = np.unique(np.asarray(users, np.int64))
    liked = np.zeros((len(users), len(BINS)), np.int64)
    heard_users, heard_rows = _heard_pairs(heard, ids)
    pool = min(max(config.oracle_pool, config.playlist_size), len(ids))
    lists = []
    for start in range(0, len(users), config.chunk_users):
        chunk = users[start:start + config.chunk_users]
        affinity = truth.user_taste[truth.user_index(chunk)] @ style.T  # float32[chunk, tracks]
        lo, hi = np.searchsorted(heard_users, chunk[0]), np.searchsorted(heard_users, chunk[-1], side="right")
        owner = np.searchsorted(chunk, heard_users[lo:hi])
        mine = chunk[np.minimum(owner, len(chunk) - 1)] == heard_users[lo:hi]  # ids between sampled users: others
        affinity[owner[mine], heard_rows[lo:hi][mine]] = -np.inf
        liked[start:start + len(chunk)] = np.rint((affinity >= like_threshold).astype(np.float32) @ one_hot)
        top = np.argpartition(-affinity, pool - 1, axis=1)[:, :pool] if pool < len(ids) else np.tile(
            np.arange(len(ids)), (len(chunk), 1))
        picked = _pick(chunk, top, affinity, ids, artists, config)
        unheard = np.isfinite(affinity).sum(axis=1)
        got = picked.groupby("user_id").size().reindex(chunk, fill_value=0).to_numpy()
        short = (got < config.playlist_size) & (got < unheard)
        if short.any():  # the artist cap emptied the pool: these users get the whole catalog
            rows = np.flatnonzero(short)
            full = np.tile(np.arange(len(ids)), (len(rows), 1))
            redo = _pick(chunk[rows], full, affinity[rows], ids, artists, config)
            picked = pd.concat([picked[~picked["user_id"].isin(chunk[rows])], redo], ignore_index=True)
        lists.append(picked)
    oracle = pd.concat(lists, ignore_index=True) if lists else _empty_lists()
    return CatalogPass(oracle=oracle.sort_values(["user_id", "position"]).reset_index(drop=True), liked=liked)


def _pick(chunk: np.ndarray, top: np.ndarray, affinity: np.ndarray, ids: np.ndarray, artists: np.ndarray,
          config: NorthStarConfig) -> pd.DataFrame:
    rows = np.repeat(np.arange(len(chunk)), top.shape[1])
    cols = top.ravel()
    score = affinity[rows, cols]
    keep = np.isfinite(score)
    scored = pd.DataFrame({"user_id": chunk[rows[keep]], "track_id": ids[cols[keep]],
                           "artist_id": artists[cols[keep]], "score": score[keep]})
    return hygienic_top_k(scored, config.playlist_size, config.max_per_artist)


def candidate_oracle(truth: Truth, candidates: pd.DataFrame, heard: pd.DataFrame, catalog: pd.DataFrame,
                     config: NorthStarConfig = NorthStarConfig()) -> pd.DataFrame:
    """The best ``playlist_size`` of each user's own candidates (user_id, track_id) by true affinity,
    with the product's hygiene; candidates outside the catalog cannot be served and are dropped."""
    frame = candidates[["user_id", "track_id"]].astype(np.int64).drop_duplicates()
    frame = frame.merge(catalog[["track_id", "artist_id"]], on="track_id", how="inner")
    seen = pd.MultiIndex.from_frame(heard[["user_id", "track_id"]].astype(np.int64))
    frame = frame[~pd.MultiIndex.from_frame(frame[["user_id", "track_id"]]).isin(seen)]
    frame = frame.assign(score=truth.affinity(frame["user_id"].to_numpy(), frame["track_id"].to_numpy()))
    return hygienic_top_k(frame, config.playlist_size, config.max_per_artist)


def catalog_frame(track_stats: pd.DataFrame) -> pd.DataFrame:
    """track_id, artist_id, popularity (last week's plays), is_cold from the week's ``track_stats``
    (a per-track table); cold = no plays in the window (``is_cold``) or released in the week
    (``is_new_release``)."""
    cold = track_stats["is_cold"].to_numpy(bool)
    if "is_new_release" in track_stats:
        cold = cold | track_stats["is_new_release"].to_numpy(bool)
    return pd.DataFrame({
        "track_id": track_stats["track_id"].to_numpy(np.int64),
        "artist_id": track_stats["artist_id"].to_numpy(np.int64),
        "popularity": track_stats["plays_last_week"].to_numpy(np.float64),
        "is_cold": cold,
    }).sort_values("track_id").reset_index(drop=True)


def popularity_bins(catalog: pd.DataFrame) -> np.ndarray:
    """Each catalog row's bin: ``cold``, else d1..d10 by last week's plays (rank deciles; ties by track id)."""
    bins = np.full(len(catalog), COLD_BIN, dtype=object)
    warm = ~catalog["is_cold"].to_numpy(bool)
    if warm.any():
        order = np.lexsort((catalog["track_id"].to_numpy()[warm], catalog["popularity"].to_numpy()[warm]))
        rank = np.empty(warm.sum(), np.int64)
        rank[order] = np.arange(warm.sum())
        bins[warm] = np.asarray(DECILES, dtype=object)[(rank * 10) // warm.sum()]
    return bins


def _empty_lists() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64") for c in ("user_id", "position", "track_id")})


# ---------------------------------------------------------------------------- the listeners


def per_user_outcomes(truth: Truth, playlists: pd.DataFrame, users: np.ndarray, cold: np.ndarray, week: str,
                      seeds: tuple[int, ...], model: ListenerModel = LISTENER) -> pd.DataFrame:
    """One row per user of ``users`` (sorted): saves, positives, cold_saves (means over ``seeds``) and
    early_skip_share (early skips / tracks played, mean over the seeds where the user played any; NaN if
    none). A user without a list scores 0 (NaN share). ``cold``: int64 ids of the cold tracks."""
    return outcomes_by_model(truth, playlists, users, cold, week, seeds, {"model": model})["model"]


def outcomes_by_model(truth: Truth, playlists: pd.DataFrame, users: np.ndarray, cold: np.ndarray, week: str,
                      seeds: tuple[int, ...], models: Mapping[str, ListenerModel]) -> dict[str, pd.DataFrame]:
    """:func:`per_user_outcomes` under each of ``models`` (name -> frame): the lists' lookups (affinities,
    durations, draw keys) are made once for every model and seed."""
    users = np.unique(np.asarray(users, np.int64))
    rows = playlists.loc[playlists["user_id"].isin(users), ["user_id", "position", "track_id"]]
    is_cold = rows["track_id"].isin(cold).to_numpy()
    where = np.searchsorted(users, rows["user_id"].to_numpy(np.int64))
    heard = listening(truth, rows)
    out = {}
    for name, model in models.items():
        sums = {metric: np.zeros(len(users)) for metric in ("saves", "positives", "cold_saves")}
        share_sum, share_n = np.zeros(len(users)), np.zeros(len(users))
        for seed in seeds:
            played = heard.outcomes(week, seed, model)
            saved = played["saved"]
            for metric, hit in (("saves", saved), ("positives", played["positive"]), ("cold_saves", saved & is_cold)):
                sums[metric] += np.bincount(where, weights=hit, minlength=len(users))
            tracks = np.bincount(where, weights=played["played"], minlength=len(users))
            early = np.bincount(where, weights=played["early_skip"], minlength=len(users))
            listened = tracks > 0
            share_sum[listened] += early[listened] / tracks[listened]
            share_n += listened
        frame = pd.DataFrame({"user_id": users, **{metric: v / len(seeds) for metric, v in sums.items()}})
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["early_skip_share"] = np.where(share_n > 0, share_sum / np.maximum(share_n, 1), np.nan)
        out[name] = frame
    return out


# ---------------------------------------------------------------------------- per user: what the aggregates sum

PER_USER_ROW = ("listener", "system", "user_id", *METRICS, "slots", "cold_slots", "surfaced")
EFFICIENCY_PAIRS = {"retrieval_efficiency": (CANDIDATE_ORACLE, CATALOG_ORACLE),
                    "ranking_efficiency": (RANKER_ORDER, CANDIDATE_ORACLE),
                    "rerank_efficiency": (PIPELINE, RANKER_ORDER),
                    "oracle_efficiency": (PIPELINE, CATALOG_ORACLE)}
PAIR_SYSTEMS = tuple(sorted({s for pair in EFFICIENCY_PAIRS.values() for s in pair}))


def per_user_north_star(
    truth: Truth, playlists: Mapping[str, pd.DataFrame], users: np.ndarray, heard: pd.DataFrame,
    candidates: pd.DataFrame, catalog: pd.DataFrame, week: str, config: NorthStarConfig = NorthStarConfig(),
) -> pd.DataFrame:
    """One row per (listener model, system, user) with ``PER_USER_ROW``: what :func:`north_star_moments`
    sums. Per user only, so any split of the users into batches gives the same rows (the listeners' draws
    are keyed by user and slot; the oracles look at one user's tracks at a time).

    playlists: system -> user_id, position, track_id (``pipeline`` and ``ranker_order`` for the
    decomposition; others beside); both oracles are added. ``surfaced`` (base listener only; None under
    the others): the user's liked unheard tracks a system's list surfaces, per popularity bin (``BINS``);
    the ``LIKED`` system's row holds the user's liked unheard tracks per bin (the TPR's denominators).
    """
    users = np.unique(np.asarray(users, np.int64))
    models = listener_models(config)
    like = models[BASE_LISTENER].save_midpoint
    heard = heard[["user_id", "track_id"]].astype(np.int64).drop_duplicates()
    found = catalog_oracle(truth, users, heard, catalog, config, like_threshold=like)
    lists = {**playlists, CATALOG_ORACLE: found.oracle,
             CANDIDATE_ORACLE: candidate_oracle(truth, candidates, heard, catalog, config)}
    lists = {name: frame.loc[frame["user_id"].isin(users), ["user_id", "position", "track_id"]]
             for name, frame in lists.items()}
    cold = catalog.loc[catalog["is_cold"], "track_id"].to_numpy(np.int64)
    bins = pd.Series(popularity_bins(catalog), index=catalog["track_id"].to_numpy(np.int64))
    parts = []
    for system, frame in lists.items():
        where = np.searchsorted(users, frame["user_id"].to_numpy(np.int64))
        slots = {"slots": np.bincount(where, minlength=len(users)).astype(np.int64),
                 "cold_slots": np.bincount(where, weights=frame["track_id"].isin(cold).to_numpy(),
                                           minlength=len(users)).astype(np.int64)}
        surfaced = list(_surfaced(truth, frame, users, heard, bins, like))
        for name, out in outcomes_by_model(truth, frame, users, cold, week, config.seeds, models).items():
            out = out.assign(**slots)
            out["surfaced"] = surfaced if name == BASE_LISTENER else None
            parts.append(out.assign(listener=name, system=system))
    liked = pd.DataFrame({"user_id": users, **{m: 0.0 for m in METRICS}, "slots": 0, "cold_slots": 0,
                          "surfaced": list(found.liked)}).assign(listener=BASE_LISTENER, system=LIKED)
    rows = pd.concat([*parts, liked], ignore_index=True)[list(PER_USER_ROW)]
    return rows.astype({"slots": np.int64, "cold_slots": np.int64})


def _surfaced(truth: Truth, playlists: pd.DataFrame, users: np.ndarray, heard: pd.DataFrame, bins: pd.Series,
              like_threshold: float) -> np.ndarray:
    """int64[users, bins]: per user, the distinct unheard catalog tracks of the list it would truly like."""
    rows = playlists[["user_id", "track_id"]].astype(np.int64).drop_duplicates()
    rows = rows[rows["track_id"].isin(bins.index)]
    seen = pd.MultiIndex.from_frame(heard)
    rows = rows[~pd.MultiIndex.from_frame(rows).isin(seen)]
    liked = truth.affinity(rows["user_id"].to_numpy(), rows["track_id"].to_numpy()) >= like_threshold
    rows = rows[liked]
    codes = pd.Categorical(bins.loc[rows["track_id"].to_numpy()].to_numpy(), categories=list(BINS)).codes
    where = np.searchsorted(users, rows["user_id"].to_numpy(np.int64))
    out = np.zeros((len(users), len(BINS)), np.int64)
    np.add.at(out, (where, codes), 1)
    return out


# ---------------------------------------------------------------------------- sums over users, and the report

MOMENT_COLUMNS = ("listener", "system", "users", "users_with_list", "slots", "cold_slots",
                  *[f"{p}_{m}" for m in METRICS for p in ("n", "sum", "sumsq")], "surfaced")
PAIR_COLUMNS = ("listener", "efficiency", "n", "sum_a", "sum_b", "sum_aa", "sum_bb", "sum_ab")


def north_star_moments(rows: pd.DataFrame) -> pd.DataFrame:
    """One (listener, system)'s per-user rows -> one row of ``MOMENT_COLUMNS``: counts, sums and sums of
    squares per metric (NaN shares left out), slots, surfaced per bin. Exact sums (``math.fsum``), so the
    result does not depend on how the users were split or shuffled."""
    out = {"listener": rows["listener"].iloc[0], "system": rows["system"].iloc[0], "users": len(rows),
           "users_with_list": int((rows["slots"] > 0).sum()), "slots": int(rows["slots"].sum()),
           "cold_slots": int(rows["cold_slots"].sum())}
    for metric in METRICS:
        values = rows[metric].to_numpy(np.float64)
        values = values[~np.isnan(values)]
        out.update({f"n_{metric}": len(values), f"sum_{metric}": math.fsum(values),
                    f"sumsq_{metric}": math.fsum(values * values)})
    surfaced = [np.asarray(v, np.int64) for v in rows["surfaced"] if v is not None]
    out["surfaced"] = [int(x) for x in np.sum(surfaced, axis=0)] if surfaced else None
    return pd.DataFrame([out])[list(MOMENT_COLUMNS)]


def efficiency_moments(rows: pd.DataFrame) -> pd.DataFrame:
    """One listener's per-user saves of the ``PAIR_SYSTEMS`` (listener, system, user_id, saves) -> one row
    of ``PAIR_COLUMNS`` per efficiency: the sums a ratio of means and its interval need (exact sums)."""
    wide = rows.pivot_table(index="user_id", columns="system", values="saves", aggfunc="first")
    out = []
    for key, (top, bottom) in EFFICIENCY_PAIRS.items():
        if top not in wide or bottom not in wide:
            continue
        both = wide[[top, bottom]].dropna()
        a, b = both[top].to_numpy(np.float64), both[bottom].to_numpy(np.float64)
        out.append({"listener": rows["listener"].iloc[0], "efficiency": key, "n": len(a),
                    "sum_a": math.fsum(a), "sum_b": math.fsum(b), "sum_aa": math.fsum(a * a),
                    "sum_bb": math.fsum(b * b), "sum_ab": math.fsum(a * b)})
    return pd.DataFrame(out, columns=list(PAIR_COLUMNS))


def moments_of(per_user: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``north_star_moments`` per (listener, system), ``efficiency_moments`` per listener) of per-user rows in
    pandas: what the Spark path (``north_star_batch``) computes on the executors."""
    groups = [north_star_moments(g) for _, g in per_user.groupby(["listener", "system"], sort=True)]
    moments = pd.concat(groups, ignore_index=True) if groups else pd.DataFrame(columns=list(MOMENT_COLUMNS))
    paired = per_user.loc[per_user["system"].isin(PAIR_SYSTEMS), ["listener", "system", "user_id", "saves"]]
    pairs = [efficiency_moments(g) for _, g in paired.groupby("listener", sort=True)]
    return moments, (pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(columns=list(PAIR_COLUMNS)))


def mean_ci(n: int, total: float, squares: float, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of per-user values from their count, sum and sum of squares: the normal
    approximation of the mean."""
    if n == 0:
        return (np.nan, np.nan, np.nan)
    mean = total / n
    if n == 1:
        return (mean, mean, mean)
    variance = max(squares - n * mean * mean, 0.0) / (n - 1)
    half = float(norm.ppf(0.5 + confidence / 2) * np.sqrt(variance / n))
    return (mean, mean - half, mean + half)


def ratio_ci(pair: Mapping, confidence: float = 0.95) -> tuple[float, float, float]:
    """(ratio of the two systems' saves over the same users, low, high): the interval is the delta method's
    (the linearised ratio estimator, Var = sum((a - R b)^2) / (sum b)^2), from the pair's sums only."""
    if pair is None or pair["n"] == 0 or pair["sum_b"] <= 0:
        return (np.nan, np.nan, np.nan)
    ratio = pair["sum_a"] / pair["sum_b"]
    n = pair["n"]
    residual = max(pair["sum_aa"] - 2 * ratio * pair["sum_ab"] + ratio * ratio * pair["sum_bb"], 0.0)
    half = float(norm.ppf(0.5 + confidence / 2) * np.sqrt(residual * n / max(n - 1, 1)) / pair["sum_b"])
    return (ratio, ratio - half, ratio + half)


def north_star_report(moments: pd.DataFrame, pairs: pd.DataFrame, config: NorthStarConfig = NorthStarConfig()) -> dict:
    """The north star as a JSON-ready dict from the sums over users (``north_star_moments``,
    ``efficiency_moments``): keys as :func:`north_star` documents."""
    models = listener_models(config)
    by = {(r["listener"], r["system"]): r for r in moments.to_dict("records")}
    paired = {(r["listener"], r["efficiency"]): r for r in pairs.to_dict("records")}
    systems = sorted({s for (_, s) in by if s != LIKED})
    base = {s: by[(BASE_LISTENER, s)] for s in systems if (BASE_LISTENER, s) in by}
    users = int(max((r["users"] for r in base.values()), default=0))
    result: dict = {"users": users, "seeds": list(config.seeds), "interval": (
        f"{config.confidence:.0%} normal approximation over users of seed-averaged per-user values; "
        "efficiencies: delta method over users (linearised ratio of means)")}
    result.update(_summary(base, paired, BASE_LISTENER, config, with_ci=True))
    result["systems"] = {system: _system(row, config) for system, row in base.items()}
    result["robustness"] = {
        name: {**_summary({s: by[(name, s)] for s in systems if (name, s) in by}, paired, name, config, with_ci=False),
               "systems": {s: _plain(by[(name, s)]["sum_saves"] / by[(name, s)]["n_saves"])
                           for s in systems if (name, s) in by and by[(name, s)]["n_saves"]}}
        for name in models if name != BASE_LISTENER}
    liked = by.get((BASE_LISTENER, LIKED))
    liked_per_bin = dict(zip(BINS, liked["surfaced"], strict=True)) if liked is not None and liked["surfaced"] is not None \
        else dict.fromkeys(BINS, 0)
    result["popularity_bias"] = {system: popularity_bias(row["surfaced"], liked_per_bin) for system, row in base.items()}
    result["listener_models"] = {name: dataclasses.asdict(model) for name, model in models.items()}
    return result


def north_star(
    truth: Truth, playlists: Mapping[str, pd.DataFrame], users: np.ndarray, heard: pd.DataFrame,
    candidates: pd.DataFrame, catalog: pd.DataFrame, week: str, config: NorthStarConfig = NorthStarConfig(),
) -> dict:
    """Simulated saves of every system and both oracles on a set of users, as a JSON-ready dict (in one
    process: the pipeline's evaluation runs the same steps on the executors, ``north_star_batch``).

    truth: the world's hidden truth (``load_truth``). playlists: system name → user_id, position,
    track_id (``pipeline`` and ``ranker_order`` — the ranker's order of the candidates with the hygiene
    only — are needed for the decomposition; any others, e.g. retrieval, als, item_cf, popularity,
    last_week, are reported beside). users: int64[n], at most ``max_users``. heard: user_id,
    track_id the users played up to the week. candidates: user_id, track_id of the users' candidates.
    catalog: ``catalog_frame`` of the week. week: the week the playlists are heard in (the listener
    draws are salted by it). Keys: the ``SUMMARY_KEYS`` (pipeline under the base listener) with
    ``*_ci`` intervals, ``systems`` (per system: saves/positives/cold saves per user, early-skip and
    cold-slot shares, each with an interval), ``popularity_bias`` per system, ``robustness`` (the
    summary keys and every system's saves per user under each perturbed listener model), ``users``,
    ``seeds``, ``listener_models``, ``interval``.
    """
    users = np.unique(np.asarray(users, np.int64))
    if len(users) > config.max_users:
        raise ValueError(f"{len(users)} users: the north star takes a sample of at most {config.max_users}")
    per_user = per_user_north_star(truth, playlists, users, heard, candidates, catalog, week, config)
    return north_star_report(*moments_of(per_user), config)


def _summary(rows: Mapping[str, Mapping], pairs: Mapping, listener: str, config: NorthStarConfig,
             with_ci: bool) -> dict:
    """The issue's keys: the pipeline's saves, the oracles' and the decomposition's three factors."""
    out: dict = {}
    for key, system, metric in (("saves_per_user", PIPELINE, "saves"), ("cold_saves_per_user", PIPELINE, "cold_saves"),
                                ("oracle_saves_per_user", CATALOG_ORACLE, "saves"),
                                ("oracle_cold_saves_per_user", CATALOG_ORACLE, "cold_saves"),
                                ("candidate_oracle_saves_per_user", CANDIDATE_ORACLE, "saves")):
        row = rows.get(system)
        value = (mean_ci(row[f"n_{metric}"], row[f"sum_{metric}"], row[f"sumsq_{metric}"], config.confidence)
                 if row is not None else (np.nan,) * 3)
        out[key] = _plain(value[0])
        if with_ci:
            out[f"{key}_ci"] = [_plain(value[1]), _plain(value[2])]
    for key in EFFICIENCY_PAIRS:
        value = ratio_ci(pairs.get((listener, key)), config.confidence)
        out[key] = _plain(value[0])
        if with_ci:
            out[f"{key}_ci"] = [_plain(value[1]), _plain(value[2])]
    return out


def _system(row: Mapping, config: NorthStarConfig) -> dict:
    out: dict = {"users_with_list": int(row["users_with_list"]), "slots": int(row["slots"]),
                 "cold_slot_share": _plain(row["cold_slots"] / row["slots"]) if row["slots"] else None}
    for metric, key in (("saves", "saves_per_user"), ("positives", "positives_per_user"),
                        ("cold_saves", "cold_saves_per_user"), ("early_skip_share", "early_skip_share")):
        mean, low, high = mean_ci(row[f"n_{metric}"], row[f"sum_{metric}"], row[f"sumsq_{metric}"], config.confidence)
        out[key], out[f"{key}_ci"] = _plain(mean), [_plain(low), _plain(high)]
    return out


def popularity_bias(surfaced, liked_per_bin: Mapping[str, int]) -> dict:
    """True-positive rate per popularity bin: surfaced liked (user, unheard track) pairs / all liked pairs.

    ``surfaced``: a system's summed ``surfaced`` counts (``BINS`` order); ``liked_per_bin``: the
    denominators. Returns tpr_by_bin, max_min_tpr_ratio (over the deciles that have liked pairs; the
    issue's target ≤ 1.5; None when a decile's TPR is 0: unbounded) and cold_tpr_over_median (cold bin /
    median decile TPR; target ≥ 0.5)."""
    found = dict(zip(BINS, surfaced if surfaced is not None else [0] * len(BINS), strict=True))
    tpr = {name: (float(found[name] / n) if n > 0 else None) for name, n in liked_per_bin.items()}
    deciles = [tpr[d] for d in DECILES if tpr.get(d) is not None]
    median = float(np.median(deciles)) if deciles else np.nan
    return {
        "tpr_by_bin": tpr,
        "max_min_tpr_ratio": _plain(max(deciles) / min(deciles)) if deciles and min(deciles) > 0 else None,
        "cold_tpr_over_median": _plain(tpr[COLD_BIN] / median) if tpr.get(COLD_BIN) is not None and median > 0 else None,
    }


def _plain(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) or np.isinf(value) else value


# ---------------------------------------------------------------------------- the stored table and its summary

TABLE_COLUMNS = ("week", "listened_week", "listener", "system", "metric", "value", "ci_low", "ci_high", "users", "seeds")
BIAS_METRICS = ("max_min_tpr_ratio", "cold_tpr_over_median")


def north_star_table(report: Mapping, week: str, listened_week: str) -> pd.DataFrame:
    """The ``north_star`` report as one long table (one row per listener model, system and metric), sorted.

    Under the base listener: every system's numbers (``_system``), its popularity TPRs (``tpr_<bin>``,
    ``max_min_tpr_ratio``, ``cold_tpr_over_median``) and the pipeline's decomposition; under each
    perturbed listener: every system's saves per user, both cold-save numbers and the decomposition."""
    rows: list[tuple] = []

    def add(listener: str, system: str, metric: str, value, ci=None) -> None:
        low, high = ci if ci is not None else (None, None)
        rows.append((listener, system, metric, _plain(value), _plain(low), _plain(high)))

    for system, numbers in report["systems"].items():
        for metric, value in numbers.items():
            if not metric.endswith("_ci"):
                add(BASE_LISTENER, system, metric, value, numbers.get(f"{metric}_ci"))
        bias = report["popularity_bias"][system]
        for metric in BIAS_METRICS:
            add(BASE_LISTENER, system, metric, bias[metric])
        for name, value in bias["tpr_by_bin"].items():
            add(BASE_LISTENER, system, f"tpr_{name}", value)
    for key in EFFICIENCY_KEYS:
        add(BASE_LISTENER, PIPELINE, key, report[key], report.get(f"{key}_ci"))
    for listener, numbers in report["robustness"].items():
        for system, value in numbers["systems"].items():
            add(listener, system, "saves_per_user", value)
        for key in ("cold_saves_per_user", "oracle_cold_saves_per_user", *EFFICIENCY_KEYS):
            add(listener, *SUMMARY_SOURCES[key], numbers[key])
    frame = pd.DataFrame(rows, columns=["listener", "system", "metric", "value", "ci_low", "ci_high"])
    frame = frame.astype({"value": float, "ci_low": float, "ci_high": float})
    frame.insert(0, "listened_week", listened_week)
    frame.insert(0, "week", week)
    frame["users"] = np.int64(report["users"])
    frame["seeds"] = ",".join(str(s) for s in report["seeds"])
    listeners = [BASE_LISTENER, *report["robustness"]]
    frame["_order"] = frame["listener"].map({name: i for i, name in enumerate(listeners)})
    return (frame.sort_values(["_order", "system", "metric"], kind="stable").drop(columns="_order")
            .reset_index(drop=True)[list(TABLE_COLUMNS)])


def north_star_summary(table: pd.DataFrame | None, reason: str | None = None) -> dict:
    """The ``dw evaluate --json`` part of the north star from its stored table: the ``SUMMARY_KEYS`` (pipeline
    under the base listener, each with ``*_ci``), ``oracle_efficiency``, and ``north_star``: users, seeds,
    per-system numbers, robustness per listener model. ``table`` None (no simulator truth): the keys
    are null and ``north_star`` says why."""
    keys = [*SUMMARY_KEYS, "oracle_cold_saves_per_user", "oracle_efficiency"]
    if table is None or table.empty:
        return {**dict.fromkeys(keys), "north_star": {"measured": False, "reason": reason or "no north-star table"}}
    base = table[table["listener"] == BASE_LISTENER].set_index(["system", "metric"])
    out: dict = {}
    for key in keys:
        system, metric = SUMMARY_SOURCES[key]
        row = base.loc[(system, metric)] if (system, metric) in base.index else None
        out[key] = None if row is None else _plain(row["value"])
        out[f"{key}_ci"] = None if row is None else [_plain(row["ci_low"]), _plain(row["ci_high"])]
    systems: dict = {}
    for (system, metric), row in base.iterrows():
        numbers = systems.setdefault(system, {})
        numbers[metric] = _plain(row["value"])
        if pd.notna(row["ci_low"]):
            numbers[f"{metric}_ci"] = [_plain(row["ci_low"]), _plain(row["ci_high"])]
    robustness: dict = {}
    for listener, rows in table[table["listener"] != BASE_LISTENER].groupby("listener", sort=False):
        by = rows.set_index(["system", "metric"])["value"]
        numbers = {key: _plain(by.get(SUMMARY_SOURCES[key])) for key in keys}
        numbers["systems"] = {s: _plain(v) for (s, m), v in by.items() if m == "saves_per_user"}
        robustness[listener] = numbers
    first = table.iloc[0]
    out["north_star"] = {"measured": True, "week": str(first["week"]), "listened_week": str(first["listened_week"]),
                         "users": int(first["users"]), "seeds": [int(s) for s in str(first["seeds"]).split(",") if s],
                         "systems": systems, "robustness": robustness}
    return out


# The targets on the `small` demo world (shown, not asserted): (name, numerator, denominator, bound, >=).
TARGETS = (
    ("pipeline saves / catalog oracle", "saves_per_user", "oracle_saves_per_user", 0.55, True),
    ("pipeline saves / ALS", "saves_per_user", ("als", "saves_per_user"), 1.8, True),
    ("ranking efficiency", "ranking_efficiency", None, 0.7, True),
    ("pipeline cold saves / catalog oracle's", "cold_saves_per_user", "oracle_cold_saves_per_user", 0.3, True),
    ("popularity TPR max / min (pipeline)", (PIPELINE, "max_min_tpr_ratio"), None, 1.5, False),
    ("cold TPR / median decile (pipeline)", (PIPELINE, "cold_tpr_over_median"), None, 0.5, True),
)


def north_star_targets(summary: Mapping) -> pd.DataFrame:
    """target, value, required, met of the north-star targets from ``north_star_summary`` (empty when not measured)."""
    found = summary.get("north_star") or {}
    if not found.get("measured"):
        return pd.DataFrame(columns=["target", "value", "required", "met"])

    def get(key):
        if key is None:
            return 1.0
        if isinstance(key, tuple):
            return found["systems"].get(key[0], {}).get(key[1])
        return summary.get(key)

    rows = []
    for name, top, bottom, bound, at_least in TARGETS:
        a, b = get(top), get(bottom)
        value = a / b if a is not None and b else None
        met = value is not None and (value >= bound if at_least else value <= bound)
        rows.append({"target": name, "value": value, "required": f"{'>=' if at_least else '<='} {bound:g}",
                     "met": bool(met)})
    return pd.DataFrame(rows)
