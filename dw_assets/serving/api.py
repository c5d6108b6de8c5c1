"""The read-only HTTP API that serves the live week's discover-weekly playlists.

Public (GET or HEAD; anything else is 405):

    GET /v1/users/{user_id}/discover-weekly[?week=YYYY-MM-DD]
        200 {"user_id", "week", "tracks": [{"position", "track_id", "score", "source",
             "is_exploration", "artist_id", "genre"}, ...]}   (30 tracks, by position)
        404 {"error": "user_not_found" | "week_not_found" | "no_live_week", "detail", ...}
        422 {"error": "invalid_request", "detail": [{"loc", "msg", "type", "input"}, ...]}
            user_id not plain decimal digits of an int64 (no sign, space or leading zero), week not
            the YYYY-MM-DD of a Monday, a query parameter the endpoint does not take, or one given twice
        503 {"error": "store_unavailable", "detail", "retry_after_s"} + Retry-After header
    GET /v1/weeks/current   200 {"week"} | 404 no_live_week
    GET /healthz            200 {"status": "ok"} | 503 when the store does not answer

Admin, only when an admin token is configured (``DW_ADMIN_TOKEN``; otherwise these paths are 404),
each request with ``Authorization: Bearer <token>`` (401 + ``WWW-Authenticate: Bearer`` without it):

    GET  /admin/v1/store      200 {"store", "current_week", "weeks", "current_week_users"}
    POST /admin/v1/reconnect  200 {"reconnected": true, "store"}: drops every store connection and
                              reconnects (e.g. after a SQLite file was swapped in or a failover)

Every request first passes ``RequestGuard``: a per-client-IP token bucket (429 + Retry-After), the
request target (path + query) at most 512 bytes (414), headers at most 8 KiB (431), a body at most
1 KiB with a Content-Length (413). Errors are all JSON ``{"error", "detail", ...}``.

The hot path is one store lookup whose stored bytes are already the ``tracks`` JSON, spliced into
the response without decoding. Its plainest form (``GET /v1/users/{id}/discover-weekly`` without a
query) is answered by ``RequestGuard`` itself, without FastAPI's routing: measured over Cassandra at
1,000 req/s, 344 instead of ~510 us of API CPU per request (the route's answer is the same, tested). Stores take the user id as an int and the week as a validated key,
as bound parameters (SQLite, CQL) or inside one key argument (Redis), never as query text. The
store connects lazily and reconnects by itself, so the API answers 503 while the store is down and
recovers when it is back, without a restart.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import hmac
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, BeforeValidator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dw_assets import settings
from dw_assets.serving.stores import (
    MAX_USER_ID,
    PlaylistStore,
    RegistryCachedStore,
    StoreUnavailable,
    check_week,
    open_store,
)

log = logging.getLogger(__name__)
STORE_URL_ENV = "DW_STORE_URL"
ADMIN_TOKEN_ENV = "DW_ADMIN_TOKEN"
RATE_LIMIT_RPS_ENV = "DW_RATE_LIMIT_RPS"
RATE_LIMIT_BURST_ENV = "DW_RATE_LIMIT_BURST"
GC_FREEZE_ENV = "DW_GC_FREEZE"
RETRY_AFTER_ENV = "DW_RETRY_AFTER_S"

# Per client IP and worker process; far above one app's real use.
DEFAULT_RATE_LIMIT_RPS = settings.setting(RATE_LIMIT_RPS_ENV).default
BURST_SECONDS = 2.0  # default bucket size: this many seconds of the rate
MAX_TARGET_BYTES = 512  # path + query; the longest valid request target is ~60 bytes
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 64
MAX_BODY_BYTES = 1024  # nothing here reads a body; a small bound still lets odd clients through
MIN_ADMIN_TOKEN_CHARS = 16

_USER_ID = re.compile(r"0|[1-9][0-9]{0,18}")  # ASCII digits only: str.isdigit() accepts e.g. '٣'
_PLAYLIST_PATH = re.compile(r"/v1/users/(0|[1-9][0-9]{0,18})/discover-weekly")
WEEK_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def _user_id(value: object) -> object:
    if isinstance(value, str) and not _USER_ID.fullmatch(value):
        raise ValueError("user_id must be decimal digits without sign, spaces or leading zeros")
    return value


def _monday(week: str | None) -> str | None:
    return week if week is None else check_week(week)  # ValueError says which weekday it is


# Path/Query first, validators after: that order keeps minimum/maximum/pattern in the OpenAPI schema.
UserId = Annotated[int, Path(ge=0, le=MAX_USER_ID, description="int64 user id (decimal digits)"),
                   BeforeValidator(_user_id)]
Week = Annotated[str | None, Query(pattern=WEEK_PATTERN, description="week key (a Monday); default: the live week"),
                 AfterValidator(_monday)]


class Track(BaseModel):
    position: int
    track_id: int
    score: float
    source: str
    is_exploration: bool
    artist_id: int
    genre: str


class DiscoverWeekly(BaseModel):
    user_id: int
    week: str
    tracks: list[Track]


class ApiError(BaseModel):
    error: str
    detail: str


class StoreStats(BaseModel):
    store: str
    current_week: str | None
    weeks: list[str]
    current_week_users: int


class _OutageLog:
    """Log a store outage at most once per ``every_s`` (at 1000 req/s one line per request would flood)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.last = every_s, float("-inf")

    def __call__(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            log.warning("playlist store unavailable: %s", exc)


class RateLimiter:
    """Token buckets per client: each holds up to ``burst`` tokens and refills at ``rate`` per second;
    a request takes one. In-process (one table per worker process), O(1) per request.

    The table is bounded: past ``max_clients`` entries the buckets that have refilled (idle clients)
    are dropped, and if most clients are active it starts afresh (bounded memory beats exact limits
    for a flood of distinct addresses).
    """

    def __init__(self, rate: float, burst: float, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst, self.max_clients, self.clock = float(rate), float(burst), max_clients, clock
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, last refill time]

    def acquire(self, client: str) -> float:
        """Take a token for ``client``: 0.0 when allowed, else the seconds until one is available."""
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._prune(now)
            self._buckets[client] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [client for client, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for client in full:
            del self._buckets[client]
        if len(self._buckets) > self.max_clients // 2:  # keeps pruning amortized O(1) per new client
            self._buckets.clear()


class RequestGuard:
    """ASGI middleware: the cheap checks every request passes before routing.

    In order: rate limit per client IP (``scope["client"]``, which uvicorn sets from
    X-Forwarded-For only for its trusted proxies) -> 429 + Retry-After; request target longer than
    ``max_target_bytes`` -> 414; more than ``max_headers`` headers or ``max_header_bytes`` of them ->
    431; a Content-Length over ``max_body_bytes`` or a body of unannounced length (chunked) -> 413;
    a malformed Content-Length -> 400. HEAD is answered as GET without the body.
    """

    def __init__(self, app: Any, *, limiter: RateLimiter | None, max_target_bytes: int = MAX_TARGET_BYTES,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_headers: int = MAX_HEADERS,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 playlist: Callable[[int], Awaitable[Response]] | None = None):
        self.app, self.limiter, self.playlist = app, limiter, playlist
        self.max_target_bytes, self.max_header_bytes = max_target_bytes, max_header_bytes
        self.max_headers, self.max_body_bytes = max_headers, max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rejection = self._reject(scope)
        if rejection is not None:
            await rejection(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope, send = {**scope, "method": "GET"}, _without_body(send)
        if self.playlist is not None and scope["method"] == "GET" and not scope.get("query_string"):
            # The hot route's plainest form (no ?week=) skips routing, dependency solving and the
            # exception middlewares: the same answer as the route below at half the API's CPU per
            # request, which is what queues behind Cassandra on a shared host. Anything else, a
            # store error included, takes the full route.
            match = _PLAYLIST_PATH.fullmatch(scope["path"])
            if match is not None and int(match[1]) <= MAX_USER_ID:
                with contextlib.suppress(StoreUnavailable):
                    response = await self.playlist(int(match[1]))
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _reject(self, scope: dict) -> Response | None:
        if self.limiter is not None:
            client = scope.get("client")
            wait_s = self.limiter.acquire(client[0] if client else "")
            if wait_s:
                retry_after = max(1, math.ceil(wait_s))
                return JSONResponse({"error": "rate_limited", "detail": "too many requests from this client",
                                     "retry_after_s": retry_after},
                                    status_code=429, headers={"Retry-After": str(retry_after)})
        target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if target > self.max_target_bytes:
            return _closing(414, "uri_too_long", f"the request target is limited to {self.max_target_bytes} bytes")
        headers = scope["headers"]
        if len(headers) > self.max_headers or sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            return _closing(431, "headers_too_large",
                            f"request headers are limited to {self.max_headers} and {self.max_header_bytes} bytes")
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit():
                    return _closing(400, "bad_request", "malformed Content-Length")
                if int(value) > self.max_body_bytes:
                    return _closing(413, "payload_too_large",
                                    f"request bodies are limited to {self.max_body_bytes} bytes")
            elif name == b"transfer-encoding":
                return _closing(413, "payload_too_large", "a request body needs a Content-Length (this API is read-only)")
        return None


def _closing(status: int, error: str, detail: str) -> JSONResponse:
    # Close the connection: a client that sent too much should not keep streaming into it.
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers={"Connection": "close"})


def _without_body(send: Callable[[dict], Awaitable[None]]) -> Callable[[dict], Awaitable[None]]:
    async def send_head(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return send_head


def _query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters ``route`` declares, its dependencies' included."""
    names, pending = set(), [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(param.alias for param in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


def _strict_query() -> Callable[[Request], Awaitable[None]]:
    """A dependency for every route: 422 for a query parameter the route does not declare, or one
    given twice (so a new route's own parameters are allowed without listing them anywhere)."""
    declared: dict[int, frozenset[str]] = {}  # id(route) -> names; the app keeps its routes alive

    async def strict_query(request: Request) -> None:
        if not request.scope.get("query_string"):
            return
        route = request.scope.get("route")
        allowed = declared.get(id(route))
        if allowed is None:
            allowed = declared[id(route)] = _query_names(route) if isinstance(route, APIRoute) else frozenset()
        errors, seen = [], set()
        for name, value in request.query_params.multi_items():
            if name not in allowed:
                accepted = ", ".join(sorted(allowed)) or "none"
                errors.append({"type": "extra_forbidden", "loc": ("query", name), "input": value,
                               "msg": f"unknown query parameter; this endpoint accepts: {accepted}"})
            elif name in seen:
                errors.append({"type": "value_error", "loc": ("query", name), "input": value,
                               "msg": "query parameter given more than once"})
            seen.add(name)
        if errors:
            raise RequestValidationError(errors)

    return strict_query


class _Unauthorized(Exception):
    def __init__(self, invalid_token: bool):
        self.invalid_token = invalid_token


def _admin_guard(token: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency admitting only ``Authorization: Bearer <token>``. Only the token's SHA-256 is
    kept, compared in constant time (equal-length digests, so no length leaks either)."""
    expected = hashlib.sha256(token.encode()).digest()

    async def require_admin(request: Request) -> None:  # async: no thread hop for a hash
        header = request.headers.get("authorization")
        if header is None:
            raise _Unauthorized(invalid_token=False)
        scheme, _, given = header.partition(" ")
        # Starlette decodes headers as latin-1, so this gives back the bytes the client sent.
        digest = hashlib.sha256(given.strip().encode("latin-1")).digest()
        if not (hmac.compare_digest(digest, expected) and scheme.lower() == "bearer"):
            raise _Unauthorized(invalid_token=True)

    return require_admin


def create_app(store_url: str, *, store: PlaylistStore | None = None, retry_after_s: int = 1,
               admin_token: str | None = None, rate_limit_rps: float | None = DEFAULT_RATE_LIMIT_RPS,
               rate_limit_burst: float | None = None, max_target_bytes: int = MAX_TARGET_BYTES,
               max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES,
               freeze_gc: bool = False) -> FastAPI:
    """The API over the store at ``store_url`` (or an already opened ``store``; it is closed at shutdown).

    Opening makes no connection; every request goes to the store, which reconnects after failures.
    retry_after_s: the Retry-After (seconds) sent with 503s.
    admin_token: enables the /admin/v1 routes for ``Authorization: Bearer <admin_token>`` (at least
        16 characters, else ValueError); None or empty: the admin routes do not exist (404).
    rate_limit_rps, rate_limit_burst: token bucket per client IP and worker process (requests/s,
        bucket size; burst default: 2 s of the rate); rate None or 0 turns it off.
    max_target_bytes, max_header_bytes, max_body_bytes: request bounds (414, 431, 413).
    freeze_gc: at startup, connect the store and move every object alive then out of the garbage
        collector's reach (``gc.freeze``), for a server process; tests in one process leave it off.
    """
    admin_token = (admin_token or "").strip()
    if admin_token and len(admin_token) < MIN_ADMIN_TOKEN_CHARS:
        raise ValueError(f"the admin token must have at least {MIN_ADMIN_TOKEN_CHARS} characters")
    limiter = None
    if rate_limit_rps:
        limiter = RateLimiter(rate_limit_rps, rate_limit_burst or max(1.0, BURST_SECONDS * rate_limit_rps))
    store = store if store is not None else open_store(store_url)
    outage = _OutageLog()

    async def call(read, *args):
        # Off the hot path: local SQLite reads inline (microseconds; a thread hop costs ~100 us of
        # CPU), network stores in the thread pool so a slow store stalls a thread, not the event loop.
        return read(*args) if store.local_reads else await run_in_threadpool(read, *args)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if freeze_gc:
            with contextlib.suppress(StoreUnavailable):  # a store down at start still gets 503s, later reconnects
                await call(store.ping)
            # Everything alive now (app, driver, its cluster metadata) lives as long as the process. Out
            # of the collector's reach, a full collection scans only per-request objects: otherwise
            # it walks all of them every few seconds, 40-200 ms with the loop stopped (the p99 tail).
            gc.collect()
            gc.freeze()
        yield
        await store.aclose()

    app = FastAPI(title="dw_assets discover-weekly", version="1", lifespan=lifespan,
                  dependencies=[Depends(_strict_query())],
                  description="Read-only: the weekly 30-track discovery playlist of each user.")
    app.state.store = store

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        outage(exc)
        return JSONResponse(
            {"error": "store_unavailable", "detail": "the playlist store is unavailable; retry later",
             "retry_after_s": retry_after_s},
            status_code=503, headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{k: v for k, v in error.items() if k in ("loc", "msg", "type", "input")} for error in exc.errors()]
        return JSONResponse({"error": "invalid_request", "detail": jsonable_encoder(detail)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if "Allow" in headers:
            allowed = {method.strip() for method in headers["Allow"].split(",")}
            if "GET" in allowed:
                allowed.add("HEAD")  # RequestGuard answers HEAD for every GET route
            headers["Allow"] = ", ".join(sorted(allowed))
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": error, "detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_request: Request, exc: _Unauthorized) -> JSONResponse:
        challenge = 'Bearer realm="dw-admin"' + (', error="invalid_token"' if exc.invalid_token else "")
        return JSONResponse({"error": "unauthorized", "detail": "admin routes need Authorization: Bearer <token>"},
                            status_code=401, headers={"WWW-Authenticate": challenge})

    async def not_found(user_id: int, week: str | None) -> JSONResponse:
        # Remote stores answer from the registry the miss just read: a synchronous registry read per
        # 404 in a worker thread tripled the p99 over Cassandra with 5 % unknown users.
        registry = await store.acached_registry() if isinstance(store, RegistryCachedStore) else None
        if week is None:
            week = registry.current if registry is not None else await call(store.current_week)
            if week is None:
                return JSONResponse({"error": "no_live_week", "detail": "no week of playlists is live yet"},
                                    status_code=404)
        elif week not in (registry.versions if registry is not None else await call(store.weeks)):
            return JSONResponse({"error": "week_not_found", "detail": f"week {week} is not published",
                                 "week": week}, status_code=404)
        return JSONResponse({"error": "user_not_found", "user_id": user_id, "week": week,
                             "detail": f"no discover-weekly playlist for user {user_id} in week {week}"},
                            status_code=404)

    errors: dict[int | str, dict[str, Any]] = {404: {"model": ApiError}, 422: {"model": ApiError},
                                               503: {"model": ApiError}}

    @app.get("/v1/users/{user_id}/discover-weekly", response_class=Response,
             responses={200: {"model": DiscoverWeekly, "content": {"application/json": {}}}, **errors})
    async def discover_weekly(user_id: UserId, week: Week = None) -> Response:
        return await playlist(user_id, week)

    async def playlist(user_id: int, week: str | None = None) -> Response:
        found = await store.aget_playlist_json(user_id, week)
        if found is None:
            return await not_found(user_id, week)
        found_week, tracks = found
        body = b'{"user_id":%d,"week":"%s","tracks":%s}' % (user_id, found_week.encode(), tracks)
        return Response(body, media_type="application/json")

    app.add_middleware(RequestGuard, limiter=limiter, max_target_bytes=max_target_bytes,
                       max_header_bytes=max_header_bytes, max_body_bytes=max_body_bytes,
                       playlist=playlist)

    @app.get("/v1/weeks/current", responses=errors)
    async def current_week() -> JSONResponse:
        week = await call(store.current_week)
        if week is None:
            return JSONResponse({"error": "no_live_week", "detail": "no week of playlists is live yet"},
                                status_code=404)
        return JSONResponse({"week": week})

    @app.get("/healthz", responses={503: {"model": ApiError}})
    async def healthz() -> JSONResponse:
        await call(store.ping)
        return JSONResponse({"status": "ok"})

    if admin_token:
        admin = [Depends(_admin_guard(admin_token))]
        no_store = {"Cache-Control": "no-store"}

        def stats() -> dict[str, Any]:
            current = store.current_week()
            return {"store": store.scheme, "current_week": current, "weeks": store.weeks(),
                    "current_week_users": store.count_users(current) if current else 0}

        @app.get("/admin/v1/store", dependencies=admin, include_in_schema=False, response_model=StoreStats)
        async def store_stats() -> JSONResponse:
            # Always in a thread: counting users scans a week (Scylla: the whole token ring).
            return JSONResponse(await run_in_threadpool(stats), headers=no_store)

        @app.post("/admin/v1/reconnect", dependencies=admin, include_in_schema=False)
        async def reconnect(request: Request) -> JSONResponse:
            await store.aclose()  # the next use opens fresh connections (new file, new address)
            await call(store.ping)
            log.info("admin: store connections reopened (client %s)", request.client.host if request.client else "?")
            return JSONResponse({"reconnected": True, "store": store.scheme}, headers=no_store)

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``--factory``): the API over the store URL in ``DW_STORE_URL``, with
    ``DW_ADMIN_TOKEN`` (unset: no admin routes), ``DW_RATE_LIMIT_RPS`` (default 2000 per client IP
    and worker; 0 turns it off), ``DW_RATE_LIMIT_BURST`` (default 2 s of the rate) ``DW_RETRY_AFTER_S`` (1) and ``DW_GC_FREEZE`` (default 1; 0 leaves the collector as Python sets it)."""
    url = settings.get(STORE_URL_ENV)
    if not url:
        raise RuntimeError(f"set {STORE_URL_ENV} to the playlist store URL, e.g. sqlite:///data/demo/serving.db")
    return create_app(url, retry_after_s=int(settings.get(RETRY_AFTER_ENV)),
                      admin_token=settings.get(ADMIN_TOKEN_ENV),
                      rate_limit_rps=settings.get(RATE_LIMIT_RPS_ENV),
                      rate_limit_burst=settings.get(RATE_LIMIT_BURST_ENV),
                      freeze_gc=settings.get(GC_FREEZE_ENV))


def serve(store_url: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "warning", access_log: bool = False) -> None:
    """Run the API under uvicorn (blocks). ``workers`` > 1 forks processes, each with its own
    store connections and rate-limit table; uvloop/httptools are used when installed."""
    import uvicorn

    os.environ[STORE_URL_ENV] = store_url
    app_from_env()  # fail fast on a malformed URL or DW_* setting, before forking workers (no I/O)
    uvicorn.run("dw_assets.serving.api:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=access_log, server_header=False)
