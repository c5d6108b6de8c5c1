"""Candidate generation: ~500 unheard tracks per user from three retrieval sources, each tagged with its sources.

Sources:

- ``two_tower``: inner-product ANN over the two-tower track embeddings, queried with the user vector.
- ``item2vec``: cosine neighbours (item2vec space) of the user's ``seed_tracks`` most recent positive
  tracks that have an item2vec vector, pooled and ranked by their best cosine to any seed. The first
  K neighbours of every track are precomputed once (``CandidateModels.neighbours``), so most seeds
  are a table lookup; seeds that need more are searched.
- ``audio``: this week's cold tracks / new releases, ranked by the cosine of their audio vector
  (regressed into the item2vec space) with the mean item2vec vector of the user's seeds.

Tracks the user already heard (``heard`` plus ``recent_tracks``) are removed from every source,
which then ranks what is left (1-based, best first; ties by track id). Merging: each source's first
``quota`` tracks interleave in proportion to their quotas, then the rest of every list follows
round-robin; a track is kept at its first place in that order and the list is cut at ``total``. A
track keeps the rank and score of every source whose list holds it.

Sources over-fetch (``overfetch`` times the quota before the heard filter). A user left short — a
source under its quota, or fewer than ``total`` tracks in all — has its sources searched again with
twice the fetch, until each reaches ``max_fetch`` or the whole catalog ("dry").

``generate_candidates`` is one pure function over a batch of users: one ANN call per source per
round for the whole batch, the heard filter on flattened (user row, track) int64 keys. A user's
output depends only on that user's row, never on the batch: faiss is held to its per-query CPU
kernel (its BLAS and lone-query kernels round scores differently) and ties break on track id. On a
GPU index that guarantee does not hold.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from dw_assets.lake import host_cache
from dw_assets.retrieval.ann import AnnConfig, AnnIndex, build_index
from dw_assets.retrieval.delta import DeltaIndex, search_with_delta

SOURCES = ("two_tower", "item2vec", "audio")
TWO_TOWER, ITEM2VEC, AUDIO = range(3)
CANDIDATE_COLUMNS = (
    "user_id", "track_id", "sources",
    "two_tower_rank", "item2vec_rank", "audio_rank",
    "two_tower_score", "item2vec_score", "audio_score",
)  # fmt: skip
CANDIDATE_SPARK_SCHEMA = (
    "user_id long, track_id long, sources string, two_tower_rank int, item2vec_rank int, audio_rank int, "
    "two_tower_score float, item2vec_score float, audio_score float"
)
TRACK_BITS = 40  # (user row, track id) pairs pack into one int64 key: track ids must be < 2**40
_MAX_ROWS = 1 << (63 - TRACK_BITS)
_POSITION_BITS = 63 - 2 - (63 - TRACK_BITS)  # merge keys pack (row, merge position, source)
# "audio", "item2vec", "audio|item2vec", ... indexed by the bit mask of sources (bit i = SOURCES[i])
_SOURCE_LABELS = np.array(
    ["|".join(sorted(name for i, name in enumerate(SOURCES) if mask >> i & 1)) for mask in range(8)],
    dtype=object,
)


@dataclass(frozen=True)
class CandidateConfig:
    total: int = 500  # candidates per user, at most
    two_tower_quota: int = 300  # first tracks of each source guaranteed a place (if unheard and found)
    item2vec_quota: int = 150
    audio_quota: int = 50
    seed_tracks: int = 10  # most recent positive tracks whose item2vec neighbours are pooled
    overfetch: float = 2.0  # tracks fetched per source before the heard filter, as a multiple of its quota
    max_fetch: int = 2048  # most tracks one source fetches per user (per seed for item2vec); faiss GPU limit
    faiss_threads: int = 0  # OpenMP threads for the searches (the task's cpus); 0: faiss's default
    chunk_users: int = 4096  # users processed at once: ~200 KB of temporaries per user
    # Spark tasks scale with the users: ceil(users / users_per_partition), at least min_partitions (the demo
    # worlds' 8, so their files, and the ranker that reads them in stored order, are unchanged). 500 M users:
    # 25 k tasks of 20 k users; a task's Python worker loads the shipped models once (load_once).
    users_per_partition: int = 20_000
    min_partitions: int = 8
    seed: int = 7  # candidate generation draws nothing at random; kept for the stage-wide config contract

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ValueError(f"total must be >= 1, got {self.total}")
        for name in ("two_tower_quota", "item2vec_quota", "audio_quota", "seed_tracks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.overfetch < 1:
            raise ValueError(f"overfetch must be >= 1, got {self.overfetch}")
        if self.max_fetch < 1 or self.chunk_users < 1:
            raise ValueError(
                f"max_fetch and chunk_users must be >= 1, got {self.max_fetch}, {self.chunk_users}"
            )
        longest_list = self.max_fetch * max(self.seed_tracks, 1)  # item2vec pools up to this many per user
        if int(np.lcm.reduce(np.maximum(self.quotas, 1))) + longest_list >= 1 << _POSITION_BITS:
            raise ValueError("quotas too large or with too large a common multiple for the merge keys")

    @property
    def quotas(self) -> np.ndarray:
        """int64[3]: the quota of each source, in ``SOURCES`` order."""
        return np.array([self.two_tower_quota, self.item2vec_quota, self.audio_quota], dtype=np.int64)


class CandidateModels:
    """Everything candidate generation searches, shippable to Spark executors as one blob.

    two_tower: ANN index over two-tower track embeddings (labels = track ids; the faiss_index artifact).
    item2vec_ids: int64[n] warm track ids, ascending. item2vec_vectors: float32[n, d], unit norm, row i =
    item2vec_ids[i]. item2vec_index: inner-product (= cosine) index over them, labels = row numbers.
    neighbours / neighbour_scores: int32[n, K] / float32[n, K], the first K results of that index for
    every item2vec track (itself included, -1 / -inf padded): most seeds are looked up, not searched.
    audio_ids: int64[m] the cold / new-release tracks the audio source may propose. audio_vectors:
    float32[m, d] their audio vectors in the item2vec space, unit norm. audio_index: over those, labels = rows.
    """

    def __init__(
        self,
        two_tower: AnnIndex,
        item2vec_ids: np.ndarray,
        item2vec_vectors: np.ndarray,
        item2vec_index: AnnIndex,
        neighbours: np.ndarray,
        neighbour_scores: np.ndarray,
        audio_ids: np.ndarray,
        audio_vectors: np.ndarray,
        audio_index: AnnIndex,
        model_version: str = "",
        two_tower_delta: DeltaIndex | None = None,
    ) -> None:
        self.two_tower = two_tower
        self.item2vec_ids = item2vec_ids
        self.item2vec_vectors = item2vec_vectors
        self.item2vec_index = item2vec_index
        self.neighbours = neighbours
        self.neighbour_scores = neighbour_scores
        self.audio_ids = audio_ids
        self.audio_vectors = audio_vectors
        self.audio_index = audio_index
        self.model_version = model_version
        # Tracks uploaded since the weekly index (the audio-upload sensor's new_track_vectors): searched
        # beside it, so they are candidates before next week's models know them.
        self.two_tower_delta = two_tower_delta if two_tower_delta is not None and len(two_tower_delta) else None

    @classmethod
    def build(
        cls,
        two_tower: AnnIndex,
        item2vec_ids: np.ndarray,
        item2vec_vectors: np.ndarray,
        audio_ids: np.ndarray,
        audio_vectors: np.ndarray,
        neighbour_config: AnnConfig | None = None,
        neighbour_table: int = 64,
        model_version: str = "",
    ) -> CandidateModels:
        """Assemble from the week's artifacts.

        two_tower: ``AnnIndex.from_bytes(faiss_index.files["index.bin"])``. item2vec_ids/vectors:
        int64[n], float32[n, d] (item2vec_embeddings). audio_ids/vectors: int64[m], float32[m, d]
        (audio_embeddings restricted to the tracks the audio source may propose, e.g. is_cold or
        is_new_release). Vectors are normalized here. neighbour_config: index for the item2vec and
        audio searches (default: exact below 100k tracks, IVF above). neighbour_table: K, the
        neighbours precomputed per item2vec track (one search over all n tracks; 0 = none).
        """
        config = neighbour_config or AnnConfig()
        item2vec_ids = np.asarray(item2vec_ids, dtype=np.int64).reshape(-1)
        audio_ids = np.asarray(audio_ids, dtype=np.int64).reshape(-1)
        item2vec_vectors = _unit_rows(item2vec_vectors)
        if len(audio_ids) == 0:  # no new releases this week
            audio_vectors = np.zeros((0, item2vec_vectors.shape[1]), dtype=np.float32)
        audio_vectors = _unit_rows(audio_vectors)
        if len(item2vec_ids) != len(item2vec_vectors) or len(audio_ids) != len(audio_vectors):
            raise ValueError("each id array needs one vector per id")
        if len(audio_ids) and audio_vectors.shape[1] != item2vec_vectors.shape[1]:
            raise ValueError(
                f"audio vectors (dim {audio_vectors.shape[1]}) must live in the item2vec space "
                f"(dim {item2vec_vectors.shape[1]})"
            )
        if neighbour_table < 0:
            raise ValueError(f"neighbour_table must be >= 0, got {neighbour_table}")
        for ids in (item2vec_ids, audio_ids, two_tower.ids):
            _check_track_ids(ids)
        order = np.argsort(item2vec_ids, kind="stable")  # ascending ids: seed lookup by searchsorted
        item2vec_ids, item2vec_vectors = item2vec_ids[order], item2vec_vectors[order]
        item2vec_index = _row_index(item2vec_vectors, config)
        table = min(neighbour_table, len(item2vec_ids))
        with _batch_invariant_faiss(0):  # the same results a live search of one seed returns
            scores, rows = (
                _search(item2vec_index, item2vec_vectors, table)
                if table
                else (
                    np.zeros((len(item2vec_ids), 0), np.float32),
                    np.zeros((len(item2vec_ids), 0), np.int64),
                )
            )
        return cls(
            two_tower, item2vec_ids, item2vec_vectors, item2vec_index, rows.astype(np.int32), scores,
            audio_ids, audio_vectors, _row_index(audio_vectors, config), model_version,
        )  # fmt: skip

    def memory_bytes(self) -> int:
        """Approximate resident size once loaded (indexes, neighbour table, vectors and ids)."""
        arrays = (self.item2vec_ids, self.item2vec_vectors, self.neighbours, self.neighbour_scores,
                  self.audio_ids, self.audio_vectors)  # fmt: skip
        return int(
            self.two_tower.memory_bytes() + self.item2vec_index.memory_bytes()
            + self.audio_index.memory_bytes() + sum(a.nbytes for a in arrays)
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        """One uncompressed npz. Exact (flat) neighbour indexes are rebuilt from the vectors on load,
        so the item2vec vectors travel once."""
        meta = {"model_version": self.model_version}
        arrays = {
            "two_tower": np.frombuffer(self.two_tower.to_bytes(), dtype=np.uint8),
            "item2vec_ids": self.item2vec_ids,
            "item2vec_vectors": self.item2vec_vectors,
            "neighbours": self.neighbours,
            "neighbour_scores": self.neighbour_scores,
            "audio_ids": self.audio_ids,
            "audio_vectors": self.audio_vectors,
        }
        if self.two_tower_delta is not None:
            arrays["delta_ids"] = self.two_tower_delta.ids
            arrays["delta_vectors"] = self.two_tower_delta.vectors
            meta["delta_version"] = self.two_tower_delta.model_version
        for name, index in (("item2vec_index", self.item2vec_index), ("audio_index", self.audio_index)):
            meta[f"{name}_config"] = dataclasses.asdict(index.config)
            meta[f"{name}_kind"] = index.kind
            if index.kind != "flat":
                arrays[name] = np.frombuffer(index.to_bytes(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, use_gpu: str | None = None) -> CandidateModels:
        """Load what ``to_bytes`` wrote; indexes go to a GPU per their config (or ``use_gpu``) when present."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes())
            loaded = {name: arrays[name] for name in arrays.files if name not in ("meta", "two_tower")}
            two_tower = AnnIndex.from_bytes(arrays["two_tower"].tobytes(), use_gpu=use_gpu)
        delta = None
        if "delta_ids" in loaded:
            delta = DeltaIndex(loaded.pop("delta_ids"), loaded.pop("delta_vectors"), meta.get("delta_version", ""))
        for name, vectors in (
            ("item2vec_index", loaded["item2vec_vectors"]),
            ("audio_index", loaded["audio_vectors"]),
        ):
            if meta[f"{name}_kind"] == "flat":
                config = AnnConfig(**{**meta[f"{name}_config"], "kind": "flat"})
                if use_gpu is not None:
                    config = dataclasses.replace(config, use_gpu=use_gpu)
                loaded[name] = build_index(np.arange(len(vectors)), vectors, config)
            else:
                loaded[name] = AnnIndex.from_bytes(loaded[name].tobytes(), use_gpu=use_gpu)
        return cls(two_tower, model_version=meta["model_version"], two_tower_delta=delta, **loaded)


    _ARRAYS = ("item2vec_ids", "item2vec_vectors", "neighbours", "neighbour_scores", "audio_ids", "audio_vectors")

    @classmethod
    def unpack(cls, data: bytes, folder: str | Path) -> None:
        """Write what ``to_bytes`` wrote as plain files ``open`` memory-maps: ``meta.json``, every array as
        ``<name>.npy``, each index in faiss's format (``AnnIndex.save``). Exact neighbour indexes, rebuilt from
        the vectors (as ``from_bytes`` does), are written too, so no process rebuilds them again."""
        folder = Path(folder)
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes())
            AnnIndex.unpack(arrays["two_tower"].tobytes(), folder, "two_tower")
            for name in (*cls._ARRAYS, "delta_ids", "delta_vectors"):
                if name in arrays.files:
                    np.save(folder / f"{name}.npy", arrays[name])
            for name, vectors in (("item2vec_index", "item2vec_vectors"), ("audio_index", "audio_vectors")):
                if meta[f"{name}_kind"] == "flat":
                    config = AnnConfig(**{**meta[f"{name}_config"], "kind": "flat"})
                    exact = arrays[vectors]
                    build_index(np.arange(len(exact)), exact, config).save(folder, name)
                else:
                    AnnIndex.unpack(arrays[name].tobytes(), folder, name)
        (folder / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def open(cls, folder: str | Path, use_gpu: str | None = None, mmap: bool = True) -> CandidateModels:
        """Open what ``unpack`` wrote; with ``mmap`` every array and index stays in the files (read-only), so
        all processes of a host share one copy. Candidates are identical to ``from_bytes``'s models'."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: host_cache.load_array(folder / f"{name}.npy", mmap) for name in cls._ARRAYS}
        delta = None
        if (folder / "delta_ids.npy").exists():  # small (a week of uploads): read, its exact index built here
            delta = DeltaIndex(np.load(folder / "delta_ids.npy"), np.load(folder / "delta_vectors.npy"),
                               meta.get("delta_version", ""))
        indexes = {name: AnnIndex.open(folder, name, use_gpu, mmap)
                   for name in ("two_tower", "item2vec_index", "audio_index")}
        return cls(model_version=meta["model_version"], two_tower_delta=delta, **indexes, **arrays)


def generate_candidates(
    users: pd.DataFrame, models: CandidateModels, config: CandidateConfig
) -> pd.DataFrame:
    """Candidates for a batch of users, one row per (user, track), heard tracks removed.

    users: user_id int64 (unique), user_vector (float32[dim] two-tower vector or null), recent_tracks
    (int64 track ids, newest first), heard (int64 track ids played in the window; null = none).
    Returns ``CANDIDATE_COLUMNS``: user_id, track_id int64; sources str ("audio|item2vec", sorted names);
    <source>_rank int32 (1-based rank among the source's unheard tracks, 0 = not from it);
    two_tower_score float32 (user·track inner product), item2vec_score float32 (best cosine to a seed
    track), audio_score float32 (cosine with the mean seed vector), NaN where the source did not find it.
    Rows are sorted by user_id, then merge order. Users with no vector and no seed track get no rows.
    Batches above ``config.chunk_users`` users are processed in chunks (same output, bounded memory).
    """
    if users["user_id"].duplicated().any():
        raise ValueError("user_id must be unique within a batch")
    if len(users) <= config.chunk_users:
        return _candidates_for(users, models, config)
    users = users.iloc[np.argsort(users["user_id"].to_numpy(), kind="stable")]
    chunks = [users.iloc[i : i + config.chunk_users] for i in range(0, len(users), config.chunk_users)]
    return pd.concat([_candidates_for(chunk, models, config) for chunk in chunks], ignore_index=True)


def _candidates_for(users: pd.DataFrame, models: CandidateModels, config: CandidateConfig) -> pd.DataFrame:
    batch = _UserBatch.parse(users, models, config)
    n_users = len(batch.user_ids)
    quotas = config.quotas
    delta = len(models.two_tower_delta) if models.two_tower_delta is not None else 0
    sizes = [len(models.two_tower) + delta, len(models.item2vec_ids), len(models.audio_ids)]  # SOURCES order
    caps = np.minimum(sizes, config.max_fetch)  # most a source returns per user (per seed for item2vec)
    applicable = np.zeros((3, n_users), dtype=bool)
    applicable[TWO_TOWER] = batch.has_vector
    applicable[ITEM2VEC] = batch.seed_count > 0
    applicable[AUDIO] = batch.seed_count > 0
    applicable &= caps[:, None] > 0  # an empty catalog or pool has nothing to search
    search = {TWO_TOWER: _two_tower_hits, ITEM2VEC: _item2vec_hits, AUDIO: _audio_hits}
    level = np.zeros((3, n_users), dtype=np.int64)  # times each (source, user) fetch was doubled
    todo = applicable.copy()
    hits = [_SourceHits.empty() for _ in SOURCES]
    merges: list[dict[str, np.ndarray]] = []  # one per round, for the users searched in it
    last_round = np.full(n_users, -1)
    with _batch_invariant_faiss(config.faiss_threads):
        while todo.any():
            fetch = np.ceil(np.maximum(quotas, 1)[:, None] * config.overfetch * 2.0**level).astype(np.int64)
            fetch[ITEM2VEC] = -(-fetch[ITEM2VEC] // np.maximum(batch.seed_count, 1))  # per seed
            for source, find in search.items():
                rows = np.flatnonzero(todo[source])
                if len(rows):
                    fresh = find(batch, models, rows, np.minimum(fetch[source, rows], caps[source]))
                    hits[source] = hits[source].without(todo[source]).plus(fresh)
            touched = todo.any(axis=0)
            merges.append(_merge([h.only(touched) for h in hits], config))
            last_round[touched] = len(merges) - 1
            # Users with a source under its quota, or fewer than total tracks, search again with twice
            # the fetch from every source that is not dry yet.
            found = np.stack([np.bincount(h.row, minlength=n_users) for h in hits])
            kept = np.bincount(merges[-1]["row"], minlength=n_users)
            dry = ~applicable | (fetch >= caps[:, None])
            short = ((found < quotas[:, None]) & ~dry).any(axis=0) | (kept < config.total)
            todo = touched & short & ~dry
            level += todo
    return _candidate_frame(batch, merges, last_round)


@dataclass
class _UserBatch:
    """A users frame as flat arrays. Seeds are in recency order within each user."""

    user_ids: np.ndarray  # int64[B]
    has_vector: np.ndarray  # bool[B]
    vectors: np.ndarray  # float32[B, dim], zeros where has_vector is false
    seed_row: np.ndarray  # int64[S] batch row of each seed, ascending
    seed_item: np.ndarray  # int64[S] item2vec row of each seed
    seed_count: np.ndarray  # int64[B]
    excluded: np.ndarray  # int64[E] sorted (row, track) keys of heard + recent tracks

    @classmethod
    def parse(cls, users: pd.DataFrame, models: CandidateModels, config: CandidateConfig) -> _UserBatch:
        missing = {"user_id", "user_vector", "recent_tracks", "heard"} - set(users.columns)
        if missing:
            raise ValueError(f"users frame lacks columns {sorted(missing)}")
        user_ids = users["user_id"].to_numpy(dtype=np.int64)
        n_users = len(user_ids)
        if n_users >= _MAX_ROWS:
            raise ValueError(f"batches hold at most {_MAX_ROWS - 1} users, got {n_users}")
        dim = models.two_tower.dim
        given = [_as_array(v, np.float32) for v in users["user_vector"]]
        has_vector = np.array([len(v) > 0 and bool(np.isfinite(v).all()) for v in given], dtype=bool)
        vectors = np.zeros((n_users, dim), dtype=np.float32)
        if any(len(v) not in (0, dim) for v in given):
            raise ValueError(f"user vectors must have the two-tower dim {dim}")
        if has_vector.any():
            vectors[has_vector] = np.stack([v for v, ok in zip(given, has_vector, strict=True) if ok])
        recent, recent_lengths = _flatten(users["recent_tracks"])
        heard, heard_lengths = _flatten(users["heard"])
        recent_row = np.repeat(np.arange(n_users), recent_lengths)
        heard_row = np.repeat(np.arange(n_users), heard_lengths)
        _check_track_ids(recent)
        _check_track_ids(heard)
        excluded = np.sort(np.concatenate([_pair_keys(recent_row, recent), _pair_keys(heard_row, heard)]))
        # Seeds: the first `seed_tracks` distinct recent tracks that have an item2vec vector.
        position = np.minimum(
            np.searchsorted(models.item2vec_ids, recent), max(len(models.item2vec_ids) - 1, 0)
        )
        known = (
            models.item2vec_ids[position] == recent
            if len(models.item2vec_ids)
            else np.zeros(len(recent), bool)
        )
        seed_row, seed_item = recent_row[known], position[known]
        _, first = np.unique(_pair_keys(seed_row, seed_item), return_index=True)
        first.sort()  # first occurrence of each (user, track), recency order kept
        seed_row, seed_item = seed_row[first], seed_item[first]
        keep = _cumcount(seed_row) < config.seed_tracks
        seed_row, seed_item = seed_row[keep], seed_item[keep]
        seed_count = np.bincount(seed_row, minlength=n_users)
        return cls(user_ids, has_vector, vectors, seed_row, seed_item, seed_count, excluded)

    def unheard(self, row: np.ndarray, track: np.ndarray) -> np.ndarray:
        """bool[n]: (row, track) is neither heard nor a recent track of that user."""
        keys = _pair_keys(row, track)
        if len(self.excluded) == 0:
            return np.ones(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self.excluded, keys), len(self.excluded) - 1)
        return self.excluded[at] != keys


@dataclass
class _SourceHits:
    """One source's unheard tracks for some users, grouped by row, best first: rank is 1-based."""

    row: np.ndarray  # int64[n]
    track: np.ndarray  # int64[n]
    rank: np.ndarray  # int32[n]
    score: np.ndarray  # float32[n]

    @classmethod
    def empty(cls) -> _SourceHits:
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
        )

    @classmethod
    def ranked(cls, batch: _UserBatch, row: np.ndarray, track: np.ndarray, score: np.ndarray) -> _SourceHits:
        """Drop heard tracks, order each user's tracks by score (ties: track id), number them."""
        keep = batch.unheard(row, track)
        row, track, score = row[keep], track[keep], score[keep]
        order = _rank_order(row, track, score)
        row, track, score = row[order], track[order], score[order]
        return cls(row, track, (_cumcount(row) + 1).astype(np.int32), score.astype(np.float32))

    def only(self, rows: np.ndarray) -> _SourceHits:
        """The hits of users whose ``rows`` (bool[B]) flag is set."""
        keep = rows[self.row]
        return _SourceHits(self.row[keep], self.track[keep], self.rank[keep], self.score[keep])

    def without(self, rows: np.ndarray) -> _SourceHits:
        return self.only(~rows)

    def plus(self, other: _SourceHits) -> _SourceHits:
        return _SourceHits(
            *(np.concatenate([a, b]) for a, b in zip(self.arrays(), other.arrays(), strict=True))
        )

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.row, self.track, self.rank, self.score


def _two_tower_hits(
    batch: _UserBatch, models: CandidateModels, rows: np.ndarray, k: np.ndarray
) -> _SourceHits:
    """Top ``k`` (int64[len(rows)]) tracks by user·track inner product for each user row, in one search."""
    scores, tracks = _search(models.two_tower, batch.vectors[rows], int(k.max()), models.two_tower_delta)
    return _from_lists(batch, rows, k, tracks, scores)


def _item2vec_hits(
    batch: _UserBatch, models: CandidateModels, rows: np.ndarray, k: np.ndarray
) -> _SourceHits:
    """The first ``k`` (int64[len(rows)], per seed) neighbours of each user's seeds, pooled at the best cosine.

    A seed's first K neighbours come from the precomputed table; only seeds that need more are searched
    (all of them in one call).
    """
    per_user = np.zeros(len(batch.user_ids), dtype=np.int64)
    per_user[rows] = k
    in_rows = per_user[batch.seed_row] > 0
    seed_row, seed_item = batch.seed_row[in_rows], batch.seed_item[in_rows]
    k = per_user[seed_row]
    looked_up = k <= models.neighbours.shape[1]
    parts = [_seed_neighbours(seed_row[looked_up], k[looked_up], models.neighbours[seed_item[looked_up]],
                              models.neighbour_scores[seed_item[looked_up]])]  # fmt: skip
    if not looked_up.all():
        searched = ~looked_up
        unique_items, which = np.unique(seed_item[searched], return_inverse=True)  # each seed track once
        scores, neighbours = _search(
            models.item2vec_index, models.item2vec_vectors[unique_items], int(k.max())
        )
        parts.append(_seed_neighbours(seed_row[searched], k[searched], neighbours[which], scores[which]))
    row, item, scores = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    track = models.item2vec_ids[item]
    order = np.lexsort((track, -scores, row))  # rank order; a track's first entry holds its best cosine
    row, track, scores = row[order], track[order], scores[order]
    _, first = np.unique(_pair_keys(row, track), return_index=True)
    best = np.sort(first)
    return _SourceHits.ranked(batch, row[best], track[best], scores[best])


def _seed_neighbours(seed_row: np.ndarray, k: np.ndarray, neighbours: np.ndarray,
                     scores: np.ndarray) -> tuple[np.ndarray, ...]:  # fmt: skip
    """(row, item2vec row, cosine) of each seed's first ``k`` neighbours; neighbours/scores: [seeds, >= k]."""
    take = (np.arange(neighbours.shape[1]) < k[:, None]) & (neighbours >= 0)
    row = np.broadcast_to(seed_row[:, None], take.shape)[take]
    return row, neighbours[take].astype(np.int64), scores[take]


def _audio_hits(batch: _UserBatch, models: CandidateModels, rows: np.ndarray, k: np.ndarray) -> _SourceHits:
    """The ``k`` cold tracks whose audio vectors are closest (cosine) to the mean of each user's seeds."""
    in_rows = np.zeros(len(batch.user_ids), dtype=bool)
    in_rows[rows] = True
    mine = in_rows[batch.seed_row]
    seed_vectors = models.item2vec_vectors[batch.seed_item[mine]]
    starts = np.searchsorted(batch.seed_row[mine], rows)  # rows ascending, each has >= 1 seed
    taste = _unit_rows(np.add.reduceat(seed_vectors, starts, axis=0))  # direction of the mean
    scores, audio_rows = _search(models.audio_index, taste, int(k.max()))
    tracks = np.where(audio_rows >= 0, models.audio_ids[np.maximum(audio_rows, 0)], -1)
    return _from_lists(batch, rows, k, tracks, scores)


def _from_lists(batch: _UserBatch, rows: np.ndarray, k: np.ndarray, tracks: np.ndarray,
                scores: np.ndarray) -> _SourceHits:  # fmt: skip
    """Per-user result lists (int64[q, K] track ids, -1 = none), each cut to its own ``k``, as hits."""
    take = (np.arange(tracks.shape[1]) < k[:, None]) & (tracks >= 0)
    row = np.broadcast_to(rows[:, None], tracks.shape)[take]
    return _SourceHits.ranked(batch, row, tracks[take], scores[take])


def _merge(hits: list[_SourceHits], config: CandidateConfig) -> dict[str, np.ndarray]:
    """Merge the sources' lists per user: quota heads interleaved by relative rank, then round-robin.

    Returns row int64[n], track int64[n], slot int64[n] (0-based merge position), mask uint8[n] (source
    bits), rank int32[n, 3], score float32[n, 3] (0 / NaN where a source did not find the track).
    """
    row, track, rank, score = (
        np.concatenate(parts) for parts in zip(*(h.arrays() for h in hits), strict=True)
    )
    if len(row) == 0:
        return _empty_merge()
    source = np.repeat(np.arange(3), [len(h.row) for h in hits])
    # Merge position as an exact integer: head rank r of quota q sits at (r - 1) * lcm / q, in [0, lcm);
    # the rest of each list follows round-robin at lcm + (r - q - 1); ties go in SOURCES order.
    quotas = np.maximum(config.quotas, 1)
    lcm = int(np.lcm.reduce(quotas))
    quota = config.quotas[source]
    position = np.where(rank <= quota, (rank - 1) * (lcm // quotas[source]), lcm + rank - quota - 1)
    merge_key = (row << _POSITION_BITS | position) << 2 | source  # unique per entry, sorts in merge order
    # One entry per (user, track) pair: its earliest merge key and every source's rank and score.
    pair_keys = _pair_keys(row, track)
    by_pair = np.argsort(pair_keys)
    sorted_keys = pair_keys[by_pair]
    new_pair = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    starts = np.flatnonzero(new_pair)
    pair = np.empty(len(row), dtype=np.int64)
    pair[by_pair] = np.cumsum(new_pair) - 1
    first_key = np.minimum.reduceat(merge_key[by_pair], starts)
    ranks = np.zeros((len(starts), 3), dtype=np.int32)
    scores = np.full((len(starts), 3), np.nan, dtype=np.float32)
    ranks[pair, source] = rank
    scores[pair, source] = score
    # Pairs in merge order, cut at total per user.
    order = np.argsort(first_key)
    pair_row = first_key[order] >> (_POSITION_BITS + 2)
    slot = _cumcount(pair_row)
    keep = slot < config.total
    order, slot, pair_row = order[keep], slot[keep], pair_row[keep]
    ranks, scores = ranks[order], scores[order]
    return {
        "row": pair_row,
        "track": sorted_keys[starts[order]] & ((1 << TRACK_BITS) - 1),
        "slot": slot,
        "mask": ((ranks > 0) * (1 << np.arange(3))).sum(axis=1).astype(np.uint8),
        "rank": ranks,
        "score": scores,
    }


def _empty_merge() -> dict[str, np.ndarray]:
    return {"row": np.zeros(0, np.int64), "track": np.zeros(0, np.int64), "slot": np.zeros(0, np.int64),
            "mask": np.zeros(0, np.uint8), "rank": np.zeros((0, 3), np.int32),
            "score": np.zeros((0, 3), np.float32)}  # fmt: skip


def _candidate_frame(
    batch: _UserBatch, merges: list[dict[str, np.ndarray]], last_round: np.ndarray
) -> pd.DataFrame:
    """Every user's merge from its last round, as the output frame sorted by user_id then slot."""
    parts = [_empty_merge()]
    for round_number, result in enumerate(merges):
        current = last_round[result["row"]] == round_number
        parts.append({name: values[current] for name, values in result.items()})
    result = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    user_id = batch.user_ids[result["row"]]
    order = np.lexsort((result["slot"], user_id))
    columns = {
        "user_id": user_id[order],
        "track_id": result["track"][order],
        "sources": _SOURCE_LABELS[result["mask"][order]],
    }
    for i, name in enumerate(SOURCES):
        columns[f"{name}_rank"] = result["rank"][order, i]
    for i, name in enumerate(SOURCES):
        columns[f"{name}_score"] = result["score"][order, i]
    return pd.DataFrame(columns, columns=list(CANDIDATE_COLUMNS))


def _search(index: AnnIndex, queries: np.ndarray, k: int,
            delta: DeltaIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` (with the delta of new uploads beside it, if any), never with a lone query:
    faiss splits one query's scan across threads with differently rounded kernels, so a user alone
    in a batch would score differently."""
    if len(queries) != 1:
        return search_with_delta(index, delta, queries, k)
    scores, labels = search_with_delta(index, delta, np.repeat(queries, 2, axis=0), k)
    return scores[:1], labels[:1]


@contextmanager
def _batch_invariant_faiss(threads: int) -> Iterator[None]:
    """Per-query distance kernels (no BLAS) for CPU searches, and ``threads`` OpenMP threads if > 0.

    With BLAS (from 2000 queries of dim 64 up), faiss rounds a query's scores differently depending on
    the other queries in the call, so near-tied tracks could swap between batchings. The per-query
    kernel was as fast on 2,000 users x 55k tracks x dim 64.
    """
    threshold, before = faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()
    faiss.cvar.distance_compute_blas_threshold = 2**30
    if threads > 0:
        faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = threshold
        faiss.omp_set_num_threads(before)


def _pair_keys(row: np.ndarray, track: np.ndarray) -> np.ndarray:
    """int64 key per (batch row, track id) pair; track ids are < 2**TRACK_BITS (checked on input)."""
    return (np.asarray(row, dtype=np.int64) << TRACK_BITS) | np.asarray(track, dtype=np.int64)


def _check_track_ids(ids: np.ndarray) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= 1 << TRACK_BITS):
        raise ValueError(f"track ids must lie in [0, 2**{TRACK_BITS})")


def _rank_order(row: np.ndarray, track: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Permutation sorting by row, then score descending, then track id.

    faiss lists arrive sorted but for the order of exactly tied scores, so only those get sorted.
    """
    n = len(row)
    same_row = row[1:] == row[:-1]
    if not np.all((row[1:] > row[:-1]) | (same_row & (score[1:] <= score[:-1]))):
        return np.lexsort((track, -score, row))
    tie = same_row & (score[1:] == score[:-1])
    order = np.arange(n)
    if tie.any():
        tied = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])
        group = np.cumsum(np.r_[True, ~tie])[tied]  # runs of tied scores
        order[tied] = tied[np.lexsort((track[tied], group))]
    return order


def _cumcount(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of ``groups`` (sorted or grouped)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    index = np.arange(n)
    starts = np.r_[True, groups[1:] != groups[:-1]]
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def _as_array(value, dtype) -> np.ndarray:
    """A list cell (list, array or null) as a 1-d array."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.zeros(0, dtype=dtype)
    return np.asarray(value, dtype=dtype).reshape(-1)


def _flatten(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column of int64 lists as (values int64[total], lengths int64[rows])."""
    cells = [_as_array(v, np.int64) for v in column]
    lengths = np.fromiter(map(len, cells), dtype=np.int64, count=len(cells))
    return (np.concatenate(cells) if cells else np.zeros(0, np.int64)), lengths


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32[n, d] rows scaled to unit norm (zero rows stay zero)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected float32[n, dim], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1), dtype=np.float32)


def _row_index(vectors: np.ndarray, config: AnnConfig) -> AnnIndex:
    """Inner-product index whose labels are the row numbers of ``vectors`` (an empty pool: flat)."""
    if len(vectors) == 0:
        config = dataclasses.replace(config, kind="flat")
    return build_index(np.arange(len(vectors), dtype=np.int64), vectors, config)
