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
