"""``dw bench inference``: end-to-end batch inference (candidates → features → ranker → re-ranking) per core.

What runs is the production code on one core — ``generate_candidates`` with one faiss thread, then
the per-user packing Spark does with ``collect_list``, then ``rank_users`` (features, LightGBM with
one thread, MMR, calibration, exploration) in ``users_per_task`` batches — over a sample of a
materialized week's users with that week's trained models, opened as an executor opens them (unpacked into
a host cache and memory-mapped). One process, one thread: the rate is users/s per core, and a Spark
executor with n cores runs n such tasks side by side.

The catalog is the week's tracks padded to ``tracks`` with synthetic ones: each copies a real
"parent" track's statistics, artist and genre under a new id, and gets the parent's two-tower
vector plus Gaussian noise (per-dimension spread ``noise`` × the real vectors', then rescaled to
the parent's norm), so the padding is shaped like the trained vectors and competes with real
tracks in the ANN search. Padded tracks have no item2vec or audio vector — like a real long tail
that no playlist holds — so the two-tower index and the track-side feature tables grow to
``tracks`` while the item2vec neighbour table stays the trained one.

The ANN index over the padded catalog is built once per (lake, week, tracks, index settings) and
cached in ``workdir``. Quality figures beside the speed: the index's recall@500 against exact
search for the sampled users, and the share of users whose playlist is a valid 30 (unique, unheard,
at most ``max_per_artist`` per artist).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import resource
import statistics
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from dw_assets.embeddings.audio_table import audio_vectors_of
from dw_assets.embeddings.user_tower import read_user_embeddings
from dw_assets.embeddings.vector_table import track_vectors_of
from dw_assets.evaluation.ranker_order import pack_candidates
from dw_assets.ingest.spark import payload_key
from dw_assets.lake.storage import Lake
from dw_assets.partitions import history_window_weeks
from dw_assets.ranking.batch import shipped_playlist_models
from dw_assets.ranking.features import USER_COLUMNS, FeatureContext
from dw_assets.ranking.playlists import (
    TRACK_TABLE,
    PlaylistModels,
    fallback_pool,
    rank_users,
)
from dw_assets.ranking.ranker import TrainedRanker
from dw_assets.ranking.rerank import RerankConfig
from dw_assets.retrieval.ann import AnnConfig, AnnIndex, build_index, measure, tune_search
from dw_assets.retrieval.batch import shipped_models
from dw_assets.retrieval.candidates import CandidateConfig, CandidateModels, generate_candidates
from dw_assets.retrieval.index_check import RecallCheckConfig

TARGET_USERS_PER_S_PER_CORE = 250.0
TARGET_RECALL = 0.9
STEPS = ("candidates", "pack", "features", "predict", "rerank")
# What faiss_index builds at >= 100k tracks (IVF-Flat, ~4 sqrt(n) lists), its search effort then tuned
# the way the asset tunes it. HNSW (M 32, efConstruction 80) reached only 0.78 / 0.89 / 0.92 recall@500 at
# efSearch 500 / 1200 / 2000 on the padded 1M catalog, IVF-Flat 0.97 at nprobe 32 (3,490 q/s, 1 thread).
DEFAULT_ANN = AnnConfig(kind="ivf_flat", hnsw_m=32, ef_construction=80, ef_search=500, threads=0, use_gpu="auto")
TUNE_RECALL = RecallCheckConfig.tune_recall
TUNING_USERS = 500


@dataclasses.dataclass
class WeekModels:
    """One materialized week's models and tables, as the candidates and ranked_playlists assets read them."""

    week: str
    track_stats: pd.DataFrame
    track_ids: np.ndarray  # two-tower track ids, int64[n]
    track_vectors: np.ndarray  # float32[n, dim]
    user_ids: np.ndarray
    user_vectors: np.ndarray
    item2vec: tuple[np.ndarray, np.ndarray]
    audio: tuple[np.ndarray, np.ndarray]
    ranker: TrainedRanker
    profiles: pd.DataFrame
    directory: pd.DataFrame
    heard: dict  # user_id -> int64 array of tracks played in the 12-week window
    this_week: pd.DataFrame  # user_id, track_id, is_positive of the week (fallback pool)


