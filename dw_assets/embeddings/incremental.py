"""Vectors for tracks uploaded between weekly runs: the current audio CNN, then a two-tower warm start.

Two steps, both with last week's trained models (nothing is retrained):

1. ``embed_clips``: each landed clip → the weekly audio CNN → a unit vector in the item2vec space,
   the same function the weekly ``audio_embeddings`` applies; unusable clips are reported
   (``audio_io.AUDIO_PROBLEMS``) and skipped.
2. ``warm_start_from_audio``: the two-tower item vector of each new track, by the rule the weekly
   ``track_embeddings`` applies to its cold tracks (``two_tower.warm_start_cold_tracks``), carried out
   for tracks that are not in the model's feature space:

   - id part: the similarity-weighted mean id embedding of the k nearest played anchor tracks in
     audio space (cosine; negative similarities weigh 0; neighbours from the track's own genre when
     the catalog names it and that genre has k anchors, else from all anchors);
   - audio part: the new audio vector, standardized as the model standardizes its catalog's;
   - artist / genre: the model's embeddings when the catalog names a known artist / genre, else the
     "unknown" row (zeros), as for a debut artist's cold release;
   - popularity inputs: none yet (0 listeners, 0 plays, age 0);

   then the item tower's MLP and L2 normalisation. Why the tower and not the plain mean of the
   anchors' item vectors: a new track then gets exactly the vector the weekly run would give it as a
   cold release (tested), so it competes with last week's cold tracks on the same footing, where
   the mean of warm items' vectors would carry their popularity and outrank every cold track.

Tracks the weekly model already serves (in its catalog with a learnt id or a readable clip) are left
out (``already_indexed``); only new tracks, and catalog tracks whose clip was unreadable last week,
get vectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dw_assets.embeddings.audio import AudioModel, load_clips, log_mel
from dw_assets.embeddings.audio_io import PROBLEM_COLUMNS
from dw_assets.embeddings.two_tower import TrainedTwoTower
from dw_assets.embeddings.two_tower_data import POPULARITY_INPUTS

SCORE_CHUNK = 1024  # new tracks scored against the anchors at once


@dataclass(frozen=True)
class UploadDayConfig:
    """The cap of one upload day's batch, embedded on the driver (``new_track_vectors``).

    max_uploads: clips embedded, the lowest new track ids first (``bounded``: also under
    ``DW_DRIVER_ROW_LIMIT``); a busier day's other clips wait for the week's ``audio_embeddings``,
    which embeds every landed clip on the executors. At the target ~100 k tracks land a day (700 k a
    week); 100 k clips are 1.6 GB of int16 and ~1 GB of spectrograms, as the audio CNN's training sample.
    """

    max_uploads: int = 100_000


@dataclass
class WarmStart:
    """Two-tower item vectors of tracks outside the model's feature space.

    track_ids: int64[m]; vectors: float32[m, dim] unit item-tower vectors (row i = track_ids[i]);
    neighbour_cosine: float32[m] mean audio cosine to the k anchors used (NaN: no anchor);
    same_genre: bool[m] neighbours taken from the track's own genre.
    """

    track_ids: np.ndarray
    vectors: np.ndarray
    neighbour_cosine: np.ndarray
    same_genre: np.ndarray

    def stats(self) -> dict:
        finite = self.neighbour_cosine[np.isfinite(self.neighbour_cosine)]
        return {"warm_started": int(len(self.track_ids)), "same_genre_neighbours": int(self.same_genre.sum()),
                "without_anchor": int(len(self.track_ids) - len(finite)),
                "mean_neighbour_cosine": float(finite.mean()) if len(finite) else float("nan")}


@dataclass
class NewTrackVectors:
    """What one batch of uploads adds to retrieval.

    track_ids: int64[m] sorted; item_vectors: float32[m, dim] two-tower item vectors (the ANN space);
    audio_vectors: float32[m, d_audio] audio CNN vectors (the item2vec space, unit norm);
    problems: one row per unusable clip (``audio_io.PROBLEM_COLUMNS``);
    already_indexed: int64[] uploaded tracks the weekly model already serves (not re-embedded);
    stats: counts and the warm start's mean neighbour cosine.
    """

    track_ids: np.ndarray
    item_vectors: np.ndarray
    audio_vectors: np.ndarray
    problems: pd.DataFrame
    already_indexed: np.ndarray
    stats: dict = field(default_factory=dict)


def embed_clips(
    clips: Mapping[int, str | Path], model: AudioModel, clip_seconds: float | None = None,
    read: Callable[[str | Path], bytes] | None = None,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(track_ids int64[n], unit audio vectors float32[n, d], problems) for the readable clips.

    Clips are read with the model's own settings (sample rate, silence threshold); ``clip_seconds``
    fixes the clip length (None: the model's, else the batch's median length — the CNN pools time
    away, so the length only sets how much of each clip is heard).
    """
    settings = model.config
    if clip_seconds is not None:
        settings = dataclasses.replace(settings, clip_seconds=clip_seconds)
    batch = load_clips(dict(clips), settings, read)
    d = model.network.embedding_head.out_features
    if len(batch.track_ids) == 0:
        return batch.track_ids, np.zeros((0, d), np.float32), batch.problems
    return batch.track_ids, model.embed(log_mel(batch, settings)), batch.problems


