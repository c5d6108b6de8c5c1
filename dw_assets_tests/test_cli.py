"""What the `dw` commands read back from the lake: the simulated A/B test's summary is data (the
``simulated_ab_test`` table), not Dagster event-log metadata."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dw_assets.cli import _ab_run_config, _ab_summary, _week_summary
from dw_assets.evaluation.ab import ABConfig, ab_table, stored_summary, summarize_ab
from dw_assets.evaluation.summaries import DETAIL_COLUMNS, ab_result_table, ab_summary, report_ab
from dw_assets.lake.storage import Lake

WEEK, LISTENED = "2026-02-02", "2026-02-09"


def _per_user(n: int, seed: int, treatment_save_p: float = 0.08) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arm = np.where(rng.random(n) < 0.5, "treatment", "control")
    played = rng.binomial(30, 0.3, n)
    played[: n // 20] = 0
    saves = rng.binomial(played, np.where(arm == "treatment", treatment_save_p, 0.05))
    skips = rng.binomial(played, 0.4)
    frame = pd.DataFrame({"user_id": np.arange(n, dtype=np.int64), "arm": arm, "slots": 30, "played": played,
                          "saves": saves, "played_30s": played - skips, "skips": skips,
                          "early_skips": rng.binomial(skips, 0.5)})
    frame.attrs.update(missing=3, week=LISTENED)
    return frame


def _as_dagster_kept_it(summary: dict) -> dict:
    """The summary as `dw ab` read it from the materialization's JSON metadata (Dagster sorts the keys)."""
    return json.loads(json.dumps(summary, sort_keys=True))


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path))


def _store(lake: Lake, table: pd.DataFrame) -> None:
    lake.write_frame(table, lake.uri("gold", "simulated_ab_test", WEEK))


@pytest.mark.parametrize("per_user", [_per_user(2_000, seed=3), _per_user(2_000, seed=4, treatment_save_p=0.05)],
                         ids=["ship", "inconclusive"])
def test_the_ab_summary_comes_back_from_the_lake_table_as_it_was_computed(lake, per_user):
    summary = summarize_ab(per_user, ABConfig(experiment="x", treatment_share=0.5))
    _store(lake, ab_result_table(summary, WEEK))
    back = _ab_summary(lake.root, WEEK)
    assert back == _as_dagster_kept_it(summary)
    assert json.dumps(back) == json.dumps(_as_dagster_kept_it(summary))  # `dw ab --json`, byte for byte
    assert ab_summary(lake.read_frame(lake.uri("gold", "simulated_ab_test", WEEK))) == summary  # order too
    assert _ab_summary(lake.root, "2026-01-26") is None  # no A/B that week


def test_undefined_numbers_come_back_as_none(lake):
    lonely = _per_user(50, seed=4)
    lonely["arm"] = "control"
    lonely.loc[lonely.index[-1], ["arm", "played"]] = ["treatment", 10]
    summary = summarize_ab(lonely, ABConfig())
    assert summary["arms"][1]["ci_low"] is None and summary["effects"][0]["p_value"] is None
    _store(lake, ab_result_table(summary, WEEK))
    assert _ab_summary(lake.root, WEEK) == _as_dagster_kept_it(summary)


def test_the_stored_table_passes_the_assets_schema_and_the_report_sees_what_it_saw():
    from dw_assets.evaluation.assets import AB_ARMS

    summary = summarize_ab(_per_user(1_000, seed=5), ABConfig())
    table = ab_result_table(summary, WEEK)
    AB_ARMS.validate(table)
    assert set(DETAIL_COLUMNS) <= set(table.columns)
    before, now = stored_summary(ab_table(summary, WEEK)), report_ab(table)
    pd.testing.assert_frame_equal(now.pop("arms"), before.pop("arms"))
    assert now == before


def test_dw_run_prints_the_arms_and_the_verdict_from_the_table(lake):
    summary = summarize_ab(_per_user(2_000, seed=3), ABConfig())
    _store(lake, ab_result_table(summary, WEEK))
    text = _week_summary(lake.root, WEEK)
    arms = ab_table(summary, WEEK).drop(columns="week").to_string(index=False, float_format=lambda v: f"{v:.4f}")
    assert text.splitlines() == ["", "simulated A/B (control: last week's models, treatment: this week's):",
                                 *arms.splitlines(), f"verdict: {summary['verdict']} - {summary['reason']}"]


def test_tables_of_earlier_layouts_give_what_they_hold(lake):
    summary = summarize_ab(_per_user(500, seed=6), ABConfig())
    _store(lake, ab_table(summary, WEEK))  # before the whole summary was stored: the verdict and reason
    back = _ab_summary(lake.root, WEEK)
    assert (back["verdict"], back["reason"]) == (summary["verdict"], summary["reason"])
    assert "effects" not in back and "verdict: " in _week_summary(lake.root, WEEK)
    _store(lake, ab_table(summary, WEEK)[["arm", "metric", "users", "mean", "ci_low", "ci_high", "week"]])
    assert _ab_summary(lake.root, WEEK) is None  # before the verdict was stored
    assert "verdict: " not in _week_summary(lake.root, WEEK)


def test_dw_ab_run_config_is_valid_for_the_evaluation_job(tmp_path):
    from dagster import validate_run_config

    from dw_assets.automation.planner import EVALUATION_JOB
    from dw_assets.automation.runner import op_config, registered_job

    (tmp_path / "simulator").mkdir()  # a simulated world: the evaluation job holds the A/B
    ops = op_config(_ab_run_config(ABConfig(experiment="other", treatment_share=0.2, seed=3)))
    assert ops["simulated_ab_test"]["config"]["treatment_share"] == 0.2
    assert validate_run_config(registered_job(EVALUATION_JOB, str(tmp_path), None), {"ops": ops})