def load_week(lake_root: str, week: str) -> WeekModels:
    """Read what batch inference for ``week`` needs from a lake where that week is materialized."""
    lake = Lake(str(lake_root))

    def located(name: str) -> str:
        uri = lake.uri("models", name, week)
        if not lake.exists(uri):
            raise click.ClickException(f"{uri} is missing: materialize week {week} first (dw run --lake ...)")
        return uri

    def artifact(name: str):
        return lake.read_artifact(located(name))

    def table(name: str) -> pd.DataFrame:  # a per-track table, read for the driver
        return lake.read_frame(located(name))

    track_ids, track_vectors = track_vectors_of(table("track_embeddings"), "track_embeddings")
    user_ids, user_vectors, _ = read_user_embeddings(lake, week)  # a Parquet table; small worlds only
    ranker = TrainedRanker.from_bytes(artifact("ranker_model").files["ranker.bin"])
    item2vec = track_vectors_of(table("item2vec_embeddings"), "item2vec_embeddings")
    audio = audio_vectors_of(table("audio_vectors"))
    track_stats = lake.read_frame(lake.uri("gold", "track_stats", week))
    profiles = lake.read_frame(lake.uri("gold", "user_profiles", week))
    directory = lake.read_frame(lake.uri("bronze", "user_directory", week), columns=["user_id", "country"])
    frames = []
    for key in history_window_weeks(week):
        uri = lake.uri("silver", "interactions", key)
        if lake.exists(uri):
            frames.append(lake.read_frame(uri, columns=["user_id", "track_id", "is_positive", "ts"]))
    window = pd.concat(frames, ignore_index=True)
    this_week = window.loc[window["ts"] >= pd.Timestamp(week, tz="UTC"), ["user_id", "track_id", "is_positive"]]
    pairs = window[["user_id", "track_id"]].drop_duplicates().sort_values(["user_id", "track_id"])
    owners, starts = np.unique(pairs["user_id"].to_numpy(np.int64), return_index=True)
    heard = dict(zip(owners.tolist(), np.split(pairs["track_id"].to_numpy(np.int64), starts[1:]), strict=True))
    return WeekModels(week, track_stats, track_ids, track_vectors.astype(np.float32), user_ids,
                      user_vectors.astype(np.float32), item2vec, audio, ranker, profiles, directory, heard,
                      this_week)


