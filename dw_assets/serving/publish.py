"""Publishing a week of playlists: write it all, verify it, flip ``current_week``, keep N weeks.

The order is the store's consistency contract: readers follow the ``current_week`` pointer,
which moves only after the whole week is written and verified, so a failed or partial publish
leaves last week live. Re-publishing a week replaces it (same inputs -> same stored playlists).

A publisher killed at any step (SIGKILL included; ``test_crash_safety`` kills one at each) leaves:
mid-write or before the flip, last week live and the new week absent or written-but-not-live;
after the flip, the new week live and retention not yet applied. Re-running ``publish_week`` with
the same week completes it: the week is rewritten whole (the killed write's leftovers and the
superseded version are reclaimed, nothing is duplicated), made live, and old weeks dropped.

Retention: ``keep_weeks`` weeks are kept (the newest written ones, plus the live one). It is the
argument when given, else the store URL's ``keep_weeks`` option, else ``DEFAULT_KEEP_WEEKS``.

Two ways in, one contract. ``publish_week`` takes the week as pandas (tests, benchmarks, small
tools) or as a Spark DataFrame (the ``published_playlists`` asset). With Spark, the week never
comes to the driver; sizes at the target (500 M users x 30 tracks = 15 B rows, ~1 kB per stored
user):

1. ``spark_playlist_rows``: one scan of the week (no shuffle) checks the rules of
   ``validate_playlists`` that hold row by row (nulls, positions, ids, finite scores) and counts
   its rows. A handful of numbers reach the driver.
2. The driver starts a new version (``begin_write``: reclaim earlier leftovers, list the version as
   in flight). The week is hash-partitioned by user (about ``rows_per_partition`` rows a task:
   10,000 tasks at the target) and sorted by (user, position) inside each partition.
3. Redis and Cassandra/Scylla (``writes_from_executors``): each task writes its users with the
   store's batched writer (``write_users``: Redis pipelines, concurrent prepared inserts) through one
   connection per Python worker, opened from the store's settings (a store pickles as its settings,
   never a client or a secret: executors read ``DW_REDIS_PASSWORD`` / ``DW_SCYLLA_*`` from their own
   environment). A task checks its users' rows (no two tracks at one position) before writing them
   and returns (users, rows) written; Spark sums them, so the driver gets two numbers. A user's
   rows are all in one task, so the sum of users is the week's exact distinct count (no
   ``countDistinct`` shuffle). A retried or speculative task rewrites the same keys with the same
   values. SQLite, a file on the driver's
   disk, is written by the driver: executors encode each user's value, and the driver receives
   (user_id, value) rows in ascending user order through ``toLocalIterator`` (one partition at a
   time) and commits them in batches. At the target that is 500 GB through one process at
   SQLite's few thousand users a second (days): SQLite is the demo's store, not a production one.
4. The rows written must equal step 1's count, else the version is never registered (StoreError). Then
   ``commit_write`` registers it (one atomic write), and ``verify_week`` checks the store's own
   user count and reads back a sample of users: the ``sample_users`` users with the lowest seeded
   hash of their id (``spark_verification_sample``: a top-k in Spark, at most
   sample_users x 30 rows collected, within ``DW_DRIVER_ROW_LIMIT``).
5. Flip and retention as for pandas.

Measured (10,000 users = 300,000 rows, Spark local[2] on the shared 2-core box under a load
average of ~11, warm second run): Redis 3,150 users/s from one process vs 970 from the executors,
Cassandra 1,260 vs 780. On one small host the shuffle, sort and Arrow hand-off cost more than two
writer tasks gain; what the executor path buys is that the writers run on every executor host
with nothing user-scale on the driver (the single-process writer would need ~29 h at 5k users/s).

``fail_after_users`` (a simulated crash) counts per writer: per Spark task on the executor path,
per publish on the driver path. A failed task fails the job; the version stays unregistered and
listed as in flight, so last week stays live and the next write reclaims it (Redis; Scylla rows
expire with their TTL). Tasks Spark cancels stop within ``spark.python.task.killTimeout`` (2 s).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dw_assets import settings as dw_settings
from dw_assets.lake.driver_guard import bounded, to_driver
from dw_assets.serving.stores import (
    MAX_POSITION,
    PLAYLIST_COLUMNS,
    PlaylistStore,
    Progress,
    StoreError,
    StoreUnavailable,
    check_week,
    encode_playlists,
    validate_playlists,
)

DEFAULT_KEEP_WEEKS = 4
ASSET = "published_playlists"  # the name the driver guard knows this table by


@dataclass(frozen=True)
class PublishSettings:
    """How a Spark DataFrame is published (sizes at the target in the module docstring)."""

    rows_per_partition: int = 1_500_000  # ~50,000 users a writer task; at least one task per core
    sample_seed: int = 20  # salt of the hash that picks the verification sample


def retention_weeks(store: PlaylistStore, keep_weeks: int | None = None) -> int:
    """The weeks to keep: ``keep_weeks`` if given, else the store URL's ``keep_weeks``, else 4."""
    value = next(v for v in (keep_weeks, store.keep_weeks, DEFAULT_KEEP_WEEKS) if v is not None)
    if value < 1:
        raise ValueError("keep_weeks must be at least 1")
    return int(value)


