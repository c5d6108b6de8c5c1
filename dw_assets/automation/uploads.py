"""New audio uploads in the landing zone, found with a cursor instead of rescanning history.

Layout (the landing-zone contract, docs/contracts.md): ``<landing>/audio/<upload_date>/<track_id>.wav``, ``upload_date`` = ``YYYY-MM-DD``
(UTC day the clip landed), on a local disk or under an S3 prefix. Names that are not a date folder /
``<digits>.wav`` (temp files, ``.part`` uploads, manifests) are not uploads and are ignored.

The cursor (``UploadCursor``, stored by the sensor as JSON) is the newest upload-date folder seen and
the track ids already reported in it. A scan lists only paths from that folder on, through the landing
zone's one file system (``lake/landing_fs.py``, ``iter_files(start_after=...)``): paths sort by date, so
on S3 one paginated ``list_objects_v2(StartAfter=<audio>/<cursor date>)`` skips every older folder on the
server side, and locally older folders are never opened.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dw_assets.lake.landing_fs import LandingFS, as_landing

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


def scan_uploads(landing: LandingFS | str, cursor: UploadCursor, s3_client: Any = None) -> UploadScan:
    """New clips under ``<landing>/audio`` since ``cursor`` (a local directory or an ``s3://`` prefix).

    ``landing``: a ``LandingFS`` or its root (then ``s3_client``, a boto3 client, serves an ``s3://`` root).
    """
    fs = as_landing(landing, s3_client)
    start = cursor.folder or _newest_folder(fs)  # first tick: the newest folder, found from folder names alone
    if start is None:
        return _advance(cursor, [], [])
    # Every path of an older folder sorts before "<start>", every path of "<start>/" after it.
    return _advance(cursor, *_uploads(fs, fs.iter_files(AUDIO_FOLDER, start_after=start)))


def list_upload_folder(landing: LandingFS | str, upload_date: str, s3_client: Any = None) -> list[Upload]:
    """Every clip of one upload-date folder, sorted by track id (what a run for that date embeds)."""
    if not is_upload_date(upload_date):
        raise ValueError(f"upload date must be YYYY-MM-DD, got {upload_date!r}")
    fs = as_landing(landing, s3_client)
    paths = (f"{upload_date}/{p}" for p in fs.iter_files(f"{AUDIO_FOLDER}/{upload_date}"))
    return sorted(_uploads(fs, paths)[0], key=lambda u: u.track_id)


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


def _newest_folder(fs: LandingFS) -> str | None:
    return max((name for name in fs.list_folders(AUDIO_FOLDER) if is_upload_date(name)), default=None)


def _uploads(fs: LandingFS, paths: Iterable[str]) -> tuple[list[Upload], list[str]]:
    """Clips among paths relative to ``audio/`` (``<date>/<track_id>.wav``); anything else is ``ignored``."""
    uploads, ignored = [], []
    for relative in paths:
        folder, _, name = relative.partition("/")
        track_id = clip_track_id(name) if "/" not in name else None
        if not is_upload_date(folder) or track_id is None:
            ignored.append(relative)
            continue
        uploads.append(Upload(folder, track_id, fs.location(f"{AUDIO_FOLDER}/{relative}")))
    return uploads, ignored
