"""ScyllaDB / Apache Cassandra as the playlist store (``scylla://host1,host2[:port]/keyspace``).

Tested against a real single-node Apache Cassandra 5.0 (``scripts/cassandra.sh start``) in every
test run; the same CQL and driver serve ScyllaDB (shard-aware routing there)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dw_assets import settings as dw_settings
from dw_assets.serving.stores.codec import WEEK_S, check_week, new_version
from dw_assets.serving.stores.contract import (
    CURRENT_WEEK,
    Registry,
    RegistryCachedStore,
    StoreError,
    StoreUnavailable,
    check_keep_weeks,
    parse_options,
    redact_url,
    seconds_from_ms,
    url_has_credentials,
)

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
    ``registry_cache_ms`` (default 1000), ``protocol_version`` (native protocol, default 4; 5 adds
    per-frame checksums at ~20 % more driver CPU per read).
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
    protocol_version: int = 4

    def __post_init__(self) -> None:
        if self.protocol_version not in (3, 4, 5):
            raise ValueError(f"protocol_version must be 3, 4 or 5, got {self.protocol_version}")
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
        options = parse_options(parts.query, {
            "replication": str, "local_dc": str, "consistency": str.upper, "ttl_days": float,
            "timeout_ms": seconds_from_ms, "batch_users": int, "concurrency": int, "count_splits": int,
            "registry_cache_ms": seconds_from_ms, "keep_weeks": check_keep_weeks,
            "protocol_version": int}, url)
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
    writes_from_executors = True

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

    def __reduce__(self) -> tuple:
        """Pickles as its settings: the copy (e.g. on a Spark executor) opens its own session and
        reads DW_SCYLLA_USERNAME / DW_SCYLLA_PASSWORD from its own environment."""
        return ScyllaStore, (self.settings,)

    @property
    def batch_users(self) -> int:  # type: ignore[override]
        return self.settings.batch_users

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
        from cassandra.query import tuple_factory

        s = self.settings
        level = getattr(ConsistencyLevel, s.consistency)

        def profile(timeout: float) -> Any:
            # Plain tuples: the default named-tuple factory builds a class per result set, ~45 % of the
            # driver's CPU per GET (measured: 438 -> 301 us per read).
            return ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=s.local_dc or "")),
                consistency_level=level, request_timeout=timeout, row_factory=tuple_factory)

        username = dw_settings.get("DW_SCYLLA_USERNAME")
        auth = PlainTextAuthProvider(username, dw_settings.get("DW_SCYLLA_PASSWORD") or "") if username else None
        return {
            "contact_points": list(s.hosts), "port": s.port, "auth_provider": auth,
            "execution_profiles": {EXEC_PROFILE_DEFAULT: profile(s.timeout_s), "write": profile(s.write_timeout_s),
                                   "count": profile(s.count_timeout_s)},
            "connect_timeout": 5, "control_connection_timeout": 5.0,
            # Values are zlib blobs already; the protocol's LZ4 frame compression ran per frame in the
            # driver's Python segment codec (~5 % of the API's CPU) for nothing.
            "compression": False,
            # v4 by default: v5 frames carry CRC checksums the driver computes in its pure-Python
            # segment codec, ~15-20 % of the API's CPU per read (measured) for what TCP checks already.
            "protocol_version": s.protocol_version,
        }

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Driver and server errors as StoreError (a refused statement or schema: retrying will not
        help) or StoreUnavailable (down, timeouts, overload: retry later)."""
        from cassandra import DriverException, RequestValidationException
        from cassandra.cluster import NoHostAvailable
        from cassandra.protocol import ConfigurationException, ErrorMessage
        from cassandra.protocol import RequestValidationException as RefusedMessage

        try:
            yield
        except (NoHostAvailable, DriverException, ErrorMessage, OSError) as exc:
            if isinstance(exc, ConfigurationException):  # e.g. a replication naming an unknown data centre
                raise StoreError(f"Scylla refused keyspace {self.settings.keyspace!r} with replication "
                                 f"{self.settings.replication} (the store URL's ?replication=): {exc}") from exc
            if isinstance(exc, (RequestValidationException, RefusedMessage)):
                raise StoreError(f"Scylla rejected a statement: {exc}") from exc
            raise StoreUnavailable(f"Scylla at {','.join(self.settings.hosts)}:{self.settings.port} is "
                                   f"unavailable: {exc}") from exc

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
        versions = dict(self._execute("select_weeks"))
        return Registry(current[0][0] if current else None, versions)

    def _read_blob(self, week: str, version: str, user_id: int) -> bytes | None:
        rows = self._execute("select_playlist", (user_id, week, version))
        return bytes(rows[0][0]) if rows else None

    async def _aexecute(self, name: str, params: tuple = ()) -> list:
        """A prepared statement's rows (first page) without blocking the event loop or a thread:
        the driver's I/O thread hands the result back to the loop."""
        session = self._session if self._session is not None else await asyncio.to_thread(self._connected)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(method: str, value: Any) -> None:  # runs on the loop; the request may be gone
            if not done.done():
                getattr(done, method)(value)

        with self._errors():
            response = session.execute_async(self._prepared[name], params)
            response.add_callbacks(lambda rows: loop.call_soon_threadsafe(settle, "set_result", rows),
                                   lambda exc: loop.call_soon_threadsafe(settle, "set_exception", exc))
            return await done

    async def _aread_blob(self, week: str, version: str, user_id: int) -> bytes | None:
        rows = await self._aexecute("select_playlist", (user_id, week, version))
        return bytes(rows[0][0]) if rows else None

    async def _afetch_registry(self) -> Registry:
        current, versions = await asyncio.gather(self._aexecute("get_pointer", (CURRENT_WEEK,)),
                                                 self._aexecute("select_weeks"))
        return Registry(current[0][0] if current else None, dict(versions))

    def begin_write(self, week: str) -> str:
        check_week(week)
        self._connected()  # creates the keyspace and tables before any executor writes
        return new_version()  # a killed write's rows are unreachable and expire with their TTL

    def write_encoded(self, week: str, version: str, batch: list[tuple[int, bytes]]) -> None:
        from cassandra.concurrent import execute_concurrent_with_args

        session = self._connected()
        with self._errors():
            execute_concurrent_with_args(
                session, self._prepared["insert_playlist"],
                [(user, week, version, blob, self.settings.ttl_s) for user, blob in batch],
                concurrency=self.settings.concurrency, raise_on_first_error=True, execution_profile="write")

    def commit_write(self, week: str, version: str, users: int) -> None:
        self._execute("insert_week", (week, version, users, dt.datetime.now(dt.UTC)), profile="write")
        self._invalidate()

    def count_users(self, week: str) -> int:
        from cassandra.concurrent import execute_concurrent_with_args

        check_week(week)
        rows = self._execute("select_week", (week,))
        if not rows:
            return 0
        version = rows[0][0]
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

    def compactions_running(self) -> int | None:
        """Compactions the contacted node runs now (Cassandra 4+'s ``system_views.sstable_tasks``);
        None where the node has no such table (ScyllaDB). Benchmarks wait for 0 after a publish."""
        session = self._connected()
        try:
            return len(list(session.execute("SELECT kind FROM system_views.sstable_tasks")))
        except Exception:  # an unknown table on other servers: the caller falls back to a fixed wait
            return None

    def close(self) -> None:
        with self._lock:
            cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            cluster.shutdown()
        self._invalidate()
