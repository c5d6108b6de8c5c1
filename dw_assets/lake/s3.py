"""S3 settings for the lake and the landing zone, shared by boto3 (pandas, artifacts, bytes) and Spark (``s3a://``).

One source: ``DW_S3_ENDPOINT_URL`` (an S3-compatible endpoint such as MinIO or moto; unset means AWS)
and the standard ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Credentials stay in the environment, boto3's credential chain
and the Spark JVM's Hadoop configuration: never in Dagster config, metadata, logs or ``repr``.

Spark gets the settings per bucket (``fs.s3a.bucket.<bucket>.*`` on the running session's Hadoop
configuration, ``use_s3a``), not in the session's start-up conf: the session is created once per
process, before the lake (or, in tests, the endpoint) is known, and its start-up conf is recorded
with every Dagster run.

Output commit on S3: the S3A "file" committer (Hadoop's FileOutputCommitter) with its ``_SUCCESS``
marker, and the lake's completeness rule (``storage.py``): a Spark partition on S3 counts only once
``_SUCCESS`` exists, readers ignore everything else. Not the magic committer: that needs Spark's
``spark-hadoop-cloud`` module (not in pyspark) and a committer binding per format, while the marker
rule already guards every reader and is exercised by the crash-safety tests. The cost is the file
committer's copy-on-commit (a server-side COPY per file at job end), small for weekly partitions.

No Dagster import here.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dw_assets import settings as dw_settings
from dw_assets.lake.errors import LakeError


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` (or ``s3a://``) → (bucket, ``key/prefix`` without surrounding slashes)."""
    bucket, _, key = uri.removeprefix("s3://").removeprefix("s3a://").partition("/")
    return bucket, key.strip("/")


ENDPOINT_ENV = "DW_S3_ENDPOINT_URL"
# Path-style requests need a region to sign with; S3-compatible servers accept any.
CUSTOM_ENDPOINT_REGION = "us-east-1"
S3A_FILESYSTEM = "org.apache.hadoop.fs.s3a.S3AFileSystem"


class S3ConfigError(LakeError):
    """The S3 lake cannot be used as configured; the message names the setting to fix."""


# The codes S3 and S3-compatible servers answer for a missing object (a missing bucket adds NoSuchBucket).
NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")


