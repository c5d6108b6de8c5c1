"""A real, throwaway redis-server for the tests: free loopback port, stoppable and restartable.

``redis_for_tests`` yields ``DW_REDIS_URL`` when set, else a server it starts from the local
``redis-server`` binary; with neither, the test fails (never skips) and says what to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dw_assets.serving.loadtest import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MISSING = ("the Redis store tests need a Redis server: install redis-server (apt-get install redis-server) "
           "or set DW_REDIS_URL=redis://host:port/db")




class RedisServer:
    """redis-server on 127.0.0.1:``port`` with its data in ``directory``.

    ``stop`` is a clean shutdown that saves the dataset (a save point is configured), so ``start``
    comes back with the same data, like a restarted production server.
    """

    def __init__(self, directory: Path, port: int | None = None, password: str | None = None):
        self.directory, self.port, self.password = Path(directory), port or free_port(), password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        if not Path(REDIS_SERVER).exists():
            pytest.fail(MISSING if not os.environ.get("DW_REDIS_URL") else
                        "this test stops and restarts its own Redis: install redis-server (apt-get install redis-server)")
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--dbfilename", "dump.rdb", "--save", "3600 1", "--appendonly", "no", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.directory / "redis.log"
                pytest.fail(f"redis-server exited: {log.read_text()[-1000:] if log.exists() else ''}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return self
            time.sleep(0.02)
        pytest.fail(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextlib.contextmanager
def redis_for_tests(directory: Path) -> Iterator[str]:
    """A Redis URL for a test module: DW_REDIS_URL if set, else a local server started here."""
    external = os.environ.get("DW_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(directory).start()
    try:
        yield server.url
    finally:
        server.stop()


def with_options(url: str, **options: object) -> str:
    """``url`` plus query options (``prefix=...`` isolates tests sharing one server)."""
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}" if query else url


def delete_prefix(url: str, prefix: str) -> None:
    """Remove every key a test wrote under ``prefix`` (matters on a shared DW_REDIS_URL server)."""
    import redis

    from dw_assets.serving.stores import RedisStore

    store = RedisStore.from_url(url.split("?", 1)[0])
    client = redis.Redis(host=store.host, port=store.port, db=store.db, password=os.environ.get("DW_REDIS_PASSWORD"))
    with contextlib.suppress(redis.RedisError):
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
    client.close()
