"""New audio uploads in the landing zone, found with a cursor instead of rescanning history.

Layout (DESIGN §7): ``<landing>/audio/<upload_date>/<track_id>.wav``, ``upload_date`` = ``YYYY-MM-DD``
(UTC day the clip landed), on a local disk or under an S3 prefix. Names that are not a date folder /
``<digits>.wav`` (temp files, ``.part`` uploads, manifests) are not uploads and are ignored.

The cursor (``UploadCursor``, stored by the sensor as JSON) is the newest upload-date folder seen and
the track ids already reported in it. A scan lists only folders on or after that date:

- local: one ``scandir`` of ``audio/`` for the folder *names* (one entry per day), then the files of
  the cursor's folder and any newer ones; older folders' files are never listed again;
- S3: one paginated ``list_objects_v2(Prefix=<audio>/, StartAfter=<audio>/<cursor date>)``: keys sort
  by date, so S3 itself skips every older folder.

The cursor's own folder is listed again each tick, because a day's folder keeps receiving clips
until the day ends; its ``seen`` ids keep those clips from being reported twice. Once a newer folder
appears the older ones are closed: a clip written into a past day's folder after that is not found
by the sensor (the next weekly ``audio_embeddings`` still embeds it). The cursor holds one day's
track ids, so its size is bounded by a day's uploads (~7 bytes per upload in JSON).

First tick (no cursor): the scan starts at the newest folder and reports what is in it; older folders
are history, embedded by the weekly ``audio_embeddings``.

Writers must make a clip appear whole (local: write a hidden/temp name, then rename; S3: one PUT);
a clip caught half-written reads as ``truncated`` and is reported, not embedded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIO_FOLDER = "audio"
CLIP_SUFFIX = ".wav"


@dataclass(frozen=True)
class UploadCursor:
    """Where the previous scan stopped.

    folder: newest upload-date folder seen (``YYYY-MM-DD``), None before the first scan.
    seen: sorted track ids already reported from that folder.
    """

    folder: str | None = None
    seen: tuple[int, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"folder": self.folder, "seen": list(self.seen)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> UploadCursor:
        """Parse a stored cursor; None or "" is the first tick."""
        if not text:
            return cls()
        data = json.loads(text)
        folder = data.get("folder")
        if folder is not None and not is_upload_date(folder):
            raise ValueError(f"upload cursor folder must be YYYY-MM-DD, got {folder!r}")
        return cls(folder=folder, seen=tuple(sorted(int(t) for t in data.get("seen", []))))


@dataclass(frozen=True)
class Upload:
    """One landed clip: ``location`` is a local path or ``s3://bucket/key``."""

    upload_date: str
    track_id: int
    location: str


@dataclass
class UploadScan:
    """What one scan found.

    uploads: clips not reported before, sorted by (upload_date, track_id).
    cursor: the cursor to store for the next scan.
    listed_folders: date folders whose files were listed this scan (the proof of no rescans).
    ignored: names under listed folders that are not ``<track_id>.wav`` (temp files, stray objects).
    """

    uploads: list[Upload]
    cursor: UploadCursor
    listed_folders: list[str]
    ignored: list[str] = field(default_factory=list)

    @property
    def upload_dates(self) -> list[str]:
        """Sorted distinct upload dates of the new clips."""
        return sorted({u.upload_date for u in self.uploads})


def is_upload_date(name: str) -> bool:
    """True for a ``YYYY-MM-DD`` folder name."""
    if len(name) != 10:
        return False
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True


def clip_track_id(name: str) -> int | None:
    """Track id of a clip file name ``<digits>.wav``; None for anything else."""
    stem, dot, suffix = name.rpartition(".")
    return int(stem) if dot and f".{suffix}" == CLIP_SUFFIX and stem.isdigit() else None


def audio_root(landing: str) -> str:
    """``<landing>/audio`` for a local landing directory or an ``s3://`` landing prefix."""
    return f"{landing.rstrip('/')}/{AUDIO_FOLDER}"


def scan_uploads(landing: str, cursor: UploadCursor, s3_client: Any = None) -> UploadScan:
    """New clips under ``<landing>/audio`` since ``cursor`` (local directory or ``s3://`` prefix).

    ``s3_client``: a boto3 S3 client, needed for an ``s3://`` landing only.
    """
    root = audio_root(landing)
    if root.startswith("s3://"):
        if s3_client is None:
            raise ValueError(f"{root} is on S3 but no S3 client was given")
        listing, ignored = _list_s3(s3_client, root, cursor)
    else:
        listing, ignored = _list_local(Path(root), cursor)
    return _advance(cursor, listing, ignored)


def list_upload_folder(landing: str, upload_date: str, s3_client: Any = None) -> list[Upload]:
    """Every clip of one upload-date folder, sorted by track id (what a run for that date embeds)."""
    if not is_upload_date(upload_date):
        raise ValueError(f"upload date must be YYYY-MM-DD, got {upload_date!r}")
    root = audio_root(landing)
    if root.startswith("s3://"):
        if s3_client is None:
            raise ValueError(f"{root} is on S3 but no S3 client was given")
        bucket, prefix = _split_s3(root)
        found = [u for u in _s3_uploads(s3_client, bucket, f"{prefix}/{upload_date}/", None)[0]
                 if u.upload_date == upload_date]
    else:
        found = _local_folder(Path(root) / upload_date, upload_date)[0]
    return sorted(found, key=lambda u: u.track_id)


