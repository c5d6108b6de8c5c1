"""``dw_assets.bench.representation``: how much of the hidden style the track spaces hold, and what serving
a user's true taste over them (or over noisy styles) earns, on the tiny world's materialized week."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dw_assets.bench.representation import aligned, measure, r_squared, ridge
from dw_assets.evaluation.north_star import NorthStarConfig


def test_the_ridge_recovers_a_linear_map_and_aligned_vectors_mark_what_is_missing():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 6))
    y = x @ rng.normal(size=(6, 3)) + np.array([0.5, -1.0, 2.0])
    fitted = ridge(x, y, alpha=1e-9)
    assert r_squared(fitted(x), y) == pytest.approx(1.0, abs=1e-9)
    assert r_squared(np.tile(y.mean(axis=0), (len(y), 1)), y) == pytest.approx(0.0, abs=1e-12)

    vectors, has = aligned(np.array([3, 5, 7, 9]), (np.array([5, 9, 11]), np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])))
    assert has.tolist() == [False, True, False, True]
    assert vectors.tolist() == [[0, 0], [1, 2], [0, 0], [3, 4]]


@pytest.mark.timeout(900)
def test_perfect_taste_over_noisier_styles_earns_less_and_the_spaces_hold_part_of_the_style(tiny_world_run):
    manifest = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())
    config = dataclasses.replace(NorthStarConfig(), seeds=(0, 1))
    report = measure(str(tiny_world_run), str(tiny_world_run), manifest["last_training_week"], users=120,
                     config=config, noise_levels=(0.0, 0.3, 1.0), say=lambda m: None)

    assert report["users"] == 120 and report["catalog_oracle_saves_per_user"] > 0
    # Each space holds part of the style, none all of it; side by side they hold at least as much as the best.
    r2 = report["r_squared"]
    assert set(r2) == {"item2vec", "audio", "two_tower", "all"}
    assert all(0.1 < v < 0.99 for v in r2.values()), r2
    assert r2["all"] >= max(r2["item2vec"], r2["audio"], r2["two_tower"]) - 0.05, r2
    # Noise-free styles are the oracle itself (up to float rounding); more noise, less R² and fewer saves.
    exact, some, much = report["noisy"]
    assert exact["r_squared"] > 0.999 and exact["oracle_fraction"] > 0.98, exact  # the ridge shrinks a little
    assert exact["r_squared"] > some["r_squared"] > much["r_squared"]
    assert exact["saves_per_user"] > some["saves_per_user"] > much["saves_per_user"], report["noisy"]
    assert 0 < report["decoded"]["oracle_fraction"] < 1, report["decoded"]
