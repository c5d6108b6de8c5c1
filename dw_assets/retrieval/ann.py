"""Approximate nearest-neighbour search over track embeddings with FAISS, by inner product.

Inner product is the two-tower training metric, so retrieval scores are the model's
logits. The index type follows catalog size: exact ``IndexFlatIP`` below
``exact_below`` tracks, an approximate index above (IVF-Flat by default; IVF-PQ with an
exact re-rank of its candidates, or HNSW, by config). FAISS labels are row positions;
``AnnIndex.ids`` maps them to int64 track ids, so the caller never sees FAISS labels.

GPU: when faiss has GPU support and a GPU is visible (``use_gpu="auto"``), flat and IVF
indexes are searched on GPU; HNSW stays on CPU. Serialization is always of the CPU form.

Shards (``AnnConfig.shards`` = S > 1): S indexes of the same kind over disjoint track subsets (a seeded
hash of the track id picks the shard, so each shard is a uniform sample of the catalog). An IVF shard
trains its own ``nlist`` lists (per shard) on its own capped sample (at most ``train_sample`` of its
vectors) and probes ``nprobe`` of them: lists are S times shorter, so a query scans as many vectors as
unsharded at the same nprobe/nlist, at about the same recall (tested: within 0.01 at S=2). A query's
top-k is the merge of every shard's top-k (score, then track id). At 100 M tracks and dim 64: 4 shards
of ~6.5 GB (IVF-Flat) instead of one 26 GB index, built one after the other on the driver. shards=1 is
the unsharded index, unchanged.

Files (``save`` / ``open`` / ``unpack``): the FAISS index in faiss's own format, ids as ``.npy``; ``open``
memory-maps them (``faiss.IO_FLAG_MMAP`` for IVF lists, ``IO_FLAG_MMAP_IFC`` for flat and HNSW
storage; only HNSW's graph links are read into memory), so the processes of a host share one copy
through the page cache (see ``dw_assets.lake.host_cache``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import faiss
import numpy as np

from dw_assets.evaluation.holdout import recall_of_lists
from dw_assets.lake import host_cache

KINDS = ("flat", "ivf_flat", "ivf_pq", "hnsw")
GPU_MAX_K = 2048  # faiss GPU k-selection limit
MISSING_SCORE = -np.inf  # score of a padding slot (id -1)


@dataclass(frozen=True)
class AnnConfig:
    kind: str = "auto"  # auto | flat | ivf_flat | ivf_pq | hnsw
    exact_below: int = 100_000  # auto: exact search below this many tracks
    auto_large_kind: str = "ivf_flat"  # what auto picks at/above exact_below
    nlist: int | None = None  # IVF lists; None: ~4*sqrt(n)
    nprobe: int = 256  # IVF lists scanned per query (capped at nlist); 32 gave recall@500 ~0.69 at 100k
    pq_m: int = 16  # PQ sub-quantizers (must divide dim)
    pq_bits: int = 8  # bits per sub-quantizer code
    rerank_k: int = 2000  # IVF-PQ candidates re-ranked by exact inner product
    hnsw_m: int = 32  # graph degree
    ef_construction: int = 200
    ef_search: int = 800  # raised to k when k is larger
    train_sample: int = 200_000  # vectors drawn (seeded) to train IVF/PQ
    seed: int = 7
    use_gpu: str = "auto"  # auto | never | always
    threads: int = 0  # faiss OpenMP threads; 0 keeps faiss's default (all cores). faiss inserts
    # HNSW nodes in parallel, so only threads=1 guarantees the identical graph on every run.
    search_batch: int = 4096  # queries per faiss call, bounds result/temporary memory
    # Indexes over disjoint track subsets (seeded hash of the id), searched together; nlist, nprobe and
    # train_sample apply to each shard. 1: one index. 100 M tracks: 4 shards of ~6.5 GB (IVF-Flat, dim 64).
    shards: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("auto", *KINDS):
            raise ValueError(f"kind must be auto or one of {KINDS}, got {self.kind!r}")
        if self.auto_large_kind not in KINDS:
            raise ValueError(f"auto_large_kind must be one of {KINDS}, got {self.auto_large_kind!r}")
        if self.use_gpu not in ("auto", "never", "always"):
            raise ValueError(f"use_gpu must be auto, never or always, got {self.use_gpu!r}")
        for name in ("nprobe", "pq_m", "pq_bits", "rerank_k", "hnsw_m", "ef_construction", "ef_search",
                     "train_sample", "search_batch", "shards"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be >= 1, got {self.nlist}")


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@cache
def _gpu_resources():
    return faiss.StandardGpuResources()  # one per process: it owns scratch memory and streams


def resolve_kind(n: int, config: AnnConfig) -> str:
    """The index type used for ``n`` tracks: exact below ``exact_below`` when kind is auto."""
    if config.kind != "auto":
        return config.kind
    return "flat" if n < config.exact_below else config.auto_large_kind


def resolve_nlist(n: int, config: AnnConfig) -> int:
    """IVF list count: config or ~4*sqrt(n), capped so each list gets ~39 training points."""
    wanted = config.nlist if config.nlist is not None else round(4 * math.sqrt(n))
    trainable = min(n, config.train_sample) // 39
    return int(max(1, min(wanted, trainable)))


@contextmanager
def _faiss_threads(threads: int) -> Iterator[None]:
    if threads <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"expected float32[n, {dim or 'dim'}], got shape {x.shape}")
    return x


class AnnIndex:
    """A FAISS index over track vectors plus the int64 track id of every FAISS row.

    kind: flat | ivf_flat | ivf_pq | hnsw. ids: int64[n] track ids in FAISS row order.
    dim: vector width. on_gpu: searched on a GPU. IVF-PQ also keeps the float32 vectors
    (a CPU ``IndexFlatIP``) to re-rank its candidates by exact inner product. max_norm: HNSW only,
    the norm used by the inner-product-to-L2 reduction (see ``_mips_to_l2``).
    """

    def __init__(
        self,
        index,
        ids: np.ndarray,
        kind: str,
        config: AnnConfig,
        rerank_vectors: np.ndarray | None = None,
        nlist: int = 0,
        max_norm: float = 0.0,
        build_seconds: float | None = None,
        rerank_store=None,
    ) -> None:
        self.kind = kind
        self.config = config
        self.ids = np.asarray(ids, dtype=np.int64)
        self.dim = int(index.d) - (1 if kind == "hnsw" else 0)
        self._rerank_store = rerank_store  # IVF-PQ: a faiss IndexFlatIP (e.g. memory-mapped by ``open``)
        if kind == "ivf_pq" and rerank_store is None:
            self._rerank_store = faiss.IndexFlatIP(self.dim)
            self._rerank_store.add(_as_matrix(rerank_vectors, self.dim))
        self.nlist = nlist
        self.max_norm = max_norm
        self.build_seconds = build_seconds
        self.on_gpu = False
        self._index = index
        if kind != "hnsw" and _wants_gpu(config):
            try:
                self._index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
                self.on_gpu = True
            except RuntimeError:  # e.g. a PQ layout the GPU kernels do not support
                if config.use_gpu == "always":
                    raise
        self.set_search_params()

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall after building (IVF lists scanned, HNSW candidate list size)."""
        changes = {"nprobe": nprobe, "ef_search": ef_search}
        self.config = dataclasses.replace(self.config, **{k: v for k, v in changes.items() if v is not None})
        if self.kind in ("ivf_flat", "ivf_pq"):
            self._index.nprobe = min(self.config.nprobe, self.nlist)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k tracks by inner product for each query vector (float32[q, dim]).

        Returns (scores float32[q, k], track ids int64[q, k]), best first. Slots with
        nothing to return (k above the catalog size, empty IVF lists) hold id -1 and
        score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = _as_matrix(queries, self.dim)
        scores = np.full((len(queries), k), MISSING_SCORE, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        take = min(k, len(self))
        if take == 0 or len(queries) == 0:
            return scores, ids
        fetch = min(max(self.config.rerank_k, take), len(self)) if self.kind == "ivf_pq" else take
        if self.on_gpu and fetch > GPU_MAX_K:
            raise ValueError(f"faiss on GPU returns at most {GPU_MAX_K} neighbours, asked for {fetch}")
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = max(self.config.ef_search, fetch)
        batch = self.config.search_batch
        with _faiss_threads(self.config.threads):
            for start in range(0, len(queries), batch):
                part = queries[start : start + batch]
                if self.kind == "hnsw":
                    part_scores, rows = self._index.search(_mips_to_l2(part, 0.0), fetch)
                    # |q' - x'|^2 = |q|^2 + max_norm^2 - 2 q.x
                    part_scores = (
                        np.einsum("qd,qd->q", part, part)[:, None] + self.max_norm**2 - part_scores
                    ) / 2
                else:
                    part_scores, rows = self._index.search(part, fetch)
                if self.kind == "ivf_pq":
                    part_scores, rows = _rerank(self._rerank_store, part, rows, take)
                found = rows >= 0
                scores[start : start + len(part), :take] = np.where(found, part_scores, MISSING_SCORE)
                ids[start : start + len(part), :take] = np.where(found, self.ids[np.maximum(rows, 0)], -1)
        return scores, ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Make more tracks searchable (e.g. this week's uploads) without retraining.

        ids: int64[m], none already in the index. vectors: float32[m, dim]. IVF lists and
        PQ codebooks stay as trained, so tracks far from the training data are found less well;
        in HNSW, a vector longer than the build's ``max_norm`` is ranked somewhat too low.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = _as_matrix(vectors, self.dim)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        _check_unique(np.concatenate([self.ids, ids]))
        with _faiss_threads(self.config.threads):
            self._index.add(_mips_to_l2(vectors, self.max_norm) if self.kind == "hnsw" else vectors)
        self.ids = np.concatenate([self.ids, ids])
        if self._rerank_store is not None:
            self._rerank_store.add(vectors)

    def memory_bytes(self) -> int:
        """Approximate resident size: FAISS codes and structures + track ids (+ re-rank vectors)."""
        n, d, cfg = len(self), self.dim, self.config
        per_vector = {
            "flat": 4 * d,
            "ivf_flat": 4 * d + 8,  # IVF lists store an int64 label per entry
            "ivf_pq": math.ceil(cfg.pq_m * cfg.pq_bits / 8) + 8 + 4 * d,
            "hnsw": 4 * (d + 1) + 4 * 2 * cfg.hnsw_m + 12,  # level-0 links dominate; offsets + levels
        }[self.kind]
        fixed = 4 * d * self.nlist + (4 * d * 2**cfg.pq_bits if self.kind == "ivf_pq" else 0)
        return int(n * (per_vector + 8) + fixed)

    def _meta(self) -> dict:
        return {
            "kind": self.kind,
            "nlist": self.nlist,
            "max_norm": self.max_norm,
            "build_seconds": self.build_seconds,
            "config": dataclasses.asdict(self.config),
        }

    def _cpu_index(self):
        return faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index

    def save(self, folder: str | Path, name: str) -> None:
        """Write as plain files that ``open`` memory-maps: ``<name>.faiss`` (faiss's format), ``<name>.ids.npy``,
        ``<name>.json`` (kind, config), and for IVF-PQ the re-rank vectors as ``<name>.rerank.faiss``."""
        folder = Path(folder)
        faiss.write_index(self._cpu_index(), str(folder / f"{name}.faiss"))
        np.save(folder / f"{name}.ids.npy", self.ids)
        if self._rerank_store is not None:
            faiss.write_index(self._rerank_store, str(folder / f"{name}.rerank.faiss"))
        (folder / f"{name}.json").write_text(json.dumps(self._meta()))

    @staticmethod
    def unpack(data: bytes, folder: str | Path, name: str) -> None:
        """Write what ``to_bytes`` wrote as ``save``'s files, copying the serialized index as it is (faiss's
        ``serialize_index`` is its file format): no index is built, but for IVF-PQ's re-rank store."""
        folder = Path(folder)
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes())
            if meta.get("shards", 1) > 1:
                for i in range(meta["shards"]):
                    AnnIndex.unpack(arrays[f"part_{i}"].tobytes(), folder, f"{name}.{i}")
            else:
                arrays["faiss_index"].tofile(folder / f"{name}.faiss")
                np.save(folder / f"{name}.ids.npy", arrays["ids"])
                if meta["kind"] == "ivf_pq":
                    vectors = _as_matrix(arrays["rerank_vectors"])
                    store = faiss.IndexFlatIP(vectors.shape[1])
                    store.add(vectors)
                    faiss.write_index(store, str(folder / f"{name}.rerank.faiss"))
        (folder / f"{name}.json").write_text(json.dumps(meta))

    @classmethod
    def open(cls, folder: str | Path, name: str, use_gpu: str | None = None, mmap: bool = True) -> AnnIndex:
        """Open what ``save`` / ``unpack`` wrote; with ``mmap``, the index, re-rank vectors and ids stay in the
        files (read-only, shared by every process of the host through the page cache). The result searches
        exactly like the index that was saved; it cannot ``add`` (read-only lists)."""
        folder = Path(folder)
        meta = json.loads((folder / f"{name}.json").read_text())
        config = AnnConfig(**meta["config"])
        if use_gpu is not None:
            config = dataclasses.replace(config, use_gpu=use_gpu)
        if meta.get("shards", 1) > 1:
            parts = [cls.open(folder, f"{name}.{i}", use_gpu, mmap) for i in range(meta["shards"])]
            return ShardedIndex(parts, meta["kind"], config, meta["build_seconds"])
        ids = host_cache.load_array(folder / f"{name}.ids.npy", mmap)
        flags = _MMAP_FLAGS[meta["kind"]] if mmap else 0
        index = faiss.read_index(str(folder / f"{name}.faiss"), flags)
        store = None
        if meta["kind"] == "ivf_pq":
            store = faiss.read_index(str(folder / f"{name}.rerank.faiss"), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        return cls(index, ids, meta["kind"], config, nlist=meta["nlist"], max_norm=meta["max_norm"],
                   build_seconds=meta["build_seconds"], rerank_store=store)

    def to_bytes(self) -> bytes:
        """Self-contained CPU serialization: the FAISS index, track ids, re-rank vectors, config."""
        cpu = self._cpu_index()
        meta = self._meta()
        buffer = io.BytesIO()
        np.savez(
            buffer,
            faiss_index=faiss.serialize_index(cpu),
            ids=self.ids,
            rerank_vectors=(
                self._rerank_store.reconstruct_n(0, len(self))
                if self._rerank_store is not None
                else np.zeros((0, self.dim), np.float32)
            ),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, use_gpu: str | None = None) -> AnnIndex:
        """Load what ``to_bytes`` wrote; onto a GPU per the stored config (or ``use_gpu``) when present."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes())
            if meta.get("shards", 1) > 1:
                parts = [cls.from_bytes(arrays[f"part_{i}"].tobytes(), use_gpu) for i in range(meta["shards"])]
                config = AnnConfig(**meta["config"])
                if use_gpu is not None:
                    config = dataclasses.replace(config, use_gpu=use_gpu)
                return ShardedIndex(parts, meta["kind"], config, meta["build_seconds"])
            index = faiss.deserialize_index(arrays["faiss_index"])
            ids, rerank_vectors = arrays["ids"], arrays["rerank_vectors"]
        config = AnnConfig(**meta["config"])
        if use_gpu is not None:
            config = dataclasses.replace(config, use_gpu=use_gpu)
        return cls(
            index, ids, meta["kind"], config,
            rerank_vectors=rerank_vectors if meta["kind"] == "ivf_pq" else None,
            nlist=meta["nlist"], max_norm=meta["max_norm"], build_seconds=meta["build_seconds"],
        )  # fmt: skip


# How ``open`` memory-maps each kind: IVF lists as faiss's on-disk lists; flat codes (also HNSW's storage).
_MMAP_FLAGS = {"flat": faiss.IO_FLAG_MMAP_IFC, "hnsw": faiss.IO_FLAG_MMAP_IFC,
               "ivf_flat": faiss.IO_FLAG_MMAP, "ivf_pq": faiss.IO_FLAG_MMAP}


def shard_of(ids: np.ndarray, shards: int, seed: int) -> np.ndarray:
    """int64[n] shard in [0, shards) of each track id: a seeded splitmix64 hash, so each shard is a uniform
    sample of the catalog whatever order the tracks come in, and a track keeps its shard from week to week."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z % np.uint64(shards)).astype(np.int64)


class ShardedIndex(AnnIndex):
    """``shards`` indexes over disjoint tracks (``shard_of``), searched together as one ``AnnIndex``.

    parts: one unsharded AnnIndex per shard (its config holds its own nlist / nprobe share). config: the
    totals (``nlist``, ``nprobe``, ``shards``). Results: each shard's top-k, merged by score descending,
    then track id (so a tie between shards does not depend on the shard order).
    """

    def __init__(self, parts: list[AnnIndex], kind: str, config: AnnConfig,
                 build_seconds: float | None = None) -> None:  # fmt: skip
        if len(parts) != config.shards:
            raise ValueError(f"{len(parts)} parts for shards={config.shards}")
        self.parts = parts
        self.kind = kind
        self.config = config
        self.dim = parts[0].dim
        self.max_norm = 0.0
        self.build_seconds = build_seconds
        self.on_gpu = any(p.on_gpu for p in parts)

    @property
    def nlist(self) -> int:
        """IVF lists per shard (the most of any shard), the range ``nprobe`` is tuned in."""
        return max(p.nlist for p in self.parts)

    @cached_property
    def ids(self) -> np.ndarray:
        """int64[n] track ids, shard after shard (the labels' order has no meaning outside the index)."""
        return np.concatenate([p.ids for p in self.parts])

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """The same setting in every shard (``nprobe`` lists of each shard's own)."""
        changes = {"nprobe": nprobe, "ef_search": ef_search}
        self.config = dataclasses.replace(self.config, **{k: v for k, v in changes.items() if v is not None})
        for part in self.parts:
            part.set_search_params(nprobe=self.config.nprobe, ef_search=self.config.ef_search)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        results = [part.search(queries, k) for part in self.parts]
        scores = np.concatenate([r[0] for r in results], axis=1)
        ids = np.concatenate([r[1] for r in results], axis=1)
        order = np.lexsort((ids, -scores), axis=-1)[:, :k]  # padding (-inf) last
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Each new track goes to its hash's shard (see ``AnnIndex.add``)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = _as_matrix(vectors, self.dim)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        _check_unique(np.concatenate([self.ids, ids]))
        shard = shard_of(ids, self.config.shards, self.config.seed)
        for i, part in enumerate(self.parts):
            if (shard == i).any():
                part.add(ids[shard == i], vectors[shard == i])
        self.__dict__.pop("ids", None)

    def memory_bytes(self) -> int:
        return sum(p.memory_bytes() for p in self.parts)

    def _meta(self) -> dict:
        return {"kind": self.kind, "shards": self.config.shards, "build_seconds": self.build_seconds,
                "config": dataclasses.asdict(self.config)}  # fmt: skip

    def save(self, folder: str | Path, name: str) -> None:
        """``<name>.json`` and each shard's files as ``<name>.<i>.*``."""
        for i, part in enumerate(self.parts):
            part.save(folder, f"{name}.{i}")
        (Path(folder) / f"{name}.json").write_text(json.dumps(self._meta()))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(json.dumps(self._meta()).encode(), dtype=np.uint8),
                 **{f"part_{i}": np.frombuffer(p.to_bytes(), dtype=np.uint8) for i, p in enumerate(self.parts)})
        return buffer.getvalue()


def _wants_gpu(config: AnnConfig) -> bool:
    if config.use_gpu == "always" and not gpu_available():
        raise RuntimeError("use_gpu='always' but faiss has no GPU support or sees no GPU")
    return config.use_gpu != "never" and gpu_available()


def _check_unique(ids: np.ndarray) -> None:
    if len(np.unique(ids)) != len(ids):
        raise ValueError("track ids must be unique within an index")


def _rerank(store, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate rows (-1 = none) from ``store``; top k kept.

    faiss computes them in place from the row numbers, ~10x faster than gathering in numpy.
    """
    exact = np.empty(rows.shape, dtype=np.float32)
    safe_rows = np.ascontiguousarray(np.maximum(rows, 0), dtype=np.int64)
    store.compute_distance_subset(
        len(queries), faiss.swig_ptr(queries), rows.shape[1], faiss.swig_ptr(exact), faiss.swig_ptr(safe_rows)
    )
    exact[rows < 0] = -np.inf
    if k < exact.shape[1]:
        top = np.argpartition(-exact, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(exact.shape[1]), exact.shape)
    top_scores = np.take_along_axis(exact, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(rows, top, axis=1)


def build_index(ids: np.ndarray, vectors: np.ndarray, config: AnnConfig) -> AnnIndex:
    """Index track vectors (float32[n, dim], row i = track ids[i], int64[n]) for inner-product search.

    IVF quantizers and PQ codebooks are trained on a seeded sample of ``train_sample`` vectors.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    vectors = _as_matrix(vectors)
    n, dim = vectors.shape
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} vectors")
    _check_unique(ids)
    kind = resolve_kind(n, config)
    if config.shards > 1:
        return _build_sharded(ids, vectors, kind, config)
    started = time.perf_counter()
    nlist, max_norm = 0, 0.0
    with _faiss_threads(config.threads):
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            # Inner product is not a metric and HNSW graphs navigate it poorly when norms
            # vary (recall@500 ~0.5 at 100k); search the equivalent L2 problem instead.
            index = faiss.IndexHNSWFlat(dim + 1, config.hnsw_m, faiss.METRIC_L2)
            index.hnsw.efConstruction = config.ef_construction
            index.hnsw.efSearch = config.ef_search
            max_norm = float(np.linalg.norm(vectors, axis=1).max()) if n else 0.0
            vectors = _mips_to_l2(vectors, max_norm)
        else:
            index, nlist = _trained_ivf(kind, vectors, config)
        index.add(vectors)
    seconds = time.perf_counter() - started
    return AnnIndex(
        index, ids, kind, config,
        rerank_vectors=vectors if kind == "ivf_pq" else None,
        nlist=nlist, max_norm=max_norm, build_seconds=round(seconds, 3),
    )  # fmt: skip


def _build_sharded(ids: np.ndarray, vectors: np.ndarray, kind: str, config: AnnConfig) -> ShardedIndex:
    """``config.shards`` indexes of ``kind``, one per hash shard, each built with ``config`` on its own tracks
    (IVF: its own lists trained on at most train_sample of its vectors); an empty shard is an empty flat index."""
    started = time.perf_counter()
    shards = config.shards
    shard = shard_of(ids, shards, config.seed)
    part_config = dataclasses.replace(config, kind=kind, shards=1)
    parts = []
    for i in range(shards):
        mine = shard == i
        settings = part_config if mine.any() else dataclasses.replace(part_config, kind="flat")
        parts.append(build_index(ids[mine], vectors[mine], settings))
    return ShardedIndex(parts, kind, config, round(time.perf_counter() - started, 3))


def _mips_to_l2(vectors: np.ndarray, max_norm: float) -> np.ndarray:
    """float32[n, dim + 1]: append sqrt(max_norm^2 - |x|^2), so L2 order = inner-product order.

    Every augmented track vector has norm ``max_norm``, hence |q' - x'|^2 = |q|^2 +
    max_norm^2 - 2 q.x for a query q' = [q, 0] (Bachrach et al., 2014). Queries pass max_norm 0.
    """
    squared = np.einsum("nd,nd->n", vectors, vectors)
    extra = np.sqrt(np.maximum(max_norm**2 - squared, 0.0)) if max_norm > 0 else np.zeros(len(vectors))
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)