def already_indexed(trained: TrainedTwoTower, track_ids: np.ndarray) -> np.ndarray:
    """bool[n]: the weekly model already serves the track (in its catalog, with a learnt id or audio)."""
    features = trained.features
    rows = features.track_rows(np.asarray(track_ids, dtype=np.int64))
    inside = rows >= 0
    safe = np.maximum(rows, 0)
    learnt = trained.trained_tracks[safe] if trained.trained_tracks is not None else ~features.track_is_cold[safe]
    return inside & (~features.track_audio_missing[safe] | learnt)


def _anchor_rows(trained: TrainedTwoTower, exclude: np.ndarray) -> np.ndarray:
    """Played tracks with audio: the rows warm starts borrow id embeddings from (as the weekly rule)."""
    features = trained.features
    is_anchor = ~features.track_is_cold & ~features.track_audio_missing
    if trained.trained_tracks is not None:
        is_anchor &= trained.trained_tracks
    is_anchor[exclude[exclude >= 0]] = False
    return np.flatnonzero(is_anchor)


def _audio_inputs(trained: TrainedTwoTower, audio_vectors: np.ndarray) -> np.ndarray:
    """float32[m, d_audio + 1] item-tower audio inputs: standardized like the catalog's, missing flag 0.

    Checked against the model's own catalog inputs, so a change to ``TwoTowerModel.set_track_inputs``
    fails loudly instead of skewing every new track's vector.
    """
    features = trained.features
    audio = features.track_audio.astype(np.float64)
    present = ~features.track_audio_missing
    if not present.any():
        return np.c_[np.zeros_like(audio_vectors, dtype=np.float32), np.zeros(len(audio_vectors), np.float32)]
    mean, std = audio[present].mean(axis=0), audio[present].std(axis=0) + 1e-6
    probe = np.flatnonzero(present)[:16]
    expected = trained.model.track_audio[torch.as_tensor(probe, device=trained.model.track_audio.device), :-1]
    if not np.allclose(((audio[probe] - mean) / std).astype(np.float32), expected.cpu().numpy(), atol=1e-4):
        raise RuntimeError("the two-tower's audio standardization no longer matches the incremental warm start")
    standard = (np.asarray(audio_vectors, dtype=np.float64) - mean) / std
    return np.c_[standard, np.zeros(len(standard))].astype(np.float32)


def _vocabulary_rows(vocabulary, values, unknown_row: int = 0) -> np.ndarray:
    index = {v: i for i, v in enumerate(vocabulary)}
    return np.array([index.get(v, unknown_row) if v is not None else unknown_row for v in values], dtype=np.int64)


@torch.no_grad()
def warm_start_from_audio(
    trained: TrainedTwoTower,
    track_ids: np.ndarray,
    audio_vectors: np.ndarray,
    k: int,
    artist_ids: np.ndarray | None = None,
    genres: list | None = None,
) -> WarmStart:
    """Item-tower vectors for tracks known only by their audio vector (the module docstring's rule).

    track_ids: int64[m]; audio_vectors: float32[m, d_audio] from the CNN the model was trained with
    (``audio_embeddings`` of the same week); artist_ids: int64[m] (-1 unknown) and genres: m names
    (None unknown), from the catalog when it already lists the tracks. A track in the model's
    catalog uses the catalog's artist, genre and popularity inputs instead.
    """
    track_ids = np.asarray(track_ids, dtype=np.int64).reshape(-1)
    audio_vectors = np.asarray(audio_vectors, dtype=np.float32).reshape(len(track_ids), -1)
    features, model = trained.features, trained.model
    dev = model.track_id.weight.device
    m = len(track_ids)
    rows = features.track_rows(track_ids)
    inside = rows >= 0
    artist_rows = np.zeros(m, np.int64)
    genre_rows = np.zeros(m, np.int64)
    popularity = np.zeros((m, len(POPULARITY_INPUTS)), np.float32)  # no listeners, no plays, age 0
    if artist_ids is not None:  # artist_ids[0] is -1, the "unseen" row; the rest ascending
        vocabulary = features.artist_ids
        wanted = np.asarray(artist_ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(vocabulary, wanted), len(vocabulary) - 1)
        artist_rows = np.where(vocabulary[at] == wanted, at, 0)
    if genres is not None:
        genre_rows = _vocabulary_rows(features.genres, genres)
    artist_rows[inside] = features.track_artist[rows[inside]]
    genre_rows[inside] = features.track_genre[rows[inside]]
    popularity[inside] = features.track_popularity[rows[inside]]

    anchors = _anchor_rows(trained, rows)
    table = model.track_id.weight
    id_vectors = torch.zeros((m, table.shape[1]), device=dev)
    cosine = np.full(m, np.nan, np.float32)
    same_genre = np.zeros(m, bool)
    if len(anchors) and m:
        anchor_unit = F.normalize(torch.as_tensor(features.track_audio[anchors], device=dev), dim=1)
        anchor_ids = table[torch.as_tensor(anchors, device=dev)]
        unit = F.normalize(torch.as_tensor(audio_vectors, device=dev), dim=1)
        anchor_genre = features.track_genre[anchors]
        for genre in np.unique(genre_rows):
            pool = np.flatnonzero(anchor_genre == genre) if genre > 0 else np.zeros(0, np.int64)
            group = np.flatnonzero(genre_rows == genre)
            if len(pool) < k:
                pool = np.arange(len(anchors))
            else:
                same_genre[group] = True
            pool_t = torch.as_tensor(pool, device=dev)
            for lo in range(0, len(group), SCORE_CHUNK):
                chunk = group[lo : lo + SCORE_CHUNK]
                top, idx = torch.topk(unit[torch.as_tensor(chunk, device=dev)] @ anchor_unit[pool_t].T,
                                      min(k, len(pool)), dim=1)
                w = top.clamp(min=0)
                w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
                id_vectors[torch.as_tensor(chunk, device=dev)] = (
                    (w[..., None] * anchor_ids[pool_t[idx]]).sum(1) / w.sum(1, keepdim=True)
                )
                cosine[chunk] = top.mean(1).cpu().numpy()

    v, b = model.encode_items(  # the item tower's one function, as for the weekly run's cold tracks
        id_vectors,
        torch.as_tensor(_audio_inputs(trained, audio_vectors), device=dev),
        torch.as_tensor(artist_rows, device=dev),
        torch.as_tensor(genre_rows, device=dev),
        torch.as_tensor(popularity, device=dev),
    )
    vectors = model.serve_items(v, b).cpu().numpy().astype(np.float32)  # [v, b] with the popularity term
    return WarmStart(track_ids, vectors, cosine, same_genre)


