"""Dagster resources for the lake: where it is, and the IO manager that reads/writes it.

Local vs production is one setting: ``DW_LAKE`` (or ``dw run --lake``) is a
directory or an ``s3://bucket/prefix``; S3 credentials come from the
environment only (boto3's usual ``AWS_*`` variables), never from config files:
a lake root or endpoint URL carrying ``user:password@`` is refused without
being repeated, since resource config is recorded with every run.
"""


import io
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext
from dagster_pyspark import LazyPySparkResource
from pydantic import Field

from dw_assets import settings
from dw_assets.lake import driver_guard
from dw_assets.lake.landing_fs import LandingFS
from dw_assets.lake.storage import Artifact, Lake, LakeError, open_lake

LAYER_KEY = "dw/layer"
DEFAULT_LAKE = settings.setting("DW_LAKE").default


class LakeResource(ConfigurableResource):
    """The lake root; ``landing/`` is read from under the same root (docs/contracts.md)."""

    # Read when the resource is built; the code location passes dagster.EnvVar instead when set
    # (definitions.location_resources), so the UI shows the variable.
    root: str = Field(default_factory=lambda: settings.get("DW_LAKE"))
    s3_endpoint_url: str | None = Field(
        default_factory=lambda: settings.get("DW_S3_ENDPOINT_URL"),
        description="S3-compatible endpoint (MinIO, moto); None means AWS.",
    )

    def __init__(self, **data: Any):
        super().__init__(**data)
        for name in ("root", "s3_endpoint_url"):
            value = getattr(self, name)
            # Any "@" after the scheme counts: an unencoded "/" in a secret would hide it from urlsplit.
            if isinstance(value, str) and "@" in value.partition("://")[2]:
                raise LakeError(f"the lake's {name} carries credentials: remove them and set AWS_ACCESS_KEY_ID / "
                                "AWS_SECRET_ACCESS_KEY (or an AWS profile / role) instead")

    def open(self) -> Lake:
        return open_lake(self.root, self.s3_endpoint_url)

    def landing(self) -> LandingFS:
        """The landing zone under the root; on S3 the bucket is checked first (one clear error if unusable)."""
        lake = self.open()
        lake.verify()
        return lake.landing_fs()


def _layer(metadata: Any, what: str) -> str:
    layer = (metadata or {}).get(LAYER_KEY)
    if layer is None:
        raise LakeError(f"{what} has no {LAYER_KEY!r} metadata, so the lake does not know its layer")
    return getattr(layer, "value", layer)


def _is_spark(obj_or_type: Any) -> bool:
    module = getattr(obj_or_type, "__module__", "") or getattr(type(obj_or_type), "__module__", "")
    return module.startswith("pyspark.sql")


PER_PARTITION_KEY = "per_partition"
PER_PARTITION_KINDS = ("spark", "pandas", "artifact", "artifact_meta")  # artifact_meta: meta.json alone
# AssetIn(metadata={COMPLETE_WINDOW_KEY: why}): every partition of the window must exist (a window that
# silently shrank would mislead); the error names the missing weeks and says why.
COMPLETE_WINDOW_KEY = "complete_window"


