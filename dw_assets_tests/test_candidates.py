"""Candidate generation: unheard tracks only, honest source tags, quotas, cold tracks via audio, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dw_assets.retrieval.ann import AnnConfig, build_index, clustered_vectors
from dw_assets.retrieval.candidates import (
    CANDIDATE_COLUMNS,
    CandidateConfig,
    CandidateModels,
    generate_candidates,
)

N_TRACKS, N_NEW, TT_DIM, I2V_DIM, N_USERS = 3_000, 100, 64, 8, 60
CONFIG = CandidateConfig(total=60, two_tower_quota=30, item2vec_quota=20, audio_quota=10, seed_tracks=5,
                         faiss_threads=1)  # fmt: skip
EXACT = AnnConfig(kind="flat", use_gpu="never", threads=1)
NOTHING_USER, NO_VECTOR_USER, NO_SEEDS_USER = 9_000, 9_001, 9_002


@pytest.fixture(scope="module")
def world():
    """Track ids, two-tower/item2vec/audio vectors, models and a users frame.

    The first N_NEW tracks are this week's cold new releases: in the two-tower index and the audio
    pool, not in item2vec. Users 9000-9002: no vector and no history / no vector / no seed tracks.
    """
    rng = np.random.default_rng(5)
    track_ids = rng.permutation(N_TRACKS).astype(np.int64) * 5 + 100  # ids are not row numbers
    tt = clustered_vectors(N_TRACKS + N_USERS, TT_DIM, clusters=12, seed=1)
    i2v = clustered_vectors(N_TRACKS, I2V_DIM, clusters=12, seed=2)
    audio = i2v[:N_NEW] + 0.3 * rng.standard_normal((N_NEW, I2V_DIM)).astype(np.float32)
    warm_ids, warm_vectors = track_ids[N_NEW:], i2v[N_NEW:]
    models = CandidateModels.build(build_index(track_ids, tt[:N_TRACKS], EXACT), warm_ids, warm_vectors,
                                   track_ids[:N_NEW], audio, neighbour_config=EXACT, neighbour_table=8,
                                   model_version="2026-01-26-test")  # fmt: skip
    rows = []
    for u in range(N_USERS):
        heard = rng.choice(warm_ids, size=int(rng.integers(20, 400)), replace=False)
        rows.append({"user_id": 1_000 + u, "user_vector": tt[N_TRACKS + u], "recent_tracks": heard[:30],
                     "heard": heard})  # fmt: skip
    rows.append({"user_id": NOTHING_USER, "user_vector": None, "recent_tracks": [], "heard": None})
    rows.append(
        {"user_id": NO_VECTOR_USER, "user_vector": None, "recent_tracks": warm_ids[:3], "heard": warm_ids[:3]}
    )
    rows.append({"user_id": NO_SEEDS_USER, "user_vector": tt[N_TRACKS], "recent_tracks": track_ids[:2],
                 "heard": None})  # recent tracks without item2vec vectors  # fmt: skip
    users = pd.DataFrame(rows)
    return {"track_ids": track_ids, "tt": tt[:N_TRACKS], "warm_ids": warm_ids, "warm_vectors": warm_vectors,
            "new_ids": track_ids[:N_NEW], "audio": audio, "models": models, "users": users}  # fmt: skip


@pytest.fixture(scope="module")
def candidates(world) -> pd.DataFrame:
    return generate_candidates(world["users"], world["models"], CONFIG)


def _excluded(users: pd.DataFrame) -> dict[int, set[int]]:
    return {
        int(u.user_id): set(np.asarray(u.recent_tracks, dtype=np.int64).tolist())
        | set(np.asarray(u.heard if u.heard is not None else [], dtype=np.int64).tolist())
        for u in users.itertuples()
    }


def _seed_vectors(world, recent_tracks) -> np.ndarray:
    """Unit item2vec vectors of the user's seeds: the first seed_tracks recent tracks that have one."""
    warm = dict(zip(world["warm_ids"].tolist(), world["warm_vectors"], strict=True))
    known = [t for t in dict.fromkeys(np.asarray(recent_tracks).tolist()) if t in warm][: CONFIG.seed_tracks]
    return _unit(np.stack([warm[t] for t in known]))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_output_has_the_contract_columns_and_one_row_per_user_track(candidates):
    assert list(candidates.columns) == list(CANDIDATE_COLUMNS)
    assert candidates.dtypes.astype(str).to_dict() == {
        "user_id": "int64", "track_id": "int64", "sources": "object",
        "two_tower_rank": "int32", "item2vec_rank": "int32", "audio_rank": "int32",
        "two_tower_score": "float32", "item2vec_score": "float32", "audio_score": "float32",
    }  # fmt: skip
    assert not candidates.duplicated(["user_id", "track_id"]).any()
    assert candidates["user_id"].is_monotonic_increasing


