"""The shipped ranker's own order of a user sample's candidates, with the hygiene only (no Dagster, no Spark).

The north star's ranking efficiency compares it with the candidate oracle: it is what the ranker alone
would serve — no MMR, genre calibration, exploration or cold slots. The ranker is called only through
its public functions (``build_ranker_features``, ``TrainedRanker.predict``, ``list_score``), so a change of its
labels or features flows through here unchanged.

Size at the target (500 M users, 100 M tracks): per **bounded user sample** (``NorthStarConfig.max_users``,
drawn in Spark by seeded hash): sample × ~500 candidate rows (5,000 users: 2.5 M rows), featurized and
scored ``USERS_PER_BATCH`` users at a time (~500 k rows: float32 × ~40 columns ≈ 80 MB, a few times that
in the transient copies), plus the week's track-side feature context (catalog-sized, as every executor
of the batch holds it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dw_assets.ranking.batch import RetrievalOrder, is_stand_in
from dw_assets.ranking.features import FeatureContext, build_ranker_features
from dw_assets.ranking.playlists import CANDIDATE_ARRAYS, explode_candidates, hygienic_top_k, list_score
from dw_assets.ranking.ranker import TrainedRanker


def pack_candidates(users: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """``users`` with each user's candidates as ``c_*`` arrays sorted by track id: the frame the batch
    ranks (``ranking.batch.playlist_users`` builds it in Spark)."""
    ordered = candidates.sort_values(["user_id", "track_id"], kind="stable")
    owners, user_ids = ordered["user_id"].to_numpy(np.int64), users["user_id"].to_numpy(np.int64)
    starts, ends = np.searchsorted(owners, user_ids, side="left"), np.searchsorted(owners, user_ids, side="right")
    packed = users.copy()
    for column in CANDIDATE_ARRAYS:
        values = ordered[column].to_numpy()
        packed[f"c_{column}"] = [values[a:b] for a, b in zip(starts, ends, strict=True)]
    return packed


USERS_PER_BATCH = 1_000  # users featurized and scored at once (all 5,000 at once: a ~2.4 GB driver peak)


def ranker_order(ranker: TrainedRanker, context: FeatureContext, users: pd.DataFrame, candidates: pd.DataFrame,
                 artists: pd.DataFrame, two_tower_prior: float, k: int = 30, max_per_artist: int = 2,
                 users_per_batch: int = USERS_PER_BATCH) -> pd.DataFrame:
    """user_id, position, track_id: each user's best ``k`` candidates by the ranker's ``list_score``, at most
    ``max_per_artist`` per artist (the candidates exclude heard tracks already).

    ranker: the week's ``ranker_model`` (the first week's stand-in scores in retrieval order, as the batch
    does). context: the week's track-side ``FeatureContext`` (``ranking.batch.track_context``). users: one
    row per sampled user, ``features.USER_COLUMNS`` and ``user_vector`` (null: unknown to the two-tower).
    candidates: the sample's rows of the ``candidates`` table (``CANDIDATE_ARRAYS`` columns). artists:
    track_id, artist_id. Users without candidates (the batch's popularity fallback) get no list: the
    candidate oracle has none for them either. Users are ranked ``users_per_batch`` at a time (features are
    per user, so the order does not depend on it): the driver holds one batch's features, not the sample's.
    """
    catalog = artist_arrays(artists)
    parts = [_batch_order(ranker, context, batch, rows, catalog, two_tower_prior, k, max_per_artist)
             for batch, rows in user_batches(users, candidates, users_per_batch)]
    if not parts:
        return _no_lists()
    return pd.concat(parts, ignore_index=True)


def user_batches(users: pd.DataFrame, candidates: pd.DataFrame, users_per_batch: int = USERS_PER_BATCH):
    """Yields (``users_per_batch`` of ``users`` by user id, the rows of ``candidates`` in their id range): the
    batches the ranker order featurizes one at a time (rows of users outside ``users`` in that range are
    ignored by ``pack_candidates``)."""
    users = users.sort_values("user_id").reset_index(drop=True)
    candidates = candidates.sort_values("user_id", kind="stable")
    owners = candidates["user_id"].to_numpy(np.int64)
    for lo in range(0, len(users), max(1, users_per_batch)):
        batch = users.iloc[lo:lo + users_per_batch].reset_index(drop=True)
        first, last = batch["user_id"].iloc[0], batch["user_id"].iloc[-1]
        yield batch, candidates.iloc[np.searchsorted(owners, first, "left"):np.searchsorted(owners, last, "right")]


def _no_lists() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64") for c in ("user_id", "position", "track_id")})


def _batch_order(ranker: TrainedRanker, context: FeatureContext, users: pd.DataFrame, candidates: pd.DataFrame,
                 artists: tuple[np.ndarray, np.ndarray], two_tower_prior: float, k: int,
                 max_per_artist: int) -> pd.DataFrame:
    scorer = RetrievalOrder() if is_stand_in(ranker) else ranker
    return order_packed(scorer, context, pack_candidates(users, candidates), artists, two_tower_prior, k,
                        max_per_artist)


def artist_arrays(artists: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(track ids ascending, their artist ids) of a track_id, artist_id frame: what ``order_packed`` looks up."""
    frame = artists[["track_id", "artist_id"]].drop_duplicates("track_id").sort_values("track_id", kind="mergesort")
    return frame["track_id"].to_numpy(np.int64), frame["artist_id"].to_numpy(np.int64)


def packed_features(context: FeatureContext, packed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(one row per candidate: ``explode_candidates``, their ranker features; None when there is no candidate) of
    one batch of packed users: what :func:`order_packed` scores, and what a bench tool scores with other rankers."""
    packed = packed.sort_values("user_id").reset_index(drop=True)
    packed["recent_tracks"] = packed["recent_tracks"].map(lambda t: np.asarray(t if t is not None else [], np.int64))
    exploded = explode_candidates(packed)
    if exploded.empty:
        return exploded, None
    return exploded, build_ranker_features(exploded, context, users=packed)


def order_packed(scorer, context: FeatureContext, packed: pd.DataFrame, artists: tuple[np.ndarray, np.ndarray],
                 two_tower_prior: float, k: int, max_per_artist: int) -> pd.DataFrame:
    """user_id, position, track_id of one batch of packed users (``features.USER_COLUMNS``, ``user_vector``
    and the ``c_*`` candidate arrays, one row per user: as ``ranking.batch`` packs them in Spark). ``scorer``:
    the ranker, or :class:`RetrievalOrder` for the first week's stand-in; ``artists``: (track ids ascending, artist
    ids) of the catalog (``artist_arrays``; candidates outside it cannot be served and are dropped)."""
    exploded, features = packed_features(context, packed)
    if features is None:
        return _no_lists()
    probability = scorer.predict(features, engine="auto")  # as the batch scores them
    scored = exploded[["user_id", "track_id"]].assign(score=list_score(probability, features, two_tower_prior))
    track_ids, artist_ids = (np.asarray(a) for a in artists)
    wanted = scored["track_id"].to_numpy(np.int64)
    at = np.searchsorted(track_ids, wanted)
    known = at < len(track_ids)
    known[known] = track_ids[at[known]] == wanted[known]
    scored = scored[known].assign(artist_id=artist_ids[at[known]])
    return hygienic_top_k(scored, k, max_per_artist)
