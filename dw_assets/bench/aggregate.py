"""``dw bench all``: every benchmark in one JSON document, the input of docs/scale.md's cost model.

Runs, in order: ``stages`` (simulator, Spark ingest per core, item2vec, audio CNN, two-tower; fresh
process each, peak RSS of the process tree), ``ann`` (FAISS kinds at each ``--ann-tracks`` size),
``inference`` (end-to-end batch inference users/s per core at each ``--inference-tracks`` catalog
size, on a lake's materialized week) and ``serving`` (API p50/p99 at a fixed rate over a scratch
SQLite store). Each section keeps its own command's JSON shape; ``targets`` gathers the #7
targets with the measured figure beside each. Sections can be skipped (``--skip``), e.g. when no
lake is materialized.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import click

SECTIONS = ("stages", "ann", "inference", "serving")


def machine() -> dict:
    """Where the numbers come from: cores, memory, load, GPU."""
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_avg": os.getloadavg()}
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * page / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["cuda"] = None
    from dw_assets.retrieval.ann import gpu_available

    info["faiss_gpu"] = gpu_available()
    return info


def run_all(preset: str, runs: int, lake: str | None, ann_tracks: list[int], inference_tracks: list[int],
            inference_users: int, serving_seconds: float, skip: list[str], workdir: Path,
            progress=lambda message: None) -> dict:
    """One document with every section's results (see the module docstring)."""
    from dw_assets.bench.ann_bench import bench_ann
    from dw_assets.bench.inference import bench_inference, last_materialized_week
    from dw_assets.bench.stages import STAGES, bench_stages

    started = time.perf_counter()
    document: dict = {"benchmark": "all", "machine": machine(), "preset": preset, "runs": runs}
    if "stages" not in skip:
        progress(f"stages ({preset}, {runs} runs each)")
        document["stages"] = bench_stages(preset, runs, list(STAGES), workdir / "stages")
    if "ann" not in skip:
        document["ann"] = []
        for n in ann_tracks:
            progress(f"ann at {n:,} tracks")
            document["ann"] += bench_ann(n, 1000, k=500, runs=runs)
    if "inference" not in skip:
        if lake is None:
            raise click.UsageError("inference needs --lake (a materialized week), or --skip inference")
        week = last_materialized_week(lake)
        document["inference"] = []
        for n in inference_tracks:
            progress(f"batch inference at {n:,} tracks ({inference_users} users, week {week})")
            document["inference"].append(bench_inference(lake, week, n, inference_users, runs,
                                                         workdir / "inference"))
    if "serving" not in skip:
        from dw_assets.serving.loadtest import bench_serving

        progress(f"serving ({serving_seconds:.0f} s at 1,000 requests/s, {runs} runs)")
        loads = []
        for run in range(runs):
            store = workdir / "serving" / f"run{run}.db"
            store.parent.mkdir(parents=True, exist_ok=True)
            store.unlink(missing_ok=True)
            loads.append(bench_serving(f"sqlite:///{store}", users=20_000, rate=1000.0, seconds=serving_seconds,
                                       seed=run)["load"])
        document["serving"] = {
            "store": "sqlite", "rate": 1000.0, "seconds": serving_seconds, "runs": runs,
            "median_achieved_rps": statistics.median(float(x["achieved_rps"]) for x in loads),
            "errors": sum(int(x["errors"]) for x in loads),
            **{f"median_latency_{q}_ms": statistics.median(x["latency_ms"][q] for x in loads)
               for q in ("p50", "p99")},
            "per_run": loads,
        }
    document["targets"] = targets(document)
    document["wall_s"] = round(time.perf_counter() - started, 1)
    return document


def targets(document: dict) -> list[dict]:
    """#7's targets, each with the measured figure and whether it is met (sections that ran only)."""
    rows = []
    for row in document.get("inference", []):
        if row["catalog_tracks"] >= 1_000_000:
            rows.append({"target": "batch inference >= 250 users/s/core at 1M tracks, ANN recall@500 >= 0.9",
                         "measured": f"{row['users_per_s_per_core']} users/s/core at recall {row['ann_recall@500']}",
                         "met": row["meets_target"]})
    ann_1m = [r for r in document.get("ann", []) if r["n_tracks"] >= 1_000_000]
    if ann_1m:
        best = max((r for r in ann_1m if r["kind"] != "flat"), key=lambda r: (r["meets_target"], r["speedup"]))
        rows.append({"target": "FAISS recall@500 >= 0.95 at >= 10x exact queries/s, 1M tracks",
                     "measured": f"{best['kind']} {best['search']}: recall {best['recall']}, {best['speedup']}x exact",
                     "met": bool(best["meets_target"])})
    return rows


@click.command("all")
@click.option("--preset", type=click.Choice(["tiny", "small"]), default="small", show_default=True,
              help="World size for the stage benchmarks.")
@click.option("--runs", type=int, default=3, show_default=True, help="Runs per measurement (medians).")
@click.option("--lake", default="data/demo", show_default=True, help="Lake with a materialized week (inference).")
@click.option("--ann-tracks", type=int, multiple=True, default=(100_000, 1_000_000), show_default=True)
@click.option("--inference-tracks", type=int, multiple=True, default=(100_000, 300_000, 1_000_000),
              show_default=True)
@click.option("--inference-users", type=int, default=4_000, show_default=True)
@click.option("--serving-seconds", type=float, default=15.0, show_default=True)
@click.option("--skip", type=click.Choice(SECTIONS), multiple=True, help="Sections not to run.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Scratch (worlds, indexes, stores); default: a temporary folder.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON document here.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (else a summary).")
def all_command(preset, runs, lake, ann_tracks, inference_tracks, inference_users, serving_seconds, skip, workdir,
                out, as_json):
    """Every benchmark in one JSON document (stages, FAISS, batch inference, serving) with the #7 targets."""
    def progress(message: str) -> None:
        click.echo(f"[bench] {message}", err=True)

    def go(root: Path) -> dict:
        return run_all(preset, runs, lake if "inference" not in skip else None, list(ann_tracks),
                       list(inference_tracks), inference_users, serving_seconds, list(skip), root, progress)

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="dw_bench_all_") as tmp:
            document = go(Path(tmp))
    else:
        document = go(Path(workdir))
    text = json.dumps(document, default=float)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    if as_json:
        click.echo(text)
        return
    for row in document["targets"]:
        click.echo(f"{'met   ' if row['met'] else 'MISSED'} {row['target']}: {row['measured']}")
    click.echo(f"wall {document['wall_s']} s" + (f"; written to {out}" if out else ""))