def pad_catalog(models: WeekModels, tracks: int, seed: int, noise: float = 0.5) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(track_stats, two-tower ids, vectors) padded to ``tracks`` rows with synthetic children of real tracks.

    Children copy their parent's statistics, artist and genre (never cold, never a new release) and
    get new ids above every real one; vectors as described in the module docstring.
    """
    stats = models.track_stats
    real = len(models.track_ids)
    extra = max(0, tracks - real)
    if extra == 0:
        return stats, models.track_ids, models.track_vectors
    rng = np.random.default_rng(seed)
    parents = rng.integers(0, real, size=extra)
    spread = models.track_vectors.std(axis=0, keepdims=True)
    child = models.track_vectors[parents] + noise * spread * rng.standard_normal(
        (extra, models.track_vectors.shape[1]), dtype=np.float32)
    norms = np.linalg.norm(models.track_vectors[parents], axis=1, keepdims=True)
    child *= norms / np.maximum(np.linalg.norm(child, axis=1, keepdims=True), 1e-12)
    first = int(max(stats["track_id"].max(), models.track_ids.max())) + 1
    new_ids = np.arange(first, first + extra, dtype=np.int64)
    by_id = stats.set_index("track_id")
    rows = by_id.reindex(models.track_ids[parents]).reset_index()
    rows["track_id"] = new_ids
    rows["is_cold"] = False
    rows["is_new_release"] = False
    padded_stats = pd.concat([stats, rows[stats.columns]], ignore_index=True)
    return (padded_stats, np.concatenate([models.track_ids, new_ids]),
            np.concatenate([models.track_vectors, child]).astype(np.float32))


def _index(ids: np.ndarray, vectors: np.ndarray, config: AnnConfig, cache: Path) -> AnnIndex:
    if cache.exists():
        return AnnIndex.from_bytes(cache.read_bytes(), use_gpu=config.use_gpu)
    index = build_index(ids, vectors, config)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_bytes(index.to_bytes())
    tmp.replace(cache)
    return index


def sample_users(models: WeekModels, n: int, seed: int) -> pd.DataFrame:
    """``n`` users with a two-tower vector (seeded draw), as ``candidate_users`` + ``playlist_users`` shape them."""
    profiles = models.profiles[models.profiles["user_id"].isin(models.user_ids)]
    chosen = np.random.default_rng(seed).choice(profiles["user_id"].to_numpy(np.int64),
                                                        size=min(n, len(profiles)), replace=False)
    users = profiles.set_index("user_id").loc[chosen, [c for c in USER_COLUMNS if c != "user_id"]].reset_index()
    row = pd.Series(np.arange(len(models.user_ids)), index=models.user_ids)
    users["user_vector"] = list(models.user_vectors[row.loc[chosen].to_numpy()])
    users["recent_tracks"] = users["recent_tracks"].map(lambda t: np.asarray(t if t is not None else [], np.int64))
    empty = np.zeros(0, np.int64)
    users["heard"] = [models.heard.get(u, empty) for u in chosen.tolist()]
    return users.merge(models.directory, on="user_id", how="left")


def _valid_playlists(playlists: pd.DataFrame, users: pd.DataFrame, size: int, max_per_artist: int) -> float:
    heard = dict(zip(users["user_id"].tolist(), users["heard"].tolist(), strict=True))
    valid = 0
    for user_id, rows in playlists.groupby("user_id", sort=False):
        tracks = rows["track_id"].to_numpy(np.int64)
        ok = (len(tracks) == size and len(np.unique(tracks)) == size
              and not np.isin(tracks, heard.get(user_id, [])).any()
              and rows["artist_id"].value_counts().max() <= max_per_artist)
        valid += bool(ok)
    return valid / max(len(users), 1)


def bench_inference(lake_root: str, week: str, tracks: int, users: int, runs: int, workdir: Path, seed: int = 7,
                    users_per_task: int = 2_000, ann: AnnConfig = DEFAULT_ANN, noise: float = 0.5,
                    tune_recall: float = TUNE_RECALL, profile: Path | None = None, engine: str = "auto") -> dict:
    """Median users/s per core over ``runs`` passes of the same sampled users; one result row.

    Row: unit, users_per_s_per_core (median; min/max), seconds per step (median), ann kind and
    recall@500, valid_playlist_share, candidates_per_user, catalog sizes, peak_rss_mb, runs, per_run.
    ``profile``: write a pyinstrument HTML profile of one extra pass there. ``engine``: the ranker's
    tree evaluation (auto | compiled | lightgbm), to measure the compiled trees against LightGBM.
    """
    if runs < 1 or users < 1 or tracks < 1:
        raise click.BadParameter("runs, users and tracks must be >= 1")
    workdir = Path(workdir).resolve()
    started = time.perf_counter()
    models = load_week(lake_root, week)
    stats, ids, vectors = pad_catalog(models, tracks, seed, noise)
    key = hashlib.sha256(json.dumps([str(Path(lake_root).resolve()), week, len(ids), seed, noise,
                                     dataclasses.asdict(ann)]).encode()).hexdigest()[:16]
    index = _index(ids, vectors, ann, workdir / f"ann-{key}.bin")
    index_kind = index.kind
    sample = sample_users(models, users + TUNING_USERS, seed)
    tuning_users = sample.iloc[users:] if len(sample) > users else sample
    sample = sample.iloc[:users].sort_values("user_id").reset_index(drop=True)
    tuning = tune_search(index, vectors, ids, np.stack(tuning_users["user_vector"].to_list()).astype(np.float32),
                         RecallCheckConfig.recall_k, tune_recall) if tune_recall else {}
    setup_s = time.perf_counter() - started

    audio_ids, audio_vectors = models.audio
    cold = stats.loc[stats["is_cold"] | stats["is_new_release"], "track_id"].to_numpy(np.int64)
    pool = np.isin(audio_ids, cold)
    candidate_models = CandidateModels.build(index, *models.item2vec, audio_ids[pool], audio_vectors[pool],
                                             model_version="bench")
    tracks_table = stats[list(TRACK_TABLE)].sort_values("track_id").reset_index(drop=True)
    rerank = RerankConfig()
    playlist_models = PlaylistModels(
        context=FeatureContext.build(None, stats, models.item2vec, models.audio, None, (ids, vectors)),
        ranker=models.ranker, tracks=tracks_table,
        fallback=fallback_pool(models.this_week, models.directory, tracks_table), rerank=rerank)
    # Opened as an executor opens them: unpacked into a host cache and memory-mapped (shipped_*_models).
    cache = workdir / "host-cache"
    blob = candidate_models.to_bytes()
    candidate_models = shipped_models(payload_key(blob), lambda: blob, cache)
    shipped = playlist_models.to_bytes()
    playlist_models = shipped_playlist_models(payload_key(shipped), lambda: shipped, cache)
    if engine != "lightgbm":
        models.ranker.compiled(required=engine == "compiled")  # an executor compiles the week's trees once (cached), before its first task
    candidate_config = CandidateConfig(faiss_threads=1)

    def one_pass() -> tuple[dict, pd.DataFrame, pd.DataFrame]:
        # One core: candidate_config holds faiss to one thread, the ranker predicts on one.
        t0 = time.perf_counter()
        candidates = generate_candidates(sample[["user_id", "user_vector", "recent_tracks", "heard"]],
                                         candidate_models, candidate_config)
        t1 = time.perf_counter()
        packed = pack_candidates(sample, candidates)
        timings = {"candidates": t1 - t0, "pack": time.perf_counter() - t1}
        playlists = pd.concat([rank_users(packed.iloc[i:i + users_per_task], playlist_models, week, timings, engine)
                               for i in range(0, len(packed), users_per_task)], ignore_index=True)
        return timings, candidates, playlists

    per_run = []
    for _ in range(runs):
        gc.collect()
        timings, candidates, playlists = one_pass()
        seconds = sum(timings.values())
        per_run.append({"users_per_s_per_core": round(len(sample) / seconds, 1), "seconds": round(seconds, 3),
                        **{f"{step}_s": round(timings.get(step, 0.0), 3) for step in STEPS}})
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        with profiler:
            one_pass()
        Path(profile).write_text(profiler.output_html())
        Path(profile).with_suffix(".txt").write_text(profiler.output_text(unicode=True, show_all=False))

    # Quality beside the speed: the ANN the candidates ran on, and the playlists they became.
    queries = np.stack(sample["user_vector"].to_list()).astype(np.float32)
    recall = measure(index, vectors, ids, queries, 500)["recall@500"]
    rates = [r["users_per_s_per_core"] for r in per_run]
    median = statistics.median(rates)
    return {
        "stage": "batch_inference", "unit": "users/s/core",
        "users_per_s_per_core": median, "users_per_s_per_core_min": min(rates), "users_per_s_per_core_max": max(rates),
        "target_users_per_s_per_core": TARGET_USERS_PER_S_PER_CORE,
        "step_seconds": {step: statistics.median(r[f"{step}_s"] for r in per_run) for step in STEPS},
        "ann_kind": index_kind, "ann_recall@500": recall, "target_recall": TARGET_RECALL,
        "meets_target": bool(median >= TARGET_USERS_PER_S_PER_CORE and recall >= TARGET_RECALL),
        "ann_config": {"nlist": index.nlist, **{k: v for k, v in dataclasses.asdict(index.config).items()
                                                 if k in ("hnsw_m", "ef_construction", "ef_search", "nprobe")}},
        "ann_tuning": tuning,
        "valid_playlist_share": round(_valid_playlists(playlists, sample, rerank.playlist_size,
                                                       rerank.max_per_artist), 4),
        "candidates_per_user": round(len(candidates) / len(sample), 1),
        "users": len(sample), "catalog_tracks": int(len(ids)), "dim": int(vectors.shape[1]), "real_tracks": int(len(models.track_ids)),
        "item2vec_tracks": int(len(models.item2vec[0])), "week": week, "lake": str(lake_root),
        "users_per_task": users_per_task, "threads": 1, "ranker_engine": engine, "setup_s": round(setup_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "runs": runs, "per_run": per_run,
    }


def format_row(row: dict) -> str:
    steps = ", ".join(f"{step} {row['step_seconds'][step]:.2f}s" for step in STEPS)
    verdict = "met" if row["meets_target"] else "missed"
    return (f"batch inference, {row['users']} users, catalog {row['catalog_tracks']:,} tracks "
            f"({row['real_tracks']:,} trained + padding), 1 thread:\n"
            f"  {row['users_per_s_per_core']:.1f} users/s/core (min {row['users_per_s_per_core_min']:.1f}, "
            f"max {row['users_per_s_per_core_max']:.1f}, {row['runs']} runs) at ANN {row['ann_kind']} "
            f"recall@500 {row['ann_recall@500']:.3f}; target ≥ {row['target_users_per_s_per_core']:.0f} users/s/core "
            f"at recall ≥ {row['target_recall']}: {verdict}\n"
            f"  steps (median): {steps}\n"
            f"  valid playlists {row['valid_playlist_share']:.1%}, {row['candidates_per_user']:.0f} candidates/user, "
            f"peak RSS {row['peak_rss_mb']:.0f} MB, set-up {row['setup_s']:.0f} s")


def last_materialized_week(lake_root: str) -> str:
    """The newest week whose ranker_model exists in the lake."""
    lake = Lake(str(lake_root))
    root = Path(lake.uri("models", "ranker_model"))
    weeks = sorted(p.name.removeprefix("week=") for p in root.glob("week=*")) if root.exists() else []
    if not weeks:
        raise click.ClickException(f"no materialized week in {lake_root} (no models/ranker_model): run dw run first")
    return weeks[-1]


@click.command("inference")
@click.option("--lake", "lake_root", default="data/demo", show_default=True, help="A lake with a materialized week.")
@click.option("--week", default=None, help="Week to run (default: the newest with a ranker_model).")
@click.option("--tracks", default=1_000_000, show_default=True, help="Catalog size after padding.")
@click.option("--users", default=4_000, show_default=True, help="Users sampled (seeded).")
@click.option("--runs", default=3, show_default=True)
@click.option("--users-per-task", default=2_000, show_default=True, help="rank_users batch (a Spark task's users).")
@click.option("--ef-search", default=DEFAULT_ANN.ef_search, show_default=True)
@click.option("--kind", type=click.Choice(["ivf_flat", "hnsw", "flat"]), default="ivf_flat", show_default=True)
@click.option("--tune-recall", default=TUNE_RECALL, show_default=True,
              help="Tune nprobe / efSearch to this recall@500 on other users first (0: keep --nprobe/--ef-search).")
@click.option("--nprobe", default=256, show_default=True, help="ivf_flat lists scanned (before tuning).")
@click.option("--engine", type=click.Choice(["auto", "compiled", "lightgbm"]), default="auto", show_default=True,
              help="Ranker trees: compiled by lleaves, or LightGBM's own predict.")
@click.option("--seed", default=7, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("data/bench/inference"), show_default=True)
@click.option("--profile", type=click.Path(path_type=Path), default=None, help="Write a pyinstrument HTML profile.")
@click.option("--json", "as_json", is_flag=True)
def inference_command(lake_root, week, tracks, users, runs, users_per_task, ef_search, kind, tune_recall, nprobe,
                      engine, seed, workdir, profile, as_json):
    """End-to-end batch inference users/s per core at a padded catalog (default 1M tracks)."""
    ann = dataclasses.replace(DEFAULT_ANN, kind=kind, ef_search=ef_search, nprobe=nprobe, seed=seed)
    row = bench_inference(lake_root, week or last_materialized_week(lake_root), tracks, users, runs, workdir, seed,
                          users_per_task, ann, tune_recall=tune_recall, profile=profile, engine=engine)
    click.echo(json.dumps(row, indent=2) if as_json else format_row(row))


