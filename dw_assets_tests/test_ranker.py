"""Ranking features and the LightGBM ranker on small synthetic weeks.

The features must be the same numbers whichever way their inputs arrive (training vs inference,
broadcast vs per-batch users, any batching); the ranker must find the feature that carries the
signal, beat the retrieval order on held-out users, and come back identical from bytes; the
position propensity must recover the decaying attention of the simulated discovery list.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from dw_assets.ranking.features import (
    FEATURE_NAMES,
    NULLABLE_FEATURES,
    OUTCOME_RATE_NAMES,
    FeatureContext,
    build_ranker_features,
    observed_exposure,
    position_propensity,
    position_weights,
    training_examples,
    training_labels,
)
from dw_assets.ranking.ranker import RankerConfig, TrainedRanker, ndcg_at_k, train_ranker
from dw_assets.simulate.behaviour import listen, reach

GENRES = ["blues", "folk", "jazz", "pop", "rock"]
N_TRACKS, N_USERS, PER_USER, DIM, TT_DIM = 300, 60, 40, 8, 12
# Binary labels (positive or not) unless a test asks for outcome grades.
FAST = RankerConfig(n_estimators=80, early_stopping_rounds=20, min_child_samples=10, num_threads=1,
                    label_scheme="positive", objective="binary")


# ---------------------------------------------------------------------------- a synthetic week


@pytest.fixture(scope="module")
def world() -> dict:
    """Gold tables, model vectors and candidates of one synthetic week (ids are not row numbers)."""
    rng = np.random.default_rng(0)
    track_ids = (1_000 + 7 * rng.permutation(N_TRACKS)).astype(np.int64)
    plays = rng.integers(1, 300, N_TRACKS)
    plays[:30] = 0  # cold tracks: no plays, no item2vec vector
    listeners = np.minimum(plays, rng.integers(1, 150, N_TRACKS))
    rates = {name: np.where(plays > 0, rng.uniform(0, 0.6, N_TRACKS), np.nan) for name in
             ("save_rate", "skip_rate", "early_skip_rate")}  # fmt: skip
    stats = pd.DataFrame({
        "track_id": track_ids, "artist_id": rng.integers(0, 40, N_TRACKS), "genre": rng.choice(GENRES, N_TRACKS),
        "age_days": rng.integers(0, 3_000, N_TRACKS).astype(np.int32), "is_new_release": np.arange(N_TRACKS) < 10,
        "plays": plays, "listeners": listeners, "plays_last_week": plays // 4, **rates,
        "popularity_percentile": pd.Series(listeners).rank(pct=True).to_numpy(), "is_cold": plays == 0,
    }).sample(frac=1.0, random_state=1)  # fmt: skip
    warm = track_ids[plays > 0]
    item2vec = (warm, rng.normal(size=(len(warm), DIM)).astype(np.float32))
    audio = (track_ids[5:], rng.normal(size=(N_TRACKS - 5, DIM)).astype(np.float32))  # 5 unreadable clips
    two_tower_tracks = (track_ids, rng.normal(size=(N_TRACKS, TT_DIM)).astype(np.float32))
    user_ids = (50 + 13 * np.arange(N_USERS)).astype(np.int64)
    two_tower_users = (user_ids[:-1], rng.normal(size=(N_USERS - 1, TT_DIM)).astype(np.float32))  # last: no vector

    by_track = stats.set_index("track_id")
    profiles, candidates = [], []
    for i, user in enumerate(user_ids):
        n_recent = 0 if i == 0 else int(rng.integers(1, 50))  # user 0 has no history
        recent = rng.choice(warm, n_recent, replace=False)
        genres = by_track.loc[recent, "genre"].value_counts(normalize=True)
        artists = by_track.loc[recent, "artist_id"].value_counts()
        # Saves among the positives; early skips elsewhere, cold tracks (audio vector only) included.
        saved = recent[: int(rng.integers(0, 6))] if i % 5 else recent[:0]  # every 5th user: no saves
        skipped = rng.choice(np.setdiff1d(track_ids, recent), 0 if i % 4 == 0 else int(rng.integers(1, 8)),
                             replace=False)  # every 4th user: no early skips
        user_rates = {f"user_{name}": float(v) for name, v in zip(OUTCOME_RATE_NAMES, rng.uniform(0, 0.5, 3), strict=True)}
        outcomes = [{"genre": g, "plays": 9, "saves": 1, "skips": 3, "early_skips": 2,
                     **dict(zip(OUTCOME_RATE_NAMES, rng.uniform(0, 0.6, 3).tolist(), strict=True))} for g in genres.index]
        profiles.append({
            "user_id": user, "is_new_user": i % 7 == 0, "positives": n_recent * 2, "weeks_active": min(n_recent, 4),
            "history_level": "none" if n_recent == 0 else ("light" if n_recent < 20 else "medium"),
            "recent_tracks": recent, "genre_share": [{"genre": g, "share": float(s)} for g, s in genres.items()],
            "top_artists": artists.index.to_numpy()[:10],
            "mean_popularity_percentile": by_track.loc[recent, "popularity_percentile"].mean() if n_recent else np.nan,
            "saved_tracks": saved, "early_skipped_tracks": skipped, **user_rates, "genre_outcomes": outcomes,
        })  # fmt: skip
        tracks = rng.choice(np.setdiff1d(track_ids, recent), PER_USER, replace=False)
        member = rng.random((3, PER_USER)) < np.array([[0.7], [0.4], [0.2]])
        member[0, ~member.any(axis=0)] = True
        if i == N_USERS - 1:  # no user vector: no two-tower candidates
            member[1] |= member[0]
            member[0] = False
        frame = {"user_id": np.full(PER_USER, user), "track_id": tracks}
        for s, source in enumerate(("two_tower", "item2vec", "audio")):
            frame[f"{source}_rank"] = np.where(member[s], np.cumsum(member[s]), 0).astype(np.int32)
            frame[f"{source}_score"] = np.where(member[s], rng.uniform(0.2, 1.0, PER_USER), np.nan).astype(np.float32)
        candidates.append(pd.DataFrame(frame))
    candidates = pd.concat(candidates, ignore_index=True)
    candidates.index = candidates.index * 3 + 11  # a non-default index must be kept
    return {
        "stats": stats, "profiles": pd.DataFrame(profiles), "candidates": candidates, "item2vec": item2vec,
        "audio": audio, "two_tower_users": two_tower_users, "two_tower_tracks": two_tower_tracks,
    }  # fmt: skip


@pytest.fixture(scope="module")
def context(world) -> FeatureContext:
    return FeatureContext.build(
        world["profiles"], world["stats"], world["item2vec"], world["audio"],
        world["two_tower_users"], world["two_tower_tracks"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def features(world, context) -> pd.DataFrame:
    return build_ranker_features(world["candidates"], context)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


# ---------------------------------------------------------------------------- features


def test_feature_matrix_is_float32_in_fixed_order_one_row_per_candidate(world, features):
    candidates = world["candidates"]
    assert list(features.columns) == list(FEATURE_NAMES)
    assert (features.dtypes == np.float32).all()
    assert features.index.equals(candidates.index)
    # Only "does not apply" features may be missing, and only where they do not apply.
    for name in set(FEATURE_NAMES) - NULLABLE_FEATURES:
        assert np.isfinite(features[name]).all(), name
    for source in ("two_tower", "item2vec", "audio"):
        absent = candidates[f"{source}_rank"].to_numpy() == 0
        assert features[f"{source}_rank"].isna().to_numpy()[~absent].sum() == 0
        assert features[f"{source}_rank"].isna().to_numpy()[absent].all()
    cold = world["stats"].loc[world["stats"]["is_cold"], "track_id"]
    assert features.loc[candidates["track_id"].isin(cold), "item2vec_affinity"].isna().all()
    assert features.loc[~candidates["track_id"].isin(cold) & (candidates["user_id"] != 50), "item2vec_affinity"].notna().all()


def test_features_are_identical_whichever_way_the_inputs_arrive(world, context, features):
    """Training and inference, broadcast or per-batch users, any batching: the same numbers."""
    candidates = world["candidates"]
    # Serialized for executors.
    reopened = FeatureContext.from_bytes(context.to_bytes())
    pd.testing.assert_frame_equal(build_ranker_features(candidates, reopened), features)
    # Track-only context, each batch bringing its users' profiles and two-tower vectors as columns.
    user_ids, vectors = world["two_tower_users"]
    users = world["profiles"].copy()
    users["user_vector"] = [vectors[user_ids == u][0] if (user_ids == u).any() else None for u in users["user_id"]]
    track_only = FeatureContext.from_bytes(context.without_users().to_bytes())
    shuffled = candidates.sample(frac=1.0, random_state=3)
    batches = []
    for part in np.array_split(np.arange(len(shuffled)), 4):  # splits users' candidates across batches
        batch = shuffled.iloc[part]
        batch_users = users[users["user_id"].isin(batch["user_id"])].sample(frac=1.0, random_state=4)
        batches.append(build_ranker_features(batch, track_only, users=batch_users))
    pd.testing.assert_frame_equal(pd.concat(batches).loc[candidates.index], features)
    # And the same call twice.
    pd.testing.assert_frame_equal(build_ranker_features(candidates, context), features)


def test_features_mean_what_their_names_say(world, features):
    stats = world["stats"].set_index("track_id")
    profiles = world["profiles"].set_index("user_id")
    i2v = dict(zip(*world["item2vec"], strict=True))
    audio = dict(zip(*world["audio"], strict=True))
    tt_users = dict(zip(*world["two_tower_users"], strict=True))
    tt_tracks = dict(zip(*world["two_tower_tracks"], strict=True))
    rows = world["candidates"].sample(200, random_state=5)
    for index, row in rows.iterrows():
        got = features.loc[index]
        user, track = profiles.loc[row.user_id], stats.loc[row.track_id]
        recent = user["recent_tracks"]
        if row.user_id in tt_users:
            assert got["two_tower_score"] == pytest.approx(float(tt_users[row.user_id] @ tt_tracks[row.track_id]), abs=1e-4)
        with_vectors = [t for t in recent if t in i2v]
        if with_vectors and row.track_id in i2v:
            taste = _unit(np.mean([_unit(i2v[t]) for t in with_vectors], axis=0))
            assert got["item2vec_affinity"] == pytest.approx(float(taste @ _unit(i2v[row.track_id])), abs=1e-4)
        if with_vectors and row.track_id in audio:
            taste = _unit(np.mean([_unit(audio[t]) for t in recent if t in audio], axis=0))
            assert got["audio_affinity"] == pytest.approx(float(taste @ _unit(audio[row.track_id])), abs=1e-4)
        same_artist = np.mean(stats.loc[recent, "artist_id"].to_numpy() == track["artist_id"]) if len(recent) else 0.0
        assert got["artist_history_share"] == pytest.approx(same_artist, abs=1e-6)
        assert got["is_top_artist"] == float(track["artist_id"] in set(user["top_artists"]))
        shares = {g["genre"]: g["share"] for g in user["genre_share"]}
        assert got["genre_share"] == pytest.approx(shares.get(track["genre"], 0.0), abs=1e-6)
        assert got["popularity_percentile"] == pytest.approx(track["popularity_percentile"], abs=1e-6)
        assert got["log_plays"] == pytest.approx(np.log1p(track["plays"]), abs=1e-5)
        assert got["list_position"] == 1.0  # inference: every candidate scored at full attention
        if len(recent):
            gap = track["popularity_percentile"] - user["mean_popularity_percentile"]
            assert got["popularity_gap"] == pytest.approx(gap, abs=1e-5)
        else:
            assert np.isnan(got["popularity_gap"]) and got["history_level"] == 0


def test_artist_features_shrink_track_rates_and_reach_tracks_through_their_artist(world, context, features):
    stats = world["stats"].set_index("track_id")
    profiles = world["profiles"].set_index("user_id")
    audio = dict(zip(*world["audio"], strict=True))
    i2v = dict(zip(*world["item2vec"], strict=True))
    plays = stats["plays"].to_numpy(float)
    for name in ("save_rate", "skip_rate", "early_skip_rate"):
        rate = np.nan_to_num(stats[name].to_numpy(float))
        hits = pd.Series(rate * plays).groupby(stats["artist_id"].to_numpy()).sum()
        artist_plays = pd.Series(plays).groupby(stats["artist_id"].to_numpy()).sum()
        got = features.groupby(world["candidates"]["track_id"].map(stats["artist_id"]))[f"artist_{name}"].first()
        # Shrunk toward the catalog's rate: between it and the artist's own rate.
        overall = (rate * plays).sum() / plays.sum()
        own = (hits / artist_plays).reindex(got.index)
        assert ((got - overall) * (own - overall) >= -1e-6).all() and ((got - own).abs() <= (overall - own).abs() + 1e-6).all()
    rows = world["candidates"].sample(120, random_state=3)
    for index, row in rows.iterrows():
        got, track = features.loc[index], stats.loc[row.track_id]
        if track["plays"] == 0:  # a track nobody has played gets its artist's rates
            assert got["shrunk_save_rate"] == pytest.approx(got["artist_save_rate"], abs=1e-6)
        recent = [t for t in profiles.loc[row.user_id, "recent_tracks"] if t in audio]
        if recent and row.track_id in audio:
            nearest = max(float(_unit(audio[t]) @ _unit(audio[row.track_id])) for t in recent)
            assert got["audio_max_similarity"] == pytest.approx(nearest, abs=1e-4)
            taste = _unit(np.mean([_unit(audio[t]) for t in recent], axis=0))
            artist_tracks = [t for t in stats.index[stats["artist_id"] == track["artist_id"]] if t in audio]
            centroid = _unit(np.mean([_unit(audio[t]) for t in artist_tracks], axis=0))
            assert got["artist_audio_affinity"] == pytest.approx(float(taste @ centroid), abs=1e-4)
        elif not any(t in i2v for t in profiles.loc[row.user_id, "recent_tracks"]):
            assert np.isnan(got["item2vec_max_similarity"])


def test_contrastive_taste_and_genre_outcomes_mean_what_their_names_say(world, features):
    """Contrast = cos to the saved centroid - cos to the early-skipped centroid (a side without tracks
    counts 0; NaN with neither), nearest saved track, and the user's shrunk rates in the track's genre
    (the user's overall rates in a genre they never played)."""
    stats = world["stats"].set_index("track_id")
    profiles = world["profiles"].set_index("user_id")
    spaces = {"item2vec": dict(zip(*world["item2vec"], strict=True)), "audio": dict(zip(*world["audio"], strict=True))}
    checked = {"contrast": 0, "nan": 0, "fallback": 0}
    for index, row in world["candidates"].sample(800, random_state=7).iterrows():
        got, user, genre = features.loc[index], profiles.loc[row.user_id], stats.loc[row.track_id, "genre"]
        for space, vectors in spaces.items():
            saved = [_unit(vectors[t]) for t in user["saved_tracks"] if t in vectors]
            skipped = [_unit(vectors[t]) for t in user["early_skipped_tracks"] if t in vectors]
            if row.track_id not in vectors or not (saved or skipped):
                assert np.isnan(got[f"{space}_contrast"])
                checked["nan"] += 1
                continue
            track = _unit(vectors[row.track_id])
            side = [float(track @ _unit(np.mean(v, axis=0))) if v else 0.0 for v in (saved, skipped)]
            assert got[f"{space}_contrast"] == pytest.approx(side[0] - side[1], abs=1e-4)
            checked["contrast"] += 1
            nearest = max((float(track @ v) for v in saved), default=np.nan)
            np.testing.assert_allclose(got[f"{space}_saved_max_similarity"], nearest, atol=1e-4)
        rates = {o["genre"]: o for o in user["genre_outcomes"]}
        for name in OUTCOME_RATE_NAMES:
            want = rates[genre][name] if genre in rates else user[f"user_{name}"]
            assert got[f"user_genre_{name}"] == pytest.approx(want, abs=1e-6)
        checked["fallback"] += genre not in rates
    assert min(checked.values()) > 0, checked


def test_unknown_users_and_tracks_get_missing_features_not_errors(world, context):
    batch = world["candidates"].head(3).copy()
    batch.loc[batch.index[0], "user_id"] = 999_999  # no profile
    batch.loc[batch.index[1], "track_id"] = 999_999  # not in the catalog
    features = build_ranker_features(batch, context)
    assert features.iloc[0][["history_level", "genre_share", "item2vec_affinity", "user_genre_save_rate",
                              "audio_contrast"]].isna().all()
    assert features.iloc[1][["popularity_percentile", "genre_share", "audio_affinity", "user_genre_skip_rate",
                             "item2vec_saved_max_similarity"]].isna().all()
    assert np.isfinite(features.iloc[2][["history_level", "popularity_percentile", "genre_share"]]).all()


# ---------------------------------------------------------------------------- labels and position bias


def _plays(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "track_id", "is_positive", "saved", "context", "position"])
    frame["ts"] = pd.Timestamp("2026-01-27 12:00", tz="UTC")
    return frame


