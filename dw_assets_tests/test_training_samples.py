"""Bounded training samples drawn in Spark, and the user tower on Spark executors (issue #20).

The tiny world's interactions and profiles (built in pandas by ``test_two_tower``'s helpers) go into
Spark; what the Spark paths hand the driver must equal the whole-table pandas paths when the caps
cover the data, stay within the caps (and ``DW_DRIVER_ROW_LIMIT``) otherwise, and never depend on
how the frames are partitioned.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dw_assets.embeddings.item2vec import (
    Item2VecConfig,
    playlist_sentences,
    sampled_sentences,
    session_sentences,
)
from dw_assets.embeddings.two_tower import (
    TrainedTwoTower,
    build_examples,
    build_tower_features,
    train_two_tower,
)
from dw_assets.embeddings.two_tower_data import PROFILE_COLUMNS, TRAINING_COLUMNS, tower_training_sample
from dw_assets.embeddings.user_tower import sorted_vectors, user_embeddings_frame
from dw_assets.lake.driver_guard import ROW_LIMIT_ENV
from dw_assets_tests.test_two_tower import CONFIG, gold_tables, silver_interactions

SMALL = dataclasses.replace(CONFIG, epochs=1)


@pytest.fixture(scope="module")
def world(tiny_world, spark):
    landing = tiny_world / "landing"
    manifest = json.loads((landing / "manifest.json").read_text())
    week = manifest["last_training_week"]
    interactions = silver_interactions(landing, manifest["training_weeks"])
    # A session per user and day stands in for silver's 30-minute sessionization.
    interactions["session_id"] = interactions["user_id"].astype(str) + "-" + interactions["ts"].dt.strftime("%Y%m%d")
    track_stats, profiles = gold_tables(landing, interactions, week)
    profiles = profiles.assign(events=profiles["user_id"].map(interactions.groupby("user_id").size()).fillna(0))
    spark_interactions = spark.createDataFrame(interactions[TRAINING_COLUMNS]).repartition(3)
    profile_columns = [c for c in PROFILE_COLUMNS if c in profiles.columns]
    spark_profiles = spark.createDataFrame(
        profiles[profile_columns],
        "user_id long, country string, birth_year int, recent_tracks array<long>, recent_age_days array<double>, "
        "genre_share array<struct<genre:string,share:double>>, events double").repartition(2)
    rng = np.random.default_rng(0)
    tracks = track_stats["track_id"].to_numpy(np.int64)
    audio = (tracks, rng.standard_normal((len(tracks), 8)).astype(np.float32))
    return dict(week=week, interactions=interactions, profiles=profiles, track_stats=track_stats, audio=audio,
                spark_interactions=spark_interactions, spark_profiles=spark_profiles)


def _playlists(spark, world):
    """Playlists stood in for by every user's positives in time order (a playlist per user)."""
    frame = world["interactions"].loc[world["interactions"]["is_positive"], ["user_id", "track_id"]]
    frame = frame.rename(columns={"user_id": "playlist_id"}).assign(pos=lambda f: f.groupby("playlist_id").cumcount())
    return frame, spark.createDataFrame(frame).repartition(2)


def test_item2vec_sample_equals_the_whole_corpus_when_the_caps_cover_it(spark, world):
    playlists, spark_playlists = _playlists(spark, world)
    config = Item2VecConfig()
    sentences, stats = sampled_sentences(spark_playlists, world["spark_interactions"], config)
    whole = playlist_sentences(playlists, config) + session_sentences(world["interactions"], config)
    assert sorted(sentences) == sorted(whole) and len(sentences) == len(whole)
    assert stats["sampled_sessions"] >= len(session_sentences(world["interactions"], config))


