"""The read-only HTTP API that serves the live week's discover-weekly playlists.

    GET /v1/users/{user_id}/discover-weekly[?week=YYYY-MM-DD]
        200 {"user_id", "week", "tracks": [{"position", "track_id", "score", "source",
             "is_exploration", "artist_id", "genre"}, ...]}   (30 tracks, by position)
        404 {"error": "user_not_found" | "week_not_found" | "no_live_week", "detail", ...}
        422 {"error": "invalid_request", "detail": [...]}      (id not an int64 >= 0, week not a Monday)
        503 {"error": "store_unavailable", "detail", "retry_after_s"} + Retry-After header
    GET /v1/weeks/current   200 {"week"} | 404 no_live_week
    GET /healthz            200 {"status": "ok"} | 503 when the store does not answer

The hot path is one store lookup whose stored bytes are already the ``tracks`` JSON, spliced into
the response without decoding. The store connects lazily and reconnects by itself, so the API
answers 503 while the store is down and recovers when it is back, without a restart.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from dw_assets.serving.stores import MAX_USER_ID, PlaylistStore, StoreUnavailable, check_week, open_store

log = logging.getLogger(__name__)
WEEK_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
STORE_URL_ENV = "DW_STORE_URL"


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


class _OutageLog:
    """Log a store outage at most once per ``every_s`` (at 1000 req/s one line per request would flood)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.last = every_s, float("-inf")

    def __call__(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            log.warning("playlist store unavailable: %s", exc)


def _invalid_week(week: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", "week"), "input": week,
                                    "msg": "week must be the ISO date of a Monday, e.g. 2026-01-05"}])


def create_app(store_url: str, *, store: PlaylistStore | None = None, retry_after_s: int = 1) -> FastAPI:
    """The API over the store at ``store_url`` (or an already opened ``store``; it is closed at shutdown).

    Opening makes no connection; every request goes to the store, which reconnects after failures.
    retry_after_s: the Retry-After (seconds) sent with 503s.
    """
    store = store if store is not None else open_store(store_url)
    outage = _OutageLog()

    async def call(read, *args):
        # Off the hot path: local SQLite reads inline (microseconds; a thread hop costs ~100 us of
        # CPU), network stores in the thread pool so a slow store stalls a thread, not the event loop.
        return read(*args) if store.local_reads else await run_in_threadpool(read, *args)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await store.aclose()

    app = FastAPI(title="dw_assets discover-weekly", version="1", lifespan=lifespan,
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

    def not_found(user_id: int, week: str | None) -> JSONResponse:
        if week is None:
            week = store.current_week()
            if week is None:
                return JSONResponse({"error": "no_live_week", "detail": "no week of playlists is live yet"},
                                    status_code=404)
        elif week not in store.weeks():
            return JSONResponse({"error": "week_not_found", "detail": f"week {week} is not published",
                                 "week": week}, status_code=404)
        return JSONResponse({"error": "user_not_found", "user_id": user_id, "week": week,
                             "detail": f"no discover-weekly playlist for user {user_id} in week {week}"},
                            status_code=404)

    @app.get("/v1/users/{user_id}/discover-weekly", response_class=Response,
             responses={200: {"model": DiscoverWeekly, "content": {"application/json": {}}},
                        404: {"model": ApiError}, 503: {"model": ApiError}})
    async def discover_weekly(
        user_id: Annotated[int, Path(ge=0, le=MAX_USER_ID, description="int64 user id")],
        week: Annotated[str | None, Query(pattern=WEEK_PATTERN, description="week key (a Monday); "
                                          "default: the live week")] = None,
    ) -> Response:
        if week is not None:
            try:
                check_week(week)
            except ValueError:
                raise _invalid_week(week) from None
        found = await store.aget_playlist_json(user_id, week)
        if found is None:
            return await call(not_found, user_id, week)
        found_week, tracks = found
        body = b'{"user_id":%d,"week":"%s","tracks":%s}' % (user_id, found_week.encode(), tracks)
        return Response(body, media_type="application/json")

    @app.get("/v1/weeks/current", responses={404: {"model": ApiError}, 503: {"model": ApiError}})
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

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``--factory``): the API over the store URL in ``DW_STORE_URL``."""
    url = os.environ.get(STORE_URL_ENV)
    if not url:
        raise RuntimeError(f"set {STORE_URL_ENV} to the playlist store URL, e.g. sqlite:///data/demo/serving.db")
    return create_app(url, retry_after_s=int(os.environ.get("DW_RETRY_AFTER_S", "1")))


def serve(store_url: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "warning", access_log: bool = False) -> None:
    """Run the API under uvicorn (blocks). ``workers`` > 1 forks processes, each with its own
    store connections; uvloop/httptools are used when installed."""
    import uvicorn

    open_store(store_url)  # fail fast on a malformed URL, before forking workers
    os.environ[STORE_URL_ENV] = store_url
    uvicorn.run("dw_assets.serving.api:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=access_log)