def test_labels_come_from_the_next_weeks_positives_of_the_same_user():
    candidates = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "track_id": [10, 11, 12, 10, 13]}, index=[5, 6, 7, 8, 9])
    nxt = _plays([
        (1, 10, True, False, "radio", None),
        (1, 11, False, False, "radio", None),  # played, skipped: not a positive
        (1, 12, True, True, "search", None),  # saved
        (1, 12, False, False, "search", None),  # a later skip does not undo the save
        (3, 13, True, False, "radio", None),  # another user's positive
    ])  # fmt: skip
    labels = training_labels(candidates, nxt)
    assert labels.index.equals(candidates.index)
    assert labels.tolist() == [1, 0, 1, 0, 0]
    assert training_labels(candidates, nxt, graded=True).tolist() == [1, 0, 2, 0, 0]


def test_outcome_labels_grade_what_the_heard_track_did():
    candidates = pd.DataFrame({"user_id": [1, 1, 1, 1, 1, 2], "track_id": [10, 11, 12, 13, 14, 10]})
    rows = [  # user, track, positive, saved, early skip, skip
        (1, 10, False, False, True, True),  # early skip
        (1, 11, False, False, False, True),  # short skip
        (1, 12, True, False, False, True),  # late skip
        (1, 13, True, False, False, False),  # full play
        (1, 13, False, False, True, True),  # a later early skip does not undo the full play
        (1, 14, True, True, False, False),  # saved
    ]
    nxt = pd.DataFrame(rows, columns=["user_id", "track_id", "is_positive", "saved", "is_early_skip", "is_skip"])
    assert training_labels(candidates, nxt, scheme="outcome").tolist() == [0, 1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="is_early_skip"):
        training_labels(candidates, nxt.drop(columns="is_early_skip"), scheme="outcome")


