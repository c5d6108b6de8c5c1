"""Shared fixtures: one Spark session per test process, one tiny simulated world per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dw_assets.ingest.spark import SparkSettings, use_this_interpreter
from dw_assets.serving.loadtest import free_port


@pytest.fixture(scope="session", autouse=True)
def dagster_home(tmp_path_factory) -> Path:
    """Runs of the test session are recorded in a throwaway instance."""
    home = tmp_path_factory.mktemp("dagster_home")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def spark():
    use_this_interpreter()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in SparkSettings(master="local[2]", shuffle_partitions=4, driver_memory="4g").as_conf().items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A tiny simulated world (landing zone + manifest), shared read-only by the tests."""
    from dw_assets.simulate import config_for, simulate

    root = tmp_path_factory.mktemp("tiny_world")
    simulate(config_for("tiny"), root)
    return root


@pytest.fixture(scope="session")
def tiny_world_report(tiny_world, spark) -> str:
    """``tiny_world``'s last training week materialized once per session, as ``dw run`` does, in local mode
    (this process's session) with the tests' quick model settings: ``materialize_week``'s summary."""
    import json

    from dw_assets.automation.runner import materialize_week
    from dw_assets_tests.test_s3_lake import QUICK

    manifest = json.loads((tiny_world / "landing" / "manifest.json").read_text())
    return materialize_week(tiny_world, manifest["last_training_week"], manifest["weeks"], progress=lambda m: None,
                            ops=QUICK)


@pytest.fixture(scope="session")
def tiny_world_run(tiny_world, tiny_world_report) -> Path:
    """``tiny_world`` with its last training week materialized (``tiny_world_report``): the reference other
    engines' runs must match."""
    return tiny_world


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free loopback port, one per test module (real HTTP, boto3 talks to it)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def cassandra_hosts() -> str:
    """``host:port`` of a real Cassandra node: DW_SCYLLA_HOSTS, else the project's own
    (``scripts/cassandra.sh start``, idempotent). Unreachable -> the test fails, never skips."""
    from dw_assets_tests import cassandra_node

    return cassandra_node.hosts()


@pytest.fixture(scope="session")
def spark_cluster():
    """``spark://127.0.0.1:7077``: a real Spark standalone cluster (``scripts/spark-cluster.sh``), one master
    and two 1-core workers. Started if needed and stopped at the end when this session started it;
    one that cannot start fails the test, never skips it."""
    from dw_assets_tests import spark_cluster

    was_running = spark_cluster.running()
    yield spark_cluster.start()
    if not was_running:
        spark_cluster.stop()
