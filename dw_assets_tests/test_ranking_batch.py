"""The ranking's Spark steps give what the pandas references give, and its training sample is bounded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from dw_assets.lake.driver_guard import ROW_LIMIT_ENV
from dw_assets.ranking.batch import (
    LabelledWeek,
    exploration_posteriors,
    ranker_training_sample,
    ranker_training_samples,
    spark_fallback_pool,
    spark_position_propensity,
)
from dw_assets.ranking.features import position_propensity, training_examples
from dw_assets.ranking.playlists import fallback_pool
from dw_assets.ranking.ranker import RankerConfig
from dw_assets.ranking.rerank import RerankConfig, update_posteriors

WEEK = "2026-02-02"


def _plays(n_users: int = 80, n_tracks: int = 60, rows: int = 3_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-05", tz="UTC")
    position = rng.integers(1, 35, rows).astype(float)
    context = np.where(rng.random(rows) < 0.5, "discover_weekly", "search")
    position[context != "discover_weekly"] = np.nan
    return pd.DataFrame({
        "user_id": rng.integers(1, n_users + 1, rows).astype(np.int64),
        "track_id": rng.integers(100, 100 + n_tracks, rows).astype(np.int64),
        "ts": start + pd.to_timedelta(rng.integers(0, 5 * 7 * 86400, rows), unit="s"),
        "is_positive": rng.random(rows) < 0.4,
        "saved": rng.random(rows) < 0.1,
        "is_early_skip": rng.random(rows) < 0.2,
        "is_skip": rng.random(rows) < 0.5,
        "context": context,
        "position": position,
    })


def test_fallback_pool_counted_on_spark_is_the_pandas_pool(spark):
    plays = _plays()
    directory = pd.DataFrame({"user_id": np.arange(1, 90, dtype=np.int64),
                              "country": np.array(["SE", "US", "MX", None], dtype=object)[np.arange(89) % 4]})
    tracks = pd.DataFrame({"track_id": np.arange(100, 160, dtype=np.int64), "artist_id": np.arange(60, dtype=np.int64),
                           "genre": ["g"] * 60, "popularity_percentile": np.linspace(0, 1, 60), "is_cold": False})
    expected = fallback_pool(plays, directory, tracks, per_country=7)
    got = spark_fallback_pool(spark.createDataFrame(plays), spark.createDataFrame(directory), tracks, per_country=7)
    pd.testing.assert_frame_equal(got, expected)


def test_posteriors_on_spark_are_the_pandas_posteriors(spark):
    rng = np.random.default_rng(3)
    plays = _plays(seed=1)
    weeks = ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"]
    rows = 400
    earlier = pd.DataFrame({
        "week": np.array(weeks)[rng.integers(0, 4, rows)],
        "user_id": rng.integers(1, 81, rows).astype(np.int64),
        "track_id": rng.integers(100, 160, rows).astype(np.int64),
        "is_exploration": rng.random(rows) < 0.5,
    })
    earlier["genre"] = "g" + (earlier["track_id"] % 5).astype(str)
    config = RerankConfig(posterior_decay=0.8)
    slots = earlier.loc[earlier["is_exploration"], ["week", "user_id", "track_id", "genre"]]
    outcomes = plays.assign(week=(plays["ts"].dt.tz_localize(None).dt.to_period("W-SUN").dt.start_time
                                  .dt.strftime("%Y-%m-%d")))
    expected = update_posteriors(slots, outcomes, config, as_of_week=WEEK)
    got = exploration_posteriors(spark.createDataFrame(earlier), spark.createDataFrame(plays), config, WEEK).toPandas()
    key = ["user_id", "genre"]
    expected = expected.sort_values(key).reset_index(drop=True)
    got = got.sort_values(key).reset_index(drop=True)
    assert len(expected) > 20
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert exploration_posteriors(None, spark.createDataFrame(plays), config, WEEK) is None


def test_position_propensity_on_spark_is_the_pandas_one(spark):
    plays = _plays(seed=2)
    expected = position_propensity(plays, min_propensity=0.05)
    np.testing.assert_array_equal(spark_position_propensity(spark.createDataFrame(plays)), expected)


def _candidates(n_users: int = 80, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for user in range(1, n_users + 1):
        tracks = rng.choice(np.arange(100, 160), 20, replace=False)
        parts.append(pd.DataFrame({"user_id": np.int64(user), "track_id": tracks.astype(np.int64),
                                   "two_tower_score": rng.random(20).astype(np.float32)}))
    return pd.concat(parts, ignore_index=True).assign(model_version="v1")


def _profiles(n_users: int = 80) -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int64), "positives": np.arange(n_users)})


@pytest.mark.parametrize("rows", ["exposed", "all"])
def test_the_whole_week_inside_the_caps_gives_the_examples_of_the_whole_week(spark, tmp_path, rows):
    candidates, plays = _candidates(), _plays(seed=5)
    # Stored in an order that is not the user order: the sample keeps the stored order.
    stored = candidates.sample(frac=1.0, random_state=0).reset_index(drop=True)
    path = str(tmp_path / "candidates")
    spark.createDataFrame(stored).coalesce(1).write.parquet(path)
    read_back = pd.read_parquet(path)
    config = RankerConfig(training_rows=rows)
    sample = ranker_training_sample(spark.read.parquet(path), spark.createDataFrame(plays),
                                    spark.createDataFrame(_profiles()), config)
    assert sample.users == sample.sampled_users == 80
    # The default labels (outcome grades) read the plays' skip columns: the sample carries them.
    expected = training_examples(read_back.drop(columns="model_version"), plays, rows=rows, scheme=config.label_scheme)
    got = training_examples(sample.candidates, sample.plays, rows=rows, propensity=sample.propensity,
                            scheme=config.label_scheme)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(np.asarray(have.reset_index(drop=True).values.tolist(), dtype=object),
                                      np.asarray(want.reset_index(drop=True).values.tolist(), dtype=object))
    assert sorted(sample.profiles["user_id"]) == sorted(sample.candidates["user_id"].unique())


def test_sampled_users_are_drawn_by_seeded_hash_and_capped(spark, monkeypatch):
    candidates, plays = spark.createDataFrame(_candidates()), spark.createDataFrame(_plays(seed=5))
    profiles = spark.createDataFrame(_profiles())
    config = RankerConfig(training_rows="all", sample_users=25)
    first = ranker_training_sample(candidates, plays, profiles, config)
    again = ranker_training_sample(candidates.repartition(7), plays, profiles, config)
    assert first.sampled_users == 25 and first.users == 80
    pd.testing.assert_frame_equal(first.candidates, again.candidates)
    other = ranker_training_sample(candidates, plays, profiles,
                                   RankerConfig(training_rows="all", sample_users=25, seed=8))
    assert set(other.candidates["user_id"]) != set(first.candidates["user_id"])
    # Rows capped: whole users only, never more rows than the cap.
    capped = ranker_training_sample(candidates, plays, profiles, RankerConfig(training_rows="all", sample_rows=300))
    assert 0 < len(capped.candidates) + len(capped.plays) <= 300
    assert set(capped.plays["user_id"]) <= set(capped.candidates["user_id"])
    # The driver guard lowers both caps.
    monkeypatch.setenv(ROW_LIMIT_ENV, "100")
    guarded = ranker_training_sample(candidates, plays, profiles, RankerConfig(training_rows="all"))
    assert 0 < len(guarded.candidates) <= 100 and len(guarded.plays) <= 100


def test_pooled_weeks_share_the_caps_and_draw_the_same_users(spark):
    weeks = [LabelledWeek(spark.createDataFrame(_candidates(seed=seed)), spark.createDataFrame(_plays(seed=seed + 5)),
                          spark.createDataFrame(_profiles())) for seed in (0, 1)]
    config = RankerConfig(training_rows="all")
    whole = ranker_training_samples(weeks, config)
    assert [s.users for s in whole] == [80, 80] and [s.sampled_users for s in whole] == [80, 80]
    # (user, week) pairs capped over the pool: 30 pairs = the 15 lowest-hash users, in both weeks.
    capped = ranker_training_samples(weeks, replace(config, sample_users=30))
    users = [set(s.candidates["user_id"]) for s in capped]
    assert sum(len(u) for u in users) == sum(len(s.profiles) for s in capped) == 30 and users[0] == users[1]
    alone = ranker_training_sample(weeks[0].candidates, weeks[0].interactions, weeks[0].user_profiles,
                                   replace(config, sample_users=15))
    assert users[0] == set(alone.candidates["user_id"])
    pd.testing.assert_frame_equal(capped[0].plays, alone.plays)
    # Rows capped over the pool: whole users, every week of them, never more rows than the cap.
    rows = ranker_training_samples(weeks, replace(config, sample_rows=600))
    assert 0 < sum(len(s.candidates) + len(s.plays) for s in rows) <= 600
    assert set(rows[0].candidates["user_id"]) == set(rows[1].candidates["user_id"])
