"""Serving benchmark: a fixed-rate (open-loop) load generator against the real API process.

``run_load`` starts the API under uvicorn in a subprocess on a free loopback port, then sends
GETs for random user ids (a share of them unknown, answered 404) at a fixed rate over keep-alive
connections, and reports latency percentiles, achieved rate, status counts and the CPU that the
server and the client themselves used (on a small machine the client competes for the same cores;
its CPU share says whether it is the bottleneck).

Latency is measured from each request's *scheduled* send time, so a stalled server shows up as
latency instead of silently lowering the rate (no coordinated omission); ``service_ms`` is the time
from the actual send to the last byte. The client is raw asyncio streams (uvloop when installed):
about 10x less CPU per request than an httpx client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from dw_assets import procfs, settings
from dw_assets.serving.api import DEFAULT_RATE_LIMIT_RPS, RATE_LIMIT_RPS_ENV
from dw_assets.serving.publish import publish_week
from dw_assets.serving.stores import MAX_POSITION, open_store

GENRES = ("pop", "rock", "hiphop", "electronic", "jazz", "classical", "folk", "latin", "metal", "rnb")
SOURCES = ("two_tower", "item2vec", "audio_cold_start", "two_tower+item2vec", "popularity_fallback")


def synthetic_playlists(n_users: int, seed: int = 0, first_user_id: int = 1, n_tracks: int = 1_000_000,
                        tracks_per_user: int = MAX_POSITION) -> pd.DataFrame:
    """Random but well-formed playlists (the publish contract's columns) for benchmarks and tests.

    Returns n_users * tracks_per_user rows: user_id int64 (first_user_id..), position 1..30,
    track_id int64, score float32 (descending by position), source str, is_exploration bool,
    artist_id int64 (track_id // 10), genre str.
    """
    rng = np.random.default_rng(seed)
    rows = n_users * tracks_per_user
    track_id = rng.integers(0, n_tracks, rows, dtype=np.int64)
    score = np.sort(rng.random((n_users, tracks_per_user), dtype=np.float32), axis=1)[:, ::-1].ravel()
    return pd.DataFrame({
        "user_id": np.repeat(np.arange(first_user_id, first_user_id + n_users, dtype=np.int64), tracks_per_user),
        "position": np.tile(np.arange(1, tracks_per_user + 1, dtype=np.int64), n_users),
        "track_id": track_id,
        "score": score,
        "source": np.asarray(SOURCES, dtype=object)[rng.integers(0, len(SOURCES), rows)],
        "is_exploration": rng.random(rows) < 0.1,
        "artist_id": track_id // 10,
        "genre": np.asarray(GENRES, dtype=object)[rng.integers(0, len(GENRES), rows)],
    })


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its live children."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += procfs.cpu_seconds(current) or 0.0
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
    return total


def start_api(store_url: str, port: int, workers: int = 1, log: IO[bytes] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
    """The API under uvicorn on 127.0.0.1:``port`` in a subprocess (call wait_ready next).
    log: a file for the server's stderr (a file, not a pipe: a chatty server never blocks).
    env: extra environment for the server (``DW_RATE_LIMIT_RPS`` ...) over this process's."""
    env = {**os.environ, **(env or {}), "DW_STORE_URL": store_url}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "dw_assets.serving.api:app_from_env", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         "--log-level", "warning", "--no-access-log", "--no-server-header"],
        env=env, stdout=subprocess.DEVNULL, stderr=log if log is not None else subprocess.DEVNULL)


def wait_ready(process: subprocess.Popen, port: int, timeout_s: float = 30.0, log: IO[bytes] | None = None) -> None:
    """Block until /healthz answers 200; RuntimeError (with the tail of ``log``) if the server dies
    or is not ready in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = ""
            if log is not None:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"API exited with {process.returncode}: {tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                                  timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"API on port {port} not ready after {timeout_s} s")


async def _drive(port: int, requests: list[bytes], rate: float, connections: int,
                 timeout_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Send ``requests`` open-loop at ``rate``/s over ``connections`` keep-alive connections.

    Returns (scheduled offset s, latency s from schedule, service s from send, status; 0 = transport
    error) per request, and the start time.
    """
    n = len(requests)
    scheduled = np.arange(n, dtype=np.float64) / rate
    latency = np.full(n, np.nan)
    service = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int16)
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    start = time.perf_counter() + 0.05

    async def connection() -> None:
        reader = writer = None
        while True:
            index = await queue.get()
            if index is None:
                break
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                sent = time.perf_counter()
                writer.write(requests[index])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
                at = head.lower().find(b"content-length:")
                length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
                await reader.readexactly(length)
                done = time.perf_counter()
                status[index] = int(head[9:12])
                latency[index], service[index] = done - (start + scheduled[index]), done - sent
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                status[index] = 0
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    for index in range(n):
        delay = start + scheduled[index] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(index)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return scheduled, latency, service, status, start


def _percentiles(seconds: np.ndarray) -> dict[str, float]:
    ms = seconds[~np.isnan(seconds)] * 1000.0
    if not len(ms):
        return {}
    p50, p95, p99, p999 = np.percentile(ms, [50, 95, 99, 99.9])
    return {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "p99_9": round(p999, 3),
            "max": round(float(ms.max()), 3)}


