"""SQLite, the embedded default store."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dw_assets.serving.stores.codec import check_week, new_version, tracks_json
from dw_assets.serving.stores.contract import (
    CURRENT_WEEK,
    PlaylistStore,
    StoreError,
    StoreUnavailable,
    check_keep_weeks,
    parse_options,
    redact_url,
    seconds_from_ms,
)


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
        options = parse_options(parts.query, {"timeout_ms": seconds_from_ms, "batch_users": int,
                                         "keep_weeks": check_keep_weeks}, url)
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
    def begin_write(self, week: str) -> str:
        check_week(week)
        version = new_version()
        with self._writing() as db:
            self._reclaim(db)
            started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            self._transaction(db, [("INSERT INTO writes (week, version, started_at) VALUES (?, ?, ?)",
                                    (week, version, started_at))])
        return version

    def write_encoded(self, week: str, version: str, batch: list[tuple[int, bytes]]) -> None:
        with self._writing() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO playlists (week, version, user_id, tracks) VALUES (?, ?, ?, ?)",
                               [(week, version, user, blob) for user, blob in batch])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def commit_write(self, week: str, version: str, users: int) -> None:
        with self._writing() as db:
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