def _trained_ivf(kind: str, vectors: np.ndarray, config: AnnConfig):
    n, dim = vectors.shape
    if n == 0:
        raise ValueError(f"{kind} needs training vectors; use kind='flat' for an empty catalog")
    nlist = resolve_nlist(n, config)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        if dim % config.pq_m:
            raise ValueError(f"pq_m={config.pq_m} must divide the vector dim {dim}")
        if min(n, config.train_sample) < 2**config.pq_bits:
            raise ValueError(f"ivf_pq needs at least {2**config.pq_bits} training vectors, got {n}")
        index = faiss.IndexIVFPQ(
            quantizer, dim, nlist, config.pq_m, config.pq_bits, faiss.METRIC_INNER_PRODUCT
        )
        index.pq.cp.seed = config.seed
    index.cp.seed = config.seed
    rng = np.random.default_rng(config.seed)
    sample = (
        vectors
        if n <= config.train_sample
        else vectors[np.sort(rng.choice(n, config.train_sample, replace=False))]
    )
    index.train(sample)
    return index, nlist


def exact_search(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k, the ground truth for recall: (scores float32[q, k], ids int64[q, k])."""
    use_gpu = "auto" if k <= GPU_MAX_K else "never"
    return build_index(ids, vectors, AnnConfig(kind="flat", use_gpu=use_gpu)).search(queries, k)


def recall_vs_exact(index: AnnIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean over queries of |ANN top-k ∩ exact top-k| / |exact top-k| (k, or fewer tracks when n < k)."""
    _, found = index.search(queries, k)
    _, truth = exact_search(vectors, ids, queries, k)
    return search_recall(found, truth)


def search_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """``recall_of_lists`` of ``found`` against ``truth`` (both int64[q, k] ids, -1 padding), averaged over
    every query: a query with no true neighbour (an empty index) counts 0; no query gives NaN."""
    truth = np.asarray(truth)
    if len(truth) == 0:
        return float("nan")
    real = truth >= 0
    ptr = np.r_[0, np.cumsum(real.sum(axis=1))]
    result = recall_of_lists(np.asarray(found), ptr, truth[real])
    if result["users"] == len(truth):
        return result["recall"]
    return result["recall"] * result["users"] / len(truth) if result["users"] else 0.0


NPROBE_STEPS = (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
EF_STEPS = (500, 800, 1200, 2000, 3000)


def tune_search(index: AnnIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int,
                min_recall: float) -> dict:
    """Set the cheapest search effort (IVF ``nprobe``, HNSW ``efSearch``) whose recall@k on ``queries``
    reaches ``min_recall``; exact indexes are left alone.

    Efforts are tried cheapest first (``NPROBE_STEPS`` up to nlist, ``EF_STEPS``); when none
    reaches the target the largest is kept. queries: a sample of real user vectors (float32[q, dim]),
    apart from any sample the recall is later reported on. Returns kind, the chosen setting, its
    recall and each tried step's recall.
    """
    if index.kind not in ("ivf_flat", "ivf_pq", "hnsw"):
        return {"kind": index.kind, "tuned": False}
    _, truth = exact_search(vectors, ids, queries, k)
    if index.kind == "hnsw":
        name, steps = "ef_search", [e for e in EF_STEPS if e >= k] or [k]
    else:
        name, steps = "nprobe", [p for p in NPROBE_STEPS if p < index.nlist] + [index.nlist]
    tried = {}
    for step in steps:
        index.set_search_params(**{name: step})
        recall = search_recall(index.search(queries, k)[1], truth)
        tried[step] = round(recall, 4)
        if recall >= min_recall:
            break
    return {"kind": index.kind, "tuned": True, name: step, f"recall@{k}": tried[step], "tried": tried}


def measure(index: AnnIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> dict:
    """Recall against exact search and search speed, each speed number beside its recall.

    vectors/ids: what the index holds (float32[n, dim], int64[n]); queries: float32[q, dim]
    (a sample of real user vectors at build time). queries_per_s times ``index.search`` only.
    """
    started = time.perf_counter()
    _, found = index.search(queries, k)
    seconds = time.perf_counter() - started
    _, truth = exact_search(vectors, ids, queries, k)
    result = {
        f"recall@{k}": round(search_recall(found, truth), 4),
        "queries_per_s": round(len(queries) / seconds, 1) if seconds > 0 else float("inf"),
        "k": k,
        "n_queries": len(queries),
        "n_tracks": len(index),
        "kind": index.kind,
        "on_gpu": index.on_gpu,
        "memory_bytes": index.memory_bytes(),
    }
    if index.build_seconds is not None:
        result["build_s"] = index.build_seconds
    return result


def clustered_vectors(n: int, dim: int, clusters: int, seed: int, popularity_skew: bool = True) -> np.ndarray:
    """Synthetic float32[n, dim] vectors shaped like trained track embeddings, for benchmarks and tests.

    Points scatter around unit cluster centres ("genres") with a per-cluster spread, then
    get log-normal norms. With ``popularity_skew`` cluster sizes follow a Zipf law and norms
    vary more (popular tracks tend to have longer vectors under inner-product training).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) if popularity_skew else np.ones(clusters)
    assign = rng.choice(clusters, size=n, p=weights / weights.sum())
    spread = rng.uniform(0.4, 0.9, size=clusters)
    points = centres[assign] + rng.standard_normal((n, dim)) * (spread[assign, None] / math.sqrt(dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    norms = rng.lognormal(0.0, 0.3 if popularity_skew else 0.1, size=n)
    return (points * norms[:, None]).astype(np.float32)
