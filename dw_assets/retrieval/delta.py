"""Tracks uploaded since the weekly index was built: a small exact index searched beside the main one.

Why a delta index and not ``AnnIndex.add`` on the live index: the weekly ``faiss_index`` artifact stays
immutable (readers never see it change under them; re-running a week reproduces it), IVF lists trained
without the uploads would place them poorly, and the delta retires by itself — its vectors carry the
``model_version`` of the weekly two-tower model they were computed with, so they are only merged with
that week's index; next week's models embed the uploads themselves.

Scores are comparable because delta vectors are item-tower outputs of the same two-tower model as the
main index's (inner product = the model's retrieval score). A track in both (a re-upload whose earlier
clip was unreadable) is scored by the delta's vector, the newer one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dw_assets.retrieval.ann import GPU_MAX_K, MISSING_SCORE, AnnConfig, AnnIndex, build_index


class DeltaIndex:
    """Exact inner-product search over the tracks added since the weekly index.

    ids: int64[m] track ids (unique). vectors: float32[m, dim] two-tower item vectors.
    model_version: the weekly two-tower model these vectors belong to ("" = unknown).
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, model_version: str = "",
                 config: AnnConfig | None = None) -> None:  # fmt: skip
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"expected float32[{len(ids)}, dim] vectors, got shape {vectors.shape}")
        settings = config or AnnConfig()
        # Small by construction (a week of uploads at most), so always exact; GPU only when k fits.
        self.index = build_index(ids, vectors, dataclasses.replace(settings, kind="flat"))
        self.vectors = vectors
        self.model_version = model_version

    @property
    def ids(self) -> np.ndarray:
        return self.index.ids

    @property
    def dim(self) -> int:
        return self.index.dim

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32[q, k], track ids int64[q, k]) best first; id -1 / score -inf pads."""
        return self.index.search(queries, k)

    @classmethod
    def combine(cls, parts: Sequence[DeltaIndex], dim: int | None = None) -> DeltaIndex:
        """One delta from several (e.g. one per upload day, oldest first): a later part's vector wins.

        Parts must share one model_version. ``dim`` is needed only when ``parts`` is empty.
        """
        versions = {p.model_version for p in parts}
        if len(versions) > 1:
            raise ValueError(f"delta parts from different model versions cannot be combined: {sorted(versions)}")
        if not parts:
            if dim is None:
                raise ValueError("an empty delta needs its dim")
            return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
        ids = np.concatenate([p.ids for p in parts])
        vectors = np.concatenate([p.vectors for p in parts])
        # Last occurrence of each id: reverse, take first occurrences, map back.
        _, first_in_reversed = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - first_in_reversed)
        return cls(ids[keep], vectors[keep], versions.pop(), parts[0].index.config)


def search_with_delta(
    main: AnnIndex, delta: DeltaIndex | None, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over the main index and the delta together, by inner product.

    queries: float32[q, dim]. Returns (scores float32[q, k], track ids int64[q, k]) best first, each
    id at most once per row (ties by track id), -1 / -inf padded. A track in both indexes takes
    the delta's score. Without a delta (None or empty) this is ``main.search``.
    """
    if delta is None or len(delta) == 0:
        return main.search(queries, k)
    if delta.dim != main.dim:
        raise ValueError(f"delta vectors have dim {delta.dim}, the main index {main.dim}")
    replaced = np.isin(delta.ids, main.ids)
    # Over-fetch from the main index by the number of its tracks the delta replaces, so k survive.
    main_k = min(k + int(replaced.sum()), max(len(main), 1))
    if main.on_gpu:
        main_k = min(main_k, GPU_MAX_K)
    main_scores, main_ids = main.search(queries, main_k)
    if replaced.any():
        stale = np.isin(main_ids, delta.ids[replaced])
        main_scores = np.where(stale, MISSING_SCORE, main_scores).astype(np.float32)
        main_ids = np.where(stale, -1, main_ids)
    delta_scores, delta_ids = delta.search(queries, min(k, len(delta)))
    scores = np.concatenate([main_scores, delta_scores], axis=1)
    ids = np.concatenate([main_ids, delta_ids], axis=1)
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]  # score descending, then track id; padding last
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    if top_ids.shape[1] < k:  # fewer tracks in both indexes than k
        pad = k - top_ids.shape[1]
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=MISSING_SCORE)
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
    top_ids = np.where(np.isfinite(top_scores), top_ids, -1)
    return top_scores.astype(np.float32), top_ids.astype(np.int64)
