"""Secrets (#8): credentials come only from the environment and never reach logs, metadata or run storage.

Planted secrets (S3 keys, the Redis password, Scylla credentials) are set in the environment; real
Dagster runs of ``published_playlists`` read the week from an S3 lake (moto's server) and publish it
to a password-protected redis-server, with DEBUG logging on for boto, redis, the Scylla driver and
Dagster. Then every place a run leaves text is searched for the secrets: captured stdout/stderr,
every event-log entry (messages, metadata, errors), the materialization metadata, and every file
under ``DAGSTER_HOME`` (run and event storage, compute logs). A URL that carries a password is
refused without repeating it.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from dagster import AssetSelection, DagsterInstance, materialize
from dagster._serdes import serialize_value

from dw_assets.definitions import ALL_ASSETS, build_resources
from dw_assets.lake.resources import LakeResource
from dw_assets.lake.storage import LakeError
from dw_assets.serving.loadtest import synthetic_playlists
from dw_assets.serving.stores import open_store, redact_url
from dw_assets_tests.redis_server import RedisServer, free_port

WEEK = "2026-01-12"
AWS_KEY_ID = "PLANTEDKEYID4711XYZ"
AWS_SECRET = "PLANTED-AWS-SECRET-4711/abc+def"
REDIS_PASSWORD = "PLANTED-SECRET-123"
SCYLLA_PASSWORD = "PLANTED-SCYLLA-SECRET-42"
SECRETS = (AWS_SECRET, REDIS_PASSWORD, SCYLLA_PASSWORD)
BUCKET = "dw-secrets"
LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "redis", "cassandra", "dw_assets", "dagster")


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis_secret"), password=REDIS_PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def planted(monkeypatch, tmp_path, s3_endpoint, capfd):
    """Secrets in the environment, a fresh DAGSTER_HOME, an S3 lake holding one week of playlists,
    and DEBUG logging to stderr for every library that handles a credential."""
    for key, value in {"AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1", "DW_S3_ENDPOINT_URL": s3_endpoint,
                       "DW_REDIS_PASSWORD": REDIS_PASSWORD, "DW_SCYLLA_USERNAME": "dw_svc",
                       "DW_SCYLLA_PASSWORD": SCYLLA_PASSWORD, "DAGSTER_HOME": str(tmp_path / "dagster_home")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DW_STORE_URL", raising=False)
    (tmp_path / "dagster_home").mkdir()
    lake = LakeResource(root=f"s3://{BUCKET}/lake").open()
    if BUCKET not in {b["Name"] for b in lake.s3_client.list_buckets()["Buckets"]}:
        lake.s3_client.create_bucket(Bucket=BUCKET)
    playlists = synthetic_playlists(25, seed=3)
    lake.write_frame(playlists, lake.uri("gold", "ranked_playlists", WEEK))
    handler = logging.StreamHandler(sys.stderr)  # after capfd started: what it writes is captured
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield tmp_path / "dagster_home", playlists
    for name, level in saved.items():
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).setLevel(level)


def _publish_run(home: Path, store_url: str):
    """A real Dagster run of published_playlists (its input read from the S3 lake) into ``store_url``."""
    instance = DagsterInstance.from_config(str(home))
    result = materialize(ALL_ASSETS, selection=AssetSelection.assets("published_playlists"), partition_key=WEEK,
                         resources=build_resources(f"s3://{BUCKET}/lake", store_url), instance=instance,
                         raise_on_error=False)
    return instance, result


def _everything_the_run_left(capfd, home: Path, instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """Every text a run leaves: captured output, the serialized event log, and the files of DAGSTER_HOME."""
    captured = capfd.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err,
             "event_log": "\n".join(serialize_value(entry) for entry in instance.all_logs(run_id))}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        texts[str(path.relative_to(home))] = path.read_bytes().decode("latin-1")
    return texts


def _assert_no_secret(texts: dict[str, str]) -> None:
    leaks = [(where, secret) for where, text in texts.items() for secret in SECRETS if secret in text]
    assert not leaks, f"secrets found in: {leaks}"


def test_a_publishing_run_never_logs_or_stores_a_credential(planted, redis_with_password, capfd):
    import boto3

    home, playlists = planted
    store_url = f"{redis_with_password.url}?prefix=dwsecret"
    instance, result = _publish_run(home, store_url)
    assert result.success
    # The run really used the planted credentials: the password-protected Redis holds the live week,
    # and boto3 (which the lake's S3 client uses) resolves the planted AWS key from the environment.
    with open_store(store_url) as store:
        assert store.current_week() == WEEK and store.count_users(WEEK) == playlists["user_id"].nunique()
    assert boto3.Session().get_credentials().secret_key == AWS_SECRET

    metadata = result.asset_materializations_for_node("published_playlists")[0].metadata
    assert metadata["store"].value == redact_url(store_url) == store_url  # nothing secret in this URL to hide
    texts = _everything_the_run_left(capfd, home, instance, result.run_id)
    # non-vacuous: the logs are real (Dagster's step events, botocore's signed requests, the metadata)
    assert "STEP_SUCCESS" in texts["stderr"] and "published_playlists" in texts["event_log"]
    assert AWS_KEY_ID in texts["stderr"]  # the key id is public (it is in every signed request), the secret never
    assert "dropped_weeks" in texts["event_log"]  # the materialization's metadata is in the event log
    _assert_no_secret(texts)


def test_a_run_that_cannot_reach_scylla_fails_without_leaking_its_credentials(planted, capfd):
    home, _ = planted
    instance, result = _publish_run(home, f"scylla://127.0.0.1:{free_port()}/dw_test")
    assert not result.success
    texts = _everything_the_run_left(capfd, home, instance, result.run_id)
    assert re.search(r"Scylla at 127\.0\.0\.1:\d+ is unavailable", texts["event_log"])  # the failure is reported
    _assert_no_secret(texts)


def test_a_store_url_carrying_a_password_is_refused_without_repeating_it(planted, redis_with_password,
                                                                         monkeypatch, capfd):
    home, _ = planted
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_with_password.port}/0"
    assert redact_url(url) == f"redis://:***@127.0.0.1:{redis_with_password.port}/0"
    errors = []
    for attempt in (lambda: open_store(url), lambda: build_resources(f"s3://{BUCKET}/lake", url),
                    lambda: open_store(f"scylla://dw_svc:{SCYLLA_PASSWORD}@127.0.0.1/dw_test"),
                    lambda: open_store(f"redis://127.0.0.1/0?password={REDIS_PASSWORD}")):
        with pytest.raises(ValueError) as error:
            attempt()
        errors.append(str(error.value))
    monkeypatch.setenv("DW_STORE_URL", url)  # `dagster dev` / `dw run` read the default store from here
    with pytest.raises(ValueError) as error:
        build_resources(f"s3://{BUCKET}/lake")
    errors.append(str(error.value))
    assert "DW_REDIS_PASSWORD" in errors[0] and "DW_REDIS_PASSWORD" in errors[1]
    _assert_no_secret({f"error {i}": text for i, text in enumerate(errors)} | {"stderr": capfd.readouterr().err})


def test_a_lake_endpoint_carrying_credentials_is_refused(s3_endpoint):
    endpoint = s3_endpoint.replace("http://", f"http://{AWS_KEY_ID}:{AWS_SECRET}@")
    with pytest.raises(LakeError, match="AWS_SECRET_ACCESS_KEY") as error:
        LakeResource(root=f"s3://{BUCKET}/lake", s3_endpoint_url=endpoint)
    assert AWS_SECRET not in str(error.value)
