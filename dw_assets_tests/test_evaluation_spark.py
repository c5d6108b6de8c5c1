"""The evaluation's Spark path (per-user metrics on the executors, aggregates in Spark) gives the numbers of
the pandas ``evaluate_segments`` on the same lists; the seeded-hash draw of evaluated users obeys its caps;
the north star of the tiny world's evaluation (`dw evaluate --json`), with and without the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dw_assets.evaluation.batch import EvaluationSample, aggregate, draw_users, lists_frame, per_user_frame
from dw_assets.evaluation.metrics import evaluate_segments
from dw_assets.evaluation.north_star import SUMMARY_KEYS as NORTH_STAR_KEYS  # the issue's --json keys


def _world(rng: np.random.Generator, k: int):
    n_tracks, users = 120, np.arange(1, 61, dtype=np.int64)
    tracks = pd.DataFrame({
        "track_id": np.arange(n_tracks, dtype=np.int64) * 3,
        "artist_id": rng.integers(0, 25, n_tracks).astype(np.int64),
        "genre": rng.choice(["rock", "jazz", "pop", "folk"], n_tracks),
        "popularity_share": rng.dirichlet(np.ones(n_tracks)) * (rng.random(n_tracks) > 0.1),
        "popularity_percentile": rng.random(n_tracks),
        "is_cold": rng.random(n_tracks) < 0.2,
    })
    vectors = (tracks["track_id"].to_numpy()[:100], rng.normal(size=(100, 8)).astype(np.float32))
    def lists(share: float) -> pd.DataFrame:
        rows = []
        for u in users[rng.random(len(users)) < share]:
            picked = rng.choice(np.arange(n_tracks + 10) * 3, size=int(rng.integers(1, k + 3)), replace=False)
            rows += [(u, p, t) for p, t in enumerate(picked, start=1)]
        return pd.DataFrame(rows, columns=["user_id", "position", "track_id"]).astype(np.int64)
    truth = lists(0.6)[["user_id", "track_id"]].drop_duplicates()
    levels = rng.choice(["none", "light", "medium", "heavy"], len(users) - 5)
    profiles = pd.DataFrame({
        "user_id": users[:-5],
        "genre_share": [[{"genre": g, "share": float(s)} for g, s in zip(["rock", "jazz"], rng.dirichlet([1, 1]),
                                                                          strict=True)] for _ in levels],
        "mean_popularity_percentile": np.where(levels == "none", 0.0, rng.random(len(levels))),
        "history_level": levels,
        "is_new_user": rng.random(len(levels)) < 0.2,
    })
    return {"a": lists(0.9), "b": lists(0.5)}, truth, tracks, vectors, profiles


def test_spark_metrics_equal_the_pandas_evaluation(spark):
    k = 10
    systems, truth, tracks, vectors, profiles = _world(np.random.default_rng(3), k)
    frame = lists_frame(spark, systems)
    profile_frame = spark.createDataFrame(profiles, "user_id long, genre_share array<struct<genre:string,share:double>>, "
                                          "mean_popularity_percentile double, history_level string, is_new_user boolean")
    per_user = per_user_frame(frame, spark.createDataFrame(truth), profile_frame, tracks, vectors, ("a", "b"), k, 3)
    table = aggregate(per_user, frame, tracks["track_id"].nunique(), ("a", "b"), k, uses_vectors=True)
    for system, recs in systems.items():
        expected = evaluate_segments(recs, truth, tracks, profiles, k=k, vectors=vectors)
        got = table[table["system"] == system].set_index("segment")[expected.columns]
        pd.testing.assert_frame_equal(got, expected, check_names=False, check_exact=True)  # the same numbers, bit for bit


def test_the_draw_keeps_every_user_within_the_caps_and_whole_users_in_hash_order_beyond(spark):
    rows = pd.DataFrame({"user_id": np.repeat(np.arange(50, dtype=np.int64), 4)})
    frame = spark.createDataFrame(rows)
    everyone, offered, drawn = draw_users(frame, frame, EvaluationSample())
    assert offered == drawn == 50 and everyone.count() == 50
    few, _, count = draw_users(frame, frame, EvaluationSample(users=20, rows=50, seed=1))
    drawn = sorted(r.user_id for r in few.collect())
    assert len(drawn) == count == 12  # 12 whole users: 48 rows
    other, _, _ = draw_users(frame, frame, EvaluationSample(users=20, rows=50, seed=2))
    assert sorted(r.user_id for r in other.collect()) != drawn



def _evaluate_json(root, week: str) -> dict:
    import json

    from click.testing import CliRunner

    from dw_assets.cli import main

    result = CliRunner().invoke(main, ["evaluate", "--lake", str(root), "--week", week, "--json"])
    assert result.exit_code == 0, result.output[-2000:]
    return json.loads(result.stdout)


def test_offline_evaluation_measures_the_north_star_of_every_system(tiny_world_run):
    import json

    from dw_assets.evaluation.assets import NORTH_STAR
    from dw_assets.evaluation.north_star import CANDIDATE_ORACLE, CATALOG_ORACLE, RANKER_ORDER
    from dw_assets.evaluation.systems import SYSTEMS
    from dw_assets.lake.storage import Lake

    week = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())["last_training_week"]
    lake = Lake(str(tiny_world_run))
    NORTH_STAR.validate(lake.read_frame(lake.uri("gold", "north_star_evaluation", week)))
    summary = _evaluate_json(tiny_world_run, week)
    assert all(isinstance(summary[key], float) for key in NORTH_STAR_KEYS), {k: summary[k] for k in NORTH_STAR_KEYS}
    product = summary["retrieval_efficiency"] * summary["ranking_efficiency"] * summary["rerank_efficiency"]
    assert product == pytest.approx(summary["saves_per_user"] / summary["oracle_saves_per_user"], rel=1e-9)
    found = summary["north_star"]
    assert found["measured"] and found["users"] > 0 and len(found["seeds"]) >= 3 and len(found["robustness"]) >= 2
    systems = found["systems"]
    assert set(systems) == {*SYSTEMS, RANKER_ORDER, CANDIDATE_ORACLE, CATALOG_ORACLE}
    oracle_high = systems[CATALOG_ORACLE]["saves_per_user_ci"][1]
    for name, numbers in systems.items():
        assert numbers["saves_per_user"] <= oracle_high, name  # nothing beats the oracle beyond its interval
        for key in ("positives_per_user", "early_skip_share", "cold_slot_share", "cold_saves_per_user",
                    "max_min_tpr_ratio", "cold_tpr_over_median"):
            assert key in numbers, (name, key)
    assert systems["pipeline"]["users_with_list"] == found["users"]
    for listener, numbers in found["robustness"].items():
        product = numbers["retrieval_efficiency"] * numbers["ranking_efficiency"] * numbers["rerank_efficiency"]
        assert product == pytest.approx(numbers["oracle_efficiency"], rel=1e-9), listener


def test_without_simulator_truth_dw_evaluate_says_so(tiny_world_run, tmp_path):
    import json
    import shutil

    week = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())["last_training_week"]
    root = tmp_path / "world"
    shutil.copytree(tiny_world_run, root, ignore=shutil.ignore_patterns("simulator", "north_star_evaluation"))
    summary = _evaluate_json(root, week)
    assert all(summary[key] is None for key in NORTH_STAR_KEYS)
    assert not summary["north_star"]["measured"] and "no simulator truth" in summary["north_star"]["reason"]
    assert summary["systems"]["pipeline"]["ndcg@30"] is not None  # the exposure monitor is still there


def test_the_north_star_played_on_the_executors_equals_the_one_process_report(tiny_world_run, spark):
    """The evaluation's north star (the listeners in hash buckets on the executors, sums over users in Spark)
    gives exactly the report of ``north_star.north_star`` in one process, for the same users and lists,
    whatever the buckets; the ranker order ``ranked_playlists`` wrote is the one the bench tools compute from
    the week's models."""
    import dataclasses
    import json

    from dw_assets.bench.north_star import load_week, week_ranker_order, week_sample, window_history
    from dw_assets.calendar import shift_week
    from dw_assets.evaluation.north_star import NorthStarConfig, catalog_frame, north_star
    from dw_assets.evaluation.north_star_batch import measure
    from dw_assets.lake.storage import Lake
    from dw_assets.partitions import history_window_weeks
    from dw_assets.ranking.rerank import RerankConfig
    from dw_assets.simulate import load_truth

    root = str(tiny_world_run)
    week = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())["last_training_week"]
    lake, models, truth = Lake(root), load_week(root, week), load_truth(root)
    sample, candidates = week_sample(lake, week, 60)
    config = dataclasses.replace(NorthStarConfig(), users_per_bucket=7)  # 9 buckets of the 60 users
    prior, listened = RerankConfig().two_tower_prior, shift_week(week, 1)

    def table(layer: str, name: str, key: str = week):
        return spark.read.parquet(lake.uri(layer, name, key))

    history = window_history(lake, week, sample)
    pipeline = lake.read_frame(lake.uri("gold", "ranked_playlists", week), columns=["user_id", "position", "track_id"])
    local_order = week_ranker_order(models, sample, candidates, config, prior)
    expected = north_star(truth, {"pipeline": pipeline, "ranker_order": local_order}, sample,
                          history[["user_id", "track_id"]], candidates[["user_id", "track_id"]],
                          catalog_frame(models.track_stats), listened, config)

    users = spark.createDataFrame(pd.DataFrame({"user_id": sample}), "user_id long")
    spark_candidates = table("gold", "candidates")
    order = table("gold", "ranker_order")
    got_order = (order.select("user_id", "position", "track_id").toPandas().astype("int64")
                 .query("user_id in @sample").sort_values(["user_id", "position"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(got_order, local_order.astype("int64").reset_index(drop=True))
    heard = table("silver", "interactions", history_window_weeks(week)[0])
    for key in history_window_weeks(week)[1:]:
        if lake.exists(lake.uri("silver", "interactions", key)):
            heard = heard.unionByName(table("silver", "interactions", key))
    got = measure(truth, listened, users, len(sample), {"pipeline": table("gold", "ranked_playlists"), "ranker_order": order},
                  heard, spark_candidates, models.track_stats, config)
    assert got["users"] == expected["users"] == len(sample)
    assert got == expected