class InjectedFailure(RuntimeError):
    """Raised by ``publish_week(fail_after_users=N)`` once N users are written: a simulated crash."""


def verification_sample(playlists: pd.DataFrame, users: int = 64) -> pd.DataFrame:
    """The rows of up to ``users`` users spread evenly over the sorted user ids (deterministic:
    the same week always checks the same users, first and last included)."""
    ids = np.unique(playlists["user_id"].to_numpy(np.int64))
    if len(ids) > users:
        ids = ids[np.linspace(0, len(ids) - 1, users).round().astype(np.int64)]
    return playlists[playlists["user_id"].isin(ids)]


def _abort_after(limit: int, progress: Progress | None) -> Progress:
    written = 0

    def update(users: int) -> None:
        nonlocal written
        written += users
        if progress is not None:
            progress(users)
        if written >= limit:
            raise InjectedFailure(f"injected failure after {written} users written")

    return update


def _is_spark(frame: Any) -> bool:
    return type(frame).__module__.startswith("pyspark.sql")


def publish_week(store: PlaylistStore, week: str, playlists: Any, keep_weeks: int | None = None,
                 fail_after_users: int | None = None, *, make_live: bool | None = None,
                 sample_users: int = 64, progress: Progress | None = None,
                 settings: PublishSettings = PublishSettings()) -> dict:
    """Write ``week``'s playlists to ``store``, verify, make the week live, apply retention.

    playlists: one row per (user_id, position) with the PLAYLIST_COLUMNS of ``stores``, as pandas
        or as a Spark DataFrame (written from the executors for Redis and Scylla; the module
        docstring has the steps and their sizes).
    keep_weeks: written weeks to keep (the newest ones); the live week is never dropped. None: the
        store URL's ``keep_weeks``, else DEFAULT_KEEP_WEEKS. Refused (ValueError, before anything is
        written) when the store's values expire sooner than that retention needs.
    fail_after_users: raise InjectedFailure once that many users are written (after a write
        batch commits, before the week is registered): the previous week stays live. On the
        executor path each Spark task counts its own users.
    make_live: None (default) flips the pointer unless a newer week is already live, so
        re-running an old partition never rolls serving back; True forces the flip (rollback);
        False only writes and verifies.
    sample_users: users read back and compared after writing.
    progress: called with the users written by each batch (e.g. ``tqdm.update``); on the executor
        path once, with every user, when the writers are done.

    Returns stats: week, users (written), expected_users (distinct users in ``playlists``), rows,
    seconds, write_seconds, verify_seconds, users_per_s (write throughput), writers ("executors" or
    "driver"), live (whether this publish flipped the pointer to ``week``), live_week, keep_weeks,
    kept_weeks, dropped_weeks.
    """
    check_week(week)
    keep_weeks = retention_weeks(store, keep_weeks)
    store.check_retention(keep_weeks)
    started = time.perf_counter()
    if _is_spark(playlists):
        written, expected_users, rows, writers = _write_spark(store, week, playlists, fail_after_users, progress,
                                                              settings)
        write_seconds = time.perf_counter() - started
        verify_started = time.perf_counter()
        sample = spark_verification_sample(playlists, sample_users, settings.sample_seed)
    else:
        validate_playlists(playlists)
        if playlists.empty:
            raise ValueError(f"no playlists to publish for week {week}: refusing to make an empty week live")
        expected_users, rows, writers = int(playlists["user_id"].nunique()), len(playlists), "driver"
        if fail_after_users is not None:
            progress = _abort_after(fail_after_users, progress)
        written = store.write_week(week, playlists, progress=progress)
        write_seconds = time.perf_counter() - started
        verify_started = time.perf_counter()
        sample = verification_sample(playlists, sample_users)
    store.verify_week(week, expected_users, sample)
    verify_seconds = time.perf_counter() - verify_started

    live = store.current_week()
    flip = make_live if make_live is not None else (live is None or week >= live)
    if flip:
        store.set_current_week(week)
        live = week

    weeks = store.weeks()
    kept = set(weeks[-keep_weeks:]) | {live}
    dropped = [w for w in weeks if w not in kept]
    for old in dropped:
        store.drop_week(old)

    seconds = time.perf_counter() - started
    return {
        "week": week, "users": written, "expected_users": expected_users, "rows": rows,
        "seconds": round(seconds, 3), "write_seconds": round(write_seconds, 3),
        "verify_seconds": round(verify_seconds, 3),
        "users_per_s": round(written / write_seconds, 1) if write_seconds > 0 else float("inf"),
        "writers": writers, "live": bool(flip), "live_week": live, "keep_weeks": keep_weeks,
        "kept_weeks": sorted(w for w in kept if w is not None),
        "dropped_weeks": dropped,
    }


