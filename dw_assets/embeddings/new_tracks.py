"""Reading the audio-upload sensor's ``new_track_vectors`` partitions (one per upload date), Dagster-free:
the weekly candidates search them beside the week's index; the tests check them.

Size: one upload day is capped (``UploadDayConfig.max_uploads``, 100 k tracks); a week holds at most 7
such partitions of two-tower and audio vectors, a few hundred MB at the cap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from dw_assets.lake.storage import Artifact, array_from_bytes
from dw_assets.retrieval.delta import DeltaIndex

ASSET = "new_track_vectors"
AUDIO_VECTORS_FILE = "audio_vectors.npy"


def new_tracks_extending(uploads: Mapping[str, Artifact], model_version: str,
                         whole: Callable[[str], Artifact] | None = None) -> list[Artifact]:
    """The upload days of ``uploads`` ({upload date: its ``new_track_vectors`` artifact}, e.g. the IO
    manager's ``PartitionInputs``, each read when first asked for) that extend ``model_version``, oldest
    first. Days computed with another week's models are left out (their vectors live in another two-tower
    space). ``whole``: when ``uploads`` holds only each day's ``meta.json`` (``PartitionInputs`` of kind
    ``artifact_meta``), reads a wanted day whole: the others' vectors are never read (a year of upload
    days is ~14 GB at 100 k uploads a day).
    """
    wanted = [date for date in sorted(uploads) if uploads[date].model_version == model_version]
    return [whole(date) if whole is not None else uploads[date] for date in wanted]


def delta_index(artifacts: list[Artifact], dim: int) -> DeltaIndex:
    """One exact index over the new tracks of ``artifacts`` (oldest first: a later upload's vector wins)."""
    parts = [DeltaIndex(array_from_bytes(a.files["ids.npy"]), array_from_bytes(a.files["vectors.npy"]),
                        a.model_version) for a in artifacts]
    return DeltaIndex.combine(parts, dim=dim)


def new_audio_vectors(artifacts: list[Artifact], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(track ids int64[m], audio vectors float32[m, dim]) of the new tracks, for the audio candidate pool
    (``dim``: the audio_embeddings width); a track uploaded twice keeps its latest vector."""
    if not artifacts:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    ids = np.concatenate([array_from_bytes(a.files["ids.npy"]) for a in artifacts])
    vectors = np.concatenate([array_from_bytes(a.files[AUDIO_VECTORS_FILE]) for a in artifacts])
    _, last = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - last)
    return ids[keep], vectors[keep]