def test_heard_and_recent_tracks_never_appear(world, candidates):
    excluded = _excluded(world["users"])
    offending = [t for u, t in zip(candidates.user_id, candidates.track_id, strict=True) if t in excluded[u]]
    assert offending == []


def test_every_source_that_found_a_track_is_tagged_with_its_rank_and_score(world, candidates):
    names = ("audio", "item2vec", "two_tower")
    for row in candidates.itertuples():
        found = [name for name in names if getattr(row, f"{name}_rank") > 0]
        assert row.sources == "|".join(found)
        for name in names:
            assert np.isnan(getattr(row, f"{name}_score")) == (getattr(row, f"{name}_rank") == 0)
    # Scores are what each source says they are.
    users = world["users"].set_index("user_id")
    position = {t: i for i, t in enumerate(world["track_ids"])}
    warm = {t: i for i, t in enumerate(world["warm_ids"])}
    new = {t: i for i, t in enumerate(world["new_ids"])}
    for row in candidates.sample(300, random_state=0).itertuples():
        user = users.loc[row.user_id]
        if row.two_tower_rank:
            assert row.two_tower_score == pytest.approx(
                world["tt"][position[row.track_id]] @ user.user_vector, abs=1e-5
            )
        if row.item2vec_rank or row.audio_rank:
            seeds = _seed_vectors(world, user.recent_tracks)
        if row.item2vec_rank:
            cosines = seeds @ _unit(world["warm_vectors"][warm[row.track_id]])
            # The cosine to one seed: the best among the seeds whose neighbour lists hold the track.
            assert np.isclose(cosines, row.item2vec_score, atol=1e-5).any()
            assert row.item2vec_score <= cosines.max() + 1e-5
        if row.audio_rank:
            taste = _unit(seeds.mean(axis=0))
            assert row.audio_score == pytest.approx(
                _unit(world["audio"][new[row.track_id]]) @ taste, abs=1e-5
            )


def test_two_tower_ranks_are_the_exact_top_unheard_tracks(world, candidates):
    excluded = _excluded(world["users"])
    for row in world["users"].head(10).itertuples():
        scores = world["tt"] @ row.user_vector
        unheard = np.array([t not in excluded[row.user_id] for t in world["track_ids"]])
        order = np.argsort(-scores[unheard], kind="stable")
        best = world["track_ids"][unheard][order][: CONFIG.two_tower_quota]
        mine = candidates[(candidates.user_id == row.user_id) & (candidates.two_tower_rank > 0)]
        top = mine[mine.two_tower_rank <= CONFIG.two_tower_quota].sort_values("two_tower_rank")
        assert top.track_id.tolist() == best.tolist()


