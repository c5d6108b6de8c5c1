"""``dw bench project``: the weekly batch at 500M users x 100M tracks, projected from measured rates.

Input: the JSON of ``dw bench all`` (or a hand-assembled document with the same sections). Every
rate comes from that document; every volume is a per-user or per-track ratio measured on the
``small`` world, scaled linearly, unless an option overrides it. Nothing here is measured at full
scale: the output says, per stage, which measured figure and which scaling law it used, so a
reader can redo the arithmetic (docs/scale.md walks through it).

Scaling laws:
- Per-event and per-clip stages scale linearly with their volume; item2vec, the two-tower and the audio CNN
  train on capped samples (linear up to the cap, then fixed work in one process) and embeds every track's clip on the executors (linear in tracks).
- Batch inference: per-user seconds = fixed part + ANN part; the ANN part (IVF-Flat with ~4 sqrt(n)
  lists and a fixed nprobe scans nprobe x n / nlist ~ sqrt(n) vectors) is fitted as
  a + b sqrt(n) on the measured catalog sizes and extrapolated to ``tracks``.
- Publishing: one write per user per replica; ScyllaDB's documented floor of 12,500 simple
  operations/s per physical core (docs.scylladb.com, "Maximizing ScyllaDB Performance").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from dw_assets.embeddings.audio import AudioConfig
from dw_assets.embeddings.item2vec import Item2VecConfig
from dw_assets.embeddings.two_tower_data import TwoTowerConfig

SCYLLA_OPS_PER_CORE = 12_500  # docs.scylladb.com/manual/master/operating-scylla/procedures/tips/benchmark-tips
FLOAT_BYTES = 4


def fit_sqrt(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b sqrt(n) over (n, y) points; (a, b)."""
    xs = [math.sqrt(n) for n, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def project(document: dict, users: float, tracks: float, window_hours: float, volumes: dict) -> dict:
    """Per stage: work, measured rate, core-hours, cores to fit the window, memory; plus the inputs used."""
    rows = []
    stages = {row["stage"]: row for row in document.get("stages", [])}

    def add(stage: str, work: float, unit: str, rate: float, per: str, source: str, memory_gb: float | None = None,
            note: str = "") -> None:
        core_hours = work / rate / 3600 if rate else float("nan")
        rows.append({"stage": stage, "work": work, "work_unit": unit, "rate": rate, "rate_unit": per,
                     "core_hours": core_hours, "cores_in_window": core_hours / window_hours,
                     "memory_gb": memory_gb, "source": source, "note": note})

    if "ingest" in stages:
        events = users * volumes["events_per_user_week"]
        add("Spark bronze -> gold", events, "events", stages["ingest"]["throughput"], "events/s/core",
            "dw bench stages: ingest", note="Python line parser; runs daily as events land, not in the window")
    if "item2vec" in stages:
        # The sentences are a capped seeded-hash sample drawn in Spark: above the cap, more users add no work.
        cap_words = volumes["item2vec_max_sentences"] * volumes["item2vec_words_per_sentence"]
        words = min(users * volumes["item2vec_words_per_user"], cap_words)
        add("item2vec (gensim, driver, capped sample)", words * volumes["item2vec_epochs"], "words",
            stages["item2vec"]["throughput"], "words/s/core", "dw bench stages: item2vec",
            note="one process; fixed by the cap (Item2VecConfig.max_sessions + max_playlists sentences)"
            if words == cap_words else "one process")
    if "two_tower" in stages:
        examples = min(users * volumes["two_tower_examples_per_user"], volumes["two_tower_max_examples"])
        add("two-tower training (driver, capped sample)", examples * volumes["two_tower_epochs"],
            "examples", stages["two_tower"]["throughput"] / max(stages["two_tower"].get("cores", 1), 1),
            "examples/s/core", "dw bench stages: two_tower",
            note="one process, CPU rate; GPU when present (not measured here); fixed by the cap (max_examples)"
            if examples == volumes["two_tower_max_examples"] else "one process, CPU rate; GPU when present")
    if "audio" in stages:
        # One measured rate (training: forward + backward per clip) for all three: an upper bound where the
        # work is forward only (embedding), which has not been measured apart.
        rate = stages["audio"]["throughput"] / max(stages["audio"].get("cores", 1), 1)
        add("audio CNN training (driver, capped sample)", volumes["audio_training_clips"] * volumes["audio_epochs"],
            "clips", rate, "clips/s/core", "dw bench stages: audio",
            note="fixed by the cap, not by users or tracks; GPU when present")
        add("audio CNN embedding (executors, every clip)", tracks, "clips", rate, "clips/s/core",
            "dw bench stages: audio (training rate: forward only costs less)",
            note=f"reads {tracks * volumes['clip_bytes'] / 1e12:.2g} TB of clips a week")
        add("audio CNN, the day's uploads (driver)", volumes["new_tracks_per_week"], "clips", rate, "clips/s/core",
            "dw bench stages: audio (training rate)",
            note="between weekly runs, <= UploadDayConfig.max_uploads a day; not in the window")
    inference = sorted(document.get("inference", []), key=lambda r: r["catalog_tracks"])
    fit = None
    if inference:
        points = [(r["catalog_tracks"], 1.0 / r["users_per_s_per_core"]) for r in inference]
        fit = fit_sqrt(points) if len(points) > 1 else (points[0][1], 0.0)
        per_user_s = fit[0] + fit[1] * math.sqrt(tracks)
        index_gb = tracks * (inference[-1].get("dim", 64) * FLOAT_BYTES + 8) / 1e9
        add("batch inference (candidates -> ranker -> re-ranking)", users, "users", 1.0 / per_user_s,
            "users/s/core", f"dw bench inference at {[r['catalog_tracks'] for r in inference]} tracks, "
            f"fitted s/user = {fit[0]:.2e} + {fit[1]:.2e} sqrt(n)", memory_gb=index_gb,
            note="IVF-Flat index held by every executor (or sharded, see docs/scale.md)")
    value_bytes = volumes["value_bytes"]
    writes = users * volumes["replication"]
    add("publish to ScyllaDB", writes, "replica writes", SCYLLA_OPS_PER_CORE, "ops/s/core",
        "ScyllaDB docs: >= 12.5k simple ops/s per physical core",
        memory_gb=None, note=f"{users * value_bytes * volumes['replication'] * (volumes['keep_weeks'] + 1) / 1e12:.2f} "
                             f"TB on disk for {volumes['keep_weeks'] + 1} weeks at RF {volumes['replication']}")
    return {"users": users, "tracks": tracks, "window_hours": window_hours, "volumes": volumes,
            "inference_fit_s_per_user": fit, "rows": rows,
            "total_core_hours_in_window": sum(r["core_hours"] for r in rows
                                              if "daily" not in r["note"] and "not in the window" not in r["note"])}


def merge_documents(documents: list[dict]) -> dict:
    """One document from several: stages by name (later files win), inference rows by catalog size (likewise)."""
    stages: dict[str, dict] = {}
    inference: dict[int, dict] = {}
    for document in documents:
        stages.update({row["stage"]: row for row in document.get("stages", [])})
        inference.update({row["catalog_tracks"]: row for row in document.get("inference", [])})
    return {"stages": list(stages.values()), "inference": [inference[n] for n in sorted(inference)]}


def format_projection(result: dict) -> str:
    lines = [f"{result['users']:.3g} users x {result['tracks']:.3g} tracks, {result['window_hours']:.0f} h window",
             f"{'stage':<55} {'work':>10} {'rate':>22} {'core-h':>9} {'cores':>7}  source"]
    for r in result["rows"]:
        lines.append(f"{r['stage']:<55} {r['work']:>10.3g} {r['rate']:>12.4g} {r['rate_unit']:<9} "
                     f"{r['core_hours']:>9.4g} {r['cores_in_window']:>7.4g}  {r['source']}"
                     + (f" [{r['note']}]" if r["note"] else "")
                     + (f" [index {r['memory_gb']:.1f} GB]" if r["memory_gb"] else ""))
    lines.append(f"in-window total: {result['total_core_hours_in_window']:.4g} core-hours")
    return "\n".join(lines)


DEFAULT_VOLUMES = {
    # Ratios of the simulated `small` world (docs/scale.md: where each comes from).
    "events_per_user_week": 18.4,  # 441,060 landed lines in week 2026-02-23 / 24,020 users
    "item2vec_words_per_user": 116.4,  # 2,795,704 corpus words / 24,020 users (item2vec_embeddings metadata)
    "item2vec_epochs": Item2VecConfig.epochs,
    "item2vec_max_sentences": Item2VecConfig.max_sessions + Item2VecConfig.max_playlists,  # the sample's cap
    "item2vec_words_per_sentence": 8.05,  # 23,647 words / 2,937 sentences (tiny, item2vec_embeddings metadata)
    "two_tower_examples_per_user": 41.6,  # 1,000,000 training examples (cap) / 24,020 users
    "two_tower_max_examples": TwoTowerConfig.max_examples,  # the most recent examples kept
    "two_tower_epochs": TwoTowerConfig.epochs,
    "new_tracks_per_week": 700_000,  # assumption: ~100k uploads a day (industry figure, not measured)
    "audio_epochs": AudioConfig.epochs,
    "audio_training_clips": AudioConfig.max_warm_tracks,  # of the audio asset's <= 100 k sampled clips
    "clip_bytes": 16_000,  # a 1 s clip at 8 kHz, int16
    "value_bytes": 778,  # mean zlib JSON playlist value in the demo's SQLite store
    "replication": 3,
    "keep_weeks": 4,
}


@click.command("project")
@click.option("--bench", "bench_files", type=click.Path(exists=True, path_type=Path), required=True, multiple=True,
              help="JSON of `dw bench all --out` or `dw bench stages --json`; repeat it: a later file's stages "
                   "replace an earlier file's stages of the same name.")
@click.option("--users", type=float, default=500e6, show_default=True)
@click.option("--tracks", type=float, default=100e6, show_default=True)
@click.option("--window-hours", type=float, default=24.0, show_default=True)
@click.option("--events-per-user-week", type=float, default=DEFAULT_VOLUMES["events_per_user_week"],
              show_default=True)
@click.option("--new-tracks-per-week", type=float, default=DEFAULT_VOLUMES["new_tracks_per_week"], show_default=True)
@click.option("--json", "as_json", is_flag=True)
def project_command(bench_files, users, tracks, window_hours, events_per_user_week, new_tracks_per_week, as_json):
    """Project the weekly batch to full scale from a `dw bench all` document (cores, hours, memory per stage)."""
    volumes = {**DEFAULT_VOLUMES, "events_per_user_week": events_per_user_week,
               "new_tracks_per_week": new_tracks_per_week}
    result = project(merge_documents([json.loads(f.read_text()) for f in bench_files]), users, tracks,
                     window_hours, volumes)
    result["bench_files"] = [str(f) for f in bench_files]
    click.echo(json.dumps(result, indent=2) if as_json else format_projection(result))
