"""Where lake data lives and how it is written: atomically, one directory per partition.

Layout (DESIGN §3): ``<root>/<layer>/<asset>/week=<key>/part-*.parquet`` beside
``<root>/landing/``. The root is a local directory or ``s3://bucket/prefix``.

Local writes go to a hidden temp directory that is renamed into place, so a
crash never leaves a half-written partition visible and a re-write replaces the
partition whole. On S3 a partition of a pandas table is one object, and a single
PUT is atomic. No Dagster import here: the IO manager and the tests share it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

LAYERS = ("bronze", "silver", "gold", "models", "reports")
PART_FILE = "part-00000.parquet"


META_FILE = "meta.json"


class LakeError(RuntimeError):
    """A lake read or write that cannot be done, with the path it was about."""


@dataclass
class Artifact:
    """One model artifact (weights, vectors, an index): named files plus JSON metadata.

    ``meta`` carries at least ``model_version``; it is written last, so a reader
    that finds ``meta.json`` finds every file.
    """

    files: dict[str, bytes]
    meta: dict[str, Any]

    @property
    def model_version(self) -> str:
        return self.meta["model_version"]


def array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def vectors_artifact(ids: np.ndarray, vectors: np.ndarray, meta: dict[str, Any], **files: bytes) -> Artifact:
    """Embeddings as an artifact: ``ids.npy`` (int64[n]) and ``vectors.npy`` (float32[n, dim])."""
    if len(ids) != len(vectors):
        raise LakeError(f"{len(ids)} ids for {len(vectors)} vectors")
    meta = {**meta, "rows": len(ids), "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0}
    return Artifact(
        files={"ids.npy": array_bytes(ids.astype(np.int64)), "vectors.npy": array_bytes(vectors.astype(np.float32)), **files},
        meta=meta,
    )


def vectors_from(artifact: Artifact) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64[n], vectors float32[n, dim]) of an artifact made by ``vectors_artifact``."""
    return array_from_bytes(artifact.files["ids.npy"]), array_from_bytes(artifact.files["vectors.npy"])


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