def run_load(store_url: str, user_ids, rate: float = 1000.0, seconds: float = 10.0, connections: int = 32, *,
             unknown_fraction: float = 0.05, workers: int = 1, warmup_s: float = 2.0, seed: int = 0,
             timeout_s: float = 5.0, rate_limit_rps: float | None = None) -> dict:
    """Drive a fresh API process over ``store_url`` at ``rate`` GET/s for ``seconds`` (after
    ``warmup_s`` not measured) and report what a client saw.

    user_ids: int64[n] ids with a playlist in the live week; ``unknown_fraction`` of the requests
    ask for ids above all of them (404s). rate_limit_rps: the server's per-client limit (all load
    comes from one address); default: ``DW_RATE_LIMIT_RPS`` when set, else the API default raised
    to twice ``rate``, so the benchmark measures serving with the limiter on, not the limiter
    refusing it. Returns: requests, achieved_rps, latency_ms and service_ms percentiles (p50, p95,
    p99, p99_9, max), status_counts ({"200": n, "404": m, "429": ..., "transport_error": k}),
    errors (every non-200/404), server_cpu_pct and client_cpu_pct (percent of one core over the
    run), and the settings.
    """
    rng = np.random.default_rng(seed)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    total = int(rate * (warmup_s + seconds))
    ids = rng.choice(user_ids, size=total)
    unknown = rng.random(total) < unknown_fraction
    ids[unknown] = int(user_ids.max()) + 1 + rng.integers(0, 10**9, int(unknown.sum()))
    requests = [b"GET /v1/users/%d/discover-weekly HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % i for i in ids.tolist()]

    if rate_limit_rps is None:
        rate_limit_rps = (settings.get(RATE_LIMIT_RPS_ENV) if settings.is_set(RATE_LIMIT_RPS_ENV)
                          else max(DEFAULT_RATE_LIMIT_RPS, 2 * rate))
    port = free_port()
    with tempfile.TemporaryFile() as log:
        server = start_api(store_url, port, workers, log, env={RATE_LIMIT_RPS_ENV: str(rate_limit_rps)})
        try:
            wait_ready(server, port, log=log)
            server_cpu, client_cpu, wall = _tree_cpu_s(server.pid), time.process_time(), time.perf_counter()
            try:
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            with runner:
                scheduled, latency, service, status, start = runner.run(
                    _drive(port, requests, rate, connections, timeout_s))
            wall = time.perf_counter() - wall
            server_cpu, client_cpu = _tree_cpu_s(server.pid) - server_cpu, time.process_time() - client_cpu
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    measured = scheduled >= warmup_s
    done_at = scheduled[measured] + latency[measured]
    window = float(np.nanmax(done_at) - warmup_s) if measured.any() else float("nan")
    codes = Counter("transport_error" if s == 0 else str(int(s)) for s in status[measured])
    return {
        "store": store_url.split("://", 1)[0], "rate": rate, "seconds": seconds, "connections": connections,
        "workers": workers, "unknown_fraction": unknown_fraction, "rate_limit_rps": rate_limit_rps,
        "requests": int(measured.sum()),
        "achieved_rps": round(int((status[measured] > 0).sum()) / window, 1),
        "latency_ms": _percentiles(latency[measured]),
        "service_ms": _percentiles(service[measured]),
        "status_counts": dict(sorted(codes.items())),
        "errors": sum(n for code, n in codes.items() if code not in ("200", "404")),
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
    }


def settle(store, timeout_s: float = 180.0, quiet_polls: int = 3) -> float:
    """Wait until the store's node has no compaction running (``quiet_polls`` polls in a row, 1 s
    apart), so the reads measure serving, not the publish's compactions on the same cores (a
    deployment publishes on Sunday and serves on Monday). Stores that cannot say return at once.
    Returns the seconds waited."""
    running = getattr(store, "compactions_running", None)
    started = time.monotonic()
    quiet = 0
    while running is not None and quiet < quiet_polls and time.monotonic() - started < timeout_s:
        busy = running()
        if busy is None:
            break
        quiet = quiet + 1 if busy == 0 else 0
        time.sleep(1.0)
    return round(time.monotonic() - started, 1)


def bench_serving(store_url: str, users: int = 20_000, rate: float = 1000.0, seconds: float = 15.0, *,
                  week: str = "2026-01-05", connections: int = 32, workers: int = 1, seed: int = 0) -> dict:
    """Publish ``users`` synthetic playlists to ``store_url`` as ``week`` and load-test the API
    over it, once the store's compactions after the publish are done (``settle``). Returns
    {"publish": publish_week stats with settle_s, "load": run_load result}."""
    playlists = synthetic_playlists(users, seed=seed)
    with open_store(store_url) as store:
        published = publish_week(store, week, playlists)
        published["settle_s"] = settle(store)
    load = run_load(store_url, playlists["user_id"].unique(), rate=rate, seconds=seconds,
                    connections=connections, workers=workers, seed=seed)
    return {"publish": published, "load": load}