def catalog_metadata(catalog: pd.DataFrame | None, track_ids: np.ndarray) -> tuple[np.ndarray | None, list | None]:
    """(artist_ids int64[m] with -1 unknown, genre names with None unknown) of ``track_ids`` from a
    catalog frame (track_id, artist_id, genre); (None, None) without one."""
    if catalog is None or catalog.empty:
        return None, None
    known = catalog.drop_duplicates("track_id", keep="last").set_index("track_id")
    artist = known["artist_id"].reindex(track_ids) if "artist_id" in known else pd.Series(index=track_ids)
    genre = known["genre"].reindex(track_ids) if "genre" in known else pd.Series(index=track_ids)
    artist_ids = artist.fillna(-1).to_numpy(dtype=np.int64)
    genres = [g if isinstance(g, str) and g else None for g in genre.tolist()]
    return artist_ids, genres


def new_track_vectors(
    clips: Mapping[int, str | Path],
    audio_model: AudioModel,
    trained: TrainedTwoTower,
    k: int,
    catalog: pd.DataFrame | None = None,
    clip_seconds: float | None = None,
    read: Callable[[str | Path], bytes] | None = None,
    max_uploads: int = UploadDayConfig.max_uploads,
) -> NewTrackVectors:
    """Embed a batch of uploaded clips and warm-start their two-tower vectors.

    clips: track_id → WAV location, read by ``read`` (``LandingFS.read_location``; None: local files). audio_model / trained: the weekly audio CNN and two-tower model
    of one week (the same week's, so the audio space matches the model's inputs). k: anchors per
    warm start (``TwoTowerConfig.cold_neighbours``). catalog: optional track_id, artist_id, genre rows
    for the uploads. Unusable clips land in ``problems``; they never raise. At most ``bounded(max_uploads)``
    clips of tracks the model does not serve are read, the lowest ids first; ``stats["deferred"]`` counts
    the others (``UploadDayConfig``).
    """
    from dw_assets.lake.driver_guard import bounded

    ids = np.array(sorted(int(t) for t in clips), dtype=np.int64)
    served = already_indexed(trained, ids)
    new = ids[~served]
    wanted = {int(t): clips[int(t)] for t in new[: bounded(max_uploads)]}
    track_ids, audio_vectors, problems = embed_clips(wanted, audio_model, clip_seconds, read)
    artist_ids, genres = catalog_metadata(catalog, track_ids)
    warm = warm_start_from_audio(trained, track_ids, audio_vectors, k, artist_ids, genres)
    problems = problems.reindex(columns=PROBLEM_COLUMNS)
    stats = {"uploads": int(len(ids)), "already_indexed": int(served.sum()), "embedded": int(len(track_ids)),
             "deferred": int(len(new) - len(wanted)),
             "unusable": int(len(problems)),
             "with_catalog_genre": int(sum(g is not None for g in genres)) if genres is not None else 0,
             **warm.stats()}
    return NewTrackVectors(track_ids, warm.vectors, audio_vectors, problems, ids[served], stats)