# ---------------------------------------------------------------- Spark


def spark_playlist_rows(frame: Any) -> int:
    """The rows of a Spark week, after checking in Spark the row-wise rules of ``validate_playlists``
    (ValueError with the same messages). One scan, no shuffle; one row of counts collected. The
    per-user rule (one track per position) is checked by the writers, on whole users."""
    from pyspark.sql import functions as F

    missing = [c for c in PLAYLIST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"playlists lack columns {missing}")
    flag = lambda condition, name: F.sum(condition.cast("long")).alias(name)  # noqa: E731
    row = frame.agg(
        F.count(F.lit(1)).alias("rows"),
        *[flag(F.col(c).isNull(), f"null_{c}") for c in PLAYLIST_COLUMNS],
        flag((F.col("position") < 1) | (F.col("position") > MAX_POSITION), "bad_position"),
        flag(F.col("user_id") < 0, "negative_user"),
        flag(F.isnan("score") | (F.abs("score") == F.lit(float("inf"))), "bad_score"),
    ).first().asDict()
    bad = {name: int(value or 0) for name, value in row.items() if name != "rows"}
    nulls = [c for c in PLAYLIST_COLUMNS if bad[f"null_{c}"]]
    if nulls:
        raise ValueError(f"playlists have nulls in {nulls}")
    if bad["bad_position"]:
        raise ValueError(f"positions must be in 1..{MAX_POSITION}")
    if bad["negative_user"]:
        raise ValueError("user ids must be non-negative")
    if bad["bad_score"]:
        raise ValueError("scores must be finite")
    return int(row["rows"])


