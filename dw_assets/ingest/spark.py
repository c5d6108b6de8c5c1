"""Spark session settings that suit this project (local mode by default), and per-user batch helpers."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dw_assets import settings

# hadoop-aws + the AWS SDK bundle for s3a://, fetched by scripts/spark-jars.sh (versions pinned in
# scripts/spark-jars/pom.xml); DW_SPARK_JARS_DIR points elsewhere (e.g. a cluster image's folder).
SPARK_JARS_DIR = Path(__file__).resolve().parents[2] / ".cache" / "spark-jars"
SPARK_JARS_SCRIPT = "scripts/spark-jars.sh"


PYTHON_ARCHIVE_ENV = "DW_SPARK_PYTHON_ARCHIVE"


def python_archive(value: str | None = None) -> tuple[str, str] | None:
    """``DW_SPARK_PYTHON_ARCHIVE`` (``path/or/url.tar.gz#alias``, a packed venv) as (archive, alias), or None.

    Spark unpacks the archive into every executor's working folder as ``./<alias>``; the alias
    defaults to ``env`` when the value has no ``#``."""
    raw = ((settings.get(PYTHON_ARCHIVE_ENV) or "") if value is None else value).strip()
    if not raw:
        return None
    archive, _, alias = raw.partition("#")
    alias = alias or "env"
    if not archive or "/" in alias or alias in (".", ".."):
        raise ValueError(f"{PYTHON_ARCHIVE_ENV} must be `archive.tar.gz#alias` (alias: a plain folder name), got {raw!r}")
    return archive, alias


def use_this_interpreter() -> None:
    """Spark's Python workers must run the interpreter that has our packages.

    On one host (local mode, or a standalone cluster on this machine) that is this venv's python.
    With ``DW_SPARK_PYTHON_ARCHIVE`` and a cluster master the executors run the packed venv Spark
    unpacks beside them instead: pyspark takes the executors' interpreter from ``PYSPARK_PYTHON``
    alone (not from the session conf), so it is set here, before any session starts. Local mode
    unpacks no archive (``SparkSettings.as_conf``), so there it stays this venv's python."""
    packed = python_archive()
    master = settings.get(SPARK_ENV["master"]) or SparkSettings.master
    if packed and not SparkSettings(master=master).is_local:
        os.environ["PYSPARK_PYTHON"] = f"./{packed[1]}/bin/python"
    else:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def pyspark_hadoop_version() -> str | None:
    """The Hadoop version inside the installed pyspark (its ``hadoop-client-api-<version>.jar``)."""
    import pyspark

    found = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    return found[0].stem.removeprefix("hadoop-client-api-") if found else None


def s3a_jars(folder: str | Path | None = None) -> tuple[list[str], str | None]:
    """(the jars of ``folder`` for s3a://, None) when it holds a complete fetch of hadoop-aws for pyspark's
    Hadoop; else ([], why not, naming the command that fixes it)."""
    folder = Path(folder or settings.get("DW_SPARK_JARS_DIR") or SPARK_JARS_DIR)
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    aws = [Path(j).stem.removeprefix("hadoop-aws-") for j in jars if Path(j).name.startswith("hadoop-aws-")]
    complete = any(folder.glob(".complete-*")) and any(Path(j).name.startswith("bundle-") for j in jars)
    if not aws or not complete:
        return [], f"{folder} does not hold hadoop-aws and the AWS SDK bundle: run {SPARK_JARS_SCRIPT}"
    hadoop = pyspark_hadoop_version()
    if hadoop and aws != [hadoop]:
        return [], (f"{folder} holds hadoop-aws {', '.join(aws)} but pyspark bundles Hadoop {hadoop}: set "
                    f"hadoop.version (and awssdk.version) in scripts/spark-jars/pom.xml, then run {SPARK_JARS_SCRIPT}")
    return jars, None


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"
    # The most partitions a shuffle starts with: on a cluster adaptive execution coalesces each stage's to
    # ~64 MB each, so one ceiling serves every stage. Size it for the largest (the 12-week window's joins:
    # at 500 M users ~6 TB, so ~100,000); 8 suits the demo worlds on 2 cores (local mode: fixed).
    shuffle_partitions: int = 8
    driver_memory: str = "2g"  # local mode: the JVM grows to whatever it is given; `small` needs ~2 GB
    # Rows per Arrow batch into and out of Python. Spark 4 checks a batch's byte size after every row it
    # writes, and for a list column that check walks the batch so far: cost grows with the square of the
    # batch's rows. The evaluation's per-user metrics (4.5 M small rows with list columns) spent 75 s in it
    # at 20,000 rows per batch, 34 s at 2,000 (27 s with no check at all; same numbers). Spark's byte cap
    # (maxBytesPerBatch, 64 MB) still bounds batches of wide rows (a user's ~500 candidates, audio clips).
    arrow_batch_rows: int = 2_000
    # A frame made on the driver (a bounded sample's lists, a track table) larger than this reaches Spark as
    # Arrow batches; Spark's default (48 MB) keeps it a local relation: its rows as JVM objects in the
    # driver's heap for the plan's life (~15x the Arrow bytes), which sent `small`'s offline evaluation
    # (2.2 M baseline list rows) into minutes of full GCs. Below it (sample ids) a frame stays broadcastable.
    local_relation_bytes: int = 1 << 20
    jars_dir: str | None = None  # the s3a:// jars' folder; None: DW_SPARK_JARS_DIR, else SPARK_JARS_DIR
    # A cluster's driver holds models, bounded samples and aggregates only (lake/driver_guard.py), so it
    # can stay small whatever the world's size; a collect above this cap fails instead of swapping it.
    driver_max_result_size: str | None = None  # None: Spark's 1g
    executor_memory: str | None = None  # per executor JVM (a cluster only); None: Spark's 1g
    executor_cores: int | None = None  # per executor (a cluster only); None: all of a standalone worker's
    # Cores this application may hold (a cluster only). `dw run` trains item2vec in a second process, a second
    # application, alongside the first: on a standalone cluster the first takes every core unless capped.
    cores_max: int | None = None
    python_archive: str | None = None  # `packed-venv.tar.gz#alias` shipped to executors (a cluster only)
    # The s3a:// jars are at the same path on every executor host (this host's standalone cluster, or an
    # image that bakes them in): put on the classpath there instead of shipped (~690 MB per executor).
    jars_shared: bool = False

    @property
    def is_local(self) -> bool:
        return self.master.startswith("local")

    def as_conf(self) -> dict[str, str]:
        """The session's start-up conf. The s3a:// jars are added whenever they are there (a session is
        started once per process, before anyone knows whether it will meet an S3 path); without them a
        local lake works as before and an S3 one fails with the command to fetch them (``lake/s3.py``)."""
        conf = {
            **self._jars_conf(),
            "spark.master": self.master,
            "spark.app.name": "dw_assets",
            "spark.driver.memory": self.driver_memory,
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(self.arrow_batch_rows),
            "spark.sql.execution.arrow.localRelationThreshold": str(self.local_relation_bytes),
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.log.level": "ERROR",
            # Adaptive execution (Spark's default, pinned): joins and skew follow the data's size; on a
            # cluster each shuffle's partition count does too (coalesced to ~64 MB partitions under the
            # shuffle_partitions ceiling). Outputs stay identical across partitionings (the cluster
            # identity test compares them with local mode's fixed partitions): every table is sorted
            # before it is written, and float aggregates do not depend on the order partial sums arrive
            # in (profiles.exact_mean). Explicit repartition(n) (candidates, playlists) is never coalesced.
            # Local mode keeps its fixed partitions: one JVM is driver and executor, and a coalesced
            # stage's fewer, larger tasks and results ran the `small` demo's 2 GB heap out of memory.
            "spark.sql.adaptive.enabled": "true",
            "spark.sql.adaptive.coalescePartitions.enabled": str(not self.is_local).lower(),
            "spark.sql.adaptive.advisoryPartitionSizeInBytes": "64m",
            # A Spark partition on S3 counts once the committer's _SUCCESS marker exists (lake/storage.py;
            # why not the magic committer: lake/s3.py). Hadoop's default, pinned because readers rely on it.
            "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "true",
        }
        if self.driver_max_result_size:
            conf["spark.driver.maxResultSize"] = self.driver_max_result_size
        if not self.is_local:
            conf.update(self._cluster_conf())
        return conf

    def _cluster_conf(self) -> dict[str, str]:
        """Executors in their own JVMs and Python workers: their size, and the Python they run."""
        conf = {}
        if self.executor_memory:
            conf["spark.executor.memory"] = self.executor_memory
        if self.executor_cores:
            conf["spark.executor.cores"] = str(self.executor_cores)
        if self.cores_max:
            conf["spark.cores.max"] = str(self.cores_max)
        packed = python_archive(self.python_archive or "")
        if packed:
            # Unpacked as ./<alias> in every executor's working folder. pyspark's executors follow
            # PYSPARK_PYTHON (use_this_interpreter sets it); spark-submit'ted apps read the conf.
            archive, alias = packed
            conf["spark.archives"] = f"{archive}#{alias}"
            conf["spark.pyspark.python"] = f"./{alias}/bin/python"
        return conf

    def _jars_conf(self) -> dict[str, str]:
        jars, _ = s3a_jars(self.jars_dir)
        if not jars:
            return {}
        if self.is_local:
            # One JVM: the driver's classpath is the executors'. spark.jars would copy the ~690 MB bundle
            # into every session's scratch directory first (~5 s a start here).
            return {"spark.driver.extraClassPath": os.pathsep.join(jars)}
        if self.jars_shared:
            classpath = os.pathsep.join(jars)
            return {"spark.driver.extraClassPath": classpath, "spark.executor.extraClassPath": classpath}
        return {"spark.jars": ",".join(jars)}  # a cluster: shipped to every executor


# SparkSettings field <- its deployment setting (dw_assets.settings).
SPARK_ENV = {
    "master": "DW_SPARK_MASTER", "shuffle_partitions": "DW_SPARK_SHUFFLE_PARTITIONS",
    "driver_memory": "DW_SPARK_DRIVER_MEMORY", "jars_dir": "DW_SPARK_JARS_DIR",
    "driver_max_result_size": "DW_SPARK_DRIVER_MAX_RESULT_SIZE", "executor_memory": "DW_SPARK_EXECUTOR_MEMORY",
    "executor_cores": "DW_SPARK_EXECUTOR_CORES", "cores_max": "DW_SPARK_CORES_MAX",
    "python_archive": PYTHON_ARCHIVE_ENV, "jars_shared": "DW_SPARK_JARS_SHARED",
}


def settings_from_env() -> SparkSettings:
    """``DW_SPARK_MASTER`` points the same code at a cluster; ``DW_SPARK_JARS_DIR`` at other s3a:// jars.

    For a cluster (docs/operations.md): ``DW_SPARK_DRIVER_MEMORY``, ``DW_SPARK_DRIVER_MAX_RESULT_SIZE``,
    ``DW_SPARK_EXECUTOR_MEMORY``, ``DW_SPARK_EXECUTOR_CORES``, ``DW_SPARK_CORES_MAX``, ``DW_SPARK_PYTHON_ARCHIVE``
    (a packed venv, ``venv.tar.gz#env``) and ``DW_SPARK_JARS_SHARED=1`` (the s3a:// jars are at the
    same path on every host)."""
    archive = settings.get(PYTHON_ARCHIVE_ENV)
    python_archive(archive or "")  # a malformed value fails here, naming the setting
    # An unset variable leaves the dataclass's default (SparkSettings holds them).
    given = {field: settings.get(name) for field, name in SPARK_ENV.items()}
    return SparkSettings(**{field: value for field, value in given.items() if value is not None})


# A Python worker keeps the last shipped model set, so it loads each once per job. One, not a few:
# each set is hundreds of MB unpacked, and a job uses one set (the next job replaces it).
_LOADED: dict[str, object] = {}
_LOADED_MAX = 1


def load_once(key: str, load: Callable[[], object]) -> object:
    """``load()`` once per worker process for ``key`` (a content digest of the shipped bytes)."""
    if key not in _LOADED:
        while len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load()
    return _LOADED[key]


def whole_groups(batches: Iterable[pd.DataFrame], key: str) -> Iterator[pd.DataFrame]:
    """Re-cut Arrow batches so each group's rows (contiguous, as after a sort by ``key``) arrive in one frame.

    ``mapInPandas`` cuts a partition into fixed-size batches that can split a
    user's candidates; the trailing group of every batch is carried into the next.
    """
    carry: pd.DataFrame | None = None
    for batch in batches:
        if carry is not None and len(carry):
            batch = pd.concat([carry, batch], ignore_index=True)
        if batch.empty:
            continue
        values = batch[key].to_numpy()
        tail = values == values[-1]
        carry = batch[tail]
        if not tail.all():
            yield batch[~tail].reset_index(drop=True)
    if carry is not None and len(carry):
        yield carry.reset_index(drop=True)


def key_chunks(frame: pd.DataFrame, key: str, max_rows: int) -> Iterator[pd.DataFrame]:
    """``frame`` (sorted by ``key``) in slices of about ``max_rows`` rows that never split a ``key``'s rows."""
    values = frame[key].to_numpy()
    start = 0
    while start < len(frame):
        stop = min(start + max_rows, len(frame))
        while stop < len(frame) and values[stop] == values[stop - 1]:
            stop += 1
        yield frame.iloc[start:stop].reset_index(drop=True)
        start = stop


def map_user_batches(frame, run_batch: Callable[[pd.DataFrame], pd.DataFrame], schema: str,
                     partitions: int, key: str = "user_id", max_rows: int = 500):
    """Spark frame -> Spark frame through ``run_batch`` (a pure pandas function), each ``key``'s rows together.

    The frame is hash-partitioned and sorted by ``key``, so one call sees all
    of a user's rows; ``run_batch`` must be a module-level function or a
    closure over small values (ship big models with a broadcast and ``load_once``).
    A call gets about ``max_rows`` input rows: one row per user carries ~500 candidates, so
    this bounds a Python worker's working set (2,000 users took ~1 GB) without slowing it.
    """
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for group in whole_groups(batches, key):
            for chunk in key_chunks(group, key, max_rows):
                out = run_batch(chunk)
                if len(out):
                    yield out

    return frame.repartition(partitions, key).sortWithinPartitions(key).mapInPandas(run, schema)


def payload_key(data: bytes) -> str:
    """Short content digest naming a shipped model."""
    return hashlib.sha256(data).hexdigest()[:16]
