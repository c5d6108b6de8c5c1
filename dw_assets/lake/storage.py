"""Where lake data lives and how it is written: atomically, one directory per partition.

Layout (docs/contracts.md): ``<root>/<layer>/<asset>/week=<key>/part-*.parquet`` beside
``<root>/landing/``. The root is a local directory or ``s3://bucket/prefix``.

Crash safety (a writer killed at any instant, SIGKILL included):

- Local: every file of a partition is written into a hidden sibling directory
  (``.week=<key>.tmp-<id>``), fsynced, then swapped into place in one
  ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames, where a crash
  between them shows no partition rather than a partial one). Readers see the
  previous partition or the new one, never a mix, and never a partial file.
  Leftover hidden directories of a killed writer are removed by the next write
  of that partition; readers never look at hidden names (Spark and pyarrow skip
  ``.``/``_`` prefixes).
- S3 has no rename, so completeness is marked and checked: a pandas partition is
  one object (``part-00000.parquet``, a single atomic PUT); a Spark partition is
  complete once Spark's ``_SUCCESS`` marker exists; an artifact once its
  ``meta.json`` (written last, removed first when it is replaced) exists.
  Readers and ``exists`` ignore anything else, so a killed writer's objects are
  invisible and the next write replaces them.

No Dagster import here: the IO manager and the tests share it.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dw_assets.lake.errors import LakeError
from dw_assets.lake.landing_fs import LandingFS
from dw_assets.lake.s3 import S3Settings, split_s3, use_s3a, verify_bucket

LAYERS = ("bronze", "silver", "gold", "models", "reports")
PART_FILE = "part-00000.parquet"


META_FILE = "meta.json"
# Artifact files travel as S3 multipart transfers above this size: one PUT is refused above 5 GB, and the
# target's index and vector files are ~26 GB. Parts are at least this size and at most 10,000 per object.
S3_MULTIPART_BYTES = 64 * 2**20
S3_MAX_PARTS = 10_000
SUCCESS_FILE = "_SUCCESS"  # Spark's job-commit marker: a Spark partition is complete once it exists


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


def resolve_lake_root(value: str | Path) -> str:
    """A lake root as given on a command line: ``s3://bucket/prefix`` kept as it is, a directory made
    absolute. Anything else with a scheme is refused rather than taken for a local folder name."""
    value = str(value).strip()
    if value.startswith("s3://"):
        if not split_s3(value)[0]:
            raise LakeError(f"lake root {value!r} names no bucket: use s3://bucket/prefix")
        return value.rstrip("/")
    if "://" in value and not value.startswith("file://"):
        raise LakeError(f"lake root {value!r}: expected a directory or s3://bucket/prefix")
    return str(Path(value.removeprefix("file://")).expanduser().resolve())


def open_lake(root: str, endpoint_url: str | None = None) -> Lake:
    """The lake at ``root`` (a directory or ``s3://bucket/prefix``); on S3 with a client and settings built
    from the environment (``lake/s3.py``), ``endpoint_url`` overriding ``DW_S3_ENDPOINT_URL``."""
    if not str(root).startswith("s3://"):
        return Lake(str(root))
    settings = S3Settings.from_env(endpoint_url)
    return Lake(str(root), s3_client=settings.client(), s3=settings)


@dataclass
class Lake:
    """One lake root. ``s3_client`` is a boto3 client, needed only for ``s3://`` roots; ``s3`` the
    ``S3Settings`` Spark uses for them (default: the environment's). ``open_lake`` builds both."""

    root: str
    s3_client: Any = field(default=None, repr=False)
    s3: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/")
        if self.root.startswith("file://"):
            self.root = self.root.removeprefix("file://")
        if self.root.startswith(("s3a://", "s3n://")):
            raise LakeError(f"lake root {self.root}: write it as s3://bucket/prefix (Spark's s3a:// is derived)")
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

    def landing_fs(self) -> LandingFS:
        """The landing zone under this root, read with the lake's S3 client and settings (``LandingFS``)."""
        return LandingFS(self.landing, s3_client=self.s3_client, s3=self.s3)

    def verify(self) -> None:
        """On S3: raise one ``S3ConfigError`` naming the setting to fix (credentials, endpoint, bucket) unless
        the bucket can be used. Checked once per process and bucket; a local lake needs nothing."""
        if self.is_s3:
            verify_bucket(self.root, self.s3 or S3Settings.from_env(), self.s3_client)

    def _spark_uri(self, spark: Any, uri: str) -> str:
        return use_s3a(spark, uri, self.s3 or S3Settings.from_env())

    def uri(self, layer: str, asset: str, week: str | None = None) -> str:
        """Directory of one asset partition (or of an unpartitioned asset)."""
        if layer not in LAYERS:
            raise LakeError(f"unknown lake layer {layer!r} for asset {asset!r}; expected one of {LAYERS}")
        base = f"{self.root}/{layer}/{asset}"
        return f"{base}/week={week}" if week else base

    # -- S3 completeness -----------------------------------------------------

    def _s3_names(self, uri: str) -> tuple[str, str, list[str]]:
        """(bucket, key prefix, object names directly under the partition)."""
        bucket, key = split_s3(uri)
        names = [o["Key"][len(key) + 1:] for page in self.s3_client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{key}/") for o in page.get("Contents", [])]
        return bucket, key, [n for n in names if n and "/" not in n]

    def _s3_delete(self, bucket: str, key: str, names: Iterable[str]) -> None:
        names = sorted(names)
        for start in range(0, len(names), 1000):
            self.s3_client.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": f"{key}/{n}"} for n in names[start:start + 1000]], "Quiet": True})

    @staticmethod
    def _complete_parts(names: list[str]) -> list[str] | None:
        """The part files a reader may use, or None while the partition is absent or incomplete.

        Spark output counts once ``_SUCCESS`` exists; otherwise only the single-object pandas
        part (a killed Spark writer's parts, or parts a pandas rewrite has not deleted yet, are ignored).
        """
        if SUCCESS_FILE in names:
            return sorted(n for n in names if n.startswith("part-") and n.endswith(".parquet"))
        if PART_FILE in names:
            return [PART_FILE]
        return None

    # -- pandas tables -------------------------------------------------------

    def write_frame(self, frame: pd.DataFrame, uri: str) -> int:
        """Replace the partition at ``uri`` with ``frame``; returns bytes written."""
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.is_s3:
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            bucket, key, names = self._s3_names(uri)
            if SUCCESS_FILE in names:  # Spark output here: make it incomplete before the new part appears
                self._s3_delete(bucket, key, [SUCCESS_FILE])
            self.s3_client.put_object(Bucket=bucket, Key=f"{key}/{PART_FILE}", Body=buffer.getvalue())
            self._s3_delete(bucket, key, [n for n in names if n not in (PART_FILE, SUCCESS_FILE)])
            return buffer.tell()
        with _StagedDir(Path(uri)) as tmp:
            pq.write_table(table, tmp / PART_FILE)
            return (tmp / PART_FILE).stat().st_size

    def read_frame(self, uri: str, columns: list[str] | None = None, filters=None) -> pd.DataFrame:
        """Read one partition directory (every part file in it) into pandas; ``filters`` (pyarrow's
        DNF, e.g. ``[("user_id", "in", ids)]``) drop rows while reading, before pandas holds them."""
        if self.is_s3:
            # pandas writes one part file, Spark several (part-00000-<uuid>...) and _SUCCESS.
            bucket, key, names = self._s3_names(uri)
            parts = self._complete_parts(names)
            if not parts:
                raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
            tables = [pq.read_table(io.BytesIO(self.s3_client.get_object(Bucket=bucket, Key=f"{key}/{n}")["Body"].read()),
                                    columns=columns, filters=filters) for n in parts]
            return pa.concat_tables(tables, promote_options="default").to_pandas()
        if not Path(uri).is_dir():
            raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
        return pq.read_table(uri, columns=columns, filters=filters).to_pandas()

    def read_head(self, uri: str, rows: int, columns: list[str] | None = None) -> pd.DataFrame:
        """The first ``rows`` rows of a partition, in part-file order, reading no further than they reach:
        a peek at a user-scale table (15 G playlist rows at the target) that costs one row group, not the table."""
        if self.is_s3:
            bucket, key, names = self._s3_names(uri)
            parts = self._complete_parts(names) or []
            sources = (io.BytesIO(self._s3_get(bucket, f"{key}/{n}")) for n in parts)
        elif Path(uri).is_dir():
            sources = (str(p) for p in sorted(Path(uri).glob("part-*.parquet")))
        else:
            sources = iter(())
        batches, taken = [], 0
        for source in sources:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=min(rows, 65_536), columns=columns):
                batches.append(batch.slice(0, rows - taken))
                taken += batches[-1].num_rows
                if taken >= rows:
                    return pa.Table.from_batches(batches).to_pandas()
        if not batches:
            raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
        return pa.Table.from_batches(batches).to_pandas()

    def exists(self, uri: str) -> bool:
        """Whether a complete partition (table or artifact) is at ``uri``."""
        if self.is_s3:
            names = self._s3_names(uri)[2]
            return META_FILE in names or self._complete_parts(names) is not None
        return Path(uri).is_dir()

    # -- model artifacts -----------------------------------------------------

    def write_artifact(self, artifact: Artifact, uri: str) -> int:
        """Replace the artifact at ``uri``; returns bytes written."""
        meta = json.dumps(artifact.meta, indent=2, sort_keys=True, default=str).encode()
        if META_FILE in artifact.files:
            raise LakeError(f"an artifact file may not be called {META_FILE} ({uri})")
        if self.is_s3:
            bucket, key, names = self._s3_names(uri)
            # Invisible first (no meta.json), then the files, then meta.json: a killed writer
            # leaves no artifact rather than new files under the old meta.
            if META_FILE in names:
                self._s3_delete(bucket, key, [META_FILE])
            self._s3_delete(bucket, key, [n for n in names if n != META_FILE and n not in artifact.files])
            for name, data in sorted(artifact.files.items()):
                self._s3_put(bucket, f"{key}/{name}", data)
            self.s3_client.put_object(Bucket=bucket, Key=f"{key}/{META_FILE}", Body=meta)
        else:
            with _StagedDir(Path(uri)) as tmp:
                for name, data in artifact.files.items():
                    (tmp / name).write_bytes(data)
                (tmp / META_FILE).write_bytes(meta)
        return sum(len(d) for d in artifact.files.values()) + len(meta)

    def _s3_put(self, bucket: str, key: str, data: bytes) -> None:
        """One object; a multipart upload (parallel parts) when ``data`` is above ``S3_MULTIPART_BYTES``."""
        self.s3_client.upload_fileobj(io.BytesIO(data), bucket, key, Config=_transfer_config(len(data)))

    def _s3_get(self, bucket: str, key: str) -> bytes:
        """One object's bytes, fetched in parallel ranged parts when it is large."""
        buffer = io.BytesIO()
        self.s3_client.download_fileobj(bucket, key, buffer, Config=_transfer_config(0))
        return buffer.getvalue()

    def read_artifact_meta(self, uri: str) -> dict:
        """An artifact's ``meta.json`` alone (its version and counts), its files left unread."""
        return self._artifact_meta(uri)[0]

    def read_artifact(self, uri: str) -> Artifact:
        meta, names = self._artifact_meta(uri)
        if self.is_s3:
            bucket, key = split_s3(uri)
            return Artifact(files={n: self._s3_get(bucket, f"{key}/{n}") for n in names}, meta=meta)
        return Artifact(files={n: (Path(uri) / n).read_bytes() for n in names}, meta=meta)

    def _artifact_meta(self, uri: str) -> tuple[dict, list[str]]:
        """(``meta.json``, the artifact's other file names, sorted); a LakeError where none was written."""
        if self.is_s3:
            bucket, key, names = self._s3_names(uri)
            if META_FILE not in names:
                raise LakeError(f"no artifact at {uri} (was the upstream partition materialized?)")
            meta = json.loads(self.s3_client.get_object(Bucket=bucket, Key=f"{key}/{META_FILE}")["Body"].read())
            return meta, sorted(n for n in names if n != META_FILE)
        folder = Path(uri)
        if not (folder / META_FILE).is_file():
            raise LakeError(f"no artifact at {uri} (was the upstream partition materialized?)")
        return (json.loads((folder / META_FILE).read_text()),
                sorted(p.name for p in folder.iterdir() if p.name != META_FILE))

    # -- Spark tables --------------------------------------------------------

    def write_spark(self, frame: Any, uri: str) -> None:
        """Replace the partition at ``uri`` with a Spark DataFrame.

        On S3 Spark writes ``s3a://`` directly (hadoop-aws from ``scripts/spark-jars.sh``, settings from
        ``lake/s3.py``) through Hadoop's file committer; the partition counts as written once its
        ``_SUCCESS`` marker exists (the completeness rule above, chosen over the S3A magic committer:
        see ``lake/s3.py``). A pandas part left from an earlier write is deleted first, and the
        overwrite removes the old ``_SUCCESS`` before any new part appears. Locally Spark writes a
        hidden temp directory that replaces the partition in one rename.
        """
        if self.is_s3:
            target = self._spark_uri(frame.sparkSession, uri)
            bucket, key, names = self._s3_names(uri)
            if PART_FILE in names:
                self._s3_delete(bucket, key, [PART_FILE])
            frame.write.mode("overwrite").parquet(target)
            return
        with _StagedDir(Path(uri)) as tmp:
            # Spark insists on creating the directory itself.
            tmp.rmdir()
            frame.write.parquet(str(tmp))  # returns only once the job committed

    def read_spark(self, spark: Any, uris: Iterable[str]) -> Any:
        paths = []
        for uri in uris:
            if self.is_s3:
                parts = self._complete_parts(self._s3_names(uri)[2])
                if not parts:
                    raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
                base = self._spark_uri(spark, uri)
                paths.append(base if parts != [PART_FILE] else f"{base}/{PART_FILE}")
            elif not Path(uri).is_dir():
                raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
            else:
                paths.append(uri)
        return spark.read.parquet(*paths)


def _transfer_config(size: int) -> Any:
    """boto3's managed transfer: multipart above ``part_bytes``, parts sized so an object of ``size`` bytes
    needs at most ``S3_MAX_PARTS`` of them (100 M x 64 float32 = 25.6 GB: 400 parts of 64 MiB)."""
    from boto3.s3.transfer import TransferConfig

    part_bytes = S3_MULTIPART_BYTES
    chunk = max(part_bytes, -(-size // S3_MAX_PARTS))
    return TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=chunk, max_concurrency=4)


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
        _fsync_tree(self.tmp)  # the data is on disk before the rename makes it visible
        replace_dir(self.tmp, self.final)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing what was there; never leaves a mix of both.

    Where the kernel can swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``),
    a reader sees the old directory or the new one at every instant; elsewhere the old one
    is renamed aside first, so a crash in between leaves no partition (never a partial one)
    until the next write.
    """
    if final.exists():
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old partition
        else:
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap paths ``a`` and ``b``; False where it could not be done (the platform or file
    system lacks RENAME_EXCHANGE, or refused it): the swap is all or nothing, so the caller falls back."""
    if _RENAMEAT2 is None:
        return False
    return _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the directories themselves (best effort:
    some file systems refuse fsync on directories)."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_siblings(final: Path) -> None:
    """Temp dirs left by a killed writer of this partition are garbage."""
    for stale in final.parent.glob(f".{final.name}.*-*"):
        shutil.rmtree(stale, ignore_errors=True)
