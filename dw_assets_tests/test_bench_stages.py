"""``dw bench stages`` on the tiny world: every row carries a speed, its quality figure and peak memory."""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import pytest
from click.testing import CliRunner

from dw_assets.bench.stages import STAGES, _tree_rss_bytes, bench_stages, stages_command

FIELDS = {"stage", "unit", "throughput", "throughput_min", "throughput_max", "throughput_basis", "quality_name",
          "quality", "seconds", "peak_rss_mb", "cores", "epochs", "load_avg_1m", "runs", "per_run", "detail"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    # item2vec twice: the same world and seed must give the same quality figure in fresh processes.
    result = bench_stages("tiny", runs=1, stages=["simulator", "audio"], workdir=workdir, threads=1)
    result += bench_stages("tiny", runs=2, stages=["item2vec"], workdir=workdir, threads=1)
    return {row["stage"]: row for row in result}


def test_every_row_has_a_speed_a_quality_figure_and_peak_memory(rows):
    assert set(rows) == {"simulator", "item2vec", "audio"}
    for row in rows.values():
        assert set(row) >= FIELDS
        assert row["throughput_min"] <= row["throughput"] <= row["throughput_max"]
        assert row["throughput"] > 0 and row["seconds"] > 0 and row["cores"] >= 1
        assert row["peak_rss_mb"] > 50  # a Python process with numpy/torch loaded, not a zero reading
        assert math.isfinite(row["quality"])
    assert [rows[s]["unit"] for s in ("simulator", "item2vec", "audio")] == ["events/s", "words/s", "clips/s"]
    json.loads(json.dumps(list(rows.values())))  # plain JSON types only


def test_quality_figures_are_in_range(rows):
    simulator = rows["simulator"]
    assert simulator["detail"]["events"] > 10_000
    assert 0 < simulator["quality"] < 0.02  # the tiny preset lands ~0.5% malformed lines
    # Item2vec neighbours share the query's genre far more often than chance.
    item2vec = rows["item2vec"]
    assert item2vec["quality"] > 2 * item2vec["detail"]["chance_genre_agreement"]
    assert 0 < item2vec["quality"] <= 1
    audio = rows["audio"]
    assert -1 <= audio["quality"] <= 1
    assert audio["quality"] > audio["detail"]["holdout_cosine_shuffled"]  # audio predicts its own track's vector


def test_same_world_and_seed_give_the_same_quality_in_fresh_processes(rows):
    runs = rows["item2vec"]["per_run"]
    assert len(runs) == 2 and runs[0]["quality"] == runs[1]["quality"]


def test_unknown_stage_or_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown stages"):
        bench_stages("tiny", 1, ["spark"], tmp_path)
    with pytest.raises(ValueError, match="preset"):
        bench_stages("huge", 1, list(STAGES), tmp_path)


def test_command_prints_json_and_reuses_the_world(tmp_path):
    runner = CliRunner()
    args = ["--preset", "tiny", "--runs", "1", "--stages", "simulator", "--json", "--workdir", str(tmp_path)]
    result = runner.invoke(stages_command, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [row["stage"] for row in summary["stages"]] == ["simulator"]
    assert len(summary["load_avg_before"]) == 3
    assert (tmp_path / "world" / "landing" / "manifest.json").exists()


def test_tree_rss_counts_this_process():
    assert _tree_rss_bytes(os.getpid()) > 10 * 2**20


def test_demo_bench_samples_the_memory_of_the_whole_process_tree(tmp_path):
    from dw_assets.bench.demo import run_sampled

    # A parent that forks a child holding ~300 MB: the peak must see the child, not just the parent.
    script = ("import subprocess, sys; print('step: holding', flush=True); subprocess.run([sys.executable, '-c', "
              "'import time; b = bytearray(300 * 2**20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(3)'])")
    timeline = tmp_path / "timeline.csv"
    result = run_sampled([sys.executable, "-c", script], dict(os.environ), tmp_path / "log.txt", interval_s=0.2,
                         timeline=timeline)
    assert result["returncode"] == 0 and result["wall_s"] >= 3
    assert 0.28 <= result["peak_pss_gb"] <= result["peak_rss_gb"] + 1e-9
    assert len(result["at_peak"]) == 2 and all(row["command"] for row in result["at_peak"])
    assert result["step_at_peak"] == "step: holding"
    rows = list(csv.DictReader(timeline.open()))
    assert len(rows) >= 10 and max(float(r["driver_gb"]) for r in rows) >= 0.28
    assert all(float(r["jvm_gb"]) == 0 for r in rows)
