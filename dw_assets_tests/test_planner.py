"""The planner on its own: which runs build a week, in which order (no Spark, no Dagster run)."""

from __future__ import annotations

import pytest

from dw_assets.automation.planner import (
    DISCOVER_JOB,
    EVALUATION,
    EVALUATION_JOB,
    INGEST,
    RANKER_TRAINING,
    WEEK,
    PlanError,
    evaluations_due,
    plan_evaluation,
    plan_weeks,
    stopped_by,
    weeks_from_to,
)

W = weeks_from_to("2026-01-05", "2026-01-26")  # four weeks; W[0] is the first landed week


def _parts(plan) -> list[tuple[str, str]]:
    return [(s.week, s.part) for s in plan.steps]


def test_the_first_landed_week_is_one_whole_week_with_a_stand_in_ranker():
    plan = plan_weeks([W[0]], landed=W, materialized={})
    [step] = plan.steps
    assert (step.job, step.week, step.part, step.stand_in) == (DISCOVER_JOB, W[0], WEEK, True)
    assert "stand-in ranker" in step.why
    # no evaluation: its control arm would be week W-1's models, which do not exist
    assert all(s.part != EVALUATION for s in plan.steps)


def test_a_week_with_missing_history_builds_the_history_and_last_weeks_candidates_first():
    plan = plan_weeks([W[2]], landed=W, materialized={}, evaluate=False)
    assert _parts(plan) == [(W[0], INGEST), (W[1], INGEST), (W[1], RANKER_TRAINING), (W[2], WEEK)]
    assert not plan.steps[-1].stand_in
    # with the history in the instance, only the week runs
    have = {"interactions": W[:2], "candidates": [W[1]]}
    assert _parts(plan_weeks([W[2]], landed=W, materialized=have, evaluate=False)) == [(W[2], WEEK)]
    # rebuild_history ignores what the instance has
    assert len(plan_weeks([W[2]], landed=W, materialized=have, evaluate=False, rebuild_history=True).steps) == 4


def test_the_evaluation_runs_only_when_the_holdout_week_has_landed():
    have = {"interactions": W[:2], "candidates": [W[1]]}
    present = plan_weeks([W[2]], landed=W, materialized=have)
    assert _parts(present) == [(W[2], WEEK), (W[3], INGEST), (W[2], EVALUATION)]
    assert present.steps[-1].job == EVALUATION_JOB
    absent = plan_weeks([W[2]], landed=W[:3], materialized=have)
    assert _parts(absent) == [(W[2], WEEK)]
    # a holdout already ingested is not ingested again
    again = plan_weeks([W[2]], landed=W, materialized={**have, "interactions": W})
    assert _parts(again) == [(W[2], WEEK), (W[2], EVALUATION)]


def test_evaluating_a_built_week_follows_the_same_rules():
    built = {"interactions": W[:3], "candidates": W[1:3], "ranked_playlists": W[:3]}
    # `dw evaluate` of W[2]: its holdout W[3] is ingested first, then the evaluation
    assert _parts(plan_evaluation(W[2], W, built)) == [(W[3], INGEST), (W[2], EVALUATION)]
    assert _parts(plan_evaluation(W[1], W, built)) == [(W[1], EVALUATION)]  # W[2] is W[1]'s holdout, in
    # evaluated already: nothing, unless asked to refresh
    done = {**built, "offline_evaluation": [W[1]]}
    assert plan_evaluation(W[1], W, done).steps == ()
    assert _parts(plan_evaluation(W[1], W, done, refresh=True)) == [(W[1], EVALUATION)]
    for week, landed, why in ((W[2], W[:3], f"holdout week {W[3]} has not landed"),
                              (W[0], W, "first landed week: its evaluation has no control arm"),
                              (W[3], W, f"week {W[3]} has no playlists")):
        with pytest.raises(PlanError, match=why):
            plan_evaluation(week, landed, built)


def test_a_backfill_builds_weeks_in_order_and_evaluates_each_after_its_holdout_week():
    plan = plan_weeks(W[:3], landed=W, materialized={})
    # W[1]'s holdout is W[2], built by W[2]'s own step; W[2]'s is W[3], ingested for it
    assert _parts(plan) == [(W[0], WEEK), (W[1], WEEK), (W[2], WEEK), (W[1], EVALUATION), (W[3], INGEST),
                            (W[2], EVALUATION)]
    assert [s.stand_in for s in plan.steps if s.part == WEEK] == [True, False, False]
    assert plan.weeks() == W[:3]


def test_a_failed_week_stops_the_weeks_after_it():
    plan = plan_weeks(W[:4], landed=W, materialized={}, evaluate=False, failed=[W[1]])
    assert plan.weeks() == W[:2] and plan.stopped == (W[2], W[3])  # the failed week is retried, not skipped
    assert W[1] in plan.reason
    assert stopped_by(W[2], {W[0]: "SUCCESS", W[1]: "FAILURE"}) is not None
    assert stopped_by(W[2], {W[0]: "SUCCESS", W[1]: "CANCELED"}) is not None
    assert stopped_by(W[1], {W[0]: "SUCCESS", W[2]: "FAILURE"}) is None  # only earlier weeks count
    assert stopped_by(W[1], {}) is None


def test_weeks_that_have_not_landed_or_bad_keys_are_refused():
    with pytest.raises(PlanError, match=W[3]):
        plan_weeks([W[3]], landed=W[:3], materialized={})
    with pytest.raises(PlanError, match="not a Monday"):
        weeks_from_to("2026-01-06", W[2])
    with pytest.raises(PlanError, match="before"):
        weeks_from_to(W[2], W[0])


def test_a_first_landed_week_after_the_first_partition_still_gets_the_stand_in():
    landed = W[2:]  # history starts later than the partitions do
    assert [s.stand_in for s in plan_weeks([W[2]], landed=landed, materialized={}).steps] == [True]


def test_evaluations_due_are_recent_weeks_with_playlists_and_holdout_and_no_evaluation():
    have = {"ranked_playlists": W[1:3], "interactions": W, "offline_evaluation": [W[1]]}
    assert evaluations_due(W, have) == [W[2]]
    assert evaluations_due(W[:3], have) == []  # W[2]'s holdout week has not closed