@dataclass
class Lake:
    """One lake root. ``s3_client`` is a boto3 client, needed only for ``s3://`` roots."""

    root: str
    s3_client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/")
        if self.root.startswith("file://"):
            self.root = self.root.removeprefix("file://")
        if not self.is_s3:
            self.root = str(Path(self.root).expanduser().resolve())
        elif self.s3_client is None:
            raise LakeError(f"lake root {self.root} is on S3 but no S3 client was given")

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    @property
    def landing(self) -> str:
        return f"{self.root}/landing"

    def uri(self, layer: str, asset: str, week: str | None = None) -> str:
        """Directory of one asset partition (or of an unpartitioned asset)."""
        if layer not in LAYERS:
            raise LakeError(f"unknown lake layer {layer!r} for asset {asset!r}; expected one of {LAYERS}")
        base = f"{self.root}/{layer}/{asset}"
        return f"{base}/week={week}" if week else base

    # -- pandas tables -------------------------------------------------------

    def write_frame(self, frame: pd.DataFrame, uri: str) -> int:
        """Replace the partition at ``uri`` with ``frame``; returns bytes written."""
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.is_s3:
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            bucket, key = _split_s3(uri)
            self.s3_client.put_object(Bucket=bucket, Key=f"{key}/{PART_FILE}", Body=buffer.getvalue())
            return buffer.tell()
        with _StagedDir(Path(uri)) as tmp:
            pq.write_table(table, tmp / PART_FILE)
            return (tmp / PART_FILE).stat().st_size

    def read_frame(self, uri: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Read one partition directory (every part file in it) into pandas."""
        if self.is_s3:
            # pandas writes one part file, Spark several (part-00000-<uuid>...): read them all.
            bucket, key = _split_s3(uri)
            parts = [o["Key"] for page in self.s3_client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{key}/") for o in page.get("Contents", [])
                if o["Key"].rsplit("/", 1)[-1].startswith("part-") and o["Key"].endswith(".parquet")]
            if not parts:
                raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
            tables = [pq.read_table(io.BytesIO(self.s3_client.get_object(Bucket=bucket, Key=k)["Body"].read()),
                                    columns=columns) for k in sorted(parts)]
            return pa.concat_tables(tables, promote_options="default").to_pandas()
        if not Path(uri).is_dir():
            raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
        return pq.read_table(uri, columns=columns).to_pandas()

    def exists(self, uri: str) -> bool:
        if self.is_s3:
            bucket, key = _split_s3(uri)
            listing = self.s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/", MaxKeys=1)
            return listing.get("KeyCount", 0) > 0
        return Path(uri).is_dir()

    # -- model artifacts -----------------------------------------------------

    def write_artifact(self, artifact: Artifact, uri: str) -> int:
        """Replace the artifact at ``uri``; returns bytes written."""
        meta = json.dumps(artifact.meta, indent=2, sort_keys=True, default=str).encode()
        if self.is_s3:
            bucket, key = _split_s3(uri)
            for name, data in sorted(artifact.files.items()):
                self.s3_client.put_object(Bucket=bucket, Key=f"{key}/{name}", Body=data)
            self.s3_client.put_object(Bucket=bucket, Key=f"{key}/{META_FILE}", Body=meta)
        else:
            with _StagedDir(Path(uri)) as tmp:
                for name, data in artifact.files.items():
                    (tmp / name).write_bytes(data)
                (tmp / META_FILE).write_bytes(meta)
        return sum(len(d) for d in artifact.files.values()) + len(meta)

    def read_artifact(self, uri: str) -> Artifact:
        if self.is_s3:
            bucket, key = _split_s3(uri)
            try:
                meta = json.loads(self.s3_client.get_object(Bucket=bucket, Key=f"{key}/{META_FILE}")["Body"].read())
            except Exception as exc:  # botocore raises a generated NoSuchKey class
                raise LakeError(f"no artifact at {uri}: {exc}") from exc
            listing = self.s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/")
            names = [o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", [])]
            files = {
                n: self.s3_client.get_object(Bucket=bucket, Key=f"{key}/{n}")["Body"].read()
                for n in names if n != META_FILE
            }
            return Artifact(files=files, meta=meta)
        folder = Path(uri)
        if not (folder / META_FILE).is_file():
            raise LakeError(f"no artifact at {uri} (was the upstream partition materialized?)")
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != META_FILE}
        return Artifact(files=files, meta=json.loads((folder / META_FILE).read_text()))

    # -- Spark tables --------------------------------------------------------

    def write_spark(self, frame: Any, uri: str) -> None:
        """Replace the partition at ``uri`` with a Spark DataFrame.

        On S3 the cluster writes ``s3a://`` directly (needs hadoop-aws on the
        cluster's classpath); locally it writes a temp directory and renames it.
        """
        if self.is_s3:
            frame.write.mode("overwrite").parquet(uri.replace("s3://", "s3a://", 1))
            return
        with _StagedDir(Path(uri)) as tmp:
            # Spark insists on creating the directory itself.
            tmp.rmdir()
            frame.write.parquet(str(tmp))

    def read_spark(self, spark: Any, uris: Iterable[str]) -> Any:
        paths = [u.replace("s3://", "s3a://", 1) for u in uris]
        missing = [u for u in paths if not self.is_s3 and not Path(u).is_dir()]
        if missing:
            raise LakeError(f"no lake data at {', '.join(missing)} (was the upstream partition materialized?)")
        return spark.read.parquet(*paths)


class _StagedDir:
    """Context manager: a hidden sibling temp dir that replaces ``final`` on success."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_siblings(self.final)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        replace_dir(self.tmp, self.final)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing what was there; never leaves a mix of both."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _remove_stale_siblings(final: Path) -> None:
    """Temp dirs left by a crashed writer of this partition are garbage."""
    for stale in final.parent.glob(f".{final.name}.*-*"):
        shutil.rmtree(stale, ignore_errors=True)