def fetch_clips(uploads: Iterable[Upload], folder: Path, s3_client: Any = None) -> dict[int, Path]:
    """track_id → a local path of each clip; S3 clips are downloaded into ``folder``.

    A track uploaded more than once in ``uploads`` keeps its last (latest-dated) clip.
    """
    paths: dict[int, Path] = {}
    for upload in sorted(uploads, key=lambda u: (u.upload_date, u.track_id)):
        if upload.location.startswith("s3://"):
            if s3_client is None:
                raise ValueError(f"{upload.location} is on S3 but no S3 client was given")
            bucket, key = _split_s3(upload.location)
            target = folder / upload.upload_date / f"{upload.track_id}{CLIP_SUFFIX}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
            paths[upload.track_id] = target
        else:
            paths[upload.track_id] = Path(upload.location)
    return paths


# ---------------------------------------------------------------- listing


def _advance(cursor: UploadCursor, listing: list[Upload], ignored: list[str]) -> UploadScan:
    """New uploads and the next cursor from a listing of the folders on or after ``cursor.folder``."""
    seen = set(cursor.seen)
    new = [u for u in listing
           if cursor.folder is None or u.upload_date > cursor.folder or u.track_id not in seen]
    new.sort(key=lambda u: (u.upload_date, u.track_id))
    listed = sorted({u.upload_date for u in listing} | ({cursor.folder} if cursor.folder else set()))
    newest = max((u.upload_date for u in listing), default=cursor.folder)
    if newest is None:
        return UploadScan([], cursor, listed, ignored)
    in_newest = {u.track_id for u in listing if u.upload_date == newest}
    if newest == cursor.folder:
        in_newest |= seen  # a clip deleted from today's folder stays reported, not re-reported later
    return UploadScan(new, UploadCursor(newest, tuple(sorted(in_newest))), listed, ignored)


def _list_local(root: Path, cursor: UploadCursor) -> tuple[list[Upload], list[str]]:
    if not root.is_dir():
        return [], []
    with os.scandir(root) as entries:  # folder names only: one entry per day
        folders = sorted(e.name for e in entries if e.is_dir() and is_upload_date(e.name))
    # First tick: the newest folder only (older ones are history); then the cursor's and newer ones.
    folders = folders[-1:] if cursor.folder is None else [f for f in folders if f >= cursor.folder]
    uploads: list[Upload] = []
    ignored: list[str] = []
    for name in folders:
        found, skipped = _local_folder(root / name, name)
        uploads += found
        ignored += skipped
    return uploads, ignored


def _local_folder(folder: Path, upload_date: str) -> tuple[list[Upload], list[str]]:
    if not folder.is_dir():
        return [], []
    uploads, ignored = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            track_id = clip_track_id(entry.name) if entry.is_file() else None
            if track_id is None:
                ignored.append(f"{upload_date}/{entry.name}")
            else:
                uploads.append(Upload(upload_date, track_id, str(folder / entry.name)))
    return uploads, ignored


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def _list_s3(client: Any, root: str, cursor: UploadCursor) -> tuple[list[Upload], list[str]]:
    bucket, prefix = _split_s3(root)
    start = cursor.folder
    if start is None:  # first tick: find the newest folder from the folder names alone
        start = _newest_s3_folder(client, bucket, prefix)
        if start is None:
            return [], []
    # Every key of an older folder sorts before "<prefix>/<start>", every key of <start>/ after it.
    return _s3_uploads(client, bucket, f"{prefix}/", f"{prefix}/{start}")


def _newest_s3_folder(client: Any, bucket: str, prefix: str) -> str | None:
    newest = None
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/", Delimiter="/")
    for page in pages:
        for common in page.get("CommonPrefixes", []):
            name = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
            if is_upload_date(name) and (newest is None or name > newest):
                newest = name
    return newest


def _s3_uploads(client: Any, bucket: str, prefix: str, start_after: str | None) -> tuple[list[Upload], list[str]]:
    """Clips under ``prefix`` (``<audio>/`` or ``<audio>/<date>/``) with keys after ``start_after``."""
    audio = prefix.rstrip("/")
    if is_upload_date(audio.rsplit("/", 1)[-1]):
        audio = audio.rsplit("/", 1)[0]
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        kwargs["StartAfter"] = start_after
    uploads, ignored = [], []
    for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(audio) + 1 :]
            folder, _, name = relative.partition("/")
            track_id = clip_track_id(name) if "/" not in name else None
            if not is_upload_date(folder) or track_id is None:
                ignored.append(relative)
                continue
            uploads.append(Upload(folder, track_id, f"s3://{bucket}/{obj['Key']}"))
    return uploads, ignored
