"""The deployment settings: every ``DW_*`` environment variable the package reads, named once.

Each :class:`Setting` has its name, default, parser and description; :func:`get` reads it when
called (never at import: a test or a process that changes the environment sees the change), and a
value that does not parse raises :class:`SettingError` naming the variable (and, unless it is a
secret, the value). README's "Configuration" table lists the same names
(``dw_assets_tests/test_settings.py`` checks both ways). Resources that Dagster builds take the lake
and store settings as ``dagster.EnvVar`` (``env_var``) so the UI shows which variable a field reads.

Writes to ``os.environ`` that set up child processes (``PYSPARK_PYTHON``, credentials forwarded to
Spark's Python workers, ``DAGSTER_HOME`` for a run's instance) stay where they happen.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class SettingError(ValueError):
    """An environment variable holds a value its setting cannot take (the message names the variable)."""


def text(raw: str) -> str:
    return raw


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def non_negative_number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number >= 0")
    return value


def flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0 (true / false)")


def memory(raw: str) -> str:
    if not re.fullmatch(r"\d+([kmgtp]b?|b)?", raw, flags=re.I):
        raise ValueError("must be a JVM memory size such as 512m or 2g")
    return raw


def monday(raw: str) -> str:
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        day = None
    if day is None or day.weekday() != 0 or raw != day.isoformat():
        raise ValueError("must be a Monday as YYYY-MM-DD")
    return raw


@dataclass(frozen=True)
class Setting:
    """One environment variable: ``default`` when unset or blank (None: unset, the reader decides)."""

    name: str
    description: str
    default: Any = None
    parse: Callable[[str], Any] = text
    secret: bool = False  # never echoed in an error; taken as set (not stripped)

    def raw(self) -> str | None:
        value = os.environ.get(self.name)
        if value is None or not value.strip():
            return None
        return value if self.secret else value.strip()

    def is_set(self) -> bool:
        return self.raw() is not None

    def get(self) -> Any:
        raw = self.raw()
        if raw is None:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            shown = "" if self.secret else f", got {raw!r}"
            raise SettingError(f"{self.name} {exc}{shown}") from None

    def env_var(self) -> Any:
        """``dagster.EnvVar(name)``: a resource field Dagster resolves when a run starts."""
        from dagster import EnvVar

        return EnvVar(self.name)


_ALL = (
    # The lake and the serving store
    Setting("DW_LAKE", "lake root for `dagster dev` (`dw run --lake` sets it per run); `s3://bucket/prefix` for S3",
            "data/demo"),
    Setting("DW_S3_ENDPOINT_URL", "S3-compatible endpoint (MinIO, …); unset: AWS. Credentials only from `AWS_*`"),
    Setting("DW_STORE_URL", "serving store for `dw run` / `dagster dev` / the API factory; unset: "
                            "`LAKE/serving/playlists.db` (SQLite) beside a local lake"),
    Setting("DW_REDIS_PASSWORD", "Redis store password (never in URLs, logs or metadata)", secret=True),
    Setting("DW_SCYLLA_USERNAME", "Cassandra / Scylla store user", secret=True),
    Setting("DW_SCYLLA_PASSWORD", "Cassandra / Scylla store password", secret=True),
    # Partitions and runs
    Setting("DW_FIRST_WEEK", "first weekly partition (a Monday); read when the code location loads", "2026-01-05",
            monday),
    Setting("DAGSTER_HOME", "where runs are recorded; `dw` commands default it to `LAKE/dagster_home`"),
    Setting("DW_QUEUE_WAIT_S", "seconds `dw run` / `dw backfill` wait for another weekly run in progress",
            1800.0, non_negative_number),
    # Spark (unset: SparkSettings' defaults)
    Setting("DW_SPARK_MASTER", "Spark master URL; unset: `local[*]` (SparkSettings.master)"),
    Setting("DW_SPARK_SHUFFLE_PARTITIONS", "spark.sql.shuffle.partitions; unset: SparkSettings' 8",
            parse=positive_int),
    Setting("DW_SPARK_DRIVER_MEMORY", "spark.driver.memory; unset: SparkSettings' 2g", parse=memory),
    Setting("DW_SPARK_DRIVER_MAX_RESULT_SIZE", "spark.driver.maxResultSize (a cluster); unset: Spark's", parse=memory),
    Setting("DW_SPARK_EXECUTOR_MEMORY", "spark.executor.memory (a cluster); unset: Spark's", parse=memory),
    Setting("DW_SPARK_EXECUTOR_CORES", "spark.executor.cores (a cluster); unset: Spark's", parse=positive_int),
    Setting("DW_SPARK_CORES_MAX", "spark.cores.max (a cluster); unset: the cluster's", parse=positive_int),
    Setting("DW_SPARK_PYTHON_ARCHIVE", "packed venv `archive.tar.gz#alias` the executors run"),
    Setting("DW_SPARK_JARS_DIR", "folder of the s3a:// jars; unset: `.cache/spark-jars`"),
    Setting("DW_SPARK_JARS_SHARED", "1: the s3a jars are at the same path on every host (class path, not shipped)",
            parse=flag),
    # The driver guard
    Setting("DW_DRIVER_ROW_LIMIT", "rows of a user/event-scale table the driver may hold; unset: only counted",
            parse=positive_int),
    Setting("DW_DRIVER_GUARD_REPORT", "JSON-lines file recording driver-guard violations instead of raising"),
    # Candidate generation: one memory-mapped model set per executor host
    Setting("DW_MODEL_CACHE_DIR", "host-local folder of the memory-mapped model sets Spark workers share; "
            "unset: <temp dir>/dw-model-cache"),
    # The ranker
    Setting("DW_COMPILE_CACHE", "cache folder of the ranker's compiled trees; unset: the temp directory"),
    # The HTTP API
    Setting("DW_ADMIN_TOKEN", "bearer token (>= 16 chars) of the admin routes; unset: no admin routes", secret=True),
    Setting("DW_RATE_LIMIT_RPS", "API requests per second per client IP and worker; 0: off", 2000.0,
            non_negative_number),
    Setting("DW_RATE_LIMIT_BURST", "API token bucket size; unset: 2 s of the rate", parse=non_negative_number),
    Setting("DW_RETRY_AFTER_S", "`Retry-After` seconds of the API's 503s", 1.0, non_negative_number),
    Setting("DW_GC_FREEZE", "0: leave Python's garbage collector as it is in the API server", True, flag),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _ALL}


def setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"{name} is not a setting of dw_assets.settings") from None


def get(name: str) -> Any:
    """The value of setting ``name`` now (its default when unset); SettingError naming it if malformed."""
    return setting(name).get()


def is_set(name: str) -> bool:
    return setting(name).is_set()


def env_var(name: str) -> Any:
    """``dagster.EnvVar`` of setting ``name``."""
    return setting(name).env_var()
