"""``dw bench demo``: the README's demo (simulate + ``dw run``) timed from scratch, with its peak memory.

Memory is the proportional set size (PSS) summed over the whole process tree — the ``dw run``
driver, the Spark JVM and Spark's Python workers — sampled every ``interval_s`` from
``/proc/<pid>/smaps_rollup``. PSS splits pages shared between processes (forked Spark workers
share most of theirs), so the sum is the memory the demo really holds; summed RSS, also
reported, counts shared pages once per process. The processes at the peak are listed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from dw_assets.bench.stages import tree_memory
from dw_assets.procfs import machine_cpu_ticks

TARGET_MINUTES = 15.0
TARGET_PEAK_GB = 8.0


def process_kind(command: str) -> str:
    """Which part of the demo a process is: the Spark JVM, a Spark Python worker, or the driver side."""
    if "java" in command.split(" ", 1)[0]:
        return "jvm"
    if "pyspark.daemon" in command or "pyspark.worker" in command:
        return "spark_python"
    return "driver"


def last_line(log: Path) -> str:
    """The log's last non-empty line (the step the demo is in)."""
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def run_sampled(command: list[str], env: dict, log: Path, interval_s: float = 1.0,
                timeline: Path | None = None) -> dict:
    """Run ``command``, sampling its process tree; wall seconds, peak summed PSS / RSS and the peak's processes.

    ``timeline`` gets one CSV row per sample: seconds, GB of PSS in total and per kind of process,
    the cores the machine kept busy since the last sample (the whole machine: run it on a quiet one),
    and the log line the run was at, to tell which step a peak or an idle core belongs to.
    """
    started = time.perf_counter()
    trace = open(timeline, "w") if timeline else None  # noqa: SIM115 -- closed below, after the child exits
    if trace:
        trace.write("t_s,total_gb,jvm_gb,driver_gb,spark_python_gb,spark_python_processes,busy_cores,step\n")
    ticks = machine_cpu_ticks()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        peak_pss = peak_rss = 0
        at_peak: list[dict] = []
        step_at_peak = ""
        while child.poll() is None:
            rows = tree_memory(child.pid)
            pss, rss = sum(r["pss"] for r in rows), sum(r["rss"] for r in rows)
            step = last_line(log)
            peak_rss = max(peak_rss, rss)
            if pss > peak_pss:
                peak_pss, at_peak, step_at_peak = pss, sorted(rows, key=lambda r: -r["pss"])[:6], step
            if trace:
                kinds = {"jvm": 0, "driver": 0, "spark_python": 0}
                workers = 0
                for r in rows:
                    kind = process_kind(r["command"])
                    kinds[kind] += r["pss"]
                    workers += kind == "spark_python"
                quoted = step.replace('"', "'")
                now = machine_cpu_ticks()
                busy = (os.cpu_count() or 1) * (now[0] - ticks[0]) / max(now[1] - ticks[1], 1) if now and ticks else -1
                ticks = now
                trace.write(f"{time.perf_counter() - started:.0f},{pss / 2**30:.2f},{kinds['jvm'] / 2**30:.2f},"
                            f"{kinds['driver'] / 2**30:.2f},{kinds['spark_python'] / 2**30:.2f},{workers},"
                            f"{busy:.2f},\"{quoted}\"\n")
                trace.flush()
            time.sleep(interval_s)
    if trace:
        trace.close()
    return {"returncode": child.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "peak_pss_gb": round(peak_pss / 2**30, 2), "peak_rss_gb": round(peak_rss / 2**30, 2),
            "step_at_peak": step_at_peak,
            "at_peak": [{**r, "rss_gb": round(r["rss"] / 2**30, 2), "pss_gb": round(r["pss"] / 2**30, 2)}
                        for r in at_peak]}


@click.command("demo")
@click.option("--preset", default="small", show_default=True)
@click.option("--out", "lake", type=click.Path(path_type=Path), default=Path("data/bench/demo"), show_default=True,
              help="Scratch lake, emptied first.")
@click.option("--driver-memory", default=None, help="DW_SPARK_DRIVER_MEMORY for the run (default: the project's).")
@click.option("--timeline", type=click.Path(path_type=Path), default=None,
              help="CSV of memory per kind of process over time, with the step the run was at.")
@click.option("--json", "as_json", is_flag=True)
def demo_command(preset, lake, driver_memory, timeline, as_json):
    """Time the demo (simulate + dw run) from scratch with its peak memory, against its targets: ≤ 15 min and ≤ 8 GB on 2 cores."""
    shutil.rmtree(lake, ignore_errors=True)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    if driver_memory:
        env["DW_SPARK_DRIVER_MEMORY"] = driver_memory
    dw = str(Path(sys.executable).with_name("dw"))
    script = f"{dw} simulate --out {lake} --preset {preset} && {dw} run --lake {lake}"
    lake.parent.mkdir(parents=True, exist_ok=True)
    result = run_sampled(["bash", "-c", script], env, lake.parent / f"{lake.name}.log", timeline=timeline)
    result.update({"preset": preset, "driver_memory": driver_memory or "default", "load_avg_end": os.getloadavg(),
                   "meets_time": result["wall_s"] <= TARGET_MINUTES * 60,
                   "meets_memory": result["peak_pss_gb"] <= TARGET_PEAK_GB})
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"demo ({preset}): {result['wall_s'] / 60:.1f} min (target ≤ {TARGET_MINUTES:.0f}), peak "
               f"{result['peak_pss_gb']} GB PSS / {result['peak_rss_gb']} GB RSS (target ≤ {TARGET_PEAK_GB:.0f} GB), "
               f"exit {result['returncode']}")
    click.echo(f"  at: {result['step_at_peak']}")
    for row in result["at_peak"]:
        click.echo(f"  {row['pss_gb']:>6} GB  {row['command']}")