def test_regression_on_outcome_values_learns_expected_value_and_scores_in_0_1():
    features, labels, user_ids = _signal_week()
    grades = np.where(labels > 0, 4, np.where(features["genre_share"].to_numpy() < 0, 0, 2)).astype(np.int32)
    config = replace(FAST, label_scheme="outcome", objective="regression")
    ranker = train_ranker(features, grades, user_ids, config)
    assert next(iter(ranker.report["feature_importance"])) == "genre_share"
    scores = ranker.predict(features)
    assert scores.dtype == np.float32 and ((scores > 0) & (scores < 1)).all()  # logistic of the expected value
    loaded = TrainedRanker.from_bytes(ranker.to_bytes())
    np.testing.assert_array_equal(loaded.predict(features), scores)
    with pytest.raises(ValueError, match="label_scheme='outcome'"):
        RankerConfig(label_scheme="positive")
    with pytest.raises(ValueError, match="graded objective"):
        RankerConfig(objective="binary")


def test_position_propensity_recovers_decaying_attention_of_the_discovery_list():
    """Simulated discovery lists, track quality independent of position: the estimate from the
    logged plays alone matches the hidden share of lists that reached each position."""
    rng = np.random.default_rng(1)
    n_lists, size = 3_000, 30
    list_id = np.repeat(np.arange(n_lists), size)
    position = np.tile(np.arange(1, size + 1), n_lists)
    outcomes = listen(rng.uniform(0.3, 0.9, len(list_id)), np.full(len(list_id), 200_000), position, rng)
    reached = reach(list_id, position, outcomes, rng)
    logs = pd.DataFrame({
        "user_id": list_id[reached], "track_id": rng.integers(0, 10_000, int(reached.sum())),
        "context": "discover_weekly", "position": position[reached].astype(float),
        "is_positive": outcomes.positive[reached], "ts": pd.Timestamp("2026-01-28", tz="UTC"),
    })  # fmt: skip
    organic = logs.head(500).assign(context="radio", position=np.nan)  # no position: ignored
    propensity = position_propensity(pd.concat([logs, organic]), min_propensity=0.01)
    hidden = np.bincount(position[reached] - 1, minlength=size) / n_lists
    assert propensity[0] == 1.0
    assert (np.diff(propensity) <= 0).all()
    assert propensity[9] < 0.8 and propensity[29] < 0.5 * propensity[9]  # attention clearly decays
    np.testing.assert_allclose(propensity, np.maximum(hidden, 0.01), atol=0.02)
    assert position_propensity(logs, min_propensity=0.2).min() == 0.2  # clipped: bounded weights
    assert (position_propensity(organic) == 1.0).all()  # no list logs: no correction


