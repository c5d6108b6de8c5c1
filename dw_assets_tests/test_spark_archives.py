"""The executors' Python comes from a packed venv shipped with ``spark.archives`` (``DW_SPARK_PYTHON_ARCHIVE``),
on the real standalone cluster (scripts/spark-cluster.sh).

The project's venv (~6.6 GB with CUDA torch, installed editable) is not what this test packs: it builds a small
venv with what a ``mapInPandas`` worker needs (numpy, pandas, pyarrow at the pinned versions), packs it with
venv-pack once per machine (cached under the checkout's git-ignored ``.cache/``, keyed by the pins and the
interpreter), and checks that the executors' Python workers ran from the copy Spark unpacked beside them.
pyspark itself is not in the archive: the workers import it from Spark's ``python/lib/pyspark.zip``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
CACHE = ROOT / ".cache" / "spark-python-archive"
# What a pandas step's Python worker imports besides pyspark (which comes from Spark's python/lib zips).
EXECUTOR_PACKAGES = ("numpy", "pandas", "pyarrow")
BUILD_TIMEOUT_S = 900  # measured: ~8 s to install from pip's cache (~24 s from PyPI), ~6-12 s to pack


def _base_python() -> str:
    """The interpreter the project venv was made from: the packed venv's bin/python links to it, so it must
    exist at the same path on every executor host (here: this host)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def small_venv_archive() -> Path:
    """A venv-pack archive of a venv with ``EXECUTOR_PACKAGES`` at the pins of constraints.txt, built once per
    machine: a later call (or run) finds it in the cache and needs no network."""
    base = _base_python()
    key = hashlib.sha256(b"\0".join([CONSTRAINTS.read_bytes(), " ".join(EXECUTOR_PACKAGES).encode(),
                                     os.path.realpath(base).encode(), sys.version.encode()])).hexdigest()[:12]
    archive = CACHE / f"executor-venv-{key}.tar.gz"
    if archive.exists():
        return archive
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".build-") as tmp:
        venv, packed = Path(tmp) / "venv", Path(tmp) / "venv.tar.gz"
        steps = [
            [base, "-m", "venv", "--without-pip", str(venv)],
            # this venv's pip installs into the new one (--python): no pip or setuptools in the archive
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
             "--disable-pip-version-check", "-c", str(CONSTRAINTS), *EXECUTOR_PACKAGES],
            [str(Path(sys.executable).parent / "venv-pack"), "--quiet", "-p", str(venv), "-o", str(packed)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                pytest.fail(f"building the executors' venv archive: {step[:4]} exited {done.returncode}\n"
                            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        assert not list((venv / "lib").glob("python*/site-packages/pyspark")), "pyspark must come from Spark's zips"
        os.replace(packed, archive)  # atomic: a concurrent build's result is as good
    return archive


# A driver of its own (the test process holds a local-mode session; a JVM's master cannot change), started the
# way `dw run` starts it: definitions' build_resources -> the pyspark resource's session, with use_this_interpreter
# run at import. Prints where the Python workers ran and what they computed, as JSON on the last line.
PROBE = """
import json, sys
from dw_assets.definitions import build_resources

spark = build_resources(lake_root=sys.argv[1])["pyspark"].spark_session


def probe(batches):
    import os, sys
    import numpy, pandas, pyarrow, pyspark
    for batch in batches:
        yield pandas.DataFrame({"rows": [len(batch)], "sum_sq": [int((batch["x"].to_numpy() ** 2).sum())],
                                "prefix": [sys.prefix], "executable": [sys.executable], "cwd": [os.getcwd()],
                                "pandas": [pandas.__file__], "pyarrow": [pyarrow.__file__],
                                "numpy": [numpy.__file__], "pyspark": [pyspark.__file__]})


schema = ("rows long, sum_sq long, prefix string, executable string, cwd string, pandas string, pyarrow string, "
          "numpy string, pyspark string")
out = spark.range(0, 1000, numPartitions=4).withColumnRenamed("id", "x").mapInPandas(probe, schema).collect()
sc = spark.sparkContext
print(json.dumps({"master": sc.master, "python_exec": sc.pythonExec, "archives": sc.getConf().get("spark.archives"),
                  "cores_max": sc.getConf().get("spark.cores.max"), "workers": [row.asDict() for row in out]}))
"""


def test_local_mode_keeps_this_venvs_python_whatever_the_archive_setting(monkeypatch):
    # local mode unpacks no archive (as_conf leaves spark.archives out): ./env/bin/python would not exist
    from dw_assets.ingest.spark import use_this_interpreter

    monkeypatch.setenv("DW_SPARK_PYTHON_ARCHIVE", "/opt/dw/venv.tar.gz#env")
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    for local in (None, "local[2]"):
        if local is None:
            monkeypatch.delenv("DW_SPARK_MASTER", raising=False)
        else:
            monkeypatch.setenv("DW_SPARK_MASTER", local)
        use_this_interpreter()
        assert os.environ["PYSPARK_PYTHON"] == sys.executable
    monkeypatch.setenv("DW_SPARK_MASTER", "spark://10.0.0.5:7077")
    use_this_interpreter()
    assert os.environ["PYSPARK_PYTHON"] == "./env/bin/python"


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)  # the archive's build on a cold cache, then ~30 s on the cluster
def test_executors_run_the_python_of_a_packed_venv_shipped_with_spark_archives(spark_cluster, tmp_path):
    started = time.monotonic()
    archive = small_venv_archive()
    built_s = time.monotonic() - started
    env = {**os.environ, "DW_SPARK_MASTER": spark_cluster, "DW_SPARK_PYTHON_ARCHIVE": f"{archive}#env",
           # one core of the three 1-core workers (another cluster test may hold two); the s3a:// jars are
           # at the same path for the executors (one host), so they are not shipped
           "DW_SPARK_CORES_MAX": "1", "DW_SPARK_JARS_SHARED": "1", "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "PYSPARK_PYTHON": sys.executable}  # what the Makefile exports: the archive's setting must win over it
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "lake")], capture_output=True, text=True,
                          env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-6000:]}"
    ran = json.loads(done.stdout.strip().splitlines()[-1])
    for cwd in {w["cwd"] for w in ran["workers"]}:  # the application has ended: its unpacked copy (~330 MB)
        shutil.rmtree(Path(cwd) / "env", ignore_errors=True)  # would stay until the worker's daily clean-up
    print(f"archive {archive.stat().st_size / 2**20:.0f} MB ready in {built_s:.1f} s; "
          f"cluster run {time.monotonic() - started - built_s:.1f} s")

    assert ran["master"] == spark_cluster and ran["cores_max"] == "1"
    assert ran["archives"] == f"{archive}#env" and ran["python_exec"] == "./env/bin/python"
    workers = ran["workers"]
    assert len({w["cwd"] for w in workers}) == 1  # one executor: the application's one core
    # the right answer: 4 partitions of 0..999, the sum of squares computed on the executors
    assert sorted(w["rows"] for w in workers) == [250] * 4
    assert sum(w["sum_sq"] for w in workers) == sum(x * x for x in range(1000))
    for w in workers:
        # the interpreter and the pandas stack of the copy Spark unpacked into the executor's working folder...
        assert w["prefix"] == os.path.join(w["cwd"], "env"), w
        assert "/env/" in w["executable"] and w["executable"].startswith(w["cwd"]), w
        for package in EXECUTOR_PACKAGES:
            assert w[package].startswith(w["prefix"] + "/lib/"), (package, w)
        # ...not the driver's venv; and the worker code itself from Spark's python/lib zip, not the archive
        assert not w["prefix"].startswith(sys.prefix) and not w["executable"].startswith(sys.prefix), w
        assert "/python/lib/pyspark.zip/" in w["pyspark"], w
