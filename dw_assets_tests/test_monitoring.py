"""Drift, volume and batch-window checks, and the weekly HTML report."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dw_assets.evaluation.monitoring import (
    PSI_EPS,
    CheckOutcome,
    batch_window_sla,
    feature_drift,
    ks_statistic,
    population_stability_index,
    prediction_drift,
    summarize,
    volume_anomaly,
)
from dw_assets.evaluation.report import MISSING, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- PSI / KS


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_one_sd_shift():
    rng = np.random.default_rng(0)
    last_week = rng.normal(0.0, 1.0, 20_000)
    assert population_stability_index(last_week, last_week) == pytest.approx(0.0, abs=1e-12)
    assert population_stability_index(last_week, rng.normal(0.0, 1.0, 20_000)) < 0.01
    assert population_stability_index(last_week, rng.normal(1.0, 1.0, 20_000)) > 0.25


def test_psi_matches_a_hand_computed_value():
    # Two bins split at the median of [1, 2, 3, 4] (2.5): last week 1/2 | 1/2, this week 3/4 | 1/4.
    expected = np.array([1.0, 2.0, 3.0, 4.0])
    by_hand = (0.75 - 0.5) * math.log(0.75 / 0.5) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert population_stability_index(expected, np.array([1.0, 1.0, 1.0, 4.0]), bins=2) == pytest.approx(by_hand)
    # An emptied bin is floored at PSI_EPS instead of making the index infinite.
    emptied = (1.0 - 0.5) * math.log(1.0 / 0.5) + (PSI_EPS - 0.5) * math.log(PSI_EPS / 0.5)
    assert population_stability_index(expected, np.ones(4), bins=2) == pytest.approx(emptied)


def test_psi_counts_values_outside_last_weeks_range_in_the_open_end_bins():
    expected = np.arange(100, dtype=float)
    assert population_stability_index(expected, expected + 1000.0) > 1.0


def test_psi_ignores_sample_order():
    rng = np.random.default_rng(1)
    expected, actual = rng.normal(size=500), rng.normal(0.3, 1.2, size=700)
    psi = population_stability_index(expected, actual)
    assert population_stability_index(rng.permutation(expected), rng.permutation(actual)) == pytest.approx(psi)


def test_psi_rejects_empty_and_non_finite_samples():
    with pytest.raises(ValueError, match="expected is empty"):
        population_stability_index(np.array([]), np.ones(3))
    with pytest.raises(ValueError, match="actual is empty"):
        population_stability_index(np.ones(3), np.array([]))
    with pytest.raises(ValueError, match="non-finite"):
        population_stability_index(np.ones(3), np.array([1.0, np.nan]))


def test_ks_matches_scipy_and_detects_a_shift():
    rng = np.random.default_rng(2)
    expected, same, shifted = rng.normal(size=1000), rng.normal(size=1000), rng.normal(0.5, 1.0, size=1000)
    reference = stats.ks_2samp(expected, shifted)
    statistic, p_value = ks_statistic(expected, shifted)
    assert (statistic, p_value) == pytest.approx((reference.statistic, reference.pvalue))
    assert p_value < 1e-6
    assert ks_statistic(expected, same)[1] > 0.01


# ---------------------------------------------------------------- drift checks


def test_prediction_drift_severity_follows_the_thresholds():
    rng = np.random.default_rng(3)
    last_week, now = rng.normal(size=3000), rng.normal(0.4, 1.0, size=3000)
    psi = population_stability_index(last_week, now)

    stable = prediction_drift(now, last_week, warn=psi, error=psi + 0.1)  # psi <= warn passes
    assert stable.passed and stable.status == "PASS"
    warned = prediction_drift(now, last_week, warn=psi - 0.01, error=psi)  # warn < psi <= error
    assert (warned.passed, warned.severity, warned.threshold) == (False, "WARN", psi - 0.01)
    errored = prediction_drift(now, last_week, warn=psi - 0.02, error=psi - 0.01)
    assert (errored.passed, errored.severity, errored.threshold) == (False, "ERROR", psi - 0.01)
    assert errored.value == pytest.approx(psi)
    assert f"{psi:.3f}" in errored.description and "error above" in errored.description


def test_prediction_drift_passes_the_first_week_and_errors_on_an_empty_week():
    first = prediction_drift(np.array([0.1, 0.2, 0.3]), np.array([]))
    assert first.passed and "first week" in first.description
    empty = prediction_drift(np.array([]), np.array([0.1, 0.2]))
    assert not empty.passed and empty.severity == "ERROR"


def test_prediction_drift_leaves_out_missing_scores_and_says_so():
    rng = np.random.default_rng(11)
    last_week, now = rng.normal(size=1000), rng.normal(size=1000)
    clean = prediction_drift(now, last_week)
    with_gaps = prediction_drift(np.concatenate([now, [np.nan, np.inf]]), last_week)
    assert with_gaps.value == pytest.approx(clean.value)
    assert with_gaps.metadata["non_finite_now"] == 2 and "ignored 2 NaN/inf" in with_gaps.description


def _user_vectors(rng: np.random.Generator, n: int = 2000, dim: int = 16) -> np.ndarray:
    """Tower-like user vectors: random directions with log-normal lengths."""
    return rng.normal(size=(n, dim)) * rng.lognormal(0.0, 0.3, size=(n, 1))


def test_feature_drift_passes_a_healthy_week_and_reports_ks():
    rng = np.random.default_rng(4)
    outcome = feature_drift(_user_vectors(rng), _user_vectors(rng))
    assert outcome.passed
    assert {"ks_statistic", "ks_p_value", "psi"} <= set(outcome.metadata)
    assert "KS" in outcome.description


@pytest.mark.parametrize("degrade", ["unit_norm", "rescaled"])
def test_feature_drift_errors_when_the_user_tower_degrades(degrade):
    rng = np.random.default_rng(5)
    last_week, now = _user_vectors(rng), _user_vectors(rng)
    if degrade == "unit_norm":  # a collapsed tower: every vector the same length
        now = now / np.linalg.norm(now, axis=1, keepdims=True) * (1.0 + rng.normal(0.0, 1e-3, (len(now), 1)))
    else:  # a scale bug: every vector three times longer
        now = now * 3.0
    outcome = feature_drift(now, last_week)
    assert not outcome.passed and outcome.severity == "ERROR"
    assert outcome.metadata["ks_significant"]


def test_feature_drift_cannot_see_vectors_shuffled_between_users():
    # Norms are a distribution check: permuting whole rows keeps it intact. Documented limit.
    rng = np.random.default_rng(6)
    last_week = _user_vectors(rng)
    assert feature_drift(rng.permutation(last_week), last_week).passed


def test_feature_drift_takes_norms_or_vectors_alike():
    rng = np.random.default_rng(7)
    now, last_week = _user_vectors(rng), _user_vectors(rng)
    from_vectors = feature_drift(now, last_week)
    from_norms = feature_drift(np.linalg.norm(now, axis=1), np.linalg.norm(last_week, axis=1))
    assert from_vectors.value == pytest.approx(from_norms.value)


# ---------------------------------------------------------------- volume


def test_volume_anomaly_flags_halved_doubled_and_empty_weeks():
    trailing = [1000.0, 1100.0, 900.0]
    normal = volume_anomaly("events", 1080, trailing)
    assert normal.passed
    for value in (500, 2000):
        outcome = volume_anomaly("events", value, trailing)
        assert (outcome.passed, outcome.severity) == (False, "WARN"), value
    zero = volume_anomaly("events", 0, trailing)
    assert (zero.passed, zero.severity) == (False, "ERROR")
    assert "events" in zero.description and "0" in zero.description


def test_volume_anomaly_passes_with_a_note_when_history_is_short():
    outcome = volume_anomaly("new_tracks", 10, [1000.0])
    assert outcome.passed
    assert outcome.metadata["note"] == "too little history"
    assert "1 earlier week" in outcome.description


# ---------------------------------------------------------------- batch window


def test_batch_window_sla_projects_the_full_run_from_per_core_throughput():
    fast = batch_window_sla(users_per_s=250.0, cores_used=1)
    # 250 users/s/core x 4096 cores = 1,024,000 users/s; 500M users / that = 488.28 s.
    assert fast.value == pytest.approx(500_000_000 / (250 * 4096) / 3600)
    assert fast.value == pytest.approx(0.13563, rel=1e-4)
    assert fast.passed
    assert fast.metadata["cores_needed_for_window"] == 24  # ceil(500e6 / (250 * 86400)) = ceil(23.15)

    slow = batch_window_sla(users_per_s=100.0, cores_used=100)  # 1 user/s/core
    assert slow.metadata["users_per_s_per_core"] == pytest.approx(1.0)
    assert slow.value == pytest.approx(500_000_000 / 4096 / 3600)  # 33.91 h
    assert (slow.passed, slow.severity) == (False, "WARN")
    assert slow.metadata["cores_needed_for_window"] == 5788  # ceil(500e6 / 86400) = ceil(5787.04)


def test_batch_window_sla_rejects_a_run_without_throughput():
    with pytest.raises(ValueError, match="users_per_s"):
        batch_window_sla(users_per_s=0.0, cores_used=4)
    with pytest.raises(ValueError, match="cores_used"):
        batch_window_sla(users_per_s=10.0, cores_used=0)


def test_summarize_lists_every_check_with_its_status():
    outcomes = [volume_anomaly("events", 1000, [1000, 1000]), volume_anomaly("events", 0, [1000, 1000]),
                batch_window_sla(1.0, 1)]
    table = summarize(outcomes)
    assert list(table["status"]) == ["PASS", "ERROR", "WARN"]
    assert list(table["name"]) == [o.name for o in outcomes]
    assert summarize([]).empty and "status" in summarize([]).columns
    assert isinstance(outcomes[0], CheckOutcome)


# ---------------------------------------------------------------- report

SYSTEMS = ["pipeline", "retrieval", "popularity", "item_cf", "als", "last_week"]


def _report_inputs(rng: np.random.Generator) -> dict:
    systems = pd.DataFrame(
        {"precision@30": [0.02, 0.018, 0.005, 0.012, 0.03, 0.019],
         "ndcg@30": [0.05, 0.04, 0.01, 0.03, 0.06, 0.045],
         "coverage": [0.3, 0.35, 0.001, 0.2, 0.25, 0.3],
         "cold_share": [0.1, 0.12, 0.0, 0.0, 0.0, 0.09]},
        index=SYSTEMS,
    )
    segments = pd.DataFrame({"segment": ["all", "light", "heavy", "new"], "ndcg@30": [0.05, 0.03, 0.07, 0.01],
                             "users": [1000, 300, 200, 50]})
    trends = pd.DataFrame([{"week": w, "system": s, "ndcg@30": rng.uniform(0, 0.05), "recall@30": rng.uniform(0, 0.1)}
                           for w in ("2026-01-12", "2026-01-19") for s in SYSTEMS])
    genre_mix = pd.DataFrame([{"user_id": u, "genre": g, "history_share": rng.uniform(), "playlist_share": rng.uniform()}
                              for u in (3, 7) for g in ("rock", "jazz", "pop")])
    cold = pd.DataFrame({"system": ["pipeline", "als"], "cold_share": [0.1, 0.0], "cold_hit_rate": [0.02, np.nan]})
    ab = {"arms": [{"arm": "control", "users": 500, "metric": "positive_rate", "mean": 0.3, "ci_low": 0.28, "ci_high": 0.32},
                   {"arm": "treatment", "users": 500, "metric": "positive_rate", "mean": 0.34, "ci_low": 0.32,
                    "ci_high": 0.36}],
          "verdict": "treatment wins <clearly>", "p_value": 0.003}
    checks = summarize([volume_anomaly("events", 500, [1000, 1000]), batch_window_sla(250.0, 1)])
    return {"week": "2026-01-26", "systems": systems, "segments": segments, "trends": trends,
            "popularity": {"recommended": rng.beta(2, 3, 500), "history": rng.beta(5, 2, 500)},
            "genre_mix": genre_mix, "cold_exposure": cold, "ab": ab, "checks": checks}


def _row_of(page: str, label: str) -> str:
    return re.search(rf'<tr><td class="label">{label}</td>.*?</tr>', page).group(0)


def test_report_is_one_self_contained_page_with_every_system_and_embedded_plots():
    page, main_png = render_report(**_report_inputs(np.random.default_rng(8)))
    assert main_png.startswith(PNG_SIGNATURE)
    assert "2026-01-26" in page
    for system in SYSTEMS:
        assert system in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) >= 4  # summary, trends, genre mix, A/B
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert "<script" not in page and "http" not in page  # nothing to run, nothing to fetch
    # als has the best precision and ndcg: its cells are highlighted, popularity's are not.
    assert _row_of(page, "als").count('class="best"') == 2
    assert 'class="best"' not in _row_of(page, "popularity")
    assert "treatment wins &lt;clearly&gt;" in page
    assert MISSING not in page


def test_report_escapes_names_from_the_data():
    inputs = _report_inputs(np.random.default_rng(9))
    inputs["systems"] = inputs["systems"].rename(index={"item_cf": "<script>alert(1)</script>"})
    page, _ = render_report(**inputs)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_renders_with_every_optional_input_missing():
    page, main_png = render_report("2026-01-26", None, None, None, {}, None, None, None, None)
    assert main_png.startswith(PNG_SIGNATURE)
    assert "2026-01-26" in page
    assert page.count(MISSING) >= 6


def test_report_is_deterministic():
    first = render_report(**_report_inputs(np.random.default_rng(10)))
    second = render_report(**_report_inputs(np.random.default_rng(10)))
    assert first == second


def test_weekly_volumes_are_counted_on_spark_per_monday_week(spark):
    from dw_assets.evaluation.monitoring_batch import weekly_volumes

    ts = pd.to_datetime(["2026-01-05 10:00", "2026-01-11 23:59", "2026-01-12 00:00", "2026-01-13 00:00"], utc=True)
    interactions = spark.createDataFrame(pd.DataFrame({"user_id": [1, 1, 2, 3], "ts": ts}))
    catalog = pd.DataFrame({"track_id": [1, 2], "release_date": ["2026-01-06", "2026-01-19"]})
    frame = weekly_volumes(interactions, catalog, ["2026-01-05", "2026-01-12", "2026-01-19"])
    assert frame.values.tolist() == [["2026-01-05", 2, 1, 1], ["2026-01-12", 2, 2, 0], ["2026-01-19", 0, 0, 1]]


def _user_embeddings(spark, users: int, scale: float, seed: int):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(users, 8)) * rng.uniform(0.5, 1.5, (users, 1)) * scale
    frame = pd.DataFrame({"user_id": np.arange(users, dtype=np.int64), "user_vector": list(vectors.astype(np.float32))})
    return spark.createDataFrame(frame, "user_id long, user_vector array<float>")


def test_embedding_drift_compares_last_weeks_table_and_says_why_not_without_one(spark):
    from dw_assets.evaluation.monitoring_batch import DriftSample, embedding_drift
    from dw_assets.lake.resources import PartitionInputs
    from dw_assets.lake.storage import LakeError

    week, previous = "2026-01-12", "2026-01-05"
    now, same, shifted = (_user_embeddings(spark, 400, scale, seed) for scale, seed in ((1, 1), (1, 2), (3, 3)))
    sample = DriftSample(sample_users=300)
    assert embedding_drift({week: now, previous: same}, week, sample, 0.1, 0.25).passed
    drifted = embedding_drift({week: now, previous: shifted}, week, sample, 0.1, 0.25)
    assert drifted.status == "ERROR" and drifted.metadata["users_now"] == drifted.metadata["users_last_week"] == 300
    first = embedding_drift({week: now}, week, sample, 0.1, 0.25)
    assert first.passed and first.metadata["note"] == "first week"

    def read(uri: str):  # what the lake says of a partition that holds no table (a lake of an earlier layout)
        raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")

    tables = PartitionInputs({week: "now", previous: "an artifact"}, lambda uri: now if uri == "now" else read(uri))
    legacy = embedding_drift(tables, week, sample, 0.1, 0.25)
    assert (legacy.passed, legacy.status, legacy.metadata["users_last_week"]) == (False, "WARN", 0)
    assert f"week {previous}'s user_embeddings is not a table" in legacy.metadata["reason"]
    assert legacy.metadata["reason"] in legacy.description


def test_the_monitoring_config_draws_the_drift_sample_of_its_dataclass():
    from dw_assets.evaluation.assets import MonitoringConfig
    from dw_assets.evaluation.monitoring_batch import DriftSample

    assert MonitoringConfig().sample() == DriftSample()
    assert MonitoringConfig(sample_users=9, seed=3).sample() == DriftSample(sample_users=9, seed=3)
