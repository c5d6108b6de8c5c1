"""Playlist stores: where each week's published playlists live and are served from.

One value per (week, user): the user's tracks ordered by position, encoded once at publish time as
the JSON array the HTTP API returns (``[{"position", "track_id", "score", "source",
"is_exploration", "artist_id", "genre"}, ...]``), zlib-compressed (4.3 kB -> ~1 kB for 30 tracks;
inflating costs ~10 us), so a GET is one key lookup and no JSON re-encoding.

Every ``write_week`` writes a fresh *version* of the week next to whatever is there, and only when
all of it is written does it register that version in the store's week registry (one atomic write).
Readers resolve ``current_week`` -> registered version -> the user's value, so a crashed or failed
write is never visible, rewriting a week replaces it as a whole (users absent from the rewrite
disappear, nothing is duplicated), and the previous version is deleted afterwards (Scylla: left to
the row TTL). ``set_current_week`` is the single pointer flip that makes a written week live.
One publisher at a time per store; any number of readers.

URLs (``open_store``), all connecting lazily on first use:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy convention), WAL mode.
- ``redis://host:port/db`` (``rediss://`` for TLS); password only from ``DW_REDIS_PASSWORD``.
- ``scylla://host1,host2[:port]/keyspace``; credentials only from ``DW_SCYLLA_USERNAME`` /
  ``DW_SCYLLA_PASSWORD``.

Query parameters tune a store (e.g. ``?timeout_ms=250&batch_users=2000``); see each class. Every
store takes ``keep_weeks=N``: the written weeks publishing keeps (the newest N plus the live one;
``publish_week`` drops the rest). A store whose values expire (Redis ``ttl_days``, Scylla's row TTL)
refuses a retention longer than the expiry allows (``check_retention``).

Crash safety: a publisher killed at any instant leaves the registered weeks and the pointer as they
were; what it had written is unreferenced garbage that the next ``write_week`` reclaims (SQLite and
Redis list in-flight and superseded versions in a ``writes``/``writing`` set in the same atomic step
that registers a week; Scylla leaves them to the row TTL).

Credentials never appear in URLs (refused), reprs, error messages or metadata; ``redact_url`` is what
may be shown of a URL.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
import os
import re
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import orjson
import pandas as pd

from dw_assets.calendar import week_start

TRACK_FIELDS = ("position", "track_id", "score", "source", "is_exploration", "artist_id", "genre")
PLAYLIST_COLUMNS = ("user_id", *TRACK_FIELDS)
MAX_POSITION = 30
MAX_USER_ID = 2**63 - 1  # user ids are int64
WEEK_S = 7 * 86400
_ZLIB_LEVEL = 6  # level 1 saves ~10 us per user at publish for 12 % more bytes
CURRENT_WEEK = "current_week"  # the pointer's name

Progress = Callable[[int], None]


class StoreError(RuntimeError):
    """A store operation failed (bad state, verification mismatch, refused operation)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (down, connection refused, timeout); retry later."""


# --------------------------------------------------------------------------- encoding


def check_week(week: str) -> str:
    """``week`` if it is a week key (ISO date of a Monday), else ValueError."""
    week_start(week)
    return week


def validate_playlists(playlists: pd.DataFrame) -> None:
    """Raise ValueError unless ``playlists`` has PLAYLIST_COLUMNS, no nulls, finite scores,
    non-negative user ids, positions in 1..30 and at most one track per (user_id, position)."""
    missing = [c for c in PLAYLIST_COLUMNS if c not in playlists.columns]
    if missing:
        raise ValueError(f"playlists lack columns {missing}")
    nulls = [c for c in PLAYLIST_COLUMNS if playlists[c].isna().any()]
    if nulls:
        raise ValueError(f"playlists have nulls in {nulls}")
    position = playlists["position"].to_numpy()
    if ((position < 1) | (position > MAX_POSITION)).any():
        raise ValueError(f"positions must be in 1..{MAX_POSITION}")
    if (playlists["user_id"].to_numpy() < 0).any():
        raise ValueError("user ids must be non-negative")
    if not np.isfinite(playlists["score"].to_numpy(np.float64)).all():
        raise ValueError("scores must be finite")
    if playlists.duplicated(["user_id", "position"]).any():
        raise ValueError("a user has two tracks at the same position")


def _sorted_frame(playlists: pd.DataFrame) -> pd.DataFrame:
    return playlists.sort_values(["user_id", "position"], kind="stable", ignore_index=True)


def _user_bounds(sorted_playlists: pd.DataFrame) -> np.ndarray:
    """Row offsets where each user's rows start, plus the end: int64[n_users + 1]."""
    users = sorted_playlists["user_id"].to_numpy(np.int64)
    if not len(users):
        return np.zeros(1, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return np.r_[starts, len(users)].astype(np.int64)


def _encode_sorted(frame: pd.DataFrame, bounds: np.ndarray) -> list[tuple[int, bytes]]:
    columns = (
        frame["position"].astype(np.int64).tolist(),
        frame["track_id"].astype(np.int64).tolist(),
        frame["score"].astype(np.float64).tolist(),  # float32 -> float64 is exact, so reads compare equal
        frame["source"].astype(str).tolist(),
        frame["is_exploration"].astype(bool).tolist(),
        frame["artist_id"].astype(np.int64).tolist(),
        frame["genre"].astype(str).tolist(),
    )
    tracks = [dict(zip(TRACK_FIELDS, values, strict=True)) for values in zip(*columns, strict=True)]
    offsets = bounds - bounds[0]  # bounds may describe a slice of a bigger frame
    users = frame["user_id"].to_numpy(np.int64)[offsets[:-1]].tolist()
    starts, stops = offsets[:-1].tolist(), offsets[1:].tolist()
    dumps, compress = orjson.dumps, zlib.compress
    return [(user, compress(dumps(tracks[a:b]), _ZLIB_LEVEL)) for user, a, b in zip(users, starts, stops, strict=True)]


def encode_playlists(playlists: pd.DataFrame) -> list[tuple[int, bytes]]:
    """(user_id, stored value) per user, ascending user_id: the zlib-compressed JSON array of the
    user's tracks ordered by position, each an object with TRACK_FIELDS.

    playlists: PLAYLIST_COLUMNS rows (any order). Scores are written as float64, so a float32
    score reads back as the same number.
    """
    frame = _sorted_frame(playlists)
    return _encode_sorted(frame, _user_bounds(frame))


def tracks_json(blob: bytes) -> bytes:
    """A stored value as the tracks JSON array (UTF-8 bytes)."""
    return zlib.decompress(blob)


def decode_tracks(blob: bytes) -> list[dict]:
    """A stored value back to ``[{"position", "track_id", ...}, ...]``."""
    return orjson.loads(zlib.decompress(blob))


def iter_user_batches(playlists: pd.DataFrame, batch_users: int) -> Iterator[list[tuple[int, bytes]]]:
    """encode_playlists in batches of at most ``batch_users`` users (bounded memory for big weeks)."""
    frame = _sorted_frame(playlists)
    bounds = _user_bounds(frame)
    n_users = len(bounds) - 1
    for first in range(0, n_users, batch_users):
        last = min(first + batch_users, n_users)
        a, b = int(bounds[first]), int(bounds[last])
        yield _encode_sorted(frame.iloc[a:b], bounds[first : last + 1])


def new_version() -> str:
    """A fresh write version: milliseconds since the epoch (hex, sortable) + random suffix."""
    return f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:8]}"