def test_positives_seen_deep_in_the_list_weigh_more():
    propensity = np.linspace(1.0, 0.1, 30)
    candidates = pd.DataFrame({"user_id": [1, 1, 1, 1, 1], "track_id": [10, 11, 12, 13, 14]})
    nxt = _plays([
        (1, 10, True, False, "discover_weekly", 1),
        (1, 11, True, False, "discover_weekly", 20),
        (1, 12, True, False, "discover_weekly", 25),
        (1, 12, True, False, "radio", None),  # also found on its own: its discovery did not need the list
        (1, 13, False, False, "discover_weekly", 30),  # reached but skipped: a negative
    ])  # fmt: skip
    weights = position_weights(candidates, nxt, propensity)
    np.testing.assert_allclose(weights.to_numpy(), [1.0, 1.0 / propensity[19], 1.0, 1.0, 1.0], rtol=1e-6)


def test_training_examples_are_the_heard_candidates_with_the_slot_they_were_heard_at(world, context):
    candidates = world["candidates"]
    a, b, c = candidates.index[:3]  # three candidates of one user
    rows = candidates.loc[[a, b, c]]
    nxt = _plays([
        (rows.loc[a, "user_id"], 1, True, False, "discover_weekly", 1),  # the list's first track, not a candidate
        (rows.loc[a, "user_id"], rows.loc[a, "track_id"], True, False, "discover_weekly", 7),
        (rows.loc[b, "user_id"], rows.loc[b, "track_id"], False, False, "discover_weekly", 12),  # heard, skipped
        (rows.loc[c, "user_id"], rows.loc[c, "track_id"], True, False, "radio", None),
        (rows.loc[c, "user_id"], rows.loc[c, "track_id"], False, False, "discover_weekly", 3),
        (999, 1, True, False, "radio", None),  # not a candidate
    ])  # fmt: skip
    exposure = observed_exposure(candidates, nxt)
    assert exposure.index[exposure["exposed"]].tolist() == [a, b, c]
    examples, labels, weights = training_examples(candidates, nxt)
    assert examples.index.tolist() == [a, b, c] and labels.tolist() == [1, 0, 1] and (weights == 1.0).all()
    features = build_ranker_features(examples, context)
    assert features["list_position"].tolist() == [7.0, 12.0, 1.0]  # c was also found on the radio
    # The other design: every candidate, unheard ones as negatives, list positives re-weighted.
    examples, labels, weights = training_examples(candidates, nxt, rows="all", min_propensity=0.5)
    assert len(examples) == len(candidates) and labels.sum() == 2 and "list_position" not in examples
    assert weights.loc[a] == 2.0 and (weights.drop(a) == 1.0).all()  # one list, slot 2 unreached: floor 0.5


