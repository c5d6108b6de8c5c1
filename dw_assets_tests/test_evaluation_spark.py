"""The evaluation's Spark path (per-user metrics on the executors, aggregates in Spark) gives the numbers of
the pandas ``evaluate_segments`` on the same lists; the seeded-hash draw of evaluated users obeys its caps."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dw_assets.evaluation.batch import EvaluationSample, aggregate, draw_users, lists_frame, per_user_frame
from dw_assets.evaluation.metrics import evaluate_segments


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
