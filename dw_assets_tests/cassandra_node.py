"""The real single-node Apache Cassandra the store tests run against.

``cassandra_hosts`` (a session fixture in conftest) yields ``DW_SCYLLA_HOSTS`` when it names a
cluster, else the node ``scripts/cassandra.sh start`` runs on loopback (started here if it is not
running yet; ``make test`` and CI start it first). A node that cannot be started fails the test
with the script's output: never a skip.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cassandra.sh"
START_TIMEOUT_S = 600  # a cold start resolves Cassandra from Maven Central first


def _script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=START_TIMEOUT_S)


def start_node() -> str:
    """``host:port`` of the project's node, started if needed (idempotent)."""
    result = _script("start")
    ready = [line for line in result.stdout.splitlines() if line.startswith("ready ")]
    if result.returncode != 0 or not ready:
        pytest.fail(f"the Cassandra store tests need a node: `scripts/cassandra.sh start` exited "
                    f"{result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return ready[-1].split()[1]


def stop_node() -> None:
    result = _script("stop")
    if result.returncode != 0:
        pytest.fail(f"`scripts/cassandra.sh stop` exited {result.returncode}: {result.stderr[-2000:]}")


def managed() -> bool:
    """Whether the tests run the node themselves (and so may restart it)."""
    return not os.environ.get("DW_SCYLLA_HOSTS")


def hosts() -> str:
    return os.environ.get("DW_SCYLLA_HOSTS") or start_node()


def fresh_keyspace(prefix: str = "dwtest") -> str:
    """A keyspace name no earlier run used: tests never see another run's rows."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def drop_keyspace(url: str) -> None:
    """Drop the keyspace a test created (the node's disk is the cache folder's)."""
    from dw_assets.serving.stores import ScyllaStore

    store = ScyllaStore.from_url(url)
    try:
        store._connected().execute(f"DROP KEYSPACE IF EXISTS {store.settings.keyspace}", timeout=60)
    finally:
        store.close()