def spark_verification_sample(frame: Any, users: int = 64, seed: int = PublishSettings.sample_seed) -> pd.DataFrame:
    """The rows of the ``users`` users with the lowest seeded hash of their id (deterministic: the
    same week always checks the same users, whatever its partitioning). Drawn in Spark as a top-k;
    at most ``bounded(users * 30)`` rows reach the driver (DW_DRIVER_ROW_LIMIT caps it)."""
    from pyspark.sql import functions as F

    n = max(1, bounded(users * MAX_POSITION) // MAX_POSITION)
    key = F.xxhash64(F.lit(seed), F.col("user_id"))
    # A user has at most 30 rows, so the n * 30 lowest-hash rows hold the n lowest-hash users.
    head = to_driver(frame.select("user_id", key.alias("h")).orderBy("h", "user_id").limit(n * MAX_POSITION), ASSET)
    ids = [int(u) for u in head["user_id"].drop_duplicates().head(n)]
    if not ids:
        return pd.DataFrame(columns=list(PLAYLIST_COLUMNS))
    return to_driver(frame.select(*PLAYLIST_COLUMNS).where(F.col("user_id").isin(ids)), ASSET)


def _write_spark(store: PlaylistStore, week: str, frame: Any, fail_after_users: int | None,
                 progress: Progress | None, settings: PublishSettings) -> tuple[int, int, int, str]:
    """Steps 1-4 of the module docstring: (users written, users in the week, rows, writers)."""
    from pyspark.sql import functions as F

    frame = frame.select(*PLAYLIST_COLUMNS)
    rows = spark_playlist_rows(frame)
    if rows == 0:
        raise ValueError(f"no playlists to publish for week {week}: refusing to make an empty week live")
    partitions = math.ceil(rows / settings.rows_per_partition)
    version = store.begin_write(week)
    if store.writes_from_executors:
        # At least one writer task per core: the store's round trips overlap.
        partitions = max(partitions, frame.sparkSession.sparkContext.defaultParallelism)
        by_user = frame.repartition(partitions, "user_id").sortWithinPartitions("user_id", "position")
        totals = by_user.mapInPandas(_partition_writer(store, week, version, fail_after_users), "users long, rows long")
        try:
            done = totals.agg(F.sum("users").alias("users"), F.sum("rows").alias("rows")).first()
        except Exception as exc:  # a task's failure reaches the driver as a Spark error wrapping its traceback
            _reraise(exc)
        written, written_rows = int(done["users"] or 0), int(done["rows"] or 0)
        if progress is not None:
            progress(written)
        writers = "executors"
    else:
        written, written_rows = _write_from_driver(store, week, version, frame, partitions, fail_after_users, progress)
        writers = "driver"
    if written_rows != rows:
        raise StoreError(f"week {week}: the writers wrote {written_rows} rows, the week has {rows}; "
                         "the version is not registered")
    store.commit_write(week, version, written)
    return written, written, rows, writers


def _whole_users(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    from dw_assets.ingest.spark import whole_groups

    for group in whole_groups(batches, "user_id"):
        validate_playlists(group)  # whole users: this is where two tracks at one position are caught
        yield group


# Read by the stores from the environment only (never from a URL): forwarded to the writer tasks.
STORE_CREDENTIALS = ("DW_REDIS_PASSWORD", "DW_SCYLLA_USERNAME", "DW_SCYLLA_PASSWORD")

# One store per Python worker, reused by the tasks it runs: one connection (Redis) or session
# (Scylla) per worker process, not one per task. Keyed by the pickled settings.
_WORKER_STORE: dict[bytes, PlaylistStore] = {}


def _worker_store(store: PlaylistStore) -> PlaylistStore:
    key = pickle.dumps(store)
    if key not in _WORKER_STORE:
        for old in _WORKER_STORE.values():
            old.close()
        _WORKER_STORE.clear()
        _WORKER_STORE[key] = store
    return _WORKER_STORE[key]


def _partition_writer(store: PlaylistStore, week: str, version: str,
                      fail_after_users: int | None) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The task that writes one partition's users (sorted by user) and returns (users, rows).

    The driver's store credentials travel inside the task (never in Spark conf, logs or the event
    log), so executors need no secret of their own and use the one the driver checked."""
    credentials = {name: value for name in STORE_CREDENTIALS if (value := dw_settings.get(name))}

    def write(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        os.environ.update(credentials)
        target = _worker_store(store)
        check = None if fail_after_users is None else _abort_after(fail_after_users, None)
        users = rows = 0
        for group in _whole_users(batches):
            users += target.write_users(week, version, group, check)
            rows += len(group)
        yield pd.DataFrame({"users": [users], "rows": [rows]})

    return write


def _encode_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """(user_id, stored value, rows) per user: the encoding runs on the executors."""
    for group in _whole_users(batches):
        encoded = encode_playlists(group)  # ascending user_id, as groupby's sorted counts
        yield pd.DataFrame({"user_id": [u for u, _ in encoded], "tracks": [b for _, b in encoded],
                            "rows": group.groupby("user_id", sort=True).size().to_numpy(np.int64)})


def _write_from_driver(store: PlaylistStore, week: str, version: str, frame: Any, partitions: int,
                       fail_after_users: int | None, progress: Progress | None) -> tuple[int, int]:
    """SQLite: encoded values stream to the driver in ascending user order, one partition at a
    time, and are committed in batches of ``store.batch_users``. Returns (users, rows)."""
    by_user = frame.repartitionByRange(partitions, "user_id").sortWithinPartitions("user_id", "position")
    encoded = by_user.mapInPandas(_encode_partition, "user_id long, tracks binary, rows long")
    if fail_after_users is not None:
        progress = _abort_after(fail_after_users, progress)
    users = rows = 0
    batch: list[tuple[int, bytes]] = []

    def flush() -> None:
        nonlocal users, batch
        store.write_encoded(week, version, batch)
        users += len(batch)
        if progress is not None:
            progress(len(batch))
        batch = []

    try:
        for row in encoded.toLocalIterator(prefetchPartitions=True):
            batch.append((int(row["user_id"]), bytes(row["tracks"])))
            rows += int(row["rows"])
            if len(batch) >= store.batch_users:
                flush()
    except (InjectedFailure, StoreError):
        raise
    except Exception as exc:
        _reraise(exc)
    if batch:
        flush()
    return users, rows


_RAISED = {"InjectedFailure": InjectedFailure, "StoreUnavailable": StoreUnavailable, "StoreError": StoreError,
           "ValueError": ValueError}
_RAISED_LINE = re.compile(r"^(?:[\w.]+\.)?(InjectedFailure|StoreUnavailable|StoreError|ValueError): (.*)$")


def _reraise(exc: Exception) -> None:
    """Raise an executor's InjectedFailure / StoreError / StoreUnavailable / ValueError as that
    exception on the driver (the last one its traceback names); any other error unchanged."""
    for line in reversed(str(exc).splitlines()):
        match = _RAISED_LINE.match(line.strip())
        if match:
            raise _RAISED[match.group(1)](match.group(2)) from exc
    raise exc
