"""FAISS retrieval benchmark: build time, memory, top-k queries/s and recall@k vs exact search.

Catalog and queries come from ``catalog_vectors`` (dim 64, like the two-tower outputs): the
catalog is the first ``n_tracks`` points, the queries are ``n_queries`` further held-out points of
the same distribution (user-like: a user vector lies among the tracks it likes). Shape "trained"
(default) mimics the demo world's trained track embeddings (unit norm, a shared direction with
mean-vector norm ~0.72, ~10-12 effective dimensions); shape "isotropic" is ``clustered_vectors``
as is (spread over all 64 dimensions, log-normal norms), a much harder worst case for IVF.
Every index kind is built once per catalog size; each search setting (nprobe, efSearch, re-rank
depth) is then timed ``runs`` times and the median queries/s reported,
beside recall@k against the exact ``IndexFlatIP`` result. ``speedup`` is queries/s over the exact
search's median queries/s at the same catalog size, and ``meets_target`` is the issue #7 target:
recall@k >= 0.95 at >= 10x exact queries/s.

Memory: ``memory_mb`` is the index's own estimate (``AnnIndex.memory_bytes``: codes, links,
ids, re-rank vectors); ``rss_build_mb`` is the growth of this process's resident set while the
index was built (includes temporaries still held); ``peak_rss_mb`` is the process's peak resident
set (``resource.getrusage``) at the end of that row's stage. Peak RSS never falls, so it reads as
"the most the benchmark had needed by then": catalog generation, exact search, then each index in
``kinds`` order (each index is freed before the next is built).

Threads: faiss runs with ``threads`` OpenMP threads (default 2, the cores of the machine these
numbers were taken on), the same for exact and approximate search, so speedups compare like with
like. Parallel HNSW insertion makes the HNSW graph (hence its recall) vary slightly between builds
unless ``threads=1``. On a machine where faiss sees a GPU (``use_gpu="auto"``) flat and IVF
indexes are searched there; HNSW stays on CPU.

Tuning, measured 2026-11-26 with the defaults (``dw bench ann``: shape "trained", 100 clusters,
k=500, 2000 queries, 3 runs, threads=2; wall 362 s) on a 2-core VM shared with a CI run, so
queries/s are noisy: the exact 1M baseline read 91, 102, 192, 201 and 176 q/s in separate calls
while IVF-Flat nprobe 128 stayed ~1400 q/s. x = speedup over the exact search of the same call
(100k: 1085 q/s, 1M: 176 q/s); build s for the index kind; mem = ``memory_bytes`` in MB:

======== ============================== ============== ========= ======= ======== =======
tracks   index (build s, mem MB)        search         recall@500 q/s    x exact  target
======== ============================== ============== ========= ======= ======== =======
100k     IVF-Flat nlist 1265 (3.8, 28)  nprobe 64      0.951     5206    4.8      no
100k     IVF-Flat                       nprobe 128     0.993     3591    3.3      no
100k     IVF-Flat                       nprobe 256     1.000     2096    1.9      no
100k     IVF-PQ m32x8 (23, 31)          np 128 rr 1000 0.993     1795    1.7      no
100k     HNSW M32 efC 80 (10, 54)       ef 500         0.993     1410    1.3      no
1M       IVF-Flat nlist 4000 (41, 273)  nprobe 64      0.947     1998    11.4     no
1M       IVF-Flat                       nprobe 128     0.989     1403    8.0      no
1M       IVF-Flat                       nprobe 256     0.999     810     4.6      no
1M       IVF-PQ m32x8 (58, 305)         np 128 rr 1000 0.985     1118    6.4      no
1M       IVF-PQ m32x8                   np 128 rr 2000 0.989     747     4.3      no
1M       HNSW M32 efC 80 (113, 536)     ef 500         0.995     2475    14.1     yes
1M       HNSW M32 efC 80                ef 800         0.998     1646    9.4      no
======== ============================== ============== ========= ======= ======== =======

Earlier separate calls (1000 queries): IVF-PQ with 16 codes (4 dims each) reached only 0.845 at
nprobe 128 / rerank 1000 at 1M (PQ loses part of the top 500 before the re-rank); 32 codes (the
bench default) fix that. At 100k the exact search (one BLAS product) is too fast for any index to
be 10x faster at k=500. At 1M HNSW meets the target with margin; IVF-Flat sits on its edge
(0.947 at 11x with nprobe 64, 0.989 at 8-15x with nprobe 128 depending on the exact baseline's
luck), so nprobe ~80 is the IVF setting to try on a quiet machine. At dim 64 IVF-PQ is no faster
than IVF-Flat and its memory saving is cancelled by the float32 vectors kept for the re-rank.
The "isotropic" shape is much harder: at 100k IVF-Flat needs nprobe 256 of 1265 for 0.995 and
HNSW (efC 80) reaches only 0.87 at efSearch 1200. Peak RSS: 0.19 GB at 100k, 1.15 GB after the
1M exact search (catalog generation in float64 dominates), 1.37 GB after the 1M HNSW build.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterable, Sequence

import click
import numpy as np

from dw_assets.retrieval.ann import KINDS, AnnConfig, AnnIndex, build_index, clustered_vectors, search_recall

DIM = 64  # two_tower_data.TwoTowerConfig.dim: the ANN index dimension in production
RECALL_TARGET = 0.95
SPEEDUP_TARGET = 10.0

# Build parameters (one index per kind and catalog size) and search sweeps (one row each).
DEFAULT_PARAMS: dict = {
    "dim": DIM,
    "clusters": 100,  # "genres" of the synthetic catalog
    "shape": "trained",  # trained | isotropic, see catalog_vectors
    "threads": 2,
    "use_gpu": "auto",
    "nlist": None,  # None: ~4*sqrt(n_tracks) IVF lists
    "train_sample": 200_000,
    "nprobes": (64, 128, 256),
    "pq_m": 32,  # 2 dims per code; 16 (4 dims) lost the top 500: recall 0.85 at 1M, see the table
    "pq_bits": 8,
    "pq_nprobe": 128,
    "rerank_ks": (1000, 2000),
    "hnsw_m": 32,
    "ef_construction": 80,  # library default 200; 80 already gives recall@500 0.99 (trained shape, 100k)
    "ef_searches": (500, 800),  # efSearch is raised to k anyway
}


def catalog_vectors(n: int, dim: int, clusters: int, seed: int, shape: str = "trained") -> np.ndarray:
    """Synthetic float32[n, dim] track/user vectors for the benchmark.

    "isotropic": ``clustered_vectors`` unchanged. "trained": ``clustered_vectors`` in a 16-dim
    subspace, plus a shared direction of length 1 and a little full-rank noise, normalized to unit
    length. Calibrated on the demo world's two-tower track embeddings (54,800 x 64: unit norm,
    mean-vector norm 0.72, participation ratio 10, 16 PCA dims hold 98.6% of the variance); this
    shape gives 0.72, 11.7. At that size IVF (936 lists) reaches recall@500 0.50/0.72/0.88 at
    nprobe 8/16/32 here vs 0.58/0.84/0.97 on the real vectors (queries: real user vectors), so
    these benchmark recalls are somewhat pessimistic.
    """
    if shape == "isotropic":
        return clustered_vectors(n, dim, clusters=clusters, seed=seed)
    if shape != "trained":
        raise ValueError(f"shape must be trained or isotropic, got {shape!r}")
    subspace = min(16, dim - 1)
    rng = np.random.default_rng(seed + 1)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, subspace + 1)))  # orthonormal float64[dim, subspace + 1]
    points = clustered_vectors(n, subspace, clusters=clusters, seed=seed) @ basis[:, :subspace].T
    points += basis[:, subspace]  # the direction every trained embedding shares
    points += rng.standard_normal((n, dim)) * (0.05 / np.sqrt(dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def _rss_mb() -> float:
    """Current resident set of this process in MB (Linux /proc; 0.0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def _peak_rss_mb() -> float:
    """Peak resident set of this process so far in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def _timed_searches(index: AnnIndex, queries: np.ndarray, k: int, runs: int) -> tuple[list[float], np.ndarray]:
    """Queries/s of ``runs`` identical searches, and the track ids (int64[q, k]) of the last one."""
    speeds, found = [], None
    for _ in range(runs):
        started = time.perf_counter()
        _, found = index.search(queries, k)
        seconds = time.perf_counter() - started
        speeds.append(len(queries) / seconds if seconds > 0 else float("inf"))
    return speeds, found


def _search_settings(kind: str, params: dict) -> list[dict]:
    """The search-time settings swept for one index kind (one benchmark row each)."""
    if kind == "ivf_flat":
        return [{"nprobe": int(p)} for p in params["nprobes"]]
    if kind == "ivf_pq":
        return [{"nprobe": int(params["pq_nprobe"]), "rerank_k": int(r)} for r in params["rerank_ks"]]
    if kind == "hnsw":
        return [{"ef_search": int(e)} for e in params["ef_searches"]]
    return [{}]


def _build_params(kind: str, config: AnnConfig, nlist: int) -> dict:
    if kind in ("ivf_flat", "ivf_pq"):
        built = {"nlist": nlist, "train_sample": config.train_sample}
        if kind == "ivf_pq":
            built |= {"pq_m": config.pq_m, "pq_bits": config.pq_bits}
        return built
    if kind == "hnsw":
        return {"hnsw_m": config.hnsw_m, "ef_construction": config.ef_construction}
    return {}


def _apply(index: AnnIndex, setting: dict) -> None:
    index.set_search_params(nprobe=setting.get("nprobe"), ef_search=setting.get("ef_search"))
    if "rerank_k" in setting:  # read by AnnIndex.search at query time; no rebuild needed
        index.config = dataclasses.replace(index.config, rerank_k=setting["rerank_k"])


def bench_ann(
    n_tracks: int,
    n_queries: int,
    k: int = 500,
    kinds: Iterable[str] = KINDS,
    runs: int = 3,
    seed: int = 0,
    **params,
) -> list[dict]:
    """Benchmark every index kind in ``kinds`` over ``n_tracks`` synthetic track vectors.

    params override ``DEFAULT_PARAMS`` (build parameters and the search sweeps ``nprobes``,
    ``pq_nprobe``, ``rerank_ks``, ``ef_searches``). The exact search always runs (it is the
    recall truth and the speed baseline) and always gets a row, kind "flat".

    Returns one JSON-ready dict per (kind, search setting): n_tracks, n_queries, k, dim, kind,
    build (build parameters), search (search setting), on_gpu, threads, build_s (seconds, one
    build), memory_mb, rss_build_mb, peak_rss_mb (MB), qps (median queries/s over runs),
    qps_runs (each run), recall (median recall@k vs exact over runs), speedup (qps / exact qps),
    meets_target (recall >= 0.95 and speedup >= 10).
    """
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    kinds = list(dict.fromkeys(kinds))
    bad = [kind for kind in kinds if kind not in KINDS]
    if bad:
        raise ValueError(f"kinds must be among {KINDS}, got {bad}")
    if n_tracks < 1 or n_queries < 1 or k < 1 or runs < 1:
        raise ValueError("n_tracks, n_queries, k and runs must all be >= 1")
    p = {**DEFAULT_PARAMS, **params}
    threads = int(p["threads"])

    points = catalog_vectors(n_tracks + n_queries, int(p["dim"]), int(p["clusters"]), seed, p["shape"])
    vectors, queries = points[:n_tracks], np.ascontiguousarray(points[n_tracks:])
    del points
    ids = np.arange(n_tracks, dtype=np.int64)
    common = {"shape": p["shape"], "n_tracks": n_tracks, "n_queries": n_queries, "k": k, "dim": int(p["dim"]), "threads": threads}

    def config(kind: str) -> AnnConfig:
        return AnnConfig(
            kind=kind, nlist=p["nlist"], pq_m=int(p["pq_m"]), pq_bits=int(p["pq_bits"]),
            hnsw_m=int(p["hnsw_m"]), ef_construction=int(p["ef_construction"]),
            train_sample=int(p["train_sample"]), seed=seed, use_gpu=p["use_gpu"], threads=threads,
        )  # fmt: skip

    rows = []

    def built(kind: str) -> tuple[AnnIndex, float]:
        gc.collect()
        before = _rss_mb()
        index = build_index(ids, vectors, config(kind))
        return index, max(0.0, _rss_mb() - before)

    exact, exact_rss = built("flat")
    exact_speeds, truth = _timed_searches(exact, queries, k, runs)
    exact_qps = statistics.median(exact_speeds)
    rows.append(_row(common, exact, "flat", {}, exact_rss, exact_speeds, [1.0] * runs, exact_qps))
    del exact
    for kind in kinds:
        if kind == "flat":
            continue
        index, rss_build = built(kind)
        for setting in _search_settings(kind, p):
            _apply(index, setting)
            speeds, recalls = [], []
            for _ in range(runs):  # recall per run too: parallel search must not change results
                run_speeds, found = _timed_searches(index, queries, k, 1)
                speeds += run_speeds
                recalls.append(search_recall(found, truth))
            rows.append(_row(common, index, kind, setting, rss_build, speeds, recalls, exact_qps))
        del index
    return rows


def _row(common: dict, index: AnnIndex, kind: str, setting: dict, rss_build: float,
         speeds: Sequence[float], recalls: Sequence[float], exact_qps: float) -> dict:  # fmt: skip
    qps = float(statistics.median(speeds))
    recall = float(statistics.median(recalls))
    speedup = qps / exact_qps if exact_qps > 0 else float("nan")
    return {
        **common,
        "kind": kind,
        "build": _build_params(kind, index.config, index.nlist),
        "search": dict(setting),
        "on_gpu": index.on_gpu,
        "build_s": round(float(index.build_seconds or 0.0), 3),
        "memory_mb": round(index.memory_bytes() / 1e6, 1),
        "rss_build_mb": round(rss_build, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "qps": round(qps, 1),
        "qps_runs": [round(float(s), 1) for s in speeds],
        "recall": round(recall, 4),
        "speedup": round(speedup, 2),
        "meets_target": bool(kind != "flat" and recall >= RECALL_TARGET and speedup >= SPEEDUP_TARGET),
    }


def format_table(rows: Sequence[dict]) -> str:
    """Human-readable table of ``bench_ann`` rows, one line each."""
    head = (f"{'tracks':>9} {'kind':<8} {'build':<34} {'search':<26} {'build_s':>8} {'mem_mb':>8} "
            f"{'peak_mb':>8} {'qps':>9} {'recall':>7} {'x exact':>8} target")  # fmt: skip
    lines = [head]
    for r in rows:
        build = ",".join(f"{key}={value}" for key, value in r["build"].items())
        search = ",".join(f"{key}={value}" for key, value in r["search"].items())
        lines.append(
            f"{r['n_tracks']:>9} {r['kind']:<8} {build:<34} {search:<26} {r['build_s']:>8.1f} "
            f"{r['memory_mb']:>8.1f} {r['peak_rss_mb']:>8.1f} {r['qps']:>9.1f} {r['recall']:>7.4f} "
            f"{r['speedup']:>8.2f} {'yes' if r['meets_target'] else 'no'}"
        )
    return "\n".join(lines)


def _ints(values: tuple[int, ...]) -> tuple[int, ...] | None:
    return tuple(values) if values else None


@click.command("ann")
@click.option("--tracks", "tracks", type=int, multiple=True, default=(100_000, 1_000_000), show_default=True,
              help="Catalog sizes (repeat the option).")
@click.option("--queries", type=int, default=2_000, show_default=True, help="User-like query vectors.")
@click.option("--k", type=int, default=500, show_default=True, help="Tracks retrieved per query.")
@click.option("--runs", type=int, default=3, show_default=True, help="Timed searches per setting; medians reported.")
@click.option("--kinds", type=click.Choice(KINDS), multiple=True, default=KINDS, show_default=True,
              help="Index kinds (repeat the option); exact search always runs as the baseline.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=DEFAULT_PARAMS["threads"], show_default=True,
              help="faiss OpenMP threads, exact and approximate alike.")
@click.option("--clusters", type=int, default=DEFAULT_PARAMS["clusters"], show_default=True)
@click.option("--shape", type=click.Choice(("trained", "isotropic")), default="trained", show_default=True,
              help="Synthetic vectors like the trained embeddings, or the harder isotropic clusters.")
@click.option("--nlist", type=int, default=None, help="IVF lists [default: ~4*sqrt(tracks)].")
@click.option("--nprobe", "nprobes", type=int, multiple=True, help="IVF-Flat lists scanned (repeat to sweep).")
@click.option("--pq-m", type=int, default=DEFAULT_PARAMS["pq_m"], show_default=True)
@click.option("--pq-nprobe", type=int, default=DEFAULT_PARAMS["pq_nprobe"], show_default=True)
@click.option("--rerank-k", "rerank_ks", type=int, multiple=True, help="IVF-PQ candidates re-ranked (sweep).")
@click.option("--hnsw-m", type=int, default=DEFAULT_PARAMS["hnsw_m"], show_default=True)
@click.option("--ef-construction", type=int, default=DEFAULT_PARAMS["ef_construction"], show_default=True)
@click.option("--ef-search", "ef_searches", type=int, multiple=True, help="HNSW efSearch (sweep).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ann_command(tracks, queries, k, runs, kinds, seed, threads, clusters, shape, nlist, nprobes, pq_m, pq_nprobe,
                rerank_ks, hnsw_m, ef_construction, ef_searches, as_json):  # fmt: skip
    """FAISS retrieval at catalog scale: build time, memory, top-k queries/s, recall@k vs exact."""
    sweeps = {"nprobes": _ints(nprobes), "rerank_ks": _ints(rerank_ks), "ef_searches": _ints(ef_searches)}
    params = {"threads": threads, "clusters": clusters, "shape": shape, "nlist": nlist, "pq_m": pq_m, "pq_nprobe": pq_nprobe,
              "hnsw_m": hnsw_m, "ef_construction": ef_construction,
              **{key: value for key, value in sweeps.items() if value is not None}}  # fmt: skip
    started = time.perf_counter()
    rows = []
    for n_tracks in tracks:
        rows += bench_ann(n_tracks, queries, k=k, kinds=kinds, runs=runs, seed=seed, **params)
        if not as_json:
            click.echo(format_table([r for r in rows if r["n_tracks"] == n_tracks]), err=True)
    summary = {
        "benchmark": "ann",
        "k": k,
        "runs": runs,
        "recall_target": RECALL_TARGET,
        "speedup_target": SPEEDUP_TARGET,
        "target_met_at": {str(n): any(r["meets_target"] for r in rows if r["n_tracks"] == n) for n in tracks},
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    click.echo(json.dumps(summary, indent=None if as_json else 2, default=str))