def _options(query: str, allowed: dict[str, Callable[[str], Any]], url_for_errors: str) -> dict[str, Any]:
    options = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} in store URL {redact_url(url_for_errors)!r}; "
                             f"known: {sorted(allowed)}")
        try:
            options[key] = allowed[key](value)
        except ValueError as exc:
            raise ValueError(f"bad value for option {key!r} in store URL {redact_url(url_for_errors)!r}: "
                             f"{exc if key in _PUBLIC_OPTIONS else 'not valid'}") from None
    return options


def _seconds_from_ms(value: str) -> float:
    return float(value) / 1000.0


# Query options that are never secret (their values may be shown); any other key's value is masked.
_PUBLIC_OPTIONS = frozenset({
    "prefix", "timeout_ms", "batch_users", "ttl_days", "registry_cache_ms", "keep_weeks", "replication",
    "local_dc", "consistency", "concurrency", "count_splits"})


def url_has_credentials(url: str) -> bool:
    """Whether a store URL carries a user or password (``scheme://user:pass@host``), judged loosely:
    any ``@`` before the query counts, so an unencoded ``/`` in a password cannot hide it. SQLite URLs
    name a file and carry none."""
    scheme, sep, rest = url.partition("://")
    return bool(sep) and scheme.lower() != "sqlite" and "@" in rest.partition("?")[0]


def redact_url(url: str) -> str:
    """``url`` safe to log or store in metadata: a password becomes ``***`` (``redis://:***@host``),
    and so does the value of any query parameter that is not a known, public store option.

    Parsed loosely on purpose (no ``urlsplit``): everything up to the last ``@`` before the query is
    userinfo, even where a malformed password holds ``/`` or ``#``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    main, _, query = rest.partition("?")
    if "@" in main and scheme.lower() != "sqlite":
        userinfo, _, hosts = main.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        # user:password -> user:***; a bare userinfo may itself be a token (redis://TOKEN@host) -> ***
        main = f"{user}:***@{hosts}" if has_password and "/" not in user else f"***@{hosts}"
    query = "&".join(
        f"{key}={value if key in _PUBLIC_OPTIONS else '***'}" if has_value else key
        for key, has_value, value in (item.partition("=") for item in query.split("&") if item))
    return f"{scheme}://{main}" + (f"?{query}" if query else "")


def _check_keep_weeks(value: str) -> int:
    weeks = int(value)
    if weeks < 1:
        raise ValueError("keep_weeks must be at least 1")
    return weeks


# --------------------------------------------------------------------------- interface


@dataclass(frozen=True)
class Registry:
    """The store's pointer and week registry as read at ``fetched_at`` (time.monotonic seconds)."""

    current: str | None
    versions: dict[str, str]  # week -> the registered (complete) version
    fetched_at: float = field(default_factory=time.monotonic)

    def resolve(self, week: str | None) -> tuple[str, str] | None:
        week = week or self.current
        if week is None or week not in self.versions:
            return None
        return week, self.versions[week]