def test_item2vec_sample_is_capped_seeded_and_independent_of_partitioning(spark, world, monkeypatch):
    _, spark_playlists = _playlists(spark, world)
    config = Item2VecConfig(max_sessions=40, max_playlists=5)
    first, stats = sampled_sentences(spark_playlists, world["spark_interactions"], config)
    again, _ = sampled_sentences(spark_playlists.repartition(5), world["spark_interactions"].repartition(7), config)
    assert first == again
    assert stats == {"sampled_playlists": 5, "sampled_sessions": 40}
    other, _ = sampled_sentences(spark_playlists, world["spark_interactions"], dataclasses.replace(config, seed=8))
    assert other != first
    monkeypatch.setenv(ROW_LIMIT_ENV, "3")  # the driver guard caps every sample too
    _, guarded = sampled_sentences(spark_playlists, world["spark_interactions"], config)
    assert guarded == {"sampled_playlists": 3, "sampled_sessions": 3}


def test_two_tower_sample_gives_the_whole_data_examples_when_the_caps_cover_it(world):
    sample = tower_training_sample(world["spark_interactions"], world["spark_profiles"], SMALL)
    assert sample.stats == {"sampled_users": world["interactions"]["user_id"].nunique(),
                            "sampled_interactions": len(world["interactions"])}
    whole = build_tower_features(world["interactions"], world["profiles"], world["track_stats"], *world["audio"],
                                 world["week"], SMALL)
    sampled = build_tower_features(sample.interactions, sample.profiles, world["track_stats"], *world["audio"],
                                   world["week"], SMALL, countries=sample.countries)
    assert sampled.countries == whole.countries
    ordered = world["interactions"].sort_values(["user_id", "ts", "track_id", "session_id"], kind="mergesort")
    a, b = build_examples(ordered, whole, SMALL), build_examples(sample.interactions, sampled, SMALL)
    assert a.stats == b.stats
    for part in ("train", "validation"):
        for name in ("user", "track", "ts_ms", "state"):
            np.testing.assert_array_equal(getattr(getattr(a, part), name), getattr(getattr(b, part), name))
    np.testing.assert_array_equal(a.states.country, b.states.country)
    np.testing.assert_array_equal(a.states.history, b.states.history)


def test_two_tower_sample_keeps_whole_users_within_both_caps(world):
    capped = dataclasses.replace(SMALL, max_training_users=50, max_training_interactions=2_000)
    sample = tower_training_sample(world["spark_interactions"], world["spark_profiles"].repartition(4), capped)
    users = sample.interactions["user_id"].unique()
    assert 0 < len(users) <= 50 and len(sample.interactions) <= 2_000
    per_user = world["interactions"].groupby("user_id").size()
    assert sample.interactions.groupby("user_id").size().equals(per_user.loc[np.sort(users)])  # whole histories
    assert set(sample.profiles["user_id"]) <= set(users)
    again = tower_training_sample(world["spark_interactions"].repartition(6), world["spark_profiles"], capped)
    pd.testing.assert_frame_equal(again.interactions, sample.interactions)


@pytest.fixture(scope="module")
def model(world) -> TrainedTwoTower:
    sample = tower_training_sample(world["spark_interactions"], world["spark_profiles"], SMALL)
    features = build_tower_features(sample.interactions, sample.profiles, world["track_stats"], *world["audio"],
                                    world["week"], SMALL, countries=sample.countries)
    return train_two_tower(features, build_examples(sample.interactions, features, SMALL), SMALL)


def test_the_model_file_holds_no_user(model):
    data = model.to_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf, zipfile.ZipFile(io.BytesIO(zf.read("features.npz"))) as npz:
        names = npz.namelist()
        meta = json.loads(zf.read("meta.json"))
    assert not [n for n in names if n.startswith("users.") or n.startswith("user_ids")]
    assert "user_ids" not in meta["features"] and "users" not in meta["features"]
    loaded = TrainedTwoTower.from_bytes(data)
    assert len(loaded.features.user_ids) == 0 and loaded.features.countries == model.features.countries