def error_code(error: Any) -> str:
    """The S3 error code of a botocore ``ClientError`` (``"404"``, ``"AccessDenied"``, …)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def to_s3a(uri: str) -> str:
    """The Hadoop URI Spark reads and writes for an ``s3://`` URI."""
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and who we are there. Build it with ``from_env``."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, endpoint_url: str | None = None) -> S3Settings:
        """The environment's settings; ``endpoint_url`` (e.g. the lake resource's) overrides ``DW_S3_ENDPOINT_URL``."""
        endpoint = endpoint_url or dw_settings.get(ENDPOINT_ENV)
        if endpoint and "@" in endpoint.partition("://")[2]:
            raise S3ConfigError(f"{ENDPOINT_ENV} carries credentials: remove them and set AWS_ACCESS_KEY_ID / "
                                "AWS_SECRET_ACCESS_KEY instead")
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            raise S3ConfigError(f"{ENDPOINT_ENV} must be an http:// or https:// URL, got {endpoint!r}")
        env = os.environ.get
        return cls(
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            region=env("AWS_REGION") or env("AWS_DEFAULT_REGION") or None,
            access_key_id=env("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env("AWS_SESSION_TOKEN") or None,
        )

    @property
    def where(self) -> str:
        """The endpoint as people set it, for messages (it never carries credentials)."""
        return f"{ENDPOINT_ENV}={self.endpoint_url}" if self.endpoint_url else f"AWS ({ENDPOINT_ENV} unset)"

    def client(self) -> Any:
        """A boto3 S3 client. Credentials come from boto3's own chain (the ``AWS_*`` variables, a profile,
        an instance role), so this object never holds them."""
        import boto3
        from botocore.config import Config

        _require_key_pair(self)  # boto3 would refuse half a key pair with a less helpful message
        region = self.region or (CUSTOM_ENDPOINT_REGION if self.endpoint_url else None)
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=region,
            # Path-style on a custom endpoint: MinIO / moto serve buckets under the host, not as subdomains.
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32,
                          s3={"addressing_style": "path"} if self.endpoint_url else None),
        )

    def s3a_options(self, bucket: str) -> dict[str, str]:
        """Hadoop S3A options for one bucket (``fs.s3a.bucket.<bucket>.*``), holding the credentials when set.

        Without keys in the environment S3A keeps its default provider chain (environment variables,
        then the instance / container role).
        """
        prefix = f"fs.s3a.bucket.{bucket}."
        options: dict[str, str] = {}
        if self.endpoint_url:
            options["endpoint"] = self.endpoint_url
            options["path.style.access"] = "true"
            options["connection.ssl.enabled"] = str(urlsplit(self.endpoint_url).scheme == "https").lower()
        region = self.region or (CUSTOM_ENDPOINT_REGION if self.endpoint_url else None)
        if region:
            options["endpoint.region"] = region
        if self.access_key_id or self.secret_access_key:
            _require_key_pair(self)
            options["access.key"] = self.access_key_id or ""
            options["secret.key"] = self.secret_access_key or ""
            if self.session_token:
                options["session.token"] = self.session_token
                options["aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
            else:
                options["aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        return {prefix + key: value for key, value in options.items()}


def _require_key_pair(settings: S3Settings) -> None:
    if settings.access_key_id and not settings.secret_access_key:
        raise S3ConfigError("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both (or neither, "
                            "to use an AWS profile or instance role)")
    if settings.secret_access_key and not settings.access_key_id:
        raise S3ConfigError("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: set both (or neither, "
                            "to use an AWS profile or instance role)")


_VERIFIED: set[tuple[str | None, str]] = set()
_VERIFIED_LOCK = threading.Lock()


def verify_bucket(uri: str, settings: S3Settings, client: Any) -> None:
    """Raise one ``S3ConfigError`` naming the setting to fix unless the bucket of ``uri`` can be used:
    credentials present, endpoint reachable, bucket existing and ours. Checked once per process and bucket."""
    bucket, _ = split_s3(uri)
    key = (settings.endpoint_url, bucket)
    if key in _VERIFIED:
        return
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    _require_key_pair(settings)
    try:
        client.head_bucket(Bucket=bucket)
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise S3ConfigError(
            f"no AWS credentials for the S3 lake {uri} ({type(error).__name__}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary keys), or use an AWS profile / instance role"
        ) from None
    except EndpointConnectionError:
        raise S3ConfigError(f"cannot reach the S3 endpoint for {uri} ({settings.where}): check {ENDPOINT_ENV}") from None
    except ClientError as error:
        code = error_code(error)
        if code in (*NOT_FOUND_CODES, "NoSuchBucket"):
            raise S3ConfigError(f"bucket {bucket!r} of the S3 lake {uri} does not exist at {settings.where}: create "
                                f"it, or fix the lake root / {ENDPOINT_ENV}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise S3ConfigError(f"access to bucket {bucket!r} denied at {settings.where} (HTTP {code}): check "
                                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN") from None
        raise S3ConfigError(f"bucket {bucket!r} at {settings.where} cannot be used: {code or error}") from None
    with _VERIFIED_LOCK:
        _VERIFIED.add(key)


# ------------------------------------------------------------------ Spark (s3a://)

# Per bucket, the option names last set (to unset those a later setting drops, e.g. a session token).
_SET_NAMES: dict[str, set[str]] = {}


def use_s3a(spark: Any, uri: str, settings: S3Settings) -> str:
    """Make ``spark`` able to read and write the bucket of ``uri``; returns the ``s3a://`` URI.

    The options go on the running session's Hadoop configuration (Spark copies it into every job).
    Hadoop caches one FileSystem per bucket for the JVM's life, built from the options seen when it
    was first used: when a bucket's options change (another endpoint or key), its cached FileSystem
    is closed so the next access builds one with the new options.
    """
    if not uri.startswith(("s3://", "s3a://")):
        return uri
    jvm = spark.sparkContext._jvm
    if not jvm.org.apache.spark.util.Utils.classIsLoadable(S3A_FILESYSTEM):
        from dw_assets.ingest.spark import SPARK_JARS_SCRIPT, s3a_jars

        _, why = s3a_jars()
        raise S3ConfigError(
            f"Spark cannot read or write {to_s3a(uri)}: hadoop-aws is not on the Spark session's classpath "
            f"({why or 'the jars were fetched after this Spark session started'}). Run {SPARK_JARS_SCRIPT} "
            "(fetches hadoop-aws and the AWS SDK bundle into .cache/spark-jars/), then start a new process: "
            "the jars are added when the Spark session starts")
    bucket, _ = split_s3(uri)
    options = settings.s3a_options(bucket)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    stale = _SET_NAMES.get(bucket, set()) - set(options)
    if stale or any(hadoop.get(name) != value for name, value in options.items()):
        for name in stale:
            hadoop.unset(name)
        for name, value in options.items():
            hadoop.set(name, value)
        jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI.create(f"s3a://{bucket}/"), hadoop).close()
        _SET_NAMES[bucket] = set(options)
    return to_s3a(uri)
