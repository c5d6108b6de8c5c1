"""``evaluation.ranker_order`` (the north star's ranker-only order) on the tiny world's materialized week."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd

from dw_assets.bench.north_star import load_week, week_ranker_order, week_sample
from dw_assets.evaluation.north_star import NorthStarConfig
from dw_assets.lake.storage import Lake


def test_the_ranker_order_does_not_depend_on_how_many_users_are_ranked_at_once(tiny_world_run):
    week = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())["last_training_week"]
    models = load_week(str(tiny_world_run), week)
    sample, candidates = week_sample(Lake(str(tiny_world_run)), week, 80)
    config = dataclasses.replace(NorthStarConfig())
    at_once = week_ranker_order(models, sample, candidates, config, users_per_batch=10**9)
    batched = week_ranker_order(models, sample, candidates, config, users_per_batch=7)
    assert at_once["user_id"].nunique() > 70 and at_once.groupby("user_id").size().eq(30).all()
    pd.testing.assert_frame_equal(batched, at_once, check_exact=True)
