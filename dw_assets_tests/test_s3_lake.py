"""The lake and the landing zone on S3 (moto's server on loopback): Spark through s3a://, one landing file
system, one clear error for an unusable bucket. The tiny world end to end on an S3 lake (on the standalone
cluster, giving the local run's playlists) is test_spark_cluster's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import CliRunner

from dw_assets.cli import main
from dw_assets.ingest.spark import SparkSettings, s3a_jars
from dw_assets.lake.landing_fs import LandingFS, read_manifest
from dw_assets.lake.s3 import S3ConfigError, S3Settings, use_s3a
from dw_assets.lake.storage import LakeError, open_lake, resolve_lake_root
from dw_assets.serving.loadtest import free_port

# test_pipeline's world fixture runs the tiny world with these; its local lake is the reference when it ran first.
QUICK = {"audio_embeddings": {"config": {"epochs": 12}}, "two_tower_model": {"config": {"epochs": 4}}}
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
           "AWS_PROFILE", "DW_S3_ENDPOINT_URL")


@pytest.fixture
def aws(monkeypatch, s3_endpoint):
    """moto's credentials and endpoint in the environment (as a deployment sets them)."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "DW_S3_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    return s3_endpoint


def _bucket(name: str) -> str:
    S3Settings.from_env().client().create_bucket(Bucket=name)
    return name


# ------------------------------------------------------------------ settings


def test_s3a_options_come_from_the_environment(monkeypatch):
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DW_S3_ENDPOINT_URL", "http://127.0.0.1:9000/")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = S3Settings.from_env()
    assert settings.s3a_options("dw-lake") == {
        "fs.s3a.bucket.dw-lake.endpoint": "http://127.0.0.1:9000",
        "fs.s3a.bucket.dw-lake.path.style.access": "true",
        "fs.s3a.bucket.dw-lake.connection.ssl.enabled": "false",
        "fs.s3a.bucket.dw-lake.endpoint.region": "eu-west-1",
        "fs.s3a.bucket.dw-lake.access.key": "AKIAPLANTED",
        "fs.s3a.bucket.dw-lake.secret.key": "planted-secret",
        "fs.s3a.bucket.dw-lake.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
    }
    assert "planted" not in repr(settings) and "AKIA" not in repr(settings)

    monkeypatch.setenv("AWS_SESSION_TOKEN", "planted-token")
    monkeypatch.setenv("DW_S3_ENDPOINT_URL", "https://minio.internal")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    options = S3Settings.from_env().s3a_options("b")
    assert options["fs.s3a.bucket.b.connection.ssl.enabled"] == "true"
    assert options["fs.s3a.bucket.b.endpoint.region"] == "us-west-2"
    assert options["fs.s3a.bucket.b.session.token"] == "planted-token"
    assert options["fs.s3a.bucket.b.aws.credentials.provider"].endswith("TemporaryAWSCredentialsProvider")

    # AWS itself, keys from the instance role: only what S3A cannot work out alone.
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    assert S3Settings.from_env().s3a_options("b") == {}
    monkeypatch.setenv("DW_S3_ENDPOINT_URL", "http://key:secret@127.0.0.1:9000")
    with pytest.raises(S3ConfigError, match="carries credentials") as refused:
        S3Settings.from_env()
    assert "secret" not in str(refused.value).replace("carries credentials", "")


