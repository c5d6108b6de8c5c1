"""The hidden ground truth of a simulated world, for tests and simulated A/B.

Saved under ``<out>/simulator/`` (never under ``landing/``: the pipeline must
not see it) as an uncompressed ``.npz`` written with fixed zip timestamps, so
the same config gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from dw_assets.simulate.config import SimulationConfig

TRUTH_FILE = "truth.npz"
TRUTH_META = "truth.json"
FIXED_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass
class Truth:
    config: SimulationConfig
    genres: list[str]
    genre_centroid: np.ndarray  # float32[G, dim]
    user_ids: np.ndarray  # int64[U], sorted
    user_taste: np.ndarray  # float32[U, dim], unit vectors
    user_genre_mix: np.ndarray  # float32[U, G], weights of the user's 1-3 genres
    user_is_bot: np.ndarray  # bool[U]
    user_activity: np.ndarray  # float32[U], mean plays per active week
    track_ids: np.ndarray  # int64[T], sorted
    track_style: np.ndarray  # float32[T, dim], unit vectors
    track_genre: np.ndarray  # int16[T], index into genres
    track_artist_id: np.ndarray  # int64[T]
    track_popularity: np.ndarray  # float64[T], exposure weight, sums to 1
    track_duration_ms: np.ndarray  # int64[T]
    track_release_week: np.ndarray  # int16[T], -1 = initial catalog, i = released after week i
    track_tempo_bpm: np.ndarray  # float32[T]
    track_brightness: np.ndarray  # float32[T]

    def user_index(self, user_ids) -> np.ndarray:
        return _lookup(self.user_ids, user_ids, "user")

    def track_index(self, track_ids) -> np.ndarray:
        return _lookup(self.track_ids, track_ids, "track")

    def affinity(self, user_ids, track_ids) -> np.ndarray:
        """True affinity (cosine of taste and style) per (user_id, track_id) pair: float32[n] in [-1, 1]."""
        u = self.user_taste[self.user_index(user_ids)]
        t = self.track_style[self.track_index(track_ids)]
        return np.einsum("ij,ij->i", u, t).astype(np.float32)

    def track_genre_name(self, track_ids) -> np.ndarray:
        return np.asarray(self.genres, dtype=object)[self.track_genre[self.track_index(track_ids)]]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("config", "genres")}
        with zipfile.ZipFile(folder / TRUTH_FILE, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_ZIP_TIME), buf.getvalue())
        meta = {"config": self.config.to_dict(), "genres": self.genres}
        (folder / TRUTH_META).write_text(json.dumps(meta, indent=2) + "\n")


def _lookup(ids: np.ndarray, wanted, what: str) -> np.ndarray:
    wanted = np.asarray(wanted, dtype=np.int64)
    idx = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    missing = ids[idx] != wanted
    if missing.any():
        raise KeyError(f"unknown {what}_id(s): {wanted[missing][:5].tolist()}")
    return idx


def load_truth(root: str | Path) -> Truth:
    """Ground truth of the world written to ``root`` (the ``simulate`` out dir, or its simulator/ folder)."""
    root = Path(root)
    folder = root if (root / TRUTH_FILE).exists() else root / "simulator"
    if not (folder / TRUTH_FILE).exists():
        raise FileNotFoundError(f"no simulator ground truth under {root}")
    meta = json.loads((folder / TRUTH_META).read_text())
    with np.load(folder / TRUTH_FILE, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return Truth(config=SimulationConfig(**meta["config"]), genres=meta["genres"], **arrays)