def test_a_track_found_by_two_sources_carries_both(world):
    """A track that is the user's best two-tower match and a copy of a recent track has both tags; its
    item2vec score is its cosine to that track, not to another recent track that also found it."""
    users = world["users"].head(3).copy()
    user, (seed, other_seed) = users.iloc[0], users.iloc[0].recent_tracks[:2]
    twin = world["warm_ids"][np.flatnonzero(~np.isin(world["warm_ids"], users.iloc[0].heard))[0]]
    tt, warm_vectors = world["tt"].copy(), world["warm_vectors"].copy()
    tt[world["track_ids"] == twin] = user.user_vector * 5  # far above any other track's score
    seed_vector = warm_vectors[world["warm_ids"] == seed]
    warm_vectors[world["warm_ids"] == twin] = seed_vector * 1.01
    warm_vectors[world["warm_ids"] == other_seed] = (
        seed_vector + 0.1 * np.abs(seed_vector).mean()
    )  # cos ~0.99
    models = CandidateModels.build(build_index(world["track_ids"], tt, EXACT), world["warm_ids"], warm_vectors,
                                   world["new_ids"], world["audio"], neighbour_config=EXACT)  # fmt: skip
    out = generate_candidates(users, models, CONFIG)
    hit = out[(out.user_id == user.user_id) & (out.track_id == twin)]
    assert hit.sources.tolist() == ["item2vec|two_tower"]
    assert hit.two_tower_rank.item() == 1 and hit.item2vec_rank.item() == 1
    assert hit.item2vec_score.item() == pytest.approx(1.0, abs=1e-5)


def test_cold_new_release_that_sounds_like_recent_tracks_is_proposed_by_audio(world):
    users = world["users"].head(5).copy()
    user = users.iloc[2]
    seeds = _seed_vectors(world, user.recent_tracks)
    audio = world["audio"].copy()
    audio[7] = seeds.mean(axis=0) * 3  # new release 7 sounds like the user's recent listening
    models = CandidateModels.build(world["models"].two_tower, world["warm_ids"], world["warm_vectors"],
                                   world["new_ids"], audio, neighbour_config=EXACT)  # fmt: skip
    out = generate_candidates(users, models, CONFIG)
    hit = out[(out.user_id == user.user_id) & (out.track_id == world["new_ids"][7])]
    assert len(hit) == 1 and "audio" in hit.sources.item().split("|")
    assert hit.audio_rank.item() == 1 and hit.audio_score.item() == pytest.approx(1.0, abs=1e-5)


def test_quotas_are_filled_then_lists_fill_up_to_total(world, candidates):
    per_user = candidates.groupby("user_id")
    for user_id, mine in per_user:
        assert len(mine) <= CONFIG.total
        if user_id >= NOTHING_USER:
            continue
        assert len(mine) == CONFIG.total
        for name, quota in (("two_tower", 30), ("item2vec", 20), ("audio", 10)):
            assert set(range(1, quota + 1)) <= set(mine[f"{name}_rank"]), (user_id, name)
    # No seeds: two-tower alone fills the list; no vector: item2vec + audio fill it.
    assert (per_user.get_group(NO_SEEDS_USER).sources == "two_tower").all()
    assert len(per_user.get_group(NO_SEEDS_USER)) == CONFIG.total
    no_vector = per_user.get_group(NO_VECTOR_USER)
    assert len(no_vector) == CONFIG.total and (no_vector.two_tower_rank == 0).all()


def test_a_source_that_runs_dry_leaves_its_room_to_the_others(world):
    """Only 3 (then no) new releases this week: the other sources fill the list to total."""
    models = CandidateModels.build(world["models"].two_tower, world["warm_ids"], world["warm_vectors"],
                                   world["new_ids"][:3], world["audio"][:3], neighbour_config=EXACT)  # fmt: skip
    out = generate_candidates(world["users"].head(10), models, CONFIG)
    assert (out.groupby("user_id").size() == CONFIG.total).all()
    assert (out.groupby("user_id").audio_rank.max() == 3).all()
    # No new releases at all.
    models = CandidateModels.build(world["models"].two_tower, world["warm_ids"], world["warm_vectors"],
                                   np.zeros(0, np.int64), [], neighbour_config=EXACT)  # fmt: skip
    out = generate_candidates(world["users"].head(10), models, CONFIG)
    assert (out.groupby("user_id").size() == CONFIG.total).all() and (out.audio_rank == 0).all()