class PlaylistStore(abc.ABC):
    """Weekly playlists keyed by (week, user_id) plus the ``current_week`` pointer.

    Subclasses implement the storage; this class holds the shared contract:
    ``get_playlist`` (decoded) over ``get_playlist_json`` (raw, the API's hot path) and ``verify_week``.
    """

    scheme: ClassVar[str]
    local_reads: ClassVar[bool] = False  # reads are in-process and take microseconds (no network)
    keep_weeks: int | None = None  # the URL's ``keep_weeks`` (None: the publisher's default)

    def row_ttl_s(self) -> int | None:
        """Seconds after which a written value expires by itself (None: never; retention drops weeks)."""
        return None

    def check_retention(self, keep_weeks: int) -> None:
        """ValueError if values expire before ``keep_weeks`` kept weeks would be dropped: a kept (or
        live) week must not lose users to expiry. Needs (keep_weeks + 1) weeks of TTL: the newest week
        is published a week after the previous one, and one missed publish is tolerated."""
        if keep_weeks < 1:
            raise ValueError("keep_weeks must be at least 1")
        ttl = self.row_ttl_s()
        if ttl is not None and ttl < (keep_weeks + 1) * WEEK_S:
            raise ValueError(f"{self!r} expires values after {ttl / 86400:g} days, shorter than keeping "
                             f"{keep_weeks} weeks needs ({(keep_weeks + 1) * 7} days): raise ttl_days or "
                             "lower keep_weeks")

    @abc.abstractmethod
    def write_week(self, week: str, playlists: pd.DataFrame, progress: Progress | None = None) -> int:
        """Write every user's playlist of ``week``; returns users written.

        playlists: PLAYLIST_COLUMNS rows (validated). Written in batches; ``progress(n)`` is called
        after each batch with the users it wrote (plugs into ``tqdm.update``; raising from it aborts
        the write). The new version is registered only once all batches are written, so readers
        never see a partial week. Rewriting a week replaces it. Does not touch ``current_week``.
        """

    @abc.abstractmethod
    def count_users(self, week: str) -> int:
        """Users stored in the registered version of ``week`` (0 if the week is not written)."""

    @abc.abstractmethod
    def set_current_week(self, week: str) -> None:
        """Make ``week`` live (one atomic write). StoreError if the week is not written."""

    @abc.abstractmethod
    def current_week(self) -> str | None:
        """The live week, read from the store now (None before the first publish)."""

    @abc.abstractmethod
    def weeks(self) -> list[str]:
        """Written (complete) weeks, ascending."""

    @abc.abstractmethod
    def drop_week(self, week: str) -> None:
        """Delete ``week`` (all its versions). StoreError if it is the live week."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Round-trip to the store; StoreUnavailable if it cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store reopens them if used again."""

    @abc.abstractmethod
    def get_playlist_json(self, user_id: int, week: str | None = None) -> tuple[str, bytes] | None:
        """(week, tracks JSON array) for ``user_id`` in ``week`` (None: the live week), else None."""

    async def aget_playlist_json(self, user_id: int, week: str | None = None) -> tuple[str, bytes] | None:
        """get_playlist_json for asyncio servers; by default in a worker thread."""
        return await asyncio.to_thread(self.get_playlist_json, user_id, week)

    async def aclose(self) -> None:
        """close, for asyncio servers (releases async connections too)."""
        self.close()

    def get_playlist(self, user_id: int, week: str | None = None) -> list[dict] | None:
        """The user's tracks ``[{"position", "track_id", "score", "source", "is_exploration",
        "artist_id", "genre"}, ...]`` ordered by position, in ``week`` (None: the live week);
        None if there is no such user or week."""
        found = self.get_playlist_json(user_id, week)
        return None if found is None else orjson.loads(found[1])

    def verify_week(self, week: str, expected_users: int, sample: pd.DataFrame | None = None) -> None:
        """StoreError unless ``week`` holds ``expected_users`` users and every user in ``sample``
        (PLAYLIST_COLUMNS rows) reads back exactly as encoded."""
        stored = self.count_users(week)
        if stored != expected_users:
            raise StoreError(f"week {week}: {stored} users stored, expected {expected_users}")
        if sample is None or sample.empty:
            return
        for user_id, expected in encode_playlists(sample):
            found = self.get_playlist(user_id, week)
            if found != decode_tracks(expected):
                got = "nothing" if found is None else f"{len(found)} different tracks"
                raise StoreError(f"week {week}: user {user_id} reads back {got}, not the published playlist")

    def __enter__(self) -> PlaylistStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RegistryCachedStore(PlaylistStore):
    """A remote store whose readers cache the registry (pointer + week versions) for
    ``registry_cache_s`` seconds, so a GET is one key lookup. A miss on a cached registry older
    than ``_REFRESH_AFTER_S`` re-reads it once (a flip or rewrite may have just happened)."""

    _REFRESH_AFTER_S = 0.05

    def __init__(self, registry_cache_s: float = 1.0):
        self.registry_cache_s = registry_cache_s
        self._registry: Registry | None = None

    @abc.abstractmethod
    def _fetch_registry(self) -> Registry: ...

    @abc.abstractmethod
    def _read_blob(self, week: str, version: str, user_id: int) -> bytes | None: ...

    def _cached_registry(self) -> Registry:
        registry = self._registry
        if registry is None or time.monotonic() - registry.fetched_at > self.registry_cache_s:
            registry = self._registry = self._fetch_registry()
        return registry

    def _invalidate(self) -> None:
        self._registry = None

    def get_playlist_json(self, user_id: int, week: str | None = None) -> tuple[str, bytes] | None:
        registry = self._cached_registry()
        key = registry.resolve(week)
        blob = None if key is None else self._read_blob(key[0], key[1], user_id)
        if blob is None and time.monotonic() - registry.fetched_at > self._REFRESH_AFTER_S:
            fresh = self._registry = self._fetch_registry()
            fresh_key = fresh.resolve(week)
            if fresh_key is not None and fresh_key != key:
                key, blob = fresh_key, self._read_blob(fresh_key[0], fresh_key[1], user_id)
        return None if blob is None else (key[0], tracks_json(blob))

    async def _aread_blob(self, week: str, version: str, user_id: int) -> bytes | None:
        return await asyncio.to_thread(self._read_blob, week, version, user_id)

    async def aget_playlist_json(self, user_id: int, week: str | None = None) -> tuple[str, bytes] | None:
        """The hot path without a thread hop: one async key read while the cached registry is
        fresh; registry refreshes (about once a second) and misses take the sync path in a thread."""
        registry = self._registry
        if registry is None or time.monotonic() - registry.fetched_at > self.registry_cache_s:
            return await asyncio.to_thread(self.get_playlist_json, user_id, week)
        key = registry.resolve(week)
        blob = None if key is None else await self._aread_blob(key[0], key[1], user_id)
        if blob is None and time.monotonic() - registry.fetched_at > self._REFRESH_AFTER_S:
            return await asyncio.to_thread(self.get_playlist_json, user_id, week)
        return None if blob is None else (key[0], tracks_json(blob))

    def current_week(self) -> str | None:
        return self._fetch_registry().current

    def weeks(self) -> list[str]:
        return sorted(self._fetch_registry().versions)


# --------------------------------------------------------------------------- SQLite


class _Connection:
    """A thread's SQLite connection; closed when the thread's locals are collected."""

    __slots__ = ("__weakref__", "db")

    def __init__(self, db: Any):
        self.db = db

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()