def test_user_tower_on_spark_equals_the_driver_function_bit_for_bit(world, model):
    ids, vectors = model.user_vectors(world["profiles"])
    data = model.to_bytes()
    for profiles in (world["spark_profiles"], world["spark_profiles"].repartition(7)):
        got_ids, got = sorted_vectors(user_embeddings_frame(profiles, data).toPandas())
        order = np.argsort(ids, kind="stable")
        np.testing.assert_array_equal(got_ids, ids[order])
        np.testing.assert_array_equal(got, vectors[order])
    one = model.user_vectors(world["profiles"].iloc[:1])  # a batch of one user: the same vector
    if len(one[0]):
        np.testing.assert_array_equal(one[1][0], vectors[np.flatnonzero(ids == one[0][0])[0]])


def test_item_tower_on_spark_equals_the_driver_vectors_and_is_stored_as_a_sorted_table(world, model, tmp_path):
    """``track_embeddings``: the item tower in ``mapInPandas`` over chunks of track rows gives the driver's
    ``track_vectors()`` bit for bit (same chunks), several chunks over several tasks give the driver's
    computation in those chunks, and the stored table reads back sorted through ``track_vectors_of``."""
    import torch

    from dw_assets.embeddings.item_tower import track_embeddings_frame
    from dw_assets.embeddings.two_tower import item_vector_chunk
    from dw_assets.embeddings.vector_table import track_vectors_of, track_vectors_table
    from dw_assets.versioning import table_version

    spark = world["spark_profiles"].sparkSession
    data, n = model.to_bytes(), len(model.features.track_ids)
    ids, vectors = model.track_vectors()
    got_ids, got = track_vectors_of(track_embeddings_frame(spark, data, n, model.model.popularity_weight), "tracks")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, vectors)

    chunk = max(1, n // 5)  # 5-6 chunks on the session's tasks
    expected = torch.cat([item_vector_chunk(model.model, s, chunk) for s in range(0, n, chunk)]).numpy()
    frame = track_embeddings_frame(spark, data, n, model.model.popularity_weight, chunk=chunk)
    assert frame.rdd.getNumPartitions() > 1
    table = track_vectors_table(frame, "v1")
    table.write.parquet(str(tmp_path / "track_embeddings"))
    written = pq.read_table(tmp_path / "track_embeddings").to_pandas()  # part files in name order
    assert written["track_id"].is_monotonic_increasing and table_version(written, "track_embeddings") == "v1"
    stored_ids, stored = track_vectors_of(spark.read.parquet(str(tmp_path / "track_embeddings")), "tracks")
    np.testing.assert_array_equal(stored_ids, ids)
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_allclose(stored, vectors, atol=1e-5)
    some = ids[::4]
    np.testing.assert_array_equal(track_vectors_of(written, "tracks", some)[1], expected[::4])


def test_user_embeddings_table_round_trips_parquet_sorted_with_its_version(world, model, tmp_path, monkeypatch):
    """The asset's table: written from Spark as Parquet, sorted by user_id, bit-identical vectors; the
    consumers' helpers join in Spark and bring back only the users asked for (bounded samples)."""
    from pyspark.sql import functions as F

    from dw_assets.embeddings.user_tower import (
        sampled_vectors,
        user_embeddings_table,
        vectors_of,
    )
    from dw_assets.lake.driver_guard import DriverRowLimitExceeded
    from dw_assets.lake.storage import vectors_artifact
    from dw_assets.versioning import VersionMismatch, embedding_versions, table_version

    ids, vectors = model.user_vectors(world["profiles"])
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    table = user_embeddings_table(user_embeddings_frame(world["spark_profiles"].repartition(5), model.to_bytes()), "v1")
    table.write.parquet(str(tmp_path / "user_embeddings"))
    spark = world["spark_profiles"].sparkSession
    stored = spark.read.parquet(str(tmp_path / "user_embeddings"))
    assert stored.schema.simpleString() == "struct<user_id:bigint,user_vector:array<float>,model_version:string>"
    written = pq.read_table(tmp_path / "user_embeddings").to_pandas()  # part files in name order
    assert written["user_id"].is_monotonic_increasing  # the files' order: sorted by user_id
    np.testing.assert_array_equal(written["user_id"].to_numpy(np.int64), ids)
    np.testing.assert_array_equal(np.stack(written["user_vector"].to_numpy()), vectors)

    assert table_version(stored, "user_embeddings") == "v1"
    track = vectors_artifact(np.arange(2), np.zeros((2, 2), np.float32), {"model_version": "v1"})
    assert embedding_versions(track_embeddings=track, user_embeddings=stored) == "v1"
    with pytest.raises(VersionMismatch, match="user_embeddings=v2"):
        embedding_versions(track_embeddings=track, user_embeddings=stored.withColumn("model_version", F.lit("v2")))

    some = ids[::3][::-1]  # any order, ids unknown to the table ignored
    got_ids, got = vectors_of(stored, np.concatenate([some, [-5]]))
    np.testing.assert_array_equal(got_ids, np.sort(some))
    np.testing.assert_array_equal(got, vectors[np.searchsorted(ids, np.sort(some))])

    all_ids, _ = sampled_vectors(stored, 10 * len(ids), seed=7)  # a cap above the users: all of them
    assert sorted(all_ids.tolist()) == ids.tolist()
    drawn, drawn_vectors = sampled_vectors(stored.repartition(3), 5, seed=7)
    np.testing.assert_array_equal(drawn, all_ids[:5])  # hash order: a smaller cap is a prefix, any partitioning
    np.testing.assert_array_equal(drawn_vectors, vectors[np.searchsorted(ids, drawn)])
    assert not np.array_equal(sampled_vectors(stored, 5, seed=8)[0], drawn)  # the seed picks the sample

    monkeypatch.setenv(ROW_LIMIT_ENV, "3")
    assert len(sampled_vectors(stored, 5, seed=7)[0]) == 3  # bounded by the guard
    with pytest.raises(DriverRowLimitExceeded, match="user_embeddings"):
        vectors_of(stored)


def test_candidate_users_join_in_spark_as_the_pandas_path_did(world, model):
    """``vector_users`` (a Spark join) holds what the pandas path built from a collected artifact."""
    from dw_assets.embeddings.user_tower import user_embeddings_table
    from dw_assets.ranking.batch import user_vector_table, user_vectors_of
    from dw_assets.retrieval.batch import vector_users

    ids, vectors = model.user_vectors(world["profiles"])
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    table = user_embeddings_table(user_embeddings_frame(world["spark_profiles"], model.to_bytes()), "v1")
    profiles = world["profiles"][["user_id", "recent_tracks"]]
    expected = {int(u): ([int(x) for x in t] if t is not None else [], by_id.get(int(u)))
                for u, t in zip(profiles["user_id"], profiles["recent_tracks"], strict=True)}
    expected = {u: v for u, v in expected.items() if v[1] is not None or v[0]}
    got = vector_users(table, world["spark_profiles"]).toPandas()
    assert sorted(got["user_id"].tolist()) == sorted(expected)
    for row in got.itertuples():
        tracks, vector = expected[row.user_id]
        assert list(row.recent_tracks) == tracks
        if vector is None:
            assert row.user_vector is None
        else:
            np.testing.assert_array_equal(np.asarray(row.user_vector, np.float32), vector)

    spark = world["spark_profiles"].sparkSession
    assert user_vector_table(spark, table).schema.simpleString() == "struct<user_id:bigint,user_vector:array<float>>"
    few = np.sort(ids)[:4]
    got_ids, got_vectors = user_vectors_of(table, few)
    np.testing.assert_array_equal(got_ids, few)
    np.testing.assert_array_equal(got_vectors, np.stack([by_id[int(u)] for u in few]))