# ---------------------------------------------------------------------------- the ranker


def _signal_week(n_users: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features where only ``genre_share`` drives relevance and the retrieval score is a noisy copy of it.

    Rows are shuffled so a user's candidates are not contiguous.
    """
    rng = np.random.default_rng(seed)
    n = n_users * PER_USER
    features = pd.DataFrame(rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32), columns=list(FEATURE_NAMES))
    user_ids = np.repeat(10 + 3 * np.arange(n_users), PER_USER)
    relevance = features["genre_share"].to_numpy()
    features["two_tower_score"] = (0.3 * relevance + rng.normal(size=n)).astype(np.float32)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-(3.0 * relevance - 4.5)))).astype(np.int32)
    order = rng.permutation(n)
    return features.iloc[order].reset_index(drop=True), labels[order], user_ids[order]


def test_ranker_learns_the_feature_that_carries_the_signal_and_beats_the_retrieval_order():
    features, labels, user_ids = _signal_week()
    ranker = train_ranker(features, labels, user_ids, FAST)
    report = ranker.report
    assert next(iter(report["feature_importance"])) == "genre_share"
    assert report["validation_ndcg"] > report["baseline_ndcg"] + 0.1
    positives_per_user = pd.Series(labels).groupby(user_ids).sum()
    assert report["users_without_positives"] == int((positives_per_user == 0).sum()) > 0
    assert report["validation_users"] > 0 and 0 < report["best_iteration"] <= FAST.n_estimators
    scores = ranker.predict(features)
    assert scores.dtype == np.float32 and ((scores > 0) & (scores < 1)).all()  # binary: P(positive)
    # On a fresh week of the same world, too.
    fresh, fresh_labels, fresh_users = _signal_week(seed=1)
    model = ndcg_at_k(ranker.predict(fresh), fresh_labels, fresh_users)
    assert model > ndcg_at_k(fresh["two_tower_score"].to_numpy(), fresh_labels, fresh_users) + 0.1


def test_constrained_features_never_lower_the_score_as_they_rise():
    # genre_share carries the signal; audio_affinity is +1-constrained noise; early-skip rates -1.
    features, labels, user_ids = _signal_week()
    ranker = train_ranker(features, labels, user_ids, FAST)
    unconstrained = train_ranker(features, labels, user_ids, replace(FAST, monotone=False))
    rows = features.iloc[:200]
    for name, direction in (("genre_share", 1), ("audio_affinity", 1), ("artist_early_skip_rate", -1)):
        grid = np.linspace(-3, 3, 13, dtype=np.float32)
        scores = np.stack([ranker.predict(rows.assign(**{name: value})) for value in grid])
        assert (direction * np.diff(scores, axis=0) >= -1e-6).all(), name
    # The noise feature is not monotone for the unconstrained model: the constraint did something.
    grid = np.linspace(-3, 3, 13, dtype=np.float32)
    free = np.stack([unconstrained.predict(rows.assign(audio_affinity=value)) for value in grid])
    assert (np.diff(free, axis=0) < -1e-6).any()


def test_ranking_objective_and_sample_weights_train_too():
    features, labels, user_ids = _signal_week()
    weights = np.where(labels > 0, 2.0, 1.0)
    ranker = train_ranker(features, labels, user_ids, replace(FAST, objective="lambdarank"), weights)
    assert next(iter(ranker.report["feature_importance"])) == "genre_share"
    assert ranker.report["validation_ndcg"] > ranker.report["baseline_ndcg"] + 0.1
    assert ranker.predict(features).dtype == np.float32
    # Users without a positive have no pair to order: dropped from training and validation.
    positives_per_user = pd.Series(labels).groupby(user_ids).sum()
    report = ranker.report
    assert report["users_without_positives"] == int((positives_per_user == 0).sum()) > 0
    assert report["train_users"] + report["validation_users"] == int((positives_per_user > 0).sum())


def test_ranker_is_deterministic_and_round_trips_through_bytes():
    features, labels, user_ids = _signal_week()
    first = train_ranker(features, labels, user_ids, FAST)
    second = train_ranker(features, labels, user_ids, FAST)
    assert first.model_text == second.model_text
    scores = first.predict(features)
    np.testing.assert_array_equal(scores, second.predict(features))
    loaded = TrainedRanker.from_bytes(first.to_bytes())
    np.testing.assert_array_equal(loaded.predict(features), scores)
    assert loaded.feature_names == list(FEATURE_NAMES) and loaded.report == first.report
    # Columns are taken by name, whatever their order.
    np.testing.assert_array_equal(loaded.predict(features[features.columns[::-1]]), scores)
    with pytest.raises(ValueError, match="lack columns"):
        loaded.predict(features.drop(columns=["genre_share"]))


def test_compiled_trees_score_like_lightgbm_and_are_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("DW_COMPILE_CACHE", str(tmp_path))
    features, labels, user_ids = _signal_week()
    ranker = train_ranker(features, labels, user_ids, FAST)
    booster = ranker.predict(features, engine="lightgbm")
    compiled = ranker.predict(features, engine="compiled")
    np.testing.assert_allclose(compiled, booster, rtol=1e-6, atol=1e-7)
    assert np.array_equal(np.argsort(-compiled, kind="stable"), np.argsort(-booster, kind="stable"))
    assert len(list((tmp_path / "dw_compiled_trees").glob("*.o"))) == 1  # compiled once, then cached
    again = TrainedRanker.from_bytes(ranker.to_bytes())  # a new process's model: loads the cached object file
    np.testing.assert_array_equal(again.predict(features, engine="auto"), compiled)
    assert len(list((tmp_path / "dw_compiled_trees").glob("*.o"))) == 1
    with pytest.raises(ValueError, match="engine"):
        ranker.predict(features, engine="treelite")


def test_training_cost_is_bounded_by_user_cap_and_negative_sampling():
    features, labels, user_ids = _signal_week()
    config = replace(FAST, max_training_users=50, negatives_per_user=5)
    report = train_ranker(features, labels, user_ids, config).report
    assert report["train_users"] == 50
    assert report["train_rows"] - report["train_positives"] == 5 * 50  # every positive kept, 5 negatives each
    assert report["validation_rows"] == PER_USER * report["validation_users"]  # validation lists stay whole


def test_ndcg_counts_only_users_with_a_positive():
    scores = np.array([3.0, 2.0, 1.0, 5.0, 4.0, 0.5, 0.2])
    labels = np.array([0, 1, 0, 0, 0, 1, 0])
    users = np.array([1, 1, 1, 2, 2, 3, 3])  # user 2 has no positive
    expected = (1.0 / np.log2(3.0) + 1.0) / 2.0
    assert ndcg_at_k(scores, labels, users, k=30) == pytest.approx(expected)
    assert ndcg_at_k(scores, labels, users, k=1) == pytest.approx(0.5)


def _confounded_week(seed: int, n_users: int = 300) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """A week where popularity decides what a user hears and ``genre_share`` decides what they like.

    Returns (candidates, their features, next week's plays, would-like bool[n])."""
    rng = np.random.default_rng(seed)
    n = n_users * PER_USER
    # The two columns that matter are drawn first, so adding features only adds noise columns.
    signal = {name: rng.normal(size=n).astype(np.float32) for name in ("log_plays", "genre_share")}
    noise = np.random.default_rng(seed + 1_000).normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    features = pd.DataFrame(noise, columns=list(FEATURE_NAMES)).assign(**signal)
    features["list_position"] = 1.0
    candidates = pd.DataFrame({"user_id": np.repeat(np.arange(n_users) + 1, PER_USER),
                               "track_id": np.tile(np.arange(PER_USER) + 100, n_users)})  # fmt: skip
    heard = rng.random(n) < 1.0 / (1.0 + np.exp(-(2.5 * features["log_plays"].to_numpy() - 2.0)))
    likes = rng.random(n) < 1.0 / (1.0 + np.exp(-2.5 * features["genre_share"].to_numpy()))
    plays = _plays([(u, t, bool(p), False, "radio", None) for u, t, p in
                    zip(candidates["user_id"][heard], candidates["track_id"][heard], likes[heard], strict=True)])  # fmt: skip
    return candidates, features, plays, likes


def test_rankers_trained_on_heard_tracks_rank_by_taste_and_on_all_candidates_by_exposure():
    """Why training_rows="exposed" is the default: a playlist decides what is heard."""
    fresh_candidates, fresh_features, _, fresh_likes = _confounded_week(seed=9)
    users = fresh_candidates["user_id"].to_numpy()
    candidates, features, plays, _ = _confounded_week(seed=8)
    quality = {}
    for rows in ("exposed", "all"):
        examples, labels, weights = training_examples(candidates, plays, rows=rows)
        # Unconstrained: this compares which rows teach taste; the constraints tame the noise columns
        # for both and are tested on their own.
        ranker = train_ranker(features.loc[examples.index], labels, examples["user_id"], replace(FAST, monotone=False), weights)
        quality[rows] = ndcg_at_k(ranker.predict(fresh_features), fresh_likes, users)
        top = next(iter(ranker.report["feature_importance"]))
        assert top == ("genre_share" if rows == "exposed" else "log_plays")
    assert quality["exposed"] > quality["all"] + 0.1


# ---------------------------------------------------------------------------- weeks pooled on the tiny lake


def _pool_inputs(lake, spark, weeks: list[str], labels: list[str]) -> list[dict]:
    """The pool's inputs keyed by week, as the IO manager gives them: the weeks the lake has."""
    def by_week(layer, name, keys, read):
        return {k: read(lake.uri(layer, name, k)) for k in keys if lake.exists(lake.uri(layer, name, k))}

    table = lambda uri: lake.read_spark(spark, [uri])  # noqa: E731
    return [by_week("gold", "candidates", weeks, table), by_week("silver", "interactions", labels, table),
            by_week("gold", "user_profiles", weeks, table), by_week("gold", "track_stats", weeks, lake.read_frame),
            by_week("models", "item2vec_embeddings", weeks, lake.read_frame),
            by_week("models", "audio_vectors", weeks, table), by_week("models", "user_embeddings", weeks, table),
            by_week("models", "track_embeddings", weeks, lake.read_frame)]


def test_pooled_weeks_are_each_featurized_as_of_their_own_week(tiny_world_run, spark):
    from dw_assets.calendar import shift_week
    from dw_assets.lake.storage import Lake
    from dw_assets.ranking.training import assemble_pool, pooled_training_set, train_pooled

    manifest = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())
    lake = Lake(str(tiny_world_run))
    # The fixture built the last training week W and W-1's candidates: W+1's ranker can pool W and W-1,
    # and W-2 (no candidates) is skipped.
    week = shift_week(manifest["last_training_week"], 1)
    earlier = [shift_week(week, -k) for k in (1, 2, 3)]
    assert lake.exists(lake.uri("silver", "interactions", week)), "the fixture ingests the holdout week"
    inputs = _pool_inputs(lake, spark, earlier, [week, *earlier])
    pool = assemble_pool(week, 3, *inputs)
    assert [p.week for p in pool] == earlier[:2]
    config = RankerConfig(pool_weeks=3, num_threads=1, n_estimators=30)
    rows = pooled_training_set(pool, config)
    assert [w["week"] for w in rows.weeks] == earlier[:2] and all(w["rows"] > 0 for w in rows.weeks)
    assert len(np.unique(rows.query_ids)) == sum(w["sampled_users"] for w in rows.weeks)
    # Each week's rows carry that week's statistics: a track's play count as of its own week.
    log_plays = rows.features["log_plays"].to_numpy()
    pooled = rows.query_ids >> 32
    plays = [p.track_stats.set_index("track_id")["plays"] for p in pool]
    for index, _ in enumerate(pool):
        mine = pooled == index
        expected = np.log1p(plays[index].reindex(rows.track_ids[mine]).to_numpy(np.float64))
        np.testing.assert_allclose(log_plays[mine], expected, rtol=1e-6)
    both = np.intersect1d(rows.track_ids[pooled == 0], rows.track_ids[pooled == 1])
    differ = (plays[0].loc[both].to_numpy() != plays[1].loc[both].to_numpy()).sum()
    assert differ > 0, "the same track's play count differs between the pooled weeks"
    # The caps hold for the pool: (user, week) pairs and rows together.
    capped = pooled_training_set(pool, replace(config, sample_users=40))
    assert sum(w["sampled_users"] for w in capped.weeks) <= 40
    # Same seeds, same model.
    first, _ = train_pooled(pool, config)
    second, _ = train_pooled(pool, config)
    assert first.model_text == second.model_text and first.report["pooled_weeks"] == rows.weeks


def test_the_ranker_asset_pools_the_weeks_its_config_asks_for(tiny_world_run, tmp_path):
    """ranker_model reads W-4 .. W-1 week by week (the IO manager's ``per_partition``) and pools the
    ``pool_weeks`` newest that have candidates; with one week it is the ranker of week W-1 alone."""
    import shutil

    from dagster import AssetSelection, DagsterInstance

    from dw_assets.automation.runner import run_selection
    from dw_assets.calendar import shift_week
    from dw_assets.lake.storage import Lake

    manifest = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())
    root = tmp_path / "lake"  # a copy: the session's lake stays as other tests expect it
    shutil.copytree(tiny_world_run, root, ignore=shutil.ignore_patterns("dagster_home", "serving"))
    week = shift_week(manifest["last_training_week"], 1)  # W-1 and W-2 have candidates, W-3 has not
    lake, reports = Lake(str(root)), {}
    for pool_weeks in (1, 3):
        ops = {"ranker_model": {"config": {"pool_weeks": pool_weeks, "n_estimators": 20}}}
        assert run_selection(AssetSelection.assets("ranker_model"), week, str(root), DagsterInstance.get(), ops).success
        reports[pool_weeks] = lake.read_artifact(lake.uri("models", "ranker_model", week)).meta["report"]
    assert [w["week"] for w in reports[1]["pooled_weeks"]] == [shift_week(week, -1)]
    assert [w["week"] for w in reports[3]["pooled_weeks"]] == [shift_week(week, -1), shift_week(week, -2)]
    assert reports[3]["train_rows"] > reports[1]["train_rows"]