def test_a_user_who_heard_their_best_matches_still_gets_a_full_list(world):
    users = world["users"].head(2).copy()
    scores = world["tt"] @ users.iloc[0].user_vector
    heard = list(users.heard)
    heard[0] = world["track_ids"][np.argsort(-scores)[:1_000]]  # far beyond the first fetch
    users["heard"] = heard
    out = generate_candidates(users, world["models"], CONFIG)
    mine = out[out.user_id == users.iloc[0].user_id]
    assert len(mine) == CONFIG.total
    assert set(range(1, CONFIG.two_tower_quota + 1)) <= set(mine.two_tower_rank)
    assert not mine.track_id.isin(users.iloc[0].heard).any()
    assert mine.two_tower_score.max() <= np.sort(scores)[-1_000] + 1e-5


def test_same_output_twice_and_however_users_are_batched(world, candidates):
    users = world["users"]
    again = generate_candidates(users, world["models"], CONFIG)
    pd.testing.assert_frame_equal(again, candidates, check_exact=True)
    # A user's candidates never depend on who else is in the batch, nor on the batch order.
    parts = [users.iloc[::4], users.drop(users.index[::4]).iloc[::-1]]
    split = pd.concat([generate_candidates(p, world["models"], CONFIG) for p in parts])
    split = split.sort_values("user_id", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(split, candidates, check_exact=True)
    chunked = generate_candidates(
        users.iloc[::-1], world["models"], dataclasses.replace(CONFIG, chunk_users=7)
    )
    pd.testing.assert_frame_equal(chunked, candidates, check_exact=True)


def test_users_as_arrow_delivers_them_give_the_same_candidates(world, candidates):
    """mapInPandas hands over numpy arrays (float32 vectors) and None for null lists."""
    users = world["users"]
    schema = pa.schema([("user_id", pa.int64()), ("user_vector", pa.list_(pa.float32())),
                        ("recent_tracks", pa.list_(pa.int64())), ("heard", pa.list_(pa.int64()))])  # fmt: skip
    arrow = pa.Table.from_pandas(users, schema=schema, preserve_index=False).to_pandas()
    assert isinstance(arrow.user_vector.iloc[0], np.ndarray) and arrow.heard.isna().any()
    pd.testing.assert_frame_equal(
        generate_candidates(arrow, world["models"], CONFIG), candidates, check_exact=True
    )


def test_duplicate_users_in_a_batch_are_refused(world):
    users = world["users"].head(3)
    with pytest.raises(ValueError, match="unique"):
        generate_candidates(pd.concat([users, users.head(1)]), world["models"], CONFIG)


def test_batching_does_not_change_scores_on_a_larger_catalog(world):
    """On a catalog this size faiss's own kernels round a query's scores differently alone (split over
    threads) and among 2,000 (BLAS) than among a few; candidate generation must not show it."""
    n, n_users = 55_000, 2_000
    vectors = clustered_vectors(n + n_users, TT_DIM, clusters=50, seed=9)
    threaded = AnnConfig(kind="flat", use_gpu="never")
    models = CandidateModels.build(build_index(np.arange(n) + 1, vectors[:n], threaded), world["warm_ids"],
                                   world["warm_vectors"], world["new_ids"], world["audio"], neighbour_config=EXACT)  # fmt: skip
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype=np.int64), "user_vector": list(vectors[n:]),
                          "recent_tracks": [[]] * n_users, "heard": [None] * n_users})  # fmt: skip
    config = CandidateConfig(total=50, two_tower_quota=50, faiss_threads=0)
    whole = generate_candidates(users, models, config)
    for part in ([0], [1, 2, 3]):
        alone = generate_candidates(users.iloc[part], models, config)
        expected = whole[whole.user_id.isin(part)].reset_index(drop=True)
        pd.testing.assert_frame_equal(alone, expected, check_exact=True)


