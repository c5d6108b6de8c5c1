"""``dw bench scale``: the week on a Spark standalone cluster at growing user counts, with the
driver's and the executors' peak memory.

The claim it tests: work at user or event scale runs on the executors, so the driver's memory
stays flat as users grow (goal: peak at x16 users <= 1.2 x peak at x1) while wall time grows at
most linearly. Each size is a fresh simulated world (the ``tiny`` preset's catalog and weeks,
users x factor, same seed) and one ``dw run`` against the cluster, in a fresh process tree:

- driver: the ``dw run`` process and its descendants (the driver JVM that pyspark launches, the
  process that trains item2vec alongside), summed resident set, split into Python and JVM;
- executors: every ``CoarseGrainedExecutorBackend`` JVM of the cluster and its Python workers;
- steps: wall seconds of each Dagster step (all runs of the week summed) and the rows each asset
  materialized for the target week, read back from the run's ``DAGSTER_HOME``.

Sampled from ``/proc`` every ``interval_s`` (Linux), as ``dw bench demo`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import click

from dw_assets import settings
from dw_assets.bench.demo import last_line, process_kind
from dw_assets.bench.stages import tree_memory
from dw_assets.procfs import parent_pid

DEFAULT_MASTER = "spark://127.0.0.1:7077"
CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "spark-cluster.sh"
EXECUTOR_MARK = "CoarseGrainedExecutorBackend"
FLAT_DRIVER_RATIO = 1.2


WORKER_MARK = "org.apache.spark.deploy.worker.Worker"


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def executor_pids(master: str | None = None) -> list[int]:
    """The executor JVMs on this host; with ``master``, only those launched by that cluster's
    workers (another cluster, e.g. the tests', may share the host)."""
    pids, workers = [], set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        line = _cmdline(int(entry.name))
        if EXECUTOR_MARK.encode() in line:
            pids.append(int(entry.name))
        elif master and WORKER_MARK.encode() in line and master.encode() in line:
            workers.add(int(entry.name))
    if master is None:
        return pids
    return [pid for pid in pids if parent_pid(pid) in workers]


def sample_memory(driver_pid: int, master: str | None = None) -> dict[str, int]:
    """Resident bytes now: the driver tree (Python / JVM) and all executors with their Python workers."""
    driver = {"python": 0, "jvm": 0}
    for row in tree_memory(driver_pid):
        driver["jvm" if process_kind(row["command"]) == "jvm" else "python"] += row["rss"]
    executors = sum(row["rss"] for pid in executor_pids(master) for row in tree_memory(pid))
    return {"driver_python": driver["python"], "driver_jvm": driver["jvm"],
            "driver": driver["python"] + driver["jvm"], "executors": executors}


def run_measured(command: list[str], env: dict, log: Path, interval_s: float = 0.5, master: str | None = None) -> dict:
    """Run ``command`` to completion; its wall seconds and the peak of each memory figure (MB)."""
    peaks: dict[str, int] = defaultdict(int)
    step_at_driver_peak = ""
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        while child.poll() is None:
            now = sample_memory(child.pid, master)
            if now["driver"] > peaks["driver"]:
                step_at_driver_peak = last_line(log)
            for key, value in now.items():
                peaks[key] = max(peaks[key], value)
            time.sleep(interval_s)
    return {"returncode": child.returncode, "wall_s": round(time.perf_counter() - started, 1),
            **{f"peak_{k}_mb": round(v / 2**20) for k, v in peaks.items()},
            "step_at_driver_peak": step_at_driver_peak}


def step_report(dagster_home: Path, week: str) -> dict:
    """Per step: wall seconds summed over the runs in ``dagster_home``; per asset: rows of ``week``."""
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.from_config(str(dagster_home))
    seconds: dict[str, float] = defaultdict(float)
    rows: dict[str, int] = {}
    try:
        for run in instance.get_runs():
            started: dict[str, float] = {}
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is None:
                    continue
                if event.event_type == DagsterEventType.STEP_START:
                    started[event.step_key] = record.timestamp
                elif event.event_type == DagsterEventType.STEP_SUCCESS and event.step_key in started:
                    seconds[event.step_key] += record.timestamp - started.pop(event.step_key)
                elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                    materialization = event.event_specific_data.materialization
                    count = materialization.metadata.get("dagster/row_count")
                    if count is not None and materialization.partition == week:
                        rows[materialization.asset_key.to_user_string()] = int(count.value)
    finally:
        instance.dispose()
    return {"step_seconds": {k: round(v, 1) for k, v in sorted(seconds.items())}, "rows": dict(sorted(rows.items()))}


def bench_scale(workdir: Path, base_users: int, factors: list[int], master: str, seed: int = 7,
                driver_memory: str = "1g", max_result_size: str = "16m", env_extra: dict | None = None,
                progress=print) -> dict:
    """Simulate and run one world per factor on the cluster at ``master``; the JSON document."""
    from dw_assets.simulate import config_for

    tiny = config_for("tiny")
    workdir = workdir.resolve()  # DAGSTER_HOME must be absolute
    sizes = []
    for factor in factors:
        world = workdir / f"users-x{factor}"
        shutil.rmtree(world, ignore_errors=True)
        world.mkdir(parents=True)
        users = base_users * factor
        dw = str(Path(sys.executable).with_name("dw"))
        simulated = subprocess.run([dw, "simulate", "--out", str(world), "--preset", "tiny", "--seed", str(seed),
                                    "--users", str(users), "--tracks", str(tiny.tracks)],
                                   capture_output=True, text=True)
        if simulated.returncode:
            raise click.ClickException(f"simulating x{factor} failed: {simulated.stderr[-2000:]}")
        manifest = json.loads((world / "landing" / "manifest.json").read_text())
        week = manifest["last_training_week"]
        home = world / "dagster_home"
        env = dict(os.environ, DAGSTER_HOME=str(home), DW_SPARK_MASTER=master, DW_SPARK_DRIVER_MEMORY=driver_memory,
                   DW_SPARK_DRIVER_MAX_RESULT_SIZE=max_result_size, DW_SPARK_CORES_MAX="2",
                   PYSPARK_PYTHON=sys.executable, **(env_extra or {}))
        progress(f"x{factor}: {users:,} users, week {week}: dw run on {master}")
        measured = run_measured([dw, "run", "--lake", str(world)], env, world / "run.log", master=master)
        if measured["returncode"]:
            raise click.ClickException(f"dw run at x{factor} failed ({world / 'run.log'}): "
                                       f"{last_line(world / 'run.log')}")
        sizes.append({"factor": factor, "users": users, "tracks": tiny.tracks, "week": week,
                      "event_lines": sum(manifest["counts"]["lines"].values()), **measured,
                      **step_report(home, week)})
        progress(f"x{factor}: {measured['wall_s']} s, driver peak {measured['peak_driver_mb']} MB, "
                 f"executors peak {measured['peak_executors_mb']} MB")
    first, last = sizes[0], sizes[-1]
    driver_ratio = last["peak_driver_mb"] / max(first["peak_driver_mb"], 1)
    wall_ratio = last["wall_s"] / max(first["wall_s"], 1e-9)
    users_ratio = last["users"] / first["users"]
    return {"bench": "scale", "master": master, "driver_memory": driver_memory, "max_result_size": max_result_size,
            "driver_row_limit": (env_extra or {}).get("DW_DRIVER_ROW_LIMIT") or settings.get("DW_DRIVER_ROW_LIMIT"),
            "sizes": sizes, "driver_peak_ratio": round(driver_ratio, 3), "wall_ratio": round(wall_ratio, 3),
            "users_ratio": users_ratio,
            "driver_flat": driver_ratio <= FLAT_DRIVER_RATIO, "wall_at_most_linear": wall_ratio <= users_ratio}


@click.command("scale")
@click.option("--out", "workdir", type=click.Path(path_type=Path), default=Path("data/bench/scale"), show_default=True,
              help="Scratch folder: one world per size, emptied first.")
@click.option("--users", "base_users", type=int, default=300, show_default=True, help="Users at x1 (tiny preset).")
@click.option("--factors", default="1,4,16", show_default=True, help="User multipliers, comma-separated.")
@click.option("--master", default=DEFAULT_MASTER, show_default=True,
              help="Standalone master; the default one is started with scripts/spark-cluster.sh.")
@click.option("--driver-memory", default="1g", show_default=True)
@click.option("--row-limit", type=int, default=None, help="DW_DRIVER_ROW_LIMIT for the runs (the driver guard).")
@click.option("--json", "as_json", is_flag=True)
def scale_command(workdir, base_users, factors, master, driver_memory, row_limit, as_json):
    """The week on a standalone cluster at users x1, x4, x16: driver and executor peak memory, step times, rows."""
    try:
        sizes = sorted({int(f) for f in factors.split(",") if f.strip()})
    except ValueError:
        raise click.BadParameter(f"--factors takes integers like 1,4,16, got {factors!r}") from None
    if not sizes or sizes[0] < 1:
        raise click.BadParameter("--factors must hold positive integers")
    if master == DEFAULT_MASTER:
        started = subprocess.run([str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True)
        if started.returncode:
            raise click.ClickException(f"could not start the standalone cluster: {started.stdout[-1000:]}"
                                       f"{started.stderr[-1000:]}")
    env_extra = {"DW_DRIVER_ROW_LIMIT": str(row_limit)} if row_limit else None
    document = bench_scale(workdir, base_users, sizes, master, driver_memory=driver_memory, env_extra=env_extra,
                           progress=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(document, indent=None if as_json else 2))
