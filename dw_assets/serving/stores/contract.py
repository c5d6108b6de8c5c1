"""What every playlist store promises (``PlaylistStore``), its errors and URL helpers."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import orjson
import pandas as pd

from dw_assets.serving.stores.codec import (
    WEEK_S,
    Progress,
    check_week,
    decode_tracks,
    encode_playlists,
    iter_user_batches,
    tracks_json,
    validate_playlists,
)

CURRENT_WEEK = "current_week"  # the pointer's name


class StoreError(RuntimeError):
    """A store operation failed (bad state, verification mismatch, refused operation)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (down, connection refused, timeout); retry later."""




def parse_options(query: str, allowed: dict[str, Callable[[str], Any]], url_for_errors: str) -> dict[str, Any]:
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


def seconds_from_ms(value: str) -> float:
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


def check_keep_weeks(value: str) -> int:
    weeks = int(value)
    if weeks < 1:
        raise ValueError("keep_weeks must be at least 1")
    return weeks





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
    # A Spark publish writes from the executors (a network store every host reaches); else from the driver.
    writes_from_executors: ClassVar[bool] = False
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

    batch_users: int = 1000  # users per write batch (one transaction / pipeline / concurrent burst)

    def write_week(self, week: str, playlists: pd.DataFrame, progress: Progress | None = None) -> int:
        """Write every user's playlist of ``week``; returns users written.

        playlists: PLAYLIST_COLUMNS rows (validated). Written in batches; ``progress(n)`` is called
        after each batch with the users it wrote (plugs into ``tqdm.update``; raising from it aborts
        the write). The new version is registered only once all batches are written, so readers
        never see a partial week. Rewriting a week replaces it. Does not touch ``current_week``.

        The three steps (``begin_write``, ``write_users``, ``commit_write``) are public so that a
        Spark publish runs the middle one on the executors (``serving.publish``).
        """
        check_week(week)
        validate_playlists(playlists)
        version = self.begin_write(week)
        users = self.write_users(week, version, playlists, progress)
        self.commit_write(week, version, users)
        return users

    @abc.abstractmethod
    def begin_write(self, week: str) -> str:
        """Start writing a new version of ``week``: reclaim what earlier writes left, list the new
        version as in flight (a crash leaves it for the next write to reclaim); returns the version."""

    @abc.abstractmethod
    def write_encoded(self, week: str, version: str, batch: list[tuple[int, bytes]]) -> None:
        """Write one batch of encoded users ((user_id, value) from ``encode_playlists``) into an
        unregistered ``version`` of ``week``: one transaction (SQLite, Redis) or one concurrent burst
        (Scylla). Idempotent: writing a user again writes the same key with the same value, so a
        retried Spark task is harmless."""

    @abc.abstractmethod
    def commit_write(self, week: str, version: str, users: int) -> None:
        """Register ``version`` as ``week``'s complete version (one atomic write) and reclaim the
        version it replaces. Call once every user is written."""

    def write_users(self, week: str, version: str, playlists: pd.DataFrame, progress: Progress | None = None) -> int:
        """Encode and write ``playlists`` (each user's rows all in this frame) in batches of
        ``batch_users`` into ``version``; ``progress(n)`` after each batch. Returns users written."""
        users = 0
        for batch in iter_user_batches(playlists, self.batch_users):
            self.write_encoded(week, version, batch)
            users += len(batch)
            if progress is not None:
                progress(len(batch))
        return users

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
        self._refreshing: tuple[asyncio.AbstractEventLoop, asyncio.Task] | None = None

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

    async def _afetch_registry(self) -> Registry:
        return await asyncio.to_thread(self._fetch_registry)

    async def _arefresh(self) -> Registry:
        """The registry re-read once for every request of this event loop that asks meanwhile: a
        burst of misses (unknown users) costs one refresh, not one each."""
        loop = asyncio.get_running_loop()
        pending = self._refreshing
        if pending is None or pending[0] is not loop or pending[1].done():
            pending = self._refreshing = (loop, loop.create_task(self._afetch_registry()))
        registry = await asyncio.shield(pending[1])
        self._registry = registry
        return registry

    async def acached_registry(self) -> Registry:
        """The registry as readers see it (cached up to ``registry_cache_s``), for the API's 404s:
        a miss has just read or refreshed it, so explaining the miss costs no second round trip."""
        registry = self._registry
        if registry is None or time.monotonic() - registry.fetched_at > self.registry_cache_s:
            registry = await self._arefresh()
        return registry

    async def aget_playlist_json(self, user_id: int, week: str | None = None) -> tuple[str, bytes] | None:
        """get_playlist_json for asyncio servers, with no thread hop where the store reads
        asynchronously: one async key read while the cached registry is fresh; refreshes (about once a
        second, and on a miss against a registry older than ``_REFRESH_AFTER_S``) are shared."""
        registry = self._registry
        if registry is None or time.monotonic() - registry.fetched_at > self.registry_cache_s:
            registry = await self._arefresh()
        key = registry.resolve(week)
        blob = None if key is None else await self._aread_blob(key[0], key[1], user_id)
        if blob is None and time.monotonic() - registry.fetched_at > self._REFRESH_AFTER_S:
            fresh = await self._arefresh()
            fresh_key = fresh.resolve(week)
            if fresh_key is not None and fresh_key != key:
                key, blob = fresh_key, await self._aread_blob(fresh_key[0], fresh_key[1], user_id)
        return None if blob is None else (key[0], tracks_json(blob))

    def current_week(self) -> str | None:
        return self._fetch_registry().current

    def weeks(self) -> list[str]:
        return sorted(self._fetch_registry().versions)