class MissingPartitionError(LakeError, KeyError):
    """A week an asset asked a ``PartitionInputs`` for that the lake does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PartitionInputs(Mapping):
    """A window input read partition by partition: ``{partition key: value}`` for the partitions that exist,
    each read when first asked for and kept (``AssetIn(metadata={"per_partition": "spark" | "pandas" |
    "artifact" | "artifact_meta"})``; annotate the parameter ``PartitionInputs``). Keys are in the window's order.
    ``whole(key)``: an ``artifact_meta`` window's partition read as the whole artifact (its files too), for the
    partitions its ``meta.json`` says are wanted."""

    def __init__(self, uris: Mapping[str, str], read: Callable[[str], Any], asset: str = "the input",
                 whole: Callable[[str], Any] | None = None) -> None:
        self._uris, self._read, self._values, self._asset = dict(uris), read, {}, asset
        self._whole = whole

    def whole(self, key: str) -> Any:
        return self[key] if self._whole is None else self._whole(self._uri(key))  # None: read whole already

    def _uri(self, key: str) -> str:
        if key not in self._uris:
            raise MissingPartitionError(f"{self._asset} has no partition {key} in the lake (it holds: "
                                        f"{', '.join(map(str, self._uris)) or 'none'}); materialize it first")
        return self._uris[key]

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            self._values[key] = self._read(self._uri(key))
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._uris

    def __iter__(self) -> Iterator[str]:
        return iter(self._uris)

    def __len__(self) -> int:
        return len(self._uris)

    def __repr__(self) -> str:
        return f"PartitionInputs({list(self._uris)})"


class LakeIOManager(ConfigurableIOManager):
    """Parquet per partition under ``<root>/<layer>/<asset>/week=<key>/``.

    Spark DataFrames in, Spark DataFrames out for inputs annotated as such;
    ``Artifact`` (model files + ``meta.json``) for inputs annotated ``Artifact``;
    pandas otherwise. A window of partitions (the 12-week history) loads the
    weeks that exist, so windows at the start of history simply hold fewer weeks;
    as one union, or week by week (``PartitionInputs``) with metadata ``per_partition``.
    """

    lake: LakeResource
    pyspark: LazyPySparkResource

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        layer = _layer(context.definition_metadata, f"asset {context.asset_key.to_user_string()}")
        key = context.partition_key if context.has_partition_key else None
        lake = self.lake.open()
        lake.verify()  # an unusable S3 bucket fails here with the setting to fix, once per process
        uri = lake.uri(layer, context.asset_key.path[-1], key)
        if isinstance(obj, pd.DataFrame):
            # The asset built this table as pandas: it was on the driver whole.
            _guard(context.asset_key.path[-1], len(obj), f"returned as pandas by {_step(context)}")
            lake.write_frame(obj, uri)
        elif isinstance(obj, Artifact):
            if "rows" in obj.meta:  # vectors (vectors_artifact): user_embeddings' are one row per user
                _guard(context.asset_key.path[-1], int(obj.meta["rows"]), f"built on the driver by {_step(context)}")
            lake.write_artifact(obj, uri)
            if "model_version" in obj.meta:  # models carry one; a report does not
                context.add_output_metadata({"model_version": obj.model_version})
        elif _is_spark(obj):
            lake.write_spark(obj, uri)
        else:
            raise LakeError(f"the lake IO manager stores DataFrames, got {type(obj).__name__} for {uri}")
        context.add_output_metadata({"path": uri})

    def load_input(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        layer = _layer(upstream.definition_metadata if upstream else None, f"input {context.asset_key.to_user_string()}")
        lake = self.lake.open()
        lake.verify()
        keys: list[str | None] = list(context.asset_partition_keys) if context.has_asset_partitions else [None]
        metadata = context.definition_metadata or {}
        name = context.asset_key.path[-1]
        window = {k: lake.uri(layer, name, k) for k in keys}
        if metadata.get(PER_PARTITION_KEY):
            # AssetIn(metadata={"per_partition": kind}): each partition of the window on its own, read when
            # the asset first asks for it (an asset that uses one week of a 4-week window reads one).
            kind = metadata[PER_PARTITION_KEY]
            if kind not in PER_PARTITION_KINDS:
                raise LakeError(f"{context.asset_key.to_user_string()}: {PER_PARTITION_KEY!r} must be one of "
                                f"{PER_PARTITION_KINDS}, got {kind!r}")
            present = {k: uri for k, uri in window.items() if lake.exists(uri)}
            whole = (lambda uri: self._read(context, lake, [uri], "artifact")) if kind == "artifact_meta" else None
            return PartitionInputs(present, lambda uri: self._read(context, lake, [uri], kind), name, whole)
        uris = list(window.values())
        if metadata.get(COMPLETE_WINDOW_KEY):
            # Every partition must exist (checked once here): nothing to leave out below.
            require_partitions(lake, layer, name, [k for k in keys if k is not None], metadata[COMPLETE_WINDOW_KEY])
        elif metadata.get("may_be_empty") or len(uris) > 1:
            # A window holds the partitions that exist. AssetIn(metadata={"may_be_empty": True}): a window with
            # none yet (the start of history, a self-dependency's first week) reads as an empty table: a Spark
            # one for an input annotated as such, typed by metadata "schema" (a DDL string) or else "columns".
            uris = [u for u in uris if lake.exists(u)]
            if not uris and metadata.get("may_be_empty"):
                if _is_spark(getattr(context.dagster_type, "typing_type", None)):
                    schema = metadata.get("schema") or ", ".join(f"`{c}` string" for c in metadata.get("columns") or [])
                    return self.pyspark.spark_session.createDataFrame([], schema)
                return pd.DataFrame(columns=metadata.get("columns") or [])
            if not uris:
                raise LakeError(f"no partition of {context.asset_key.to_user_string()} exists in {keys[0]}..{keys[-1]}")
        wanted = getattr(context.dagster_type, "typing_type", None)
        kind = "artifact" if wanted is Artifact else "spark" if _is_spark(wanted) else "pandas"
        return self._read(context, lake, uris, kind)

    def _read(self, context: InputContext, lake: Lake, uris: list[str], kind: str) -> Any:
        """The partitions at ``uris`` as one value of ``kind``: an Artifact (one partition), a Spark
        DataFrame or a pandas one (a window reads as the union of its partitions)."""
        metadata = context.definition_metadata or {}
        if kind in ("artifact", "artifact_meta"):
            if len(uris) != 1:
                raise LakeError(f"an artifact input reads one partition, got {len(uris)} for {context.asset_key.to_user_string()}"
                                f" (AssetIn metadata {PER_PARTITION_KEY!r}: 'artifact' reads a window week by week)")
            if kind == "artifact_meta":  # the version and counts of an artifact too big to read for them
                return Artifact(files={}, meta=lake.read_artifact_meta(uris[0]))
            artifact = lake.read_artifact(uris[0])
            if "rows" in artifact.meta:
                _guard(context.asset_key.path[-1], int(artifact.meta["rows"]), f"loaded by {_step(context)}")
            return artifact
        if kind == "spark":
            return lake.read_spark(self.pyspark.spark_session, uris)
        name = context.asset_key.path[-1]
        if driver_guard.row_limit() is not None and driver_guard.is_user_scale(name):
            # Refused before reading: the row counts are in the Parquet footers.
            _guard(name, sum(parquet_rows(lake, u) for u in uris), f"read as pandas by {_step(context)}")
        # AssetIn(metadata={"columns": [...]}) reads only those columns.
        columns = metadata.get("columns")
        frames = [lake.read_frame(u, columns=columns) for u in uris]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _step(context: InputContext | OutputContext) -> str:
    try:
        return context.step_context.step.key
    except Exception:  # a context built outside a run (direct IO manager calls) has no step
        return "a step"


def _guard(asset: str, rows: int, how: str) -> None:
    """``driver_guard.check_driver_rows``, the error also saying which step put the table on the driver."""
    driver_guard.check_driver_rows(asset, rows, where=how)


class _S3Range(io.RawIOBase):
    """A read-only, seekable S3 object read by ranged GETs: pyarrow reads a Parquet footer through it."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key, self.pos = client, bucket, key, 0
        self.size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.pos + size)
        if end <= self.pos:
            return b""
        body = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-{end - 1}")["Body"]
        data = body.read()
        self.pos += len(data)
        return data


def parquet_rows(lake: Lake, uri: str) -> int:
    """Rows of the table partition at ``uri`` from its Parquet footers alone (no row is read).

    What ``Lake.read_frame`` would read: every part file locally, the complete parts on S3 (a few KB
    of footer per part file, by ranged GETs)."""
    if lake.is_s3:
        bucket, key, names = lake._s3_names(uri)
        parts = lake._complete_parts(names)
        if not parts:
            raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
        return sum(pq.read_metadata(_S3Range(lake.s3_client, bucket, f"{key}/{n}")).num_rows for n in parts)
    if not os.path.isdir(uri):
        raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
    return ds.dataset(uri, format="parquet").count_rows()


def require_partitions(lake: Lake, layer: str, asset: str, weeks: list[str], why: str) -> None:
    """Raise naming the weeks of ``asset`` missing from the lake (a window that silently shrank would mislead)."""
    missing = [w for w in weeks if not lake.exists(lake.uri(layer, asset, w))]
    if missing:
        raise LakeError(f"{asset} is missing for week(s) {', '.join(missing)}: {why}; materialize them first")
