"""``dw export-playlists``: a week's playlists in the exported file contract (docs/contracts.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dw_assets.calendar import week_start
from dw_assets.lake.storage import Lake, LakeError

# The contract other tools read: names and types fixed.
EXPORT_COLUMNS = {"user_id": np.int64, "position": np.int64, "track_id": np.int64, "score": np.float64,
                  "source": str, "is_exploration": bool}


def playlists_for_export(playlists: pd.DataFrame) -> pd.DataFrame:
    """ranked_playlists rows -> the export columns, sorted by (user_id, position)."""
    frame = playlists[list(EXPORT_COLUMNS)].astype(EXPORT_COLUMNS)
    return frame.sort_values(["user_id", "position"], kind="stable").reset_index(drop=True)


def export_playlists(lake: Lake, week: str, out: Path) -> int:
    """Write ``week``'s ranked playlists to ``out`` (Parquet, written to a temp file then renamed); returns rows."""
    week_start(week)
    uri = lake.uri("gold", "ranked_playlists", week)
    if not lake.exists(uri):
        raise LakeError(f"no playlists for week {week} at {uri}: run `dw run --lake ... --week {week}` first")
    frame = playlists_for_export(lake.read_frame(uri))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(out)
    return len(frame)
