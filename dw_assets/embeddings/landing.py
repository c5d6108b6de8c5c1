"""Which landed audio clip belongs to which track (DESIGN §7: ``landing/audio/<upload_date>/<track_id>.wav``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path


def landed_audio(landing: str | Path, until: dt.date | None = None, since: dt.date | None = None) -> dict[int, Path]:
    """track_id → clip path for clips uploaded in [since, until]; a later upload of a track wins.

    Folders and files whose names are not a date / a track id are ignored (they
    are not uploads); the caller reports tracks that have no clip.
    """
    clips: dict[int, Path] = {}
    root = Path(landing) / "audio"
    if not root.is_dir():
        return clips
    for folder in sorted(root.iterdir()):
        try:
            uploaded = dt.date.fromisoformat(folder.name)
        except ValueError:
            continue
        if (until and uploaded > until) or (since and uploaded < since):
            continue
        for clip in folder.glob("*.wav"):
            if clip.stem.isdigit():
                clips[int(clip.stem)] = clip
    return clips