class SQLiteStore(PlaylistStore):
    """The embedded default: one SQLite file in WAL mode (readers never block on the publisher).

    Readers use one connection per thread and resolve pointer, version and playlist in one indexed
    query (one consistent snapshot, no cache). URL options: ``timeout_ms`` (readers' busy timeout,
    default 250), ``batch_users`` (users per write transaction, default 2000), ``keep_weeks``.
    Every step of a write is a transaction, so a killed publisher leaves committed batches of an
    unregistered version, listed in ``writes``; the next write deletes them.
    """

    scheme = "sqlite"
    local_reads = True
    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS playlists (id INTEGER PRIMARY KEY, week TEXT NOT NULL, "
        "version TEXT NOT NULL, user_id INTEGER NOT NULL, tracks BLOB NOT NULL)",
        "CREATE UNIQUE INDEX IF NOT EXISTS playlists_key ON playlists (week, version, user_id)",
        "CREATE TABLE IF NOT EXISTS weeks (week TEXT PRIMARY KEY, version TEXT NOT NULL, "
        "users INTEGER NOT NULL, written_at TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS pointers (name TEXT PRIMARY KEY, week TEXT NOT NULL)",
        # Versions being written; a crashed write stays listed here and the next write reclaims it.
        "CREATE TABLE IF NOT EXISTS writes (week TEXT NOT NULL, version TEXT NOT NULL, "
        "started_at TEXT NOT NULL, PRIMARY KEY (week, version))",
    )
    _GET_CURRENT = (
        "SELECT p.week, p.tracks FROM pointers c JOIN weeks w ON w.week = c.week "
        "JOIN playlists p ON p.week = w.week AND p.version = w.version "
        "WHERE c.name = ? AND p.user_id = ?"
    )
    _GET_WEEK = (
        "SELECT p.week, p.tracks FROM weeks w JOIN playlists p ON p.week = w.week AND p.version = w.version "
        "WHERE w.week = ? AND p.user_id = ?"
    )

    def __init__(self, path: str | Path, *, timeout_s: float = 0.25, batch_users: int = 2000,
                 write_timeout_s: float = 30.0, keep_weeks: int | None = None):
        self.path = Path(path)
        self.keep_weeks = keep_weeks
        self.timeout_s = timeout_s
        self.batch_users = batch_users
        self.write_timeout_s = write_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _open only: readers never wait for a publish
        self._open: list[Any] = []  # weakrefs to every thread's _Connection, for close()
        self._write_lock = threading.Lock()
        self._writer: Any = None
        self._schema_ready = False

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        parts = urlsplit(url)
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if not url.startswith("sqlite:///") or not path or path == ":memory:":
            raise ValueError(f"SQLite store URL must look like sqlite:///path.db, got {redact_url(url)!r}")
        options = _options(parts.query, {"timeout_ms": _seconds_from_ms, "batch_users": int,
                                         "keep_weeks": _check_keep_weeks}, url)
        if "timeout_ms" in options:
            options["timeout_s"] = options.pop("timeout_ms")
        return cls(path, **options)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # connections ---------------------------------------------------------
    def _connect(self, timeout_s: float) -> Any:
        import sqlite3

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
            if not self._schema_ready:
                self._ensure_schema(db, timeout_s)
            db.execute("PRAGMA synchronous = NORMAL")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"SQLite store {self.path} cannot be opened: {exc}") from exc
        return db

    def _ensure_schema(self, db: Any, timeout_s: float) -> None:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"playlists", "weeks", "pointers", "writes"} <= tables:  # first open: creating needs the write lock
            db.execute(f"PRAGMA busy_timeout = {int(max(timeout_s, 5.0) * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            for statement in self._SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self._schema_ready = True

    def _reader(self) -> Any:
        holder = getattr(self._local, "connection", None)
        if holder is None:
            holder = _Connection(self._connect(self.timeout_s))
            holder.db.execute("PRAGMA query_only = ON")
            self._local.connection = holder
            with self._lock:
                self._open = [ref for ref in self._open if ref() is not None] + [weakref.ref(holder)]
        return holder.db

    def _drop_reader(self) -> None:
        holder = getattr(self._local, "connection", None)
        self._local.connection = None
        if holder is not None:
            with contextlib.suppress(Exception):
                holder.db.close()

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        import sqlite3

        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._drop_reader()  # reopen on the next call
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Any]:
        import sqlite3

        with self._write_lock:
            try:
                if self._writer is None:
                    self._writer = self._connect(self.write_timeout_s)
                yield self._writer
            except sqlite3.Error as exc:
                with contextlib.suppress(Exception):
                    self._writer.close()
                self._writer = None
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    @staticmethod
    def _transaction(db: Any, statements: list[tuple[str, tuple]]) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # contract ------------------------------------------------------------
    def write_week(self, week: str, playlists: pd.DataFrame, progress: Progress | None = None) -> int:
        check_week(week)
        validate_playlists(playlists)
        version = new_version()
        users = 0
        with self._writing() as db:
            self._reclaim(db)
            started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            self._transaction(db, [("INSERT INTO writes (week, version, started_at) VALUES (?, ?, ?)",
                                    (week, version, started_at))])
            for batch in iter_user_batches(playlists, self.batch_users):
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("INSERT INTO playlists (week, version, user_id, tracks) VALUES (?, ?, ?, ?)",
                                   [(week, version, user, blob) for user, blob in batch])
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                users += len(batch)
                if progress is not None:
                    progress(len(batch))
            old = db.execute("SELECT version FROM weeks WHERE week = ?", (week,)).fetchall()
            written_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            # Registering the new version and listing the superseded one as garbage is one commit,
            # so a kill after it leaves the old rows for the next write to reclaim, not orphaned.
            self._transaction(db, [
                ("INSERT OR REPLACE INTO weeks (week, version, users, written_at) VALUES (?, ?, ?, ?)",
                 (week, version, users, written_at)),
                ("DELETE FROM writes WHERE week = ? AND version = ?", (week, version)),
                *[("INSERT OR IGNORE INTO writes (week, version, started_at) VALUES (?, ?, ?)",
                   (week, row[0], written_at)) for row in old if row[0] != version],
            ])
            self._reclaim(db)
        return users

    def _reclaim(self, db: Any) -> None:
        """Delete the rows of versions listed in ``writes`` (killed writes, superseded versions);
        a registered version is never touched."""
        for stale in db.execute("SELECT week, version FROM writes").fetchall():
            registered = db.execute("SELECT 1 FROM weeks WHERE week = ? AND version = ?", stale).fetchall()
            self._transaction(db, [
                *([] if registered else [("DELETE FROM playlists WHERE week = ? AND version = ?", stale)]),
                ("DELETE FROM writes WHERE week = ? AND version = ?", stale)])

    def count_users(self, week: str) -> int:
        check_week(week)
        rows = self._read("SELECT COUNT(*) FROM weeks w JOIN playlists p ON p.week = w.week AND p.version = w.version "
                          "WHERE w.week = ?", (week,))
        return int(rows[0][0])

    def set_current_week(self, week: str) -> None:
        check_week(week)
        with self._writing() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if not db.execute("SELECT 1 FROM weeks WHERE week = ?", (week,)).fetchall():
                    raise StoreError(f"week {week} is not written; write it before making it live")
                db.execute("INSERT OR REPLACE INTO pointers (name, week) VALUES (?, ?)", (CURRENT_WEEK, week))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def current_week(self) -> str | None:
        rows = self._read("SELECT week FROM pointers WHERE name = ?", (CURRENT_WEEK,))
        return rows[0][0] if rows else None

    def weeks(self) -> list[str]:
        return [row[0] for row in self._read("SELECT week FROM weeks ORDER BY week", ())]

    def drop_week(self, week: str) -> None:
        check_week(week)
        with self._writing() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                live = db.execute("SELECT week FROM pointers WHERE name = ?", (CURRENT_WEEK,)).fetchall()
                if live and live[0][0] == week:
                    raise StoreError(f"week {week} is live; make another week live before dropping it")
                db.execute("DELETE FROM weeks WHERE week = ?", (week,))
                db.execute("DELETE FROM playlists WHERE week = ?", (week,))
                db.execute("DELETE FROM writes WHERE week = ?", (week,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def ping(self) -> None:
        self._read("SELECT 1", ())

    def get_playlist_json(self, user_id: int, week: str | None = None) -> tuple[str, bytes] | None:
        if week is None:
            rows = self._read(self._GET_CURRENT, (CURRENT_WEEK, user_id))
        else:
            rows = self._read(self._GET_WEEK, (week, user_id))
        return (rows[0][0], tracks_json(rows[0][1])) if rows else None

    async def aget_playlist_json(self, user_id: int, week: str | None = None) -> tuple[str, bytes] | None:
        # Microseconds from the page cache (WAL readers never wait for the writer): inline is
        # cheaper than a thread hop (~100 us of CPU).
        return self.get_playlist_json(user_id, week)

    def close(self) -> None:
        with self._lock:
            holders = [ref() for ref in self._open]
            self._open = []
        with self._write_lock:
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()
                self._writer = None
        for holder in holders:
            if holder is not None:
                with contextlib.suppress(Exception):
                    holder.db.close()
        self._local = threading.local()


# --------------------------------------------------------------------------- Redis


class RedisStore(RegistryCachedStore):
    """Redis (or any RESP server: Valkey, KeyDB, Dragonfly). Keys under ``prefix`` (default ``dw``):

    - ``{prefix}:current_week`` -> week key (the pointer)
    - ``{prefix}:weeks`` hash: week -> {"version", "users", "written_at"} (the registry)
    - ``{prefix}:pl:{week}:{version}:{user_id}`` -> tracks JSON (the hot key)
    - ``{prefix}:users:{week}:{version}`` set of user ids (exact counts; targeted deletes)
    - ``{prefix}:writing`` set of ``week/version`` being written or superseded (a killed write
      stays listed; so does a superseded or dropped version until its keys are deleted; the next
      write reclaims every one that is not registered)

    Each write batch is one MULTI/EXEC, so the user set and the keys never disagree; registering a
    week and listing the version it supersedes as garbage is one MULTI/EXEC too. URL options:
    ``prefix``, ``timeout_ms`` (reads, default 250), ``batch_users`` (default 1000), ``ttl_days``
    (safety-net expiry on playlist keys, default none: retention drops old weeks), ``keep_weeks``,
    ``registry_cache_ms`` (default 1000). Password from ``DW_REDIS_PASSWORD`` only.
    """

    scheme = "redis"

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0, *, prefix: str = "dw",
                 timeout_s: float = 0.25, batch_users: int = 1000, ttl_s: int | None = None,
                 registry_cache_s: float = 1.0, ssl: bool = False, write_timeout_s: float = 30.0,
                 keep_weeks: int | None = None):
        super().__init__(registry_cache_s)
        self.keep_weeks = keep_weeks
        if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", prefix):
            raise ValueError(f"Redis key prefix {prefix!r} must be letters, digits, _ . : -")
        self.host, self.port, self.db, self.prefix = host, port, db, prefix
        self.timeout_s, self.batch_users, self.ttl_s = timeout_s, batch_users, ttl_s
        self.ssl, self.write_timeout_s = ssl, write_timeout_s
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._async_client: tuple[Any, Any] | None = None  # (event loop, redis.asyncio client)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        parts = urlsplit(url)
        if url_has_credentials(url):
            raise ValueError("put the Redis password in DW_REDIS_PASSWORD, not in the store URL")
        db_path = parts.path.strip("/")
        if db_path and not db_path.isdigit():
            raise ValueError(f"Redis database must be a number, got {db_path!r} in {redact_url(url)!r}")
        options = _options(parts.query, {"prefix": str, "timeout_ms": _seconds_from_ms, "batch_users": int,
                                         "ttl_days": float, "registry_cache_ms": _seconds_from_ms,
                                         "keep_weeks": _check_keep_weeks}, url)
        if "timeout_ms" in options:
            options["timeout_s"] = options.pop("timeout_ms")
        if "ttl_days" in options:
            options["ttl_s"] = int(options.pop("ttl_days") * 86400)
        if "registry_cache_ms" in options:
            options["registry_cache_s"] = options.pop("registry_cache_ms")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, int(db_path or 0),
                   ssl=parts.scheme == "rediss", **options)

    def __repr__(self) -> str:
        return f"RedisStore({self.host}:{self.port}/{self.db}, prefix={self.prefix!r})"

    def row_ttl_s(self) -> int | None:
        return self.ttl_s

    # connections ---------------------------------------------------------
    def _client(self, role: str) -> Any:
        """'read': short timeouts for serving; 'write': long ones for publishing. No I/O here."""
        client = self._clients.get(role)
        if client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            timeout = self.timeout_s if role == "read" else self.write_timeout_s
            with self._lock:
                client = self._clients.get(role)
                if client is None:
                    client = self._clients[role] = redis.Redis(
                        host=self.host, port=self.port, db=self.db, password=os.environ.get("DW_REDIS_PASSWORD"),
                        ssl=self.ssl, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
                        # One immediate retry on a fresh connection (a pooled socket may predate a
                        # server restart), then fail fast: the API answers 503 and the client retries.
                        retry=Retry(NoBackoff(), 1), health_check_interval=0)
        return client

    def _client_for_loop(self) -> Any:
        """A redis.asyncio client bound to the running event loop (clients cannot cross loops)."""
        loop = asyncio.get_running_loop()
        if self._async_client is None or self._async_client[0] is not loop:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._async_client = (loop, redis.asyncio.Redis(
                host=self.host, port=self.port, db=self.db, password=os.environ.get("DW_REDIS_PASSWORD"),
                ssl=self.ssl, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 1), health_check_interval=0))
        return self._async_client[1]

    async def _aread_blob(self, week: str, version: str, user_id: int) -> bytes | None:
        client = self._client_for_loop()
        with self._errors():
            return await client.get(f"{self.prefix}:pl:{week}:{version}:{user_id}")

    async def aclose(self) -> None:
        if self._async_client is not None:
            client, self._async_client = self._async_client[1], None
            with contextlib.suppress(Exception):
                await client.aclose()
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import redis

        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis at {self.host}:{self.port} is unavailable: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"Redis at {self.host}:{self.port}: {exc}") from exc

    def _key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    # registry ------------------------------------------------------------
    def _fetch_registry(self) -> Registry:
        with self._errors():
            pipe = self._client("read").pipeline(transaction=False)
            pipe.get(self._key(CURRENT_WEEK))
            pipe.hgetall(self._key("weeks"))
            current, weeks = pipe.execute()
        versions = {week.decode(): orjson.loads(entry)["version"] for week, entry in weeks.items()}
        return Registry(current.decode() if current else None, versions)

    def _read_blob(self, week: str, version: str, user_id: int) -> bytes | None:
        with self._errors():
            return self._client("read").get(f"{self.prefix}:pl:{week}:{version}:{user_id}")

    def _delete_version(self, week: str, version: str) -> None:
        client = self._client("write")
        members = self._key("users", week, version)
        batch: list[str] = []
        for user in client.sscan_iter(members, count=1000):
            batch.append(self._key("pl", week, version, int(user)))
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
        client.unlink(members)

    # contract ------------------------------------------------------------
    def _reclaim(self, client: Any) -> None:
        """Delete every version listed in ``writing`` that is not registered (killed writes,
        superseded and dropped versions), then unlist it."""
        registered = {(week.decode(), orjson.loads(entry)["version"])
                      for week, entry in client.hgetall(self._key("weeks")).items()}
        for stale in client.smembers(self._key("writing")):
            week, _, version = stale.decode().partition("/")
            if (week, version) not in registered:
                self._delete_version(week, version)
            client.srem(self._key("writing"), stale)

    def write_week(self, week: str, playlists: pd.DataFrame, progress: Progress | None = None) -> int:
        check_week(week)
        validate_playlists(playlists)
        version = new_version()
        writing, this_write = self._key("writing"), f"{week}/{version}"
        users_key = self._key("users", week, version)
        users = 0
        with self._errors():
            client = self._client("write")
            self._reclaim(client)
            client.sadd(writing, this_write)
            for batch in iter_user_batches(playlists, self.batch_users):
                pipe = client.pipeline(transaction=True)
                pipe.sadd(users_key, *(user for user, _ in batch))
                for user, blob in batch:
                    pipe.set(self._key("pl", week, version, user), blob, ex=self.ttl_s)
                pipe.execute()
                users += len(batch)
                if progress is not None:
                    progress(len(batch))
            old = client.hget(self._key("weeks"), week)
            entry = {"version": version, "users": users,
                     "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            pipe = client.pipeline(transaction=True)
            pipe.hset(self._key("weeks"), week, orjson.dumps(entry))
            pipe.srem(writing, this_write)
            if old is not None:  # superseded: garbage from this instant, deleted just below or by the next write
                pipe.sadd(writing, f"{week}/{orjson.loads(old)['version']}")
            pipe.execute()
            self._invalidate()
            self._reclaim(client)
        return users

    def count_users(self, week: str) -> int:
        check_week(week)
        version = self._fetch_registry().versions.get(week)
        if version is None:
            return 0
        with self._errors():
            return int(self._client("read").scard(self._key("users", week, version)))

    def set_current_week(self, week: str) -> None:
        check_week(week)
        with self._errors():
            client = self._client("write")
            if not client.hexists(self._key("weeks"), week):
                raise StoreError(f"week {week} is not written; write it before making it live")
            client.set(self._key(CURRENT_WEEK), week)
        self._invalidate()

    def drop_week(self, week: str) -> None:
        check_week(week)
        with self._errors():
            client = self._client("write")
            current = client.get(self._key(CURRENT_WEEK))
            if current is not None and current.decode() == week:
                raise StoreError(f"week {week} is live; make another week live before dropping it")
            entry = client.hget(self._key("weeks"), week)
            # Unreachable and listed as garbage in one step, then reclaimed.
            pipe = client.pipeline(transaction=True)
            pipe.hdel(self._key("weeks"), week)
            if entry is not None:
                pipe.sadd(self._key("writing"), f"{week}/{orjson.loads(entry)['version']}")
            pipe.execute()
            self._invalidate()
            self._reclaim(client)

    def ping(self) -> None:
        with self._errors():
            self._client("read").ping()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._invalidate()


# --------------------------------------------------------------------------- ScyllaDB / Cassandra

_MURMUR3_MIN, _MURMUR3_MAX = -(2**63), 2**63 - 1
_CQL_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_CONSISTENCY_LEVELS = ("ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")


@dataclass(frozen=True)
class ScyllaSettings:
    """Where and how the Scylla store connects; parsed from ``scylla://h1,h2[:port]/keyspace?...``.

    URL options: ``replication`` (``dc1:3,dc2:3`` -> NetworkTopologyStrategy; a bare number ->
    SimpleStrategy with that factor; default ``1``), ``local_dc`` (for DC-aware routing),
    ``consistency`` (default LOCAL_QUORUM), ``keep_weeks`` (retention), ``ttl_days`` (row TTL,
    default keep_weeks + 4 weeks, i.e. 56 days = 8 weeks for the default 4-week retention: beyond
    it and a few missed publishes; publishing refuses a TTL shorter than keep_weeks + 1 weeks, since
    rows of a kept week would expire), ``timeout_ms`` (reads, default 250),
    ``batch_users`` (default 5000), ``concurrency`` (in-flight writes, default 128),
    ``count_splits`` (token ranges scanned in parallel by count_users, default 256),
    ``registry_cache_ms`` (default 1000).
    """

    hosts: tuple[str, ...]
    keyspace: str
    port: int = 9042
    replication: dict[str, str | int] = field(default_factory=lambda: {"class": "SimpleStrategy",
                                                                       "replication_factor": 1})
    local_dc: str | None = None
    consistency: str = "LOCAL_QUORUM"
    ttl_s: int = 56 * 86400
    timeout_s: float = 0.25
    write_timeout_s: float = 30.0
    count_timeout_s: float = 120.0
    batch_users: int = 5000
    concurrency: int = 128
    count_splits: int = 256
    registry_cache_s: float = 1.0
    keep_weeks: int | None = None

    def __post_init__(self) -> None:
        if not _CQL_IDENTIFIER.fullmatch(self.keyspace):
            raise ValueError(f"keyspace {self.keyspace!r} must be a CQL identifier (letters, digits, _)")
        if self.consistency not in _CONSISTENCY_LEVELS:
            raise ValueError(f"consistency {self.consistency!r} is not one of {_CONSISTENCY_LEVELS}")
        if not self.hosts:
            raise ValueError("a Scylla store needs at least one host")
        for key, value in self.replication.items():
            if not _CQL_IDENTIFIER.fullmatch(key) or not (isinstance(value, int) or _CQL_IDENTIFIER.fullmatch(value)):
                raise ValueError(f"bad replication option {key}={value!r}")

    @classmethod
    def from_url(cls, url: str) -> ScyllaSettings:
        parts = urlsplit(url)
        if url_has_credentials(url):
            raise ValueError("put Scylla credentials in DW_SCYLLA_USERNAME / DW_SCYLLA_PASSWORD, not in the URL")
        hosts, ports = [], set()
        for item in parts.netloc.split(","):
            host, _, port = item.strip().partition(":")
            if not host:
                raise ValueError(f"empty host in Scylla URL {redact_url(url)!r}")
            hosts.append(host)
            ports.add(int(port) if port else None)
        explicit = ports - {None}
        if len(explicit) > 1:
            raise ValueError(f"all Scylla hosts must share one port, got {sorted(explicit)}")
        keyspace = parts.path.strip("/")
        if not keyspace:
            raise ValueError(f"Scylla URL needs a keyspace: scylla://host1,host2/keyspace, got {redact_url(url)!r}")
        options = _options(parts.query, {
            "replication": str, "local_dc": str, "consistency": str.upper, "ttl_days": float,
            "timeout_ms": _seconds_from_ms, "batch_users": int, "concurrency": int, "count_splits": int,
            "registry_cache_ms": _seconds_from_ms, "keep_weeks": _check_keep_weeks}, url)
        if "replication" in options:
            options["replication"] = parse_replication(options["replication"])
        if "ttl_days" in options:
            options["ttl_s"] = int(options.pop("ttl_days") * 86400)
        elif "keep_weeks" in options:  # rows outlive the retention by 4 weeks, as the default does
            options["ttl_s"] = (options["keep_weeks"] + 4) * WEEK_S
        if "timeout_ms" in options:
            options["timeout_s"] = options.pop("timeout_ms")
        if "registry_cache_ms" in options:
            options["registry_cache_s"] = options.pop("registry_cache_ms")
        return cls(hosts=tuple(hosts), keyspace=keyspace, port=explicit.pop() if explicit else 9042, **options)


def parse_replication(text: str) -> dict[str, str | int]:
    """``"3"`` -> SimpleStrategy RF 3; ``"dc1:3,dc2:2"`` -> NetworkTopologyStrategy per DC."""
    if text.isdigit():
        return {"class": "SimpleStrategy", "replication_factor": int(text)}
    replication: dict[str, str | int] = {"class": "NetworkTopologyStrategy"}
    for item in text.split(","):
        dc, _, factor = item.partition(":")
        if not factor.isdigit():
            raise ValueError(f"replication must be N or dc1:N,dc2:M, got {text!r}")
        replication[dc.strip()] = int(factor)
    return replication


def cql_statements(settings: ScyllaSettings) -> dict[str, str]:
    """Every CQL statement the Scylla store runs. Values are always bind markers (prepared);
    only validated identifiers (keyspace, replication options) and integers are formatted in."""
    ks = settings.keyspace
    replication = ", ".join(f"'{k}': {v}" if isinstance(v, int) else f"'{k}': '{v}'"
                            for k, v in settings.replication.items())
    return {
        "create_keyspace": f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{{replication}}}",
        # Partition by user (a GET hits one partition on its replicas); cluster by week, newest first.
        # Every row carries a TTL, so time-window compaction drops whole expired SSTables.
        "create_playlists": (
            f"CREATE TABLE IF NOT EXISTS {ks}.playlists (user_id bigint, week text, version text, tracks blob, "
            "PRIMARY KEY ((user_id), week, version)) WITH CLUSTERING ORDER BY (week DESC, version ASC) "
            "AND compaction = {'class': 'TimeWindowCompactionStrategy', "
            "'compaction_window_unit': 'DAYS', 'compaction_window_size': 7}"),
        "create_weeks": (f"CREATE TABLE IF NOT EXISTS {ks}.playlist_weeks "
                         "(week text PRIMARY KEY, version text, users bigint, written_at timestamp)"),
        "create_pointers": f"CREATE TABLE IF NOT EXISTS {ks}.playlist_pointers (name text PRIMARY KEY, week text)",
        "insert_playlist": (f"INSERT INTO {ks}.playlists (user_id, week, version, tracks) "
                            "VALUES (?, ?, ?, ?) USING TTL ?"),
        "select_playlist": f"SELECT tracks FROM {ks}.playlists WHERE user_id = ? AND week = ? AND version = ?",
        "count_range": (f"SELECT COUNT(*) FROM {ks}.playlists WHERE token(user_id) >= ? AND token(user_id) <= ? "
                        "AND week = ? AND version = ? ALLOW FILTERING"),
        "insert_week": (f"INSERT INTO {ks}.playlist_weeks (week, version, users, written_at) VALUES (?, ?, ?, ?)"),
        "select_weeks": f"SELECT week, version FROM {ks}.playlist_weeks",
        "select_week": f"SELECT version FROM {ks}.playlist_weeks WHERE week = ?",
        "delete_week": f"DELETE FROM {ks}.playlist_weeks WHERE week = ?",
        "set_pointer": f"INSERT INTO {ks}.playlist_pointers (name, week) VALUES (?, ?)",
        "get_pointer": f"SELECT week FROM {ks}.playlist_pointers WHERE name = ?",
        "ping": "SELECT release_version FROM system.local",
    }


