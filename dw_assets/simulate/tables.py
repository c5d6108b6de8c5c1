"""Landing-zone Parquet extracts: track catalog, user directory, playlist snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dw_assets.simulate.catalog import Catalog
from dw_assets.simulate.population import COUNTRIES, Population


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")


def write_tracks(catalog: Catalog, genres: list[str], path: Path) -> None:
    """track_id, artist_id, album_id (int64), genre (str), release_date (date32), duration_ms (int64)."""
    table = pa.table(
        {
            "track_id": pa.array(catalog.track_id, pa.int64()),
            "artist_id": pa.array(catalog.artist + 1, pa.int64()),
            "album_id": pa.array(catalog.album + 1, pa.int64()),
            "genre": pa.array(np.asarray(genres, dtype=object)[catalog.genre], pa.string()),
            "release_date": pa.array(catalog.release_date, pa.date32()),
            "duration_ms": pa.array(catalog.duration_ms, pa.int64()),
        }
    )
    _write(table, path)


def write_users(pop: Population, path: Path) -> None:
    """user_id (int64), country (ISO-2), signup_date (date32), birth_year (int32, null = unknown)."""
    signup = pop.signup_ms.astype("datetime64[ms]").astype("datetime64[D]")
    table = pa.table(
        {
            "user_id": pa.array(pop.user_id, pa.int64()),
            "country": pa.array(np.asarray(COUNTRIES, dtype=object)[pop.country], pa.string()),
            "signup_date": pa.array(signup, pa.date32()),
            "birth_year": pa.array(pop.birth_year, pa.int32(), mask=pop.birth_year == 0),
        }
    )
    _write(table, path)


def write_playlists(snapshot: pd.DataFrame, path: Path) -> None:
    """playlist_id, user_id, track_id (int64), pos (int32)."""
    table = pa.table(
        {
            "playlist_id": pa.array(snapshot["playlist_id"].to_numpy(), pa.int64()),
            "user_id": pa.array(snapshot["user_id"].to_numpy(), pa.int64()),
            "track_id": pa.array(snapshot["track_id"].to_numpy(), pa.int64()),
            "pos": pa.array(snapshot["pos"].to_numpy(), pa.int32()),
        }
    )
    _write(table, path)
