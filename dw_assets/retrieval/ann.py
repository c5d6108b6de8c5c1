"""Approximate nearest-neighbour search over track embeddings with FAISS, by inner product.

Inner product is the two-tower training metric, so retrieval scores are the model's
logits. The index type follows catalog size: exact ``IndexFlatIP`` below
``exact_below`` tracks, an approximate index above (IVF-Flat by default; IVF-PQ with an
exact re-rank of its candidates, or HNSW, by config). FAISS labels are row positions;
``AnnIndex.ids`` maps them to int64 track ids, so the caller never sees FAISS labels.

GPU: when faiss has GPU support and a GPU is visible (``use_gpu="auto"``), flat and IVF
indexes are searched on GPU; HNSW stays on CPU. Serialization is always of the CPU form.
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
from functools import cache

import faiss
import numpy as np

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

    def __post_init__(self) -> None:
        if self.kind not in ("auto", *KINDS):
            raise ValueError(f"kind must be auto or one of {KINDS}, got {self.kind!r}")
        if self.auto_large_kind not in KINDS:
            raise ValueError(f"auto_large_kind must be one of {KINDS}, got {self.auto_large_kind!r}")
        if self.use_gpu not in ("auto", "never", "always"):
            raise ValueError(f"use_gpu must be auto, never or always, got {self.use_gpu!r}")
        for name in ("nprobe", "pq_m", "pq_bits", "rerank_k", "hnsw_m", "ef_construction", "ef_search",
                     "train_sample", "search_batch"):  # fmt: skip
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
    ) -> None:
        self.kind = kind
        self.config = config
        self.ids = np.asarray(ids, dtype=np.int64)
        self.dim = int(index.d) - (1 if kind == "hnsw" else 0)
        self._rerank_store = None
        if kind == "ivf_pq":
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

    def to_bytes(self) -> bytes:
        """Self-contained CPU serialization: the FAISS index, track ids, re-rank vectors, config."""
        cpu = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
        meta = {
            "kind": self.kind,
            "nlist": self.nlist,
            "max_norm": self.max_norm,
            "build_seconds": self.build_seconds,
            "config": dataclasses.asdict(self.config),
        }
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


def recall_at_k(index: AnnIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean over queries of |ANN top-k ∩ exact top-k| / |exact top-k| (k, or fewer tracks when n < k)."""
    _, found = index.search(queries, k)
    _, truth = exact_search(vectors, ids, queries, k)
    return _recall(found, truth)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    if len(truth) == 0:
        return float("nan")
    hits = [
        len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, int((t >= 0).sum()))
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


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
        recall = _recall(index.search(queries, k)[1], truth)
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
        f"recall@{k}": round(_recall(found, truth), 4),
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