def token_ranges(splits: int) -> list[tuple[int, int]]:
    """``splits`` inclusive [lo, hi] ranges covering the whole Murmur3 token ring."""
    bounds = [_MURMUR3_MIN + (2**64 * i) // splits for i in range(splits + 1)]  # exact integers
    return [(bounds[i], bounds[i + 1] - 1) for i in range(splits)]


class ScyllaStore(RegistryCachedStore):
    """ScyllaDB / Cassandra through scylla-driver: token-aware (shard-aware on Scylla) routing,
    prepared statements, concurrent writes, rows with a TTL.

    A rewritten or dropped week's old rows are unreachable at once (readers resolve the registered
    version) and expire with their TTL. count_users scans the token ring in parallel ranges.
    """

    scheme = "scylla"

    def __init__(self, settings: ScyllaSettings):
        super().__init__(settings.registry_cache_s)
        self.settings = settings
        self.keep_weeks = settings.keep_weeks
        self.statements = cql_statements(settings)
        self._cluster: Any = None
        self._session: Any = None
        self._prepared: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> ScyllaStore:
        return cls(ScyllaSettings.from_url(url))

    def __repr__(self) -> str:
        return f"ScyllaStore({','.join(self.settings.hosts)}/{self.settings.keyspace})"

    def row_ttl_s(self) -> int | None:
        return self.settings.ttl_s

    def cluster_options(self) -> dict[str, Any]:
        """Keyword arguments for ``cassandra.cluster.Cluster`` (no connection made)."""
        from cassandra import ConsistencyLevel
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
        from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

        s = self.settings
        level = getattr(ConsistencyLevel, s.consistency)

        def profile(timeout: float) -> Any:
            return ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=s.local_dc or "")),
                consistency_level=level, request_timeout=timeout)

        username = os.environ.get("DW_SCYLLA_USERNAME")
        auth = PlainTextAuthProvider(username, os.environ.get("DW_SCYLLA_PASSWORD", "")) if username else None
        return {
            "contact_points": list(s.hosts), "port": s.port, "auth_provider": auth,
            "execution_profiles": {EXEC_PROFILE_DEFAULT: profile(s.timeout_s), "write": profile(s.write_timeout_s),
                                   "count": profile(s.count_timeout_s)},
            "connect_timeout": 5, "control_connection_timeout": 5.0,
        }

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        from cassandra import DriverException
        from cassandra.cluster import NoHostAvailable

        try:
            yield
        except (NoHostAvailable, DriverException, OSError) as exc:
            from cassandra import InvalidRequest

            if isinstance(exc, InvalidRequest):
                raise StoreError(f"Scylla rejected a statement: {exc}") from exc
            raise StoreUnavailable(f"Scylla at {','.join(self.settings.hosts)} is unavailable: {exc}") from exc

    def _connected(self) -> Any:
        """The session, connecting (and creating keyspace/tables if missing) on first use.
        A failed connect is retried on the next call; once connected the driver reconnects itself."""
        if self._session is not None:
            return self._session
        from cassandra.cluster import Cluster

        with self._lock, self._errors():
            if self._session is None:
                cluster = Cluster(**self.cluster_options())
                try:
                    session = cluster.connect()
                    for name in ("create_keyspace", "create_playlists", "create_weeks", "create_pointers"):
                        session.execute(self.statements[name], execution_profile="write")
                    self._prepared = {name: session.prepare(self.statements[name]) for name in (
                        "insert_playlist", "select_playlist", "count_range", "insert_week", "select_weeks",
                        "select_week", "delete_week", "set_pointer", "get_pointer")}
                except BaseException:
                    cluster.shutdown()
                    raise
                self._cluster, self._session = cluster, session
        return self._session

    def _execute(self, name: str, params: tuple = (), profile: str | None = None) -> list:
        session = self._connected()
        with self._errors():
            if profile is None:
                return list(session.execute(self._prepared[name], params))
            return list(session.execute(self._prepared[name], params, execution_profile=profile))

    def _fetch_registry(self) -> Registry:
        current = self._execute("get_pointer", (CURRENT_WEEK,))
        versions = {row.week: row.version for row in self._execute("select_weeks")}
        return Registry(current[0].week if current else None, versions)

    def _read_blob(self, week: str, version: str, user_id: int) -> bytes | None:
        rows = self._execute("select_playlist", (user_id, week, version))
        return bytes(rows[0].tracks) if rows else None

    async def _aread_blob(self, week: str, version: str, user_id: int) -> bytes | None:
        session = self._session if self._session is not None else await asyncio.to_thread(self._connected)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(method: str, value: Any) -> None:  # runs on the loop; the request may be gone
            if not done.done():
                getattr(done, method)(value)

        with self._errors():
            response = session.execute_async(self._prepared["select_playlist"], (user_id, week, version))
            response.add_callbacks(lambda rows: loop.call_soon_threadsafe(settle, "set_result", rows),
                                   lambda exc: loop.call_soon_threadsafe(settle, "set_exception", exc))
            rows = await done
        return bytes(rows[0].tracks) if rows else None

    def write_week(self, week: str, playlists: pd.DataFrame, progress: Progress | None = None) -> int:
        from cassandra.concurrent import execute_concurrent_with_args

        check_week(week)
        validate_playlists(playlists)
        session = self._connected()
        version, ttl, users = new_version(), self.settings.ttl_s, 0
        for batch in iter_user_batches(playlists, self.settings.batch_users):
            with self._errors():
                execute_concurrent_with_args(
                    session, self._prepared["insert_playlist"],
                    [(user, week, version, blob, ttl) for user, blob in batch],
                    concurrency=self.settings.concurrency, raise_on_first_error=True, execution_profile="write")
            users += len(batch)
            if progress is not None:
                progress(len(batch))
        self._execute("insert_week", (week, version, users, dt.datetime.now(dt.UTC)), profile="write")
        self._invalidate()
        return users

    def count_users(self, week: str) -> int:
        from cassandra.concurrent import execute_concurrent_with_args

        check_week(week)
        rows = self._execute("select_week", (week,))
        if not rows:
            return 0
        version = rows[0].version
        with self._errors():
            results = execute_concurrent_with_args(
                self._connected(), self._prepared["count_range"],
                [(lo, hi, week, version) for lo, hi in token_ranges(self.settings.count_splits)],
                concurrency=32, raise_on_first_error=True, execution_profile="count")
            return int(sum(result.result_or_exc.one()[0] for result in results))

    def set_current_week(self, week: str) -> None:
        check_week(week)
        if not self._execute("select_week", (week,)):
            raise StoreError(f"week {week} is not written; write it before making it live")
        self._execute("set_pointer", (CURRENT_WEEK, week), profile="write")
        self._invalidate()

    def drop_week(self, week: str) -> None:
        check_week(week)
        if self.current_week() == week:
            raise StoreError(f"week {week} is live; make another week live before dropping it")
        self._execute("delete_week", (week,), profile="write")  # rows become unreachable; TTL reclaims them
        self._invalidate()

    def ping(self) -> None:
        session = self._connected()
        with self._errors():
            session.execute(self.statements["ping"])

    def close(self) -> None:
        with self._lock:
            cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            cluster.shutdown()
        self._invalidate()


# --------------------------------------------------------------------------- factory

_STORES: dict[str, type] = {"sqlite": SQLiteStore, "redis": RedisStore, "rediss": RedisStore, "scylla": ScyllaStore}


def open_store(url: str) -> PlaylistStore:
    """The store a URL names (``sqlite:///path.db``, ``redis://host:port/db``,
    ``scylla://host1,host2/keyspace``). Makes no connection: stores connect on first use and
    reconnect after failures."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _STORES:
        raise ValueError(f"unknown store URL {redact_url(url)!r}: expected sqlite:///path.db, "
                         "redis://host:port/db or scylla://host1,host2/keyspace")
    return _STORES[scheme].from_url(url)