def test_the_session_gets_the_fetched_jars_and_a_clear_error_without_them(tmp_path, monkeypatch):
    monkeypatch.delenv("DW_SPARK_JARS_DIR", raising=False)
    jars, why = s3a_jars()
    assert why is None, why  # scripts/spark-jars.sh has run (the set-up calls it)
    assert {Path(j).name.split("-")[0] for j in jars} >= {"hadoop", "bundle"}
    assert SparkSettings(master="local[2]").as_conf()["spark.driver.extraClassPath"].split(":") == jars
    assert SparkSettings(master="spark://cluster:7077").as_conf()["spark.jars"].split(",") == jars

    empty = SparkSettings(jars_dir=str(tmp_path))
    assert not {"spark.jars", "spark.driver.extraClassPath"} & set(empty.as_conf())  # a local lake still works
    assert "scripts/spark-jars.sh" in s3a_jars(tmp_path)[1]
    for jar in ("hadoop-aws-3.3.4.jar", "bundle-2.0.0.jar", ".complete-0"):
        (tmp_path / jar).write_bytes(b"")
    assert "pyspark bundles Hadoop" in s3a_jars(tmp_path)[1]

    utils = SimpleNamespace(classIsLoadable=lambda name: False)  # a session started without the jars
    no_s3a = SimpleNamespace(sparkContext=SimpleNamespace(_jvm=SimpleNamespace(
        org=SimpleNamespace(apache=SimpleNamespace(spark=SimpleNamespace(util=SimpleNamespace(Utils=utils)))))))
    with pytest.raises(S3ConfigError, match="scripts/spark-jars.sh"):
        use_s3a(no_s3a, "s3://dw-lake/prod/silver/x", S3Settings())
    assert use_s3a(no_s3a, "/data/lake/silver/x", S3Settings()) == "/data/lake/silver/x"


# ------------------------------------------------------------------ one clear error, nothing local


