"""The ranking model set through the host cache: unpacked once per host as plain files, its feature context
memory-mapped read-only by every worker, and playlists ranked with it identical to those of the models
loaded from the shipped bytes (trained ranker and first-week stand-in alike).

Fast: test_ranker's synthetic week (300 tracks, 60 users), a ranker of a few dozen trees, no Spark.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dw_assets.lake import host_cache
from dw_assets.lake.host_cache import is_mapped
from dw_assets.ranking.batch import _scoring, shipped_playlist_models, stand_in_ranker
from dw_assets.ranking.features import _CONTEXT_ARRAYS, ZIP_EPOCH, FeatureContext, build_ranker_features
from dw_assets.ranking.playlists import (
    CANDIDATE_ARRAYS,
    TRACK_TABLE,
    PlaylistModels,
    fallback_pool,
    rank_users,
)
from dw_assets.ranking.ranker import train_ranker
from dw_assets.ranking.rerank import RerankConfig
from dw_assets_tests.test_ranker import FAST, GENRES, world  # noqa: F401 (the module's world fixture)

WEEK = "2026-01-05"
COUNTRIES = ("DE", "SE", "US")


def _batch(world: dict) -> pd.DataFrame:  # noqa: F811
    """The week's users as ``rank_users`` gets them from Spark: profile, country, heard, user vector, the
    candidates as per-user arrays sorted by track, exploration posteriors for every third user. The
    second user has no candidates (the country's fallback pool)."""
    rng = np.random.default_rng(11)
    profiles = world["profiles"]
    candidates = world["candidates"].copy()
    ranks = candidates[["two_tower_rank", "item2vec_rank", "audio_rank"]].to_numpy() > 0
    names = np.array(["two_tower", "item2vec", "audio"])
    candidates["sources"] = ["|".join(sorted(names[row])) for row in ranks]
    candidates = candidates[candidates["user_id"] != profiles["user_id"].iloc[1]]
    packed = {
        user: {f"c_{c}": group.sort_values("track_id")[c].to_numpy() for c in CANDIDATE_ARRAYS}
        for user, group in candidates.groupby("user_id")
    }
    vector_ids, vectors = world["two_tower_users"]
    by_user = dict(zip(vector_ids.tolist(), vectors, strict=True))
    rows = []
    for i, profile in enumerate(profiles.to_dict("records")):
        user = profile["user_id"]
        row = {**profile, "country": COUNTRIES[i % len(COUNTRIES)], "heard": np.asarray(profile["recent_tracks"]),
               "user_vector": by_user.get(user),
               **packed.get(user, {f"c_{c}": None for c in CANDIDATE_ARRAYS})}
        if i % 3 == 0:
            genres = np.array(sorted(rng.choice(GENRES, 2, replace=False)), dtype=object)
            row |= {"p_genre": genres, "p_alpha": 1.0 + rng.integers(0, 4, 2), "p_beta": 1.0 + rng.integers(0, 4, 2)}
        else:
            row |= {"p_genre": None, "p_alpha": None, "p_beta": None}
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def ranking(world) -> dict:  # noqa: F811
    """A ranking model set of the synthetic week (a ranker trained on its candidates) and its users."""
    context = FeatureContext.build(None, world["stats"], world["item2vec"], world["audio"], None,
                                   world["two_tower_tracks"])
    users = _batch(world)
    features = build_ranker_features(world["candidates"], context, users=world["profiles"])
    rng = np.random.default_rng(3)
    signal = np.nan_to_num(features["item2vec_affinity"].to_numpy(), nan=0.0)
    labels = (rng.random(len(features)) < 1.0 / (1.0 + np.exp(-(3.0 * signal - 1.0)))).astype(np.int32)
    ranker = train_ranker(features, labels, world["candidates"]["user_id"].to_numpy(), FAST)
    tracks = world["stats"][list(TRACK_TABLE)].sort_values("track_id").reset_index(drop=True)
    plays = world["candidates"][["user_id", "track_id"]].sample(600, random_state=2)
    plays["is_positive"] = np.arange(len(plays)) % 3 != 0
    fallback = fallback_pool(plays, users[["user_id", "country"]], tracks, per_country=80)
    models = PlaylistModels(context=context, ranker=ranker, tracks=tracks, fallback=fallback,
                            rerank=RerankConfig(exploration_slots=(1, 2), cold_slots=1))
    return {"models": models, "users": users}


@pytest.mark.parametrize("ranker", ["trained", "stand_in"])
def test_models_from_the_host_cache_rank_the_shipped_bytes_playlists(ranking, tmp_path, ranker):
    models = ranking["models"]
    if ranker == "stand_in":
        models = PlaylistModels(models.context, stand_in_ranker(WEEK, "test"), models.tracks, models.fallback,
                                models.rerank)
    blob = models.to_bytes()
    expected = rank_users(ranking["users"], _scoring(PlaylistModels.from_bytes(blob)), WEEK)
    assert len(expected) > 1_000 and expected["is_exploration"].any()
    assert (expected["source"] == "popularity_fallback").any()
    reads = []
    for _ in range(2):  # a second worker of the host finds the copy: the shipped bytes are not read again
        cached = shipped_playlist_models(f"r{ranker}", lambda: reads.append(1) or blob, tmp_path)
        pd.testing.assert_frame_equal(rank_users(ranking["users"], cached, WEEK), expected, check_exact=True)
    assert len(reads) == 1
    assert type(cached.ranker).__name__ == ("RetrievalOrder" if ranker == "stand_in" else "TrainedRanker")
    # The same playlists in batches of a few users, as Spark's tasks rank them.
    users = ranking["users"]
    batched = pd.concat([rank_users(users.iloc[i:i + 7], cached, WEEK) for i in range(0, len(users), 7)],
                        ignore_index=True)
    pd.testing.assert_frame_equal(batched, expected, check_exact=True)


def test_opened_context_arrays_are_memory_mapped_and_read_only(ranking, tmp_path):
    PlaylistModels.unpack(ranking["models"].to_bytes(), tmp_path)
    opened = PlaylistModels.open(tmp_path)
    maps = Path("/proc/self/maps").read_text()
    for name in _CONTEXT_ARRAYS:
        array = getattr(opened.context, name)
        assert is_mapped(array) and not array.flags.writeable, name
        np.testing.assert_array_equal(array, getattr(ranking["models"].context, name))
        if array.nbytes:
            assert str(tmp_path / "context" / f"{name}.npy") in maps, name
    with pytest.raises(ValueError, match="read-only"):
        opened.context.item2vec_vectors[0, 0] = 0.0
    in_memory = PlaylistModels.open(tmp_path, mmap=False).context.item2vec_vectors
    assert not is_mapped(in_memory) and in_memory.flags.writeable
    # The track table too: one mapped copy per host, the same rows as the shipped frame.
    table = opened.tracks
    for name, array in table.arrays.items():
        assert is_mapped(array) and not array.flags.writeable, name
        assert str(tmp_path / "tracks" / f"{name}.npy") in maps, name
    shipped = ranking["models"].tracks.sort_values("track_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(table.frame(), shipped[list(table.frame().columns)], check_exact=True)


def test_the_cache_folder_is_written_once_with_plain_files(ranking, tmp_path):
    blob, writes = ranking["models"].to_bytes(), []

    def unpack(target: Path) -> None:
        writes.append(target)
        PlaylistModels.unpack(blob, target)

    folder = host_cache.materialize("ranking0", unpack, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert host_cache.materialize("ranking0", unpack, tmp_path) == folder and len(writes) == 1
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps
    assert sorted(p.name for p in folder.iterdir()) == [
        "context", "fallback.parquet", "ranker.bin", "rerank.json", "tracks"]  # no staged context.bin
    assert {p.name for p in (folder / "context").iterdir()} >= {f"{name}.npy" for name in _CONTEXT_ARRAYS}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # The same bytes from the same models (the cache's digest is stable across runs): no member carries a clock.
    with zipfile.ZipFile(io.BytesIO(blob)) as outer, zipfile.ZipFile(io.BytesIO(outer.read("context.bin"))) as inner:
        assert {info.date_time for info in [*outer.infolist(), *inner.infolist()]} == {ZIP_EPOCH}


def test_a_context_with_users_opens_to_the_same_features(world, tmp_path):  # noqa: F811
    context = FeatureContext.build(world["profiles"], world["stats"], world["item2vec"], world["audio"],
                                   world["two_tower_users"], world["two_tower_tracks"])
    FeatureContext.unpack(context.to_bytes(), tmp_path)
    opened = FeatureContext.open(tmp_path)
    assert is_mapped(opened.users.vectors) and not opened.users.recent_tracks.flags.writeable
    expected = build_ranker_features(world["candidates"], FeatureContext.from_bytes(context.to_bytes()))
    pd.testing.assert_frame_equal(build_ranker_features(world["candidates"], opened), expected, check_exact=True)


def test_spark_playlists_through_the_host_cache_equal_the_shipped_bytes_models_on_the_tiny_world(
        tiny_world_run, spark):
    """build_playlists (Spark's Python workers: the host cache, memory-mapped) == rank_users over the same
    users with the models loaded from the same bytes in this process, and == the week's stored playlists."""
    import json

    from dw_assets.ingest.spark import payload_key
    from dw_assets.lake.storage import Lake
    from dw_assets.partitions import history_window_weeks
    from dw_assets.ranking.batch import (
        build_playlists,
        exploration_posteriors,
        playlist_models,
        playlist_users,
        track_context,
        user_vector_table,
    )
    from dw_assets.ranking.config import PlaylistsConfig
    from dw_assets.ranking.ranker import TrainedRanker

    week = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())["last_training_week"]
    lake = Lake(str(tiny_world_run))
    table = lambda layer, name, weeks=(week,): lake.read_spark(spark, [  # noqa: E731
        lake.uri(layer, name, w) for w in weeks if lake.exists(lake.uri(layer, name, w))])
    artifact = lambda name: lake.read_artifact(lake.uri("models", name, week))  # noqa: E731
    track_stats = lake.read_frame(lake.uri("gold", "track_stats", week))
    context = track_context(track_stats, lake.read_frame(lake.uri("models", "item2vec_embeddings", week)),
                            table("models", "audio_vectors"),
                            lake.read_frame(lake.uri("models", "track_embeddings", week)))
    ranker = TrainedRanker.from_bytes(artifact("ranker_model").files["ranker.bin"])
    settings = PlaylistsConfig().settings()
    profiles, directory = table("gold", "user_profiles"), table("bronze", "user_directory")
    vectors = user_vector_table(spark, table("models", "user_embeddings"))
    interactions = table("silver", "interactions", history_window_weeks(week))
    candidates = table("gold", "candidates")
    earlier = [w for w in history_window_weeks(week)[:-1] if lake.exists(lake.uri("gold", "ranked_playlists", w))]
    earlier_playlists = table("gold", "ranked_playlists", earlier) if earlier else None

    got, order, stats = build_playlists(spark, week, settings, candidates, ranker, profiles, directory, track_stats,
                                        context, vectors, interactions, earlier_playlists, with_ranker_order=True)
    got, order = got.drop("week").toPandas(), order.drop("week").toPandas()
    blob = playlist_models(week, settings, ranker, directory, track_stats, context, interactions).to_bytes()
    assert host_cache.cached(payload_key(blob))  # the workers' copy (Spark's workers share this host's root)
    assert stats["shipped_model_mb"] == round(len(blob) / 2**20, 1)
    posteriors = exploration_posteriors(earlier_playlists, interactions, settings.rerank, week)
    users = playlist_users(profiles, directory, vectors, interactions, candidates, posteriors).toPandas()
    orders: list[pd.DataFrame] = []
    expected = rank_users(users.sort_values("user_id").reset_index(drop=True),
                          _scoring(PlaylistModels.from_bytes(blob)), week, orders=orders)
    assert len(got) > 1_000 and got["user_id"].nunique() == len(users)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.astype(got.dtypes.to_dict()),
                                  check_exact=True)
    # The ranker's own order comes from the same scores in the same tasks: 30 hygienic rows per user with
    # candidates, exactly the one-process rows, and the one the lake holds.
    expected_order = pd.concat(orders, ignore_index=True).astype(order.dtypes.to_dict())
    assert stats["ranker_order_users"] == order["user_id"].nunique() > 0
    assert order.groupby("user_id").size().max() == settings.rerank.playlist_size
    assert not order["is_exploration"].any() and order["ranker_score"].notna().all()
    pd.testing.assert_frame_equal(order.reset_index(drop=True), expected_order, check_exact=True)
    stored_order = lake.read_frame(lake.uri("gold", "ranker_order", week)).drop(columns=["week"])
    pd.testing.assert_frame_equal(stored_order[list(order.columns)].sort_values(["user_id", "position"])
                                  .reset_index(drop=True), order, check_exact=True, check_dtype=False)
    stored = lake.read_frame(lake.uri("gold", "ranked_playlists", week)).drop(columns=["week"], errors="ignore")
    pd.testing.assert_frame_equal(stored[list(got.columns)].sort_values(["user_id", "position"]).reset_index(drop=True),
                                  got, check_exact=True, check_dtype=False)
