"""Batch inference: a batch of users with their candidates -> 30-track playlists.

One pure function (:func:`rank_users`) does features -> LightGBM -> re-ranking for a batch of
users; Spark runs it through ``mapInPandas`` with :class:`PlaylistModels` shipped to executors,
and the tests call it directly. A batch holds one row per user, the user's candidates as
parallel arrays (``c_<column>``), so a user's candidates never straddle two batches and the
per-user lists (history, genre mix, heard tracks) are not repeated for every candidate.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from dw_assets.lake import host_cache
from dw_assets.ranking.features import ZIP_EPOCH, FeatureContext, _index_of, build_ranker_features
from dw_assets.ranking.ranker import TrainedRanker
from dw_assets.ranking.rerank import RerankConfig, empty_posteriors, rerank_batch

# Candidate columns carried per user as arrays (``c_track_id`` ...).
CANDIDATE_ARRAYS = ("track_id", "sources", "two_tower_rank", "item2vec_rank", "audio_rank",
                    "two_tower_score", "item2vec_score", "audio_score")
POSTERIOR_ARRAYS = ("genre", "alpha", "beta")  # ``p_genre`` ...: the user's exploration posteriors
TRACK_TABLE = ("track_id", "artist_id", "genre", "popularity_percentile", "is_cold", "plays")  # plays: the value order's certainty
FALLBACK_COLUMNS = ("country", "track_id", "artist_id", "genre", "score", "popularity_percentile")
PLAYLIST_SPARK_SCHEMA = ("user_id long, position short, track_id long, score float, source string, "
                         "is_exploration boolean, artist_id long, genre string, ranker_score float")


class TrackTable:
    """``TRACK_TABLE`` of every catalog track as column arrays sorted by track_id, the genre as codes into a
    small list of names: what the ranking looks its candidates up in (a binary search per candidate, no
    per-batch join). ``save`` writes one ``.npy`` per column; ``load`` memory-maps them, so the Python workers
    of a host share one copy through the page cache (100 M tracks: ~3.3 GB of files, ~9 GB as pandas)."""

    _ARRAYS = ("track_id", "artist_id", "genre_code", "popularity_percentile", "is_cold", "plays")

    def __init__(self, arrays: dict[str, np.ndarray], genres: list[str]) -> None:
        self.arrays, self.genres = arrays, list(genres)

    @classmethod
    def of(cls, tracks: pd.DataFrame | TrackTable) -> TrackTable:
        """The table of a ``TRACK_TABLE`` frame (any row order: sorted here)."""
        if isinstance(tracks, TrackTable):
            return tracks
        frame = tracks.sort_values("track_id", kind="mergesort")
        codes, genres = pd.factorize(frame["genre"], sort=True)
        return cls({"track_id": frame["track_id"].to_numpy(np.int64),
                    "artist_id": frame["artist_id"].to_numpy(np.int64),
                    "genre_code": codes.astype(np.int32),  # -1: no genre
                    "popularity_percentile": frame["popularity_percentile"].to_numpy(np.float64),
                    "is_cold": frame["is_cold"].to_numpy(bool), "plays": frame["plays"].to_numpy(np.int64)},
                   [str(g) for g in genres])

    def __len__(self) -> int:
        return len(self.arrays["track_id"])

    def frame(self) -> pd.DataFrame:
        """The ``TRACK_TABLE`` frame (for the driver-side fallback pool and the shipped bytes)."""
        return self.columns(np.arange(len(self)))

    def rows(self, track_ids: np.ndarray) -> np.ndarray:
        """int64 row of each track id; -1 where the catalog has none."""
        return _index_of(self.arrays["track_id"], track_ids)

    def columns(self, rows: np.ndarray) -> pd.DataFrame:
        """``TRACK_TABLE`` columns of ``rows`` (all >= 0), with the dtypes of track_stats."""
        a = self.arrays
        names = np.asarray(self.genres + [None], dtype=object)  # code -1 -> None
        return pd.DataFrame({"track_id": np.asarray(a["track_id"][rows]), "artist_id": np.asarray(a["artist_id"][rows]),
                             "genre": names[np.asarray(a["genre_code"][rows])],
                             "popularity_percentile": np.asarray(a["popularity_percentile"][rows]),
                             "is_cold": np.asarray(a["is_cold"][rows]), "plays": np.asarray(a["plays"][rows])})

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in self._ARRAYS:
            np.save(folder / f"{name}.npy", self.arrays[name], allow_pickle=False)
        (folder / "genres.json").write_text(json.dumps(self.genres))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> TrackTable:
        return cls({name: host_cache.load_array(folder / f"{name}.npy", mmap) for name in cls._ARRAYS},
                   json.loads((folder / "genres.json").read_text()))


@dataclass
class PlaylistModels:
    """What every executor needs, sized by the catalog (not the users).

    context: track-side feature context (:meth:`FeatureContext.without_users`); ranker: the week's
    LightGBM model; tracks: ``TRACK_TABLE`` columns of every catalog track (a frame, or a
    :class:`TrackTable`: ``open`` memory-maps one); fallback: the popularity-by-country pool
    (``FALLBACK_COLUMNS``) for users without candidates.
    """

    context: FeatureContext
    ranker: TrainedRanker
    tracks: pd.DataFrame | TrackTable
    fallback: pd.DataFrame
    rerank: RerankConfig

    def to_bytes(self) -> bytes:
        """One uncompressed zip, the same bytes for the same models (fixed member timestamps: the digest
        naming the host cache's copy is stable across runs)."""
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, data in (("context.bin", self.context.to_bytes()), ("ranker.bin", self.ranker.to_bytes()),
                               ("tracks.parquet", _parquet(self._tracks_frame())),
                               ("fallback.parquet", _parquet(self.fallback)),
                               ("rerank.json", json.dumps(asdict(self.rerank)).encode())):
                zf.writestr(zipfile.ZipInfo(name, ZIP_EPOCH), data)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PlaylistModels:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return cls(
                context=FeatureContext.from_bytes(zf.read("context.bin")),
                ranker=TrainedRanker.from_bytes(zf.read("ranker.bin")),
                tracks=pd.read_parquet(io.BytesIO(zf.read("tracks.parquet"))),
                fallback=pd.read_parquet(io.BytesIO(zf.read("fallback.parquet"))),
                rerank=_rerank_config(zf.read("rerank.json")),
            )

    _FILES = ("ranker.bin", "fallback.parquet", "rerank.json")

    def _tracks_frame(self) -> pd.DataFrame:
        return self.tracks.frame() if isinstance(self.tracks, TrackTable) else self.tracks

    @cached_property
    def track_table(self) -> TrackTable:
        """``tracks`` as a :class:`TrackTable` (a frame is converted once)."""
        return TrackTable.of(self.tracks)

    @classmethod
    def unpack(cls, data: bytes, folder: str | Path) -> None:
        """Write what ``to_bytes`` wrote as plain files ``open`` reads: the context's arrays as ``.npy`` in
        ``context/`` (``FeatureContext.unpack``), the track table's columns as ``.npy`` in ``tracks/``
        (:class:`TrackTable`), the ranker, fallback pool and re-ranking config as they were shipped. The
        context goes through a file (removed after): unpacking it holds one of its arrays in memory at a
        time, not a second copy of the whole context."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / "context.bin"
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            with zf.open("context.bin") as source, open(staged, "wb") as target:
                shutil.copyfileobj(source, target, 16 << 20)
            FeatureContext.unpack(staged, folder / "context")
            staged.unlink()
            TrackTable.of(pd.read_parquet(io.BytesIO(zf.read("tracks.parquet")))).save(folder / "tracks")
            for name in cls._FILES:
                (folder / name).write_bytes(zf.read(name))

    @classmethod
    def open(cls, folder: str | Path, mmap: bool = True) -> PlaylistModels:
        """Open what ``unpack`` wrote; with ``mmap`` the context's and the track table's arrays stay in their
        files (read-only), so all processes of a host share one copy; the small rest is read. Playlists are
        identical to ``from_bytes``'s models'."""
        folder = Path(folder)
        return cls(
            context=FeatureContext.open(folder / "context", mmap),
            ranker=TrainedRanker.from_bytes((folder / "ranker.bin").read_bytes()),
            tracks=TrackTable.load(folder / "tracks", mmap),
            fallback=pd.read_parquet(folder / "fallback.parquet"),
            rerank=_rerank_config((folder / "rerank.json").read_bytes()),
        )


def _rerank_config(text: bytes) -> RerankConfig:
    """The ``RerankConfig`` of its JSON (a two-number ``exploration_slots`` comes back as a list)."""
    rerank = json.loads(text)
    if isinstance(rerank.get("exploration_slots"), list):
        rerank["exploration_slots"] = tuple(rerank["exploration_slots"])
    return RerankConfig(**rerank)


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _explode(users: pd.DataFrame, prefix: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """Per-user arrays ``<prefix><column>`` as rows: user_id + ``columns`` (null or empty arrays: no rows)."""
    lengths = users[f"{prefix}{columns[0]}"].map(lambda a: 0 if a is None else len(a)).to_numpy(np.int64)
    has = lengths > 0
    frame = {"user_id": np.repeat(users["user_id"].to_numpy(np.int64), lengths)}
    for column in columns:
        parts = users.loc[has, f"{prefix}{column}"].tolist()
        frame[column] = np.concatenate(parts) if parts else np.zeros(0)
    return pd.DataFrame(frame)


def explode_candidates(users: pd.DataFrame) -> pd.DataFrame:
    """The batch's candidates as rows: user_id + ``CANDIDATE_ARRAYS`` columns (users without any: none)."""
    out = _explode(users, "c_", CANDIDATE_ARRAYS)
    for column in ("two_tower_rank", "item2vec_rank", "audio_rank"):
        out[column] = out[column].astype(np.int32)
    for column in ("two_tower_score", "item2vec_score", "audio_score"):
        out[column] = out[column].astype(np.float32)
    out["track_id"] = out["track_id"].astype(np.int64)
    return out


def user_posteriors(users: pd.DataFrame) -> pd.DataFrame:
    """The batch's exploration posteriors as rows: user_id, genre, alpha, beta."""
    if "p_genre" not in users.columns:
        return empty_posteriors()
    return _explode(users, "p_", POSTERIOR_ARRAYS)


def rank_users(users: pd.DataFrame, models: PlaylistModels, week: str, timings: dict | None = None,
               engine: str = "auto", orders: list | None = None) -> pd.DataFrame:
    """Playlists for a batch of users: one row per slot (``PLAYLIST_SPARK_SCHEMA`` columns).

    users: one row per user: user_profiles columns (features.USER_COLUMNS), country, heard
    (list of int64), user_vector (float[dim] or null), ``c_*`` candidate arrays (empty or null
    for users without candidates: they get the popularity fallback), optional ``p_*`` posteriors.
    ``ranker_score`` is the LightGBM probability of a positive listen (NaN for fallback rows);
    ``score`` the order the re-ranker started from (``list_score``). ``timings``: when given, the
    seconds of each step (features, predict, rerank) are added to it (for ``dw bench inference``).
    ``engine``: how the trees are evaluated (``TrainedRanker.predict``; auto = compiled when lleaves is there).
    ``orders``: when given, the batch's ranker order (``ranker_order_rows``, from the same scores) is appended
    to it.
    """
    clock = _StepClock(timings)
    candidates = explode_candidates(users)
    profiles = users.drop(columns=[c for c in users.columns if c.startswith(("c_", "p_"))])
    features = build_ranker_features(candidates, models.context, users=profiles)
    clock.lap("features")
    probability = models.ranker.predict(features, engine=engine) if len(candidates) else np.zeros(0, np.float32)
    clock.lap("predict")
    scored = candidates[["user_id", "track_id", "sources"]].assign(
        score=list_score(probability, features, models.rerank.two_tower_prior), probability=probability)
    table = models.track_table
    rows = table.rows(scored["track_id"].to_numpy(np.int64))
    known = rows >= 0  # a candidate outside the week's catalog cannot be described or served
    scored = scored.loc[known].reset_index(drop=True)
    described = table.columns(rows[known]).drop(columns="track_id")
    scored = pd.concat([scored, described], axis=1)
    if orders is not None:
        orders.append(ranker_order_rows(scored, models.rerank))
    playlists = rerank_batch(scored, profiles[["user_id", "country", "genre_share", "heard"]],
                             user_posteriors(users), models.fallback, models.rerank, week)
    model_score = scored.set_index(["user_id", "track_id"])["probability"]
    keys = pd.MultiIndex.from_arrays([playlists["user_id"], playlists["track_id"]])
    playlists["ranker_score"] = model_score.reindex(keys).to_numpy(np.float32)
    clock.lap("rerank")
    return playlists


class _StepClock:
    """Adds the seconds since the last lap to ``timings[step]``; does nothing without a dict."""

    def __init__(self, timings: dict | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[step] = self.timings.get(step, 0.0) + now - self.last
            self.last = now


def list_score(probability: np.ndarray, features: pd.DataFrame, two_tower_prior: float) -> np.ndarray:
    """The order the re-ranker starts from: log P(positive) + prior x two-tower inner product.

    The ranker is trained on candidates the user heard, so it learns taste given exposure; the
    two-tower score says how likely the user is to come across the track at all. A track without
    a two-tower score (no user vector) gets no prior.
    """
    log_p = np.log(np.clip(np.asarray(probability, np.float64), 1e-6, 1.0))
    if two_tower_prior == 0 or "two_tower_score" not in features:
        return log_p
    return log_p + two_tower_prior * np.nan_to_num(features["two_tower_score"].to_numpy(np.float64), nan=0.0)


def hygienic_top_k(scored: pd.DataFrame, k: int = 30, max_per_artist: int = 2,
                   keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """user_id, position, track_id (and the ``keep`` columns): each user's best ``k`` rows by ``score`` (ties:
    lower track id), one row per track, at most ``max_per_artist`` per artist. ``scored``: user_id, track_id,
    artist_id, score, already without the user's heard tracks."""
    frame = scored.sort_values(["user_id", "score", "track_id"], ascending=[True, False, True], kind="stable")
    frame = frame.drop_duplicates(["user_id", "track_id"])
    frame = frame[frame.groupby(["user_id", "artist_id"], sort=False).cumcount() < max_per_artist]
    position = frame.groupby("user_id", sort=False).cumcount() + 1
    frame = frame.assign(position=position.astype(np.int64))
    return frame.loc[frame["position"] <= k, ["user_id", "position", "track_id", *keep]].reset_index(drop=True)


def ranker_order_rows(scored: pd.DataFrame, config: RerankConfig) -> pd.DataFrame:
    """The ranker's own order of a batch's scored candidates (``rank_users``' ``scored``: ``list_score`` as
    ``score``, ``probability``, ``sources``, the track table's columns) with the hygiene only — no value order,
    MMR, calibration, exploration or cold slots — as ``PLAYLIST_SPARK_SCHEMA`` rows: what the ranker alone
    would serve, the re-ranker's starting point the evaluation compares with (its ranking efficiency)."""
    top = hygienic_top_k(scored, config.playlist_size, config.max_per_artist,
                         keep=("score", "sources", "artist_id", "genre", "probability"))
    return pd.DataFrame({
        "user_id": top["user_id"].to_numpy(np.int64), "position": top["position"].to_numpy(np.int16),
        "track_id": top["track_id"].to_numpy(np.int64), "score": top["score"].to_numpy(np.float32),
        "source": top["sources"].to_numpy(object), "is_exploration": np.zeros(len(top), bool),
        "artist_id": top["artist_id"].to_numpy(np.int64), "genre": top["genre"].to_numpy(object),
        "ranker_score": top["probability"].to_numpy(np.float32)})


def fallback_pool(interactions: pd.DataFrame, users: pd.DataFrame, tracks: pd.DataFrame,
                  per_country: int = 300) -> pd.DataFrame:
    """Popularity by country: the tracks with the most distinct positive listeners in each country,
    topped up with the global ranking so every country's pool holds ``per_country`` tracks.

    interactions: user_id, track_id, is_positive (the week's); users: user_id, country;
    tracks: ``TRACK_TABLE``. Returns ``FALLBACK_COLUMNS``, score = listeners, best first.
    In pandas (tests, benches); the weekly run counts on Spark (``ranking.batch.spark_fallback_pool``).
    """
    positive = interactions.loc[interactions["is_positive"].astype(bool), ["user_id", "track_id"]].drop_duplicates()
    by_country = positive.merge(users[["user_id", "country"]], on="user_id")
    counts = by_country.groupby(["country", "track_id"]).size().rename("score").reset_index()
    overall = positive.groupby("track_id").size().rename("score").reset_index()
    return pool_from_counts(counts, overall, users["country"], tracks, per_country)


def pool_from_counts(counts: pd.DataFrame, overall: pd.DataFrame, countries: pd.Series, tracks: pd.DataFrame,
                     per_country: int = 300) -> pd.DataFrame:
    """The fallback pool from listener counts: ``counts`` country, track_id, score (distinct positive
    listeners in the country; only each country's best ``per_country`` are needed), ``overall``
    track_id, score (all countries; only the best ``per_country`` are needed), ``countries`` every
    user's country (nulls ignored). Both count tables are per track, so they fit on the driver."""
    # Small countries' pools are topped up with the global ranking (scored below any local count).
    overall = overall.sort_values(["score", "track_id"], ascending=[False, True], kind="stable").head(per_country)
    overall["score"] = overall["score"] / (overall["score"].max() + 1.0) if len(overall) else overall["score"]
    top_up = pd.DataFrame({"country": np.sort(countries.dropna().unique())}).merge(overall, how="cross")
    counts = pd.concat([counts, top_up], ignore_index=True).drop_duplicates(["country", "track_id"], keep="first")
    counts = counts.sort_values(["country", "score", "track_id"], ascending=[True, False, True], kind="stable")
    pool = counts.groupby("country", sort=True).head(per_country).merge(tracks, on="track_id")
    pool["score"] = pool["score"].astype(np.float64)
    return pool[list(FALLBACK_COLUMNS)].reset_index(drop=True)  # an inner merge keeps the left (sorted) order