def test_tied_scores_are_ranked_by_track_id(world):
    """Coarse vectors make many exact ties: their order follows track ids, not faiss internals."""
    coarse = np.round(world["tt"] * 2) / 2
    models = CandidateModels.build(build_index(world["track_ids"], coarse, EXACT), world["warm_ids"],
                                   world["warm_vectors"], world["new_ids"], world["audio"], neighbour_config=EXACT)  # fmt: skip
    users = world["users"].head(20).copy()
    users["user_vector"] = [np.round(v * 2) / 2 for v in users.user_vector]
    out = generate_candidates(users, models, CONFIG)
    two_tower = out[out.two_tower_rank > 0].sort_values(["user_id", "two_tower_rank"])
    ties = 0
    for _, mine in two_tower.groupby("user_id"):
        same = np.diff(mine.two_tower_score.to_numpy()) == 0
        assert (np.diff(mine.track_id.to_numpy())[same] > 0).all()
        ties += same.sum()
    assert ties > 100


def test_neighbour_table_and_live_search_agree(world, candidates):
    """Seeds needing more neighbours than the table holds are searched; the result does not depend on K."""
    w = world
    models = CandidateModels.build(w["models"].two_tower, w["warm_ids"], w["warm_vectors"], w["new_ids"],
                                   w["audio"], neighbour_config=EXACT, neighbour_table=0)  # fmt: skip
    pd.testing.assert_frame_equal(
        generate_candidates(w["users"], models, CONFIG), candidates, check_exact=True
    )


def test_models_round_trip_through_bytes(world, candidates):
    loaded = CandidateModels.from_bytes(world["models"].to_bytes())
    assert loaded.model_version == "2026-01-26-test"
    pd.testing.assert_frame_equal(
        generate_candidates(world["users"], loaded, CONFIG), candidates, check_exact=True
    )
    # An approximate neighbour index travels as its faiss bytes.
    ivf = AnnConfig(kind="ivf_flat", nlist=8, nprobe=8, use_gpu="never", threads=1)
    w = world
    models = CandidateModels.build(w["models"].two_tower, w["warm_ids"], w["warm_vectors"], w["new_ids"],
                                   w["audio"], neighbour_config=ivf)  # fmt: skip
    loaded = CandidateModels.from_bytes(models.to_bytes())
    assert loaded.item2vec_index.kind == "ivf_flat" and loaded.memory_bytes() == models.memory_bytes()
    expected = generate_candidates(w["users"], models, CONFIG)
    pd.testing.assert_frame_equal(generate_candidates(w["users"], loaded, CONFIG), expected, check_exact=True)


def test_users_with_no_vector_and_no_seed_tracks_get_no_rows(world, candidates):
    assert NOTHING_USER not in set(candidates.user_id)
    nobody = world["users"][world["users"].user_id == NOTHING_USER]
    out = generate_candidates(nobody, world["models"], CONFIG)
    assert out.empty and list(out.columns) == list(CANDIDATE_COLUMNS)
    assert generate_candidates(world["users"].head(0), world["models"], CONFIG).empty


def test_tracks_uploaded_since_the_weekly_index_are_found_through_the_delta(world):
    from dw_assets.retrieval.delta import DeltaIndex

    users = world["users"].head(5)
    base = world["models"]
    # One new track per user, pointing exactly where that user's vector points: its best match.
    new_ids = np.arange(5, dtype=np.int64) + 10**9
    vectors = np.stack([np.asarray(v, np.float32) * 10.0 for v in users["user_vector"]])
    models = CandidateModels.from_bytes(base.to_bytes())
    models.two_tower_delta = DeltaIndex(new_ids, vectors, base.model_version)
    shipped = CandidateModels.from_bytes(models.to_bytes())  # the delta travels to the executors
    assert shipped.two_tower_delta is not None and shipped.two_tower_delta.ids.tolist() == new_ids.tolist()
    found = generate_candidates(users, shipped, CONFIG)
    for user, new_id, vector in zip(users["user_id"], new_ids, users["user_vector"], strict=True):
        mine = found[(found["user_id"] == user) & (found["track_id"] == new_id)]
        assert len(mine) == 1 and 1 <= mine["two_tower_rank"].iat[0] <= len(new_ids), user  # above every old track
        assert mine["two_tower_score"].iat[0] == pytest.approx(10.0 * float(np.dot(vector, vector)), rel=1e-4)
    without = generate_candidates(users, base, CONFIG)
    assert not without["track_id"].isin(new_ids).any()
