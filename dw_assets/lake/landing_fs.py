"""The landing zone as one small file system: a local directory or ``s3://bucket/prefix``.

Every reader of landed files goes through here: ingest (events, catalog, users, playlist snapshots),
the weekly audio step and the upload sensor. Paths are relative to the landing root
(``events/week=2026-01-05``); a file's *location* is its full local path or ``s3://`` URI (what is
reported in metadata). Listing, existence checks and byte reads use boto3 on S3 (the lake's client);
Spark reads take ``spark_uris``, which turns locations into ``s3a://`` URIs and gives the session the
bucket's S3A settings. An S3 "folder" exists when an object has its prefix.

No Dagster import here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dw_assets.lake.s3 import NOT_FOUND_CODES, S3Settings, error_code, split_s3, use_s3a


@dataclass
class LandingFS:
    """One landing root; ``s3_client`` (boto3) and ``s3`` (settings for Spark) are needed for ``s3://`` roots."""

    root: str
    s3_client: Any = field(default=None, repr=False)
    s3: S3Settings | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = str(self.root).rstrip("/")
        if self.is_s3:
            if self.s3_client is None:
                self.s3 = self.s3 or S3Settings.from_env()
                self.s3_client = self.s3.client()
        else:
            self.root = str(Path(self.root.removeprefix("file://")).expanduser().resolve())

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def location(self, relative: str = "") -> str:
        """Full local path or ``s3://`` URI of a path under the root."""
        relative = relative.strip("/")
        return f"{self.root}/{relative}" if relative else self.root

    # -- listing -------------------------------------------------------------

    def exists(self, relative: str) -> bool:
        """A file, or a folder holding anything."""
        if not self.is_s3:
            return Path(self.location(relative)).exists()
        bucket, key = split_s3(self.location(relative))
        if self._is_object(bucket, key):
            return True
        return bool(self.s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/", MaxKeys=1).get("KeyCount"))

    def is_file(self, relative: str) -> bool:
        if not self.is_s3:
            return Path(self.location(relative)).is_file()
        return self._is_object(*split_s3(self.location(relative)))

    def list_files(self, relative: str, suffix: str = "") -> list[str]:
        """Locations of the files directly in a folder whose names end with ``suffix``, sorted; [] if none."""
        files, _ = self._entries(relative)
        return [self.location(f"{relative}/{name}") for name in files if name.endswith(suffix)]

    def list_folders(self, relative: str) -> list[str]:
        """Names of the folders directly in a folder, sorted; [] if none."""
        return self._entries(relative)[1]

    def iter_files(self, relative: str, start_after: str | None = None) -> Iterator[str]:
        """Paths (relative to ``relative``) of every file under it, recursively, in key order, skipping
        those that sort at or before ``start_after`` (also relative). On S3 the server skips them
        (``StartAfter``); locally, folders whose whole content sorts before it are not opened."""
        base = self.location(relative)
        if self.is_s3:
            bucket, key = split_s3(base)
            kwargs = {"Bucket": bucket, "Prefix": f"{key}/"}
            if start_after:
                kwargs["StartAfter"] = f"{key}/{start_after}"
            for page in self.s3_client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(key) + 1:]
            return
        yield from _walk_local(Path(base), "", start_after)

    # -- reading -------------------------------------------------------------

    def read_bytes(self, relative: str) -> bytes:
        return self.read_location(self.location(relative))

    def read_location(self, location: str | Path) -> bytes:
        """The bytes of a file given by its location (local path or ``s3://`` URI). Missing → ``FileNotFoundError``,
        refused → ``PermissionError`` (both ``OSError``, as for local files)."""
        location = str(location)
        if not location.startswith("s3://"):
            return Path(location).read_bytes()
        from botocore.exceptions import ClientError

        bucket, key = split_s3(location)
        try:
            return self.s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            code = error_code(error)
            if code in NOT_FOUND_CODES:
                raise FileNotFoundError(f"no such object: {location}") from None
            if code in ("403", "AccessDenied"):
                raise PermissionError(f"access denied: {location}") from None
            raise

    def spark_uris(self, spark: Any, locations: Iterable[str]) -> list[str]:
        """Locations as Spark reads them: local paths unchanged, ``s3://`` as ``s3a://`` with the bucket configured."""
        return [use_s3a(spark, str(loc), self.s3 or S3Settings.from_env()) if self.is_s3 else str(loc)
                for loc in locations]

    # -- writing (simulated worlds, tests) -------------------------------------

    def upload_dir(self, folder: str | Path) -> int:
        """Copy every file under local ``folder`` to the same relative paths under this S3 root; returns files."""
        if not self.is_s3:
            raise ValueError(f"upload_dir copies into an s3:// landing root, not {self.root}")
        from concurrent.futures import ThreadPoolExecutor

        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        bucket, key = split_s3(self.root)

        def put(path: Path) -> None:
            target = "/".join(filter(None, [key, path.relative_to(folder).as_posix()]))
            self.s3_client.upload_file(str(path), bucket, target)

        with ThreadPoolExecutor(max_workers=16) as pool:  # many small clips: latency-bound
            list(pool.map(put, files))
        return len(files)

    # -- internals -------------------------------------------------------------

    def _is_object(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3_client.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error_code(error) in NOT_FOUND_CODES:
                return False
            raise
        return True

    def _entries(self, relative: str) -> tuple[list[str], list[str]]:
        """(file names, folder names) directly in a folder, each sorted."""
        base = self.location(relative)
        if not self.is_s3:
            if not Path(base).is_dir():
                return [], []
            with os.scandir(base) as entries:
                listed = [(e.name, e.is_dir()) for e in entries]
            return sorted(n for n, d in listed if not d), sorted(n for n, d in listed if d)
        bucket, key = split_s3(base)
        files, folders = [], []
        pages = self.s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/", Delimiter="/")
        for page in pages:
            files += [o["Key"][len(key) + 1:] for o in page.get("Contents", [])]
            folders += [p["Prefix"][len(key) + 1:].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(n for n in files if n), sorted(folders)


def _walk_local(folder: Path, prefix: str, start_after: str | None) -> Iterator[str]:
    """Files under ``folder`` as ``prefix + relative path``, in key order (what S3 lists), after ``start_after``."""
    if not folder.is_dir():
        return
    with os.scandir(folder) as entries:
        listed = sorted((e.name + ("/" if e.is_dir() else ""), e.is_dir()) for e in entries)
    for name, is_dir in listed:
        path = prefix + name
        if is_dir:
            # Every key under path/ sorts before start_after: skip the folder without opening it.
            if start_after and path < start_after and not start_after.startswith(path):
                continue
            yield from _walk_local(folder / name, path, start_after)
        elif not start_after or path > start_after:
            yield path


def as_landing(landing: LandingFS | str | Path, s3_client: Any = None) -> LandingFS:
    """A ``LandingFS`` from a landing root (a directory, ``s3://…``) or one already opened."""
    return landing if isinstance(landing, LandingFS) else LandingFS(str(landing), s3_client=s3_client)


MANIFEST_FILE = "manifest.json"


def read_manifest(landing: LandingFS) -> dict:
    """The landing zone's ``manifest.json`` (a simulated world's weeks and counts), {} when there is none."""
    return json.loads(landing.read_bytes(MANIFEST_FILE)) if landing.is_file(MANIFEST_FILE) else {}
