"""Which landed audio clip belongs to which track (``landing/audio/<upload_date>/<track_id>.wav``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dw_assets.lake.landing_fs import LandingFS, as_landing


def landed_audio(landing: LandingFS | str | Path, until: dt.date | None = None,
                 since: dt.date | None = None) -> dict[int, str]:
    """track_id → clip location (local path or ``s3://`` URI; read it with ``LandingFS.read_location``)
    for clips uploaded in [since, until]; a later upload of a track wins.

    Folders and files whose names are not a date / a track id are ignored (they
    are not uploads); the caller reports tracks that have no clip.
    """
    landing = as_landing(landing)
    clips: dict[int, str] = {}
    for folder in landing.list_folders("audio"):
        try:
            uploaded = dt.date.fromisoformat(folder)
        except ValueError:
            continue
        if (until and uploaded > until) or (since and uploaded < since):
            continue
        for clip in landing.list_files(f"audio/{folder}", suffix=".wav"):
            stem = clip.rsplit("/", 1)[-1].removesuffix(".wav")
            if stem.isdigit():
                clips[int(stem)] = clip
    return clips
