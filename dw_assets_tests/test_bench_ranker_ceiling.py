"""``dw_assets.bench.ranker_ceiling`` on the tiny world's materialized week: the ceiling ranker learns the
hidden affinity of every candidate of week W-1 and both rankers' orders are played to the listeners."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from dw_assets.bench.ranker_ceiling import affinity_grades, measure, within_user_correlation
from dw_assets.calendar import shift_week
from dw_assets.evaluation.north_star import NorthStarConfig
from dw_assets.lake.storage import Lake


def test_affinity_grades_round_to_twentieths_and_keep_their_values():
    grades, values = affinity_grades(np.array([-1.0, -0.26, 0.0, 0.61, 1.0, 1.2]))
    assert grades.tolist() == [0, 15, 20, 32, 40, 40]
    assert len(values) == 41 and values[0] == -1.0 and values[20] == 0.0 and values[-1] == 1.0
    assert np.allclose(np.asarray(values)[grades[:5]], [-1.0, -0.25, 0.0, 0.6, 1.0])


def test_the_within_user_correlation_is_scipys_spearman_averaged_over_users_with_enough_rows():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"user_id": np.repeat([1, 2, 3, 4, 5], [8, 6, 4, 7, 9]),
                          "score": rng.integers(0, 4, 34).astype(float), "affinity": rng.normal(size=34)})
    frame.loc[frame["user_id"] == 4, "score"] = 1.0  # a constant score says nothing: left out
    frame.loc[frame.index[-1], "score"] = np.nan  # a missing score drops the row, not the user
    value, users = within_user_correlation(frame.sample(frac=1.0, random_state=0), "score", min_rows=5)
    expected = [spearmanr(g["score"], g["affinity"], nan_policy="omit")[0] for u, g in frame.groupby("user_id")
                if u in (1, 2, 5)]  # user 3 has 4 rows, user 4 a constant score
    assert users == 3 and value == pytest.approx(np.mean(expected), abs=1e-12)
    assert within_user_correlation(frame[frame["user_id"] == 3], "score", min_rows=5) == (None, 0)


@pytest.mark.timeout(900)
def test_the_ceiling_ranker_learns_every_candidates_hidden_affinity(tiny_world_run, spark):
    manifest = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())
    week = manifest["last_training_week"]
    config = dataclasses.replace(NorthStarConfig(), seeds=(0, 1))
    report = measure(spark, str(tiny_world_run), str(tiny_world_run), week, users=150, train_users=10_000,
                     config=config, say=lambda m: None)

    # Every candidate of week W-1 trains it (the cap holds the whole tiny world), heard or not.
    lake = Lake(str(tiny_world_run))
    candidates = lake.read_frame(lake.uri("gold", "candidates", shift_week(week, -1)), columns=["user_id"])
    training = report["ceiling_training"]
    assert training["rows"] == len(candidates) and training["users"] == candidates["user_id"].nunique()
    # It learned the label it was given: its fit follows the hidden affinity.
    assert training["fit_correlation"] > 0.5, training
    assert report["users"] == 150 and report["seeds"] == [0, 1]
    for key in ("shipped_efficiency", "shipped_efficiency_prior_0", "ceiling_efficiency"):
        assert 0 < report[key] < 1.5, (key, report[key])
    assert report["shipped_vs_ceiling"] == pytest.approx(report["shipped_saves_per_user"] / report["ceiling_saves_per_user"])
    assert report["shipped_efficiency"] == pytest.approx(
        report["shipped_saves_per_user"] / report["candidate_oracle_saves_per_user"])
    # Candidate by candidate: the ceiling, trained on the affinity itself, orders each user's warm candidates
    # by it better than chance; the tiny world's users each have cold candidates too.
    correlation = report["within_user_correlation"]
    assert set(correlation) == {"warm", "cold"} and 0 < report["cold_candidate_share"] < 1
    assert 0.9 * report["users"] <= correlation["warm"]["users"] <= report["users"], correlation
    assert correlation["cold"]["users"] > 0, correlation
    assert correlation["warm"]["ceiling"] > 0.3, correlation
    for row in correlation.values():
        assert all(-1 <= row[name] <= 1 for name in ("shipped", "ceiling")), correlation