def test_a_missing_bucket_or_missing_credentials_fail_once_naming_the_setting(aws, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(S3ConfigError, match=r"bucket 'dw-nowhere' .* does not exist at DW_S3_ENDPOINT_URL=http"):
        open_lake("s3://dw-nowhere/prod").verify()

    # dw run never turns s3://… into a local folder: the error comes before any run, nothing is written here.
    result = CliRunner().invoke(main, ["run", "--lake", "s3://dw-nowhere/prod", "--week", "2026-01-12"])
    assert result.exit_code != 0 and "does not exist" in result.output and "DW_S3_ENDPOINT_URL" in result.output
    result = CliRunner().invoke(main, ["export-playlists", "--lake", "s3://dw-nowhere/prod", "--week", "2026-01-12",
                                       "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code != 0 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["simulate", "--preset", "tiny", "--out", "s3://dw-nowhere/world"])
    assert result.exit_code != 0 and "does not exist" in result.output  # checked before simulating
    assert list(tmp_path.iterdir()) == []

    _bucket("dw-no-keys")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3ConfigError, match="AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"):
        open_lake("s3://dw-no-keys/prod").verify()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    # nothing else to find either: no shared files, no instance metadata
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(S3ConfigError, match="no AWS credentials .* set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_lake("s3://dw-no-keys/prod").verify()
    result = CliRunner().invoke(main, ["run", "--lake", "s3://dw-no-keys/prod", "--week", "2026-01-12"])
    assert result.exit_code != 0 and "AWS_ACCESS_KEY_ID" in result.output
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    closed = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on
    monkeypatch.setenv("DW_S3_ENDPOINT_URL", closed)
    with pytest.raises(S3ConfigError, match=f"cannot reach the S3 endpoint .*DW_S3_ENDPOINT_URL={closed}"):
        open_lake("s3://dw-no-keys/prod").verify()

    for bad in ("s3a://dw-lake/prod", "gs://dw-lake/prod", "s3:///prod"):
        with pytest.raises(LakeError):
            resolve_lake_root(bad)


# ------------------------------------------------------------------ the landing zone


def _tree(root: Path) -> None:
    for relative, data in {
        "manifest.json": b'{"weeks": ["2026-01-05"]}',
        "events/week=2026-01-05/part-0.jsonl": b'{"a": 1}\n',
        "events/week=2026-01-05/part-1.jsonl": b'{"a": 2}\n',
        "events/week=2026-01-05/_notes.txt": b"not an event file",
        "audio/2026-01-04/7.wav": b"RIFF7",
        "audio/2026-01-05/8.wav": b"RIFF8",
        "audio/2026-01-05/sub/9.wav": b"RIFF9",
        "audio/2026-01-06/10.wav": b"RIFF10",
    }.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)


def test_the_landing_layer_lists_and_reads_local_and_s3_alike(aws, tmp_path):
    _tree(tmp_path / "landing")
    local = LandingFS(str(tmp_path / "landing"))
    remote = LandingFS(f"s3://{_bucket('dw-landing')}/world/landing")
    assert remote.upload_dir(tmp_path / "landing") == 8

    def relative(fs: LandingFS, locations: list[str]) -> list[str]:
        return [loc.removeprefix(fs.root + "/") for loc in locations]

    for fs in (local, remote):
        assert relative(fs, fs.list_files("events/week=2026-01-05", suffix=".jsonl")) == [
            "events/week=2026-01-05/part-0.jsonl", "events/week=2026-01-05/part-1.jsonl"]
        assert fs.list_folders("audio") == ["2026-01-04", "2026-01-05", "2026-01-06"]
        assert fs.list_folders("nothing-here") == [] and fs.list_files("nothing-here") == []
        assert list(fs.iter_files("audio", start_after="2026-01-05")) == [
            "2026-01-05/8.wav", "2026-01-05/sub/9.wav", "2026-01-06/10.wav"]
        assert fs.exists("events/week=2026-01-05") and fs.exists("manifest.json") and not fs.exists("events/week=2")
        assert fs.is_file("manifest.json") and not fs.is_file("events")
        assert fs.read_bytes("audio/2026-01-06/10.wav") == b"RIFF10"
        assert read_manifest(fs) == {"weeks": ["2026-01-05"]}
        with pytest.raises(FileNotFoundError):
            fs.read_bytes("audio/2026-01-06/11.wav")
    assert remote.location("audio/2026-01-04/7.wav") == "s3://dw-landing/world/landing/audio/2026-01-04/7.wav"

    # dw simulate --out s3://… lands a world in the bucket (simulated in a scratch directory, then uploaded)
    result = CliRunner().invoke(main, ["simulate", "--preset", "tiny", "--users", "200", "--tracks", "300",
                                       "--weeks", "2", "--out", "s3://dw-landing/small-world"])
    assert result.exit_code == 0, result.output
    world = open_lake("s3://dw-landing/small-world").landing_fs()
    assert world.list_folders("") == ["audio", "catalog", "events", "playlists", "users"]
    assert read_manifest(world)["weeks"] == ["2026-01-05", "2026-01-12", "2026-01-19"]
    assert world.list_files("events/week=2026-01-05", suffix=".jsonl")


def test_a_large_artifact_file_goes_up_and_down_in_parts(aws, monkeypatch):
    """S3 refuses one PUT above 5 GB (the target's index is ~26 GB): above the part size an artifact file is a
    multipart upload (its ETag says how many parts), read back byte for byte; a small file stays one PUT."""
    from dw_assets.lake import storage
    from dw_assets.lake.storage import Artifact

    monkeypatch.setattr(storage, "S3_MULTIPART_BYTES", 5 * 2**20)  # S3's smallest part
    lake = open_lake(f"s3://{_bucket('dw-parts')}/lake")
    big = bytes(range(256)) * (12 * 2**20 // 256 + 3)  # 12 MiB and a bit: three parts
    uri = lake.uri("models", "faiss_index", "2026-01-05")
    lake.write_artifact(Artifact(files={"index.bin": big, "small.json": b"{}"}, meta={"v": 1}), uri)
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    etag = lambda name: lake.s3_client.head_object(Bucket=bucket, Key=f"{key}/{name}")["ETag"].strip('"')  # noqa: E731
    assert etag("index.bin").endswith("-3") and "-" not in etag("small.json")
    back = lake.read_artifact(uri)
    assert back.files == {"index.bin": big, "small.json": b"{}"} and back.meta == {"v": 1}
    # At the target a 25.6 GB file takes 400 parts of 64 MiB; a 2 TB one would need bigger parts, not more.
    monkeypatch.setattr(storage, "S3_MULTIPART_BYTES", 64 * 2**20)
    assert storage._transfer_config(int(25.6e9)).multipart_chunksize == 64 * 2**20
    assert -(-int(2e12) // storage._transfer_config(int(2e12)).multipart_chunksize) <= storage.S3_MAX_PARTS


# ------------------------------------------------------------------ the tiny world end to end


def _export(lake_root: str, week: str, out: Path) -> pd.DataFrame:
    result = CliRunner().invoke(main, ["export-playlists", "--lake", lake_root, "--week", week, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out)

