"""``dw bench stages``: throughput of each pipeline stage, with its quality figure and peak memory.

Every measured run is a fresh Python process (``python -c``), so a stage's
peak RSS is its own: the parent samples the resident set of the child's whole
process tree (the Python driver, the Spark JVM and Spark's Python workers,
torch/gensim threads) from ``/proc`` every 0.2 s, and takes the larger of that
and the child's own ``getrusage`` peak. One simulated world (``workdir/world``)
and one set of prepared lake tables (``workdir/prepared``, built once with the
same Spark functions as the ingest assets) are reused across stages and runs.

Throughput basis per stage (``throughput_basis`` in each row):
- simulator: landed event lines / ``simulate()`` wall seconds (audio included).
- ingest: landed lines of one week / seconds of bronze → silver → gold (each
  layer written to Parquet and read back, as the lake does) / Spark cores
  (``defaultParallelism``); JVM start-up is excluded and reported apart.
- item2vec, audio, two_tower: the training loop's own rate (words, clips,
  examples per second over all epochs), so cheap epochs give a fair rate.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from dw_assets import procfs

STAGES = ("simulator", "ingest", "item2vec", "audio", "two_tower")
UNITS = {"simulator": "events/s", "ingest": "events/s/core", "item2vec": "words/s", "audio": "clips/s",
         "two_tower": "examples/s"}
QUALITY = {"simulator": "malformed_share", "ingest": "accounted_share", "item2vec": "neighbour_genre_agreement@10",
           "audio": "holdout_cosine", "two_tower": "val_recall@500"}
BASIS = {"simulator": "landed lines / simulate() wall s",
         "ingest": "landed lines of one week / bronze+silver+gold s / spark cores (JVM start excluded)",
         "item2vec": "training words over all epochs / training s",
         "audio": "training clips over all epochs / training s",
         "two_tower": "training examples over all epochs / training s"}
# Cheap epochs: the rates are per word/clip/example, so the epoch count only moves the quality figure.
EPOCHS = {"tiny": {"item2vec": 3, "audio": 3, "two_tower": 2}, "small": {"item2vec": 2, "audio": 2, "two_tower": 1}}
PRESETS = tuple(EPOCHS)
RSS_SAMPLE_S = 0.2
PREPARED_MARK = "prepared.json"
WORLD_MARK = "bench_world.json"


def bench_stages(preset: str, runs: int, stages: list[str], workdir: Path, seed: int = 7,
                 threads: int | None = None) -> list[dict]:
    """Run each stage ``runs`` times, each run in a fresh subprocess; one row per stage.

    Row: stage, unit, throughput (median), throughput_min, throughput_max, throughput_basis,
    quality_name, quality (median), seconds (median wall of the stage's work, data loading
    included), peak_rss_mb (max over runs, whole process tree), cores, epochs (training
    stages), load_avg_1m (median of the 1-minute load average at each run's start), runs,
    per_run (the raw figures) and detail (stage-specific counts). ``threads``: torch threads
    in the training children (None: torch's default).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    world = workdir / "world"
    wanted = [s for s in STAGES if s in stages]
    base = {"preset": preset, "seed": seed, "world": str(world), "prepared": str(workdir / "prepared"),
            "scratch": str(workdir / "scratch"), "threads": threads}

    results: dict[str, list[dict]] = {s: [] for s in wanted}
    if not _world_ready(world, preset, seed):
        if "simulator" in wanted:  # the first measured simulation is the shared world
            results["simulator"].append(_measure({**base, "stage": "simulator", "out": str(world)}))
            _mark_world(world, preset, seed)
        else:
            _measure({**base, "stage": "simulate_world", "out": str(world)})
            _mark_world(world, preset, seed)
    # Training stages read prepared lake tables; audio needs item2vec targets, two-tower audio vectors.
    needs = {"item2vec": ["tables"], "audio": ["tables", "item2vec"], "two_tower": ["tables", "item2vec", "audio"]}
    needs = sorted({need for stage in wanted for need in needs.get(stage, [])})
    if needs and not _prepared_ready(workdir / "prepared", needs):
        _measure({**base, "stage": "prepare", "needs": needs})
    for stage in wanted:
        while len(results[stage]) < runs:
            out = str(workdir / "scratch" / f"{stage}_world") if stage == "simulator" else None
            results[stage].append(_measure({**base, "stage": stage, "out": out}))
    shutil.rmtree(workdir / "scratch", ignore_errors=True)  # throwaway worlds and Parquet; world/ is kept
    return [_summarize(stage, results[stage]) for stage in wanted]


def _summarize(stage: str, runs: list[dict]) -> dict:
    rates = [r["throughput"] for r in runs]
    qualities = [r["quality"] for r in runs]
    return {
        "stage": stage,
        "unit": UNITS[stage],
        "throughput": statistics.median(rates),
        "throughput_min": min(rates),
        "throughput_max": max(rates),
        "throughput_basis": BASIS[stage],
        "quality_name": QUALITY[stage],
        "quality": statistics.median(qualities),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "cores": runs[0]["cores"],
        "epochs": runs[0].get("epochs"),
        "load_avg_1m": statistics.median(r["load_avg_1m"] for r in runs),
        "runs": len(runs),
        "per_run": [{k: r[k] for k in ("throughput", "quality", "seconds", "peak_rss_mb", "load_avg_1m")}
                    for r in runs],
        "detail": runs[0].get("detail", {}),
    }


# ---------------------------------------------------------------- measuring a child process


def _measure(spec: dict) -> dict:
    """Run one stage in a fresh interpreter; its result plus the peak RSS of its process tree."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        load = os.getloadavg()[0]
        code = "import sys; from dw_assets.bench.stages import _child_main; _child_main(sys.argv[1], sys.argv[2])"
        child = subprocess.Popen([sys.executable, "-c", code, str(spec_path), str(result_path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss_bytes(child.pid))
                done.wait(RSS_SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output, _ = child.communicate()
        done.set()
        sampler.join()
        if child.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"bench stage {spec['stage']!r} failed (exit {child.returncode}):\n{output[-4000:]}")
        result = json.loads(result_path.read_text())
    result["peak_rss_mb"] = round(max(peak[0], result.pop("self_maxrss_bytes", 0)) / 2**20, 1)
    result["load_avg_1m"] = load
    return result


def _tree_rss_bytes(root: int) -> int:
    """Summed resident set of ``root`` and all its descendants (Linux /proc; 0 elsewhere)."""
    return sum(row["rss"] for row in tree_memory(root))


def tree_memory(root: int) -> list[dict]:
    """rss and pss (bytes) and the command line of ``root`` and every descendant still alive."""
    children, todo, rows = procfs.children(), [root], []
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                          if line.startswith(("Rss:", "Pss:")))
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        rows.append({"pid": pid, "rss": int(fields["Rss"].split()[0]) * 1024,
                     "pss": int(fields["Pss"].split()[0]) * 1024, "command": command.strip()[:120]})
    return rows


def _child_main(spec_path: str, result_path: str) -> None:
    import resource

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    result = CHILD_STAGES[spec["stage"]](spec)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    waited = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["self_maxrss_bytes"] = max(own, waited) * 1024  # Linux reports KiB
    Path(result_path).write_text(json.dumps(result, default=float))


# ---------------------------------------------------------------- world and prepared tables


def _world_ready(world: Path, preset: str, seed: int) -> bool:
    mark = world / WORLD_MARK
    return mark.exists() and json.loads(mark.read_text()) == {"preset": preset, "seed": seed}


def _mark_world(world: Path, preset: str, seed: int) -> None:
    (world / WORLD_MARK).write_text(json.dumps({"preset": preset, "seed": seed}))
    mark = world.parent / "prepared" / PREPARED_MARK
    if mark.exists():  # tables of an older world
        mark.unlink()


def _prepared_ready(prepared: Path, needs: list[str]) -> bool:
    mark = prepared / PREPARED_MARK
    return mark.exists() and set(needs) <= set(json.loads(mark.read_text())["done"])


def _manifest(spec: dict) -> dict:
    return json.loads((Path(spec["world"]) / "landing" / "manifest.json").read_text())


def spark_session():
    """A Spark session with the deployment's settings (``DW_SPARK_*``), as ``dw run`` builds it."""
    from dw_assets.ingest.spark import settings_from_env, use_this_interpreter

    use_this_interpreter()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in settings_from_env().as_conf().items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _bronze_silver(spark, landing: str, week: str, out: Path) -> dict:
    """One week's bronze and silver written under ``out``; returns the frames read back and row counts."""
    from dw_assets.ingest.bronze import build_bronze, landed_event_files
    from dw_assets.ingest.interactions import InteractionRules, build_interactions
    from dw_assets.ingest.snapshots import track_catalog, user_directory

    catalog, users = track_catalog(spark, landing, week), user_directory(spark, landing, week)
    bronze = build_bronze(spark, landed_event_files(landing, week), week, users.select("user_id"),
                          catalog.select("track_id"))
    bronze.events.write.mode("overwrite").parquet(str(out / "bronze"))
    bronze.quarantined.write.mode("overwrite").parquet(str(out / "quarantined"))
    events = spark.read.parquet(str(out / "bronze"))
    silver = build_interactions(events, catalog, week, InteractionRules())
    silver.interactions.write.mode("overwrite").parquet(str(out / "interactions"))
    return {"catalog": catalog, "users": users, "events": events,
            "quarantined": spark.read.parquet(str(out / "quarantined")),
            "interactions": spark.read.parquet(str(out / "interactions"))}


def _gold(spark, interactions, catalog, users, week: str, out: Path) -> dict:
    from dw_assets.ingest.profiles import ProfileRules, build_track_stats, build_user_profiles

    build_track_stats(interactions, catalog, week).write.mode("overwrite").parquet(str(out / "track_stats"))
    stats = spark.read.parquet(str(out / "track_stats"))
    build_user_profiles(interactions, users, stats, week, ProfileRules()).write.mode("overwrite").parquet(
        str(out / "user_profiles"))
    return {"track_stats": stats, "user_profiles": spark.read.parquet(str(out / "user_profiles"))}


def _prepare(spec: dict) -> dict:
    """Lake tables of the last training week (same Spark functions as the assets) and upstream vectors."""
    import numpy as np

    prepared = Path(spec["prepared"])
    mark = prepared / PREPARED_MARK
    done = set(json.loads(mark.read_text())["done"]) if mark.exists() else set()
    manifest = _manifest(spec)
    week, landing = manifest["last_training_week"], str(Path(spec["world"]) / "landing")
    if "tables" not in done:
        from dw_assets.ingest.snapshots import user_playlists

        spark = spark_session()
        weekly = []
        for w in manifest["training_weeks"]:
            tables = _bronze_silver(spark, landing, w, prepared / "weeks" / w)
            weekly.append(str(prepared / "weeks" / w / "interactions"))
        interactions = spark.read.parquet(*weekly)
        _gold(spark, interactions, tables["catalog"], tables["users"], week, prepared)
        interactions.write.mode("overwrite").parquet(str(prepared / "interactions"))
        tables["catalog"].write.mode("overwrite").parquet(str(prepared / "track_catalog"))
        user_playlists(spark, landing, week).write.mode("overwrite").parquet(str(prepared / "user_playlists"))
        spark.stop()
        done.add("tables")
    epochs = EPOCHS[spec["preset"]]
    if "item2vec" in spec["needs"] and "item2vec" not in done:
        # The audio/two-tower inputs get production-grade item2vec targets (the asset's default epochs).
        from dw_assets.embeddings.item2vec import Item2VecConfig

        result = _train_item2vec(prepared, Item2VecConfig.epochs, spec["seed"])[0]
        np.savez(prepared / "item2vec.npz", ids=result.track_ids, vectors=result.vectors)
        done.add("item2vec")
    if "audio" in spec["needs"] and "audio" not in done:
        model, mels, ids = _train_audio(spec, epochs["audio"])[:3]
        np.savez(prepared / "audio.npz", ids=ids, vectors=model.embed(mels))
        done.add("audio")
    mark.write_text(json.dumps({"done": sorted(done), "week": week}))
    return {}


# ---------------------------------------------------------------- the stages (run in the child)


def _simulate_world(spec: dict) -> dict:
    from dw_assets.simulate import config_for, simulate

    simulate(config_for(spec["preset"], seed=spec["seed"]), spec["out"])
    return {}


def _simulator(spec: dict) -> dict:
    from dw_assets.simulate import config_for, simulate
    from dw_assets.simulate.world import MAX_AUDIO_WORKERS, PARALLEL_AUDIO_SAMPLES

    config = config_for(spec["preset"], seed=spec["seed"])
    started = time.perf_counter()
    manifest = simulate(config, spec["out"])
    seconds = time.perf_counter() - started
    lines = sum(manifest["counts"]["lines"].values())
    bad = sum(sum(kinds.values()) for kinds in manifest["malformed_events"].values())
    # simulate()'s own choice of background audio processes (none for tiny worlds).
    samples = manifest["counts"]["tracks"] * config.audio_seconds * config.sample_rate
    spare = max(1, min(MAX_AUDIO_WORKERS, (os.cpu_count() or 1) - 1))
    return {"throughput": lines / seconds, "quality": bad / lines, "seconds": seconds,
            "cores": 1 + (spare if samples > PARALLEL_AUDIO_SAMPLES else 0),
            "detail": {"events": lines, "malformed": bad, "users": manifest["counts"]["users"],
                       "tracks": manifest["counts"]["tracks"], "weeks": len(manifest["counts"]["lines"]),
                       "timings_s": {k: round(v, 2) for k, v in manifest.get("timings_s", {}).items()}}}


def _ingest(spec: dict) -> dict:
    """Bronze → silver → gold of the last training week (gold over that one week's silver)."""
    from dw_assets.ingest.bronze import landed_event_files

    week = _manifest(spec)["last_training_week"]
    landing = str(Path(spec["world"]) / "landing")
    files = landed_event_files(landing, week)
    rows_in = 0
    for path in files:  # counted apart from Spark: the accounting check's independent side
        with open(path, encoding="utf-8", errors="replace") as handle:
            rows_in += sum(1 for line in handle if line.rstrip("\n"))
    t0 = time.perf_counter()
    spark = spark_session()
    start_s = time.perf_counter() - t0
    cores = int(spark.sparkContext.defaultParallelism)
    out = Path(spec["scratch"]) / "ingest"
    started = time.perf_counter()
    tables = _bronze_silver(spark, landing, week, out)
    silver_s = time.perf_counter() - started
    gold = _gold(spark, tables["interactions"], tables["catalog"], tables["users"], week, out)
    seconds = time.perf_counter() - started
    bronze, quarantined = tables["events"].count(), tables["quarantined"].count()
    counts = {"rows_in": rows_in, "bronze": bronze, "quarantined": quarantined,
              "silver": tables["interactions"].count(), "track_stats": gold["track_stats"].count(),
              "user_profiles": gold["user_profiles"].count()}
    spark.stop()
    return {"throughput": rows_in / seconds / cores, "quality": (bronze + quarantined) / max(rows_in, 1),
            "seconds": seconds, "cores": cores,
            "detail": {**counts, "week": week, "accounting_ok": bronze + quarantined == rows_in,
                       "bronze_silver_s": round(silver_s, 2), "gold_s": round(seconds - silver_s, 2),
                       "spark_start_s": round(start_s, 2), "events_per_s": round(rows_in / seconds, 1)}}


def _train_item2vec(prepared: Path, epochs: int, seed: int):
    import pandas as pd

    from dw_assets.embeddings.item2vec import (
        Item2VecConfig,
        playlist_sentences,
        session_sentences,
        train_item2vec,
    )

    settings = Item2VecConfig(epochs=epochs, seed=seed)
    playlists = pd.read_parquet(prepared / "user_playlists")
    sessions = pd.read_parquet(prepared / "interactions", columns=["session_id", "ts", "track_id", "is_positive"])
    sentences = playlist_sentences(playlists, settings) + session_sentences(sessions, settings)
    return train_item2vec(sentences, settings), settings


def _item2vec(spec: dict) -> dict:
    """Skip-gram training rate; quality = share of top-10 neighbours in the query track's genre."""
    import numpy as np
    import pandas as pd

    from dw_assets.embeddings.item2vec import neighbours

    prepared = Path(spec["prepared"])
    started = time.perf_counter()
    result, settings = _train_item2vec(prepared, EPOCHS[spec["preset"]]["item2vec"], spec["seed"])
    seconds = time.perf_counter() - started
    catalog = pd.read_parquet(prepared / "track_catalog", columns=["track_id", "genre"])
    genre = dict(zip(catalog["track_id"], catalog["genre"], strict=True))
    rng = np.random.default_rng(spec["seed"])
    queries = rng.choice(result.track_ids, size=min(2000, len(result)), replace=False)
    ids, _ = neighbours(result, queries, 10)
    query_genre = np.array([genre.get(t) for t in queries], dtype=object)
    found = ids >= 0
    same = np.array([[genre.get(t) == g for t in row] for row, g in zip(ids, query_genre, strict=True)])
    shares = catalog["genre"].value_counts(normalize=True)
    return {"throughput": float(result.stats["words_per_second"]), "quality": float(same[found].mean()),
            "seconds": seconds, "cores": settings.workers, "epochs": settings.epochs,
            "detail": {"vocab_size": result.stats["vocab_size"], "sentences": result.stats["sentences"],
                       "words_per_epoch": result.stats["words"], "train_seconds": result.stats["train_seconds"],
                       "chance_genre_agreement": float((shares**2).sum())}}


def _train_audio(spec: dict, epochs: int):
    import numpy as np
    import pandas as pd

    from dw_assets.embeddings.audio import AudioConfig, load_clips, log_mel, train_audio_model
    from dw_assets.embeddings.landing import landed_audio

    prepared = Path(spec["prepared"])
    targets = np.load(prepared / "item2vec.npz")
    catalog = pd.read_parquet(prepared / "track_catalog", columns=["track_id", "genre"])
    settings = AudioConfig(embedding_dim=targets["vectors"].shape[1], epochs=epochs, max_warm_tracks=10_000,
                           seed=spec["seed"], threads=int(spec["threads"]) if "threads" in spec else None)
    known = set(catalog["track_id"].tolist())
    clips = landed_audio(Path(spec["world"]) / "landing")
    batch = load_clips({t: p for t, p in clips.items() if t in known}, settings)
    mels = log_mel(batch, settings)
    genres = dict(zip(catalog["track_id"], catalog["genre"], strict=True))
    model = train_audio_model(mels, batch.track_ids, (targets["ids"], targets["vectors"]), genres, settings)
    return model, mels, batch.track_ids


def _audio(spec: dict) -> dict:
    """Audio CNN training rate; quality = held-out cosine to the item2vec targets."""
    import torch

    started = time.perf_counter()
    model = _train_audio(spec, EPOCHS[spec["preset"]]["audio"])[0]
    seconds = time.perf_counter() - started
    report = model.report
    return {"throughput": float(report["clips_per_second"]), "quality": float(report["holdout_cosine"]),
            "seconds": seconds, "cores": torch.get_num_threads(), "epochs": report["epochs"],
            "detail": {k: report[k] for k in ("holdout_genre_accuracy", "holdout_cosine_shuffled", "train_tracks",
                                              "holdout_tracks", "train_seconds", "device")}}


def _two_tower(spec: dict) -> dict:
    """Two-tower training rate; quality = validation recall@500 (exact, full catalog)."""
    import numpy as np
    import pandas as pd
    import torch

    from dw_assets.embeddings.two_tower import build_examples, build_tower_features, train_two_tower
    from dw_assets.embeddings.two_tower_data import TwoTowerConfig

    prepared = Path(spec["prepared"])
    week = json.loads((prepared / PREPARED_MARK).read_text())["week"]
    settings = TwoTowerConfig(epochs=EPOCHS[spec["preset"]]["two_tower"], seed=spec["seed"],
                              threads=int(spec["threads"]) if "threads" in spec else None)
    started = time.perf_counter()
    columns = ["user_id", "track_id", "ts", "is_positive", "is_early_skip", "weight", "session_id", "genre",
               "artist_id"]
    interactions = pd.read_parquet(prepared / "interactions", columns=columns)
    profiles, stats = pd.read_parquet(prepared / "user_profiles"), pd.read_parquet(prepared / "track_stats")
    audio = np.load(prepared / "audio.npz")
    features = build_tower_features(interactions, profiles, stats, audio["ids"], audio["vectors"], week, settings)
    examples = build_examples(interactions, features, settings)
    trained = train_two_tower(features, examples, settings)
    seconds = time.perf_counter() - started
    report = trained.report
    key = f"final_val_recall@{settings.recall_k}"
    return {"throughput": float(report["examples_per_second"]), "quality": float(report[key]),
            "seconds": seconds, "cores": torch.get_num_threads(), "epochs": settings.epochs,
            "detail": {"train_examples": report["train_examples"], "val_users": report["val_users"],
                       "train_seconds": round(report["train_seconds"], 2),
                       "validation_seconds": round(report["validation_seconds"], 2),
                       "popularity_recall@500": report["baselines"]["popularity"], "device": report["device"]}}


CHILD_STAGES = {"simulate_world": _simulate_world, "prepare": _prepare, "simulator": _simulator, "ingest": _ingest,
                "item2vec": _item2vec, "audio": _audio, "two_tower": _two_tower}


# ---------------------------------------------------------------- the click command


def format_table(rows: list[dict]) -> str:
    head = f"{'stage':<10} {'throughput':>14} {'unit':<14} {'min..max':>21} {'quality':>28} {'s':>7} " \
           f"{'RSS MB':>8} {'cores':>5} {'load':>5}"
    lines = [head]
    for r in rows:
        spread = f"{r['throughput_min']:,.0f}..{r['throughput_max']:,.0f}"
        quality = f"{r['quality_name']} {r['quality']:.4f}"
        lines.append(f"{r['stage']:<10} {r['throughput']:>14,.1f} {r['unit']:<14} {spread:>21} {quality:>28} "
                     f"{r['seconds']:>7.1f} {r['peak_rss_mb']:>8.0f} {r['cores']:>5} {r['load_avg_1m']:>5.2f}")
    return "\n".join(lines)


@click.command("stages")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option("--runs", type=int, default=3, show_default=True, help="Repetitions; medians are reported.")
@click.option("--stages", "stage_names", type=click.Choice(list(STAGES)), multiple=True,
              help="Stages to measure (repeatable); default: all.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Holds the simulated world and prepared tables (reused); default: a temporary folder.")
@click.option("--seed", type=int, default=7, show_default=True)
def stages_command(preset, runs, stage_names, as_json, workdir, seed):
    """Throughput of each pipeline stage (medians, fresh process per run) beside its quality figure and peak RSS."""
    stage_list = list(stage_names) or list(STAGES)
    started, load_before = time.perf_counter(), os.getloadavg()
    if runs < 1:
        raise click.UsageError("--runs must be >= 1")
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="dw_bench_") as tmp:
            rows = bench_stages(preset, runs, stage_list, Path(tmp), seed=seed)
    else:
        rows = bench_stages(preset, runs, stage_list, Path(workdir), seed=seed)
    summary = {"preset": preset, "runs": runs, "seed": seed, "wall_s": round(time.perf_counter() - started, 1),
               "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "cpu_count": os.cpu_count(),
               "stages": rows}
    if as_json:
        click.echo(json.dumps(summary, default=float))
        return
    click.echo(format_table(rows))
    click.echo(f"wall {summary['wall_s']} s; load average before {load_before[0]:.2f}, "
               f"after {summary['load_avg_after'][0]:.2f} ({os.cpu_count()} cpus)")
