"""Model versions change with config, code and upstream, and mismatches are refused by name."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dw_assets import calendar
from dw_assets.versioning import VersionMismatch, model_version, require_same_version


@dataclass(frozen=True)
class _Config:
    dim: int = 32


def test_version_is_stable_and_sensitive_to_its_inputs():
    base = model_version("2026-01-05", [_Config()], [calendar], ["up-1"])
    assert base == model_version("2026-01-05", [_Config()], [calendar], ["up-1"])
    assert base.startswith("2026-01-05-")
    assert base != model_version("2026-01-05", [_Config(dim=64)], [calendar], ["up-1"])
    assert base != model_version("2026-01-05", [_Config()], [], ["up-1"])
    assert base != model_version("2026-01-05", [_Config()], [calendar], ["up-2"])
    assert base != model_version("2026-01-12", [_Config()], [calendar], ["up-1"])


def test_mismatched_versions_are_refused_by_name():
    assert require_same_version({"track_embeddings": "v1", "user_embeddings": "v1"}) == "v1"
    with pytest.raises(VersionMismatch, match="user_embeddings=v2"):
        require_same_version({"track_embeddings": "v1", "user_embeddings": "v2"})


def test_served_vectors_are_versioned_by_model_and_serving_settings():
    """Vectors served from one two-tower under other serving settings (a popularity weight, a query
    blend) or from a model trained with another warm start get another version; the check names the
    inputs and the settings given. A model's warm start is its own: serving has no such setting."""
    from dw_assets.embeddings.two_tower_data import (
        SERVING_SETTINGS,
        TwoTowerConfig,
        require_served,
        serving_version,
        trained_cold_neighbours,
    )

    tower, k = "2026-01-05-0123456789ab", TwoTowerConfig.cold_neighbours
    served = serving_version(tower, TwoTowerConfig(), cold_neighbours=k)
    assert served.startswith("2026-01-05-") and served != tower
    # 1 and 1.0 are one setting
    assert served == serving_version(tower, TwoTowerConfig(popularity_weight=1), cold_neighbours=k)
    # the model's warm start decides, not a config's field
    assert served == serving_version(tower, TwoTowerConfig(cold_neighbours=3), cold_neighbours=k)
    others = {serving_version(tower, TwoTowerConfig(**{name: value}), cold_neighbours=k)
              for name, value in zip(SERVING_SETTINGS, (0.25, 0.2), strict=True)}
    others |= {serving_version(tower, TwoTowerConfig(), cold_neighbours=3),
               serving_version("2026-01-05-ba9876543210", TwoTowerConfig(), cold_neighbours=k)}
    assert len(others | {served}) == 5
    # vectors served before the warm start moved into the model (as a serving setting at its default) keep
    # their version: the digest of these settings, pinned
    assert serving_version(tower, TwoTowerConfig(), cold_neighbours=10) == model_version(
        "2026-01-05", [{"cold_neighbours": 10, "popularity_weight": 1.0, "query_centroid": 0.5}], (), [tower])
    assert trained_cold_neighbours({"model_version": tower}) == 10  # a model from before: it trained with 10
    assert trained_cold_neighbours({"cold_neighbours": 4}) == 4
    assert require_served(tower, TwoTowerConfig(), "last_week_playlists", {"faiss_index": served},
                          cold_neighbours=k) == served
    with pytest.raises(VersionMismatch, match=r"faiss_index=.*cold_neighbours=10\).*query_centroid=0\.2.*tower_emb"):
        require_served(tower, TwoTowerConfig(query_centroid=0.2), "last_week_playlists",
                       {"faiss_index": served, "track_embeddings": served}, cold_neighbours=k)
