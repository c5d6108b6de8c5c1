"""Redis (or any RESP server) as the playlist store."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from dw_assets import settings as dw_settings
from dw_assets.serving.stores.codec import check_week, new_version
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


class RedisStore(RegistryCachedStore):
    """Redis (or any RESP server: Valkey, KeyDB, Dragonfly). Keys under ``prefix`` (default ``dw``):

    - ``{prefix}:current_week`` -> week key (the pointer)
    - ``{prefix}:weeks`` hash: week -> {"version", "users", "written_at"} (the registry)
    - ``{prefix}:pl:{week}:{version}:{user_id}`` -> tracks JSON (the hot key)
    - ``{prefix}:users:{week}:{version}`` set of user ids (exact counts; targeted deletes)
    - ``{prefix}:writing`` set of ``week/version`` being written or superseded (a killed write
      stays listed; so does a superseded or dropped version until its keys are deleted; the next
      write reclaims every one that is not registered)
    - ``{prefix}:reclaiming`` set of ``week/version`` whose keys are being deleted. A version moves
      there from ``writing`` in one step before its keys go, and a write batch commits only while
      its version is in ``writing`` (checked under WATCH): a writer task still running after its
      job failed can never add keys to a version already reclaimed.

    Each write batch is one MULTI/EXEC, so the user set and the keys never disagree; registering a
    week and listing the version it supersedes as garbage is one MULTI/EXEC too. URL options:
    ``prefix``, ``timeout_ms`` (reads, default 250), ``batch_users`` (default 1000), ``ttl_days``
    (safety-net expiry on playlist keys, default none: retention drops old weeks), ``keep_weeks``,
    ``registry_cache_ms`` (default 1000). Password from ``DW_REDIS_PASSWORD`` only.
    """

    scheme = "redis"
    writes_from_executors = True

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
        # What a copy needs to reconnect (pickled for Spark executors; no client, no password).
        self._settings = {"host": host, "port": port, "db": db, "prefix": prefix, "timeout_s": timeout_s,
                          "batch_users": batch_users, "ttl_s": ttl_s, "registry_cache_s": registry_cache_s,
                          "ssl": ssl, "write_timeout_s": write_timeout_s, "keep_weeks": keep_weeks}
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
        options = parse_options(parts.query, {"prefix": str, "timeout_ms": seconds_from_ms, "batch_users": int,
                                         "ttl_days": float, "registry_cache_ms": seconds_from_ms,
                                         "keep_weeks": check_keep_weeks}, url)
        if "timeout_ms" in options:
            options["timeout_s"] = options.pop("timeout_ms")
        if "ttl_days" in options:
            options["ttl_s"] = int(options.pop("ttl_days") * 86400)
        if "registry_cache_ms" in options:
            options["registry_cache_s"] = options.pop("registry_cache_ms")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, int(db_path or 0),
                   ssl=parts.scheme == "rediss", **options)

    def __reduce__(self) -> tuple:
        """Pickles as its settings: the copy (e.g. on a Spark executor) opens its own connections and
        reads DW_REDIS_PASSWORD from its own environment."""
        return _reopen, (self._settings,)

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
                        host=self.host, port=self.port, db=self.db, password=dw_settings.get("DW_REDIS_PASSWORD"),
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
                host=self.host, port=self.port, db=self.db, password=dw_settings.get("DW_REDIS_PASSWORD"),
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
        superseded and dropped versions): moved to ``reclaiming`` first (no batch commits to it
        after that), its keys deleted, then unlisted. A reclaim killed midway is finished by the next."""
        writing, reclaiming = self._key("writing"), self._key("reclaiming")
        registered = {(week.decode(), orjson.loads(entry)["version"])
                      for week, entry in client.hgetall(self._key("weeks")).items()}
        for stale in client.smembers(writing):
            week, _, version = stale.decode().partition("/")
            if (week, version) in registered:
                client.srem(writing, stale)
            else:
                client.smove(writing, reclaiming, stale)
        for stale in client.smembers(reclaiming):
            week, _, version = stale.decode().partition("/")
            self._delete_version(week, version)
            client.srem(reclaiming, stale)

    def begin_write(self, week: str) -> str:
        check_week(week)
        version = new_version()
        with self._errors():
            client = self._client("write")
            self._reclaim(client)
            client.sadd(self._key("writing"), f"{week}/{version}")
        return version

    def write_encoded(self, week: str, version: str, batch: list[tuple[int, bytes]]) -> None:
        if not batch:
            return
        import redis

        writing, member = self._key("writing"), f"{week}/{version}"
        with self._errors(), self._client("write").pipeline(transaction=True) as pipe:
            while True:  # the fence: commits only while the version is listed as being written
                try:
                    pipe.watch(writing)
                    if not pipe.sismember(writing, member):
                        raise StoreError(f"week {week} version {version} is no longer being written (a failed or "
                                         "superseded write, reclaimed since): this batch is not stored")
                    pipe.multi()
                    pipe.sadd(self._key("users", week, version), *(user for user, _ in batch))
                    for user, blob in batch:
                        pipe.set(self._key("pl", week, version, user), blob, ex=self.ttl_s)
                    pipe.execute()
                    return
                except redis.WatchError:  # ``writing`` changed (another write began or ended): look again
                    continue

    def commit_write(self, week: str, version: str, users: int) -> None:
        writing = self._key("writing")
        with self._errors():
            client = self._client("write")
            old = client.hget(self._key("weeks"), week)
            entry = {"version": version, "users": users,
                     "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            pipe = client.pipeline(transaction=True)
            pipe.hset(self._key("weeks"), week, orjson.dumps(entry))
            pipe.srem(writing, f"{week}/{version}")
            if old is not None:  # superseded: garbage from this instant, deleted just below or by the next write
                pipe.sadd(writing, f"{week}/{orjson.loads(old)['version']}")
            pipe.execute()
            self._invalidate()
            self._reclaim(client)

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


def _reopen(settings: dict) -> RedisStore:
    return RedisStore(**settings)
