"""Cold start inside the two-tower, on a small synthetic world (seconds): id / artist dropout, uniform
catalog negatives with their logQ term, the popularity term folded into the inner product, and the one
warm-start rule shared by training and serving. Also the one batch recall@k."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dw_assets.calendar import week_bounds
from dw_assets.embeddings.two_tower import (
    LEGACY_CONFIG,
    TrainedTwoTower,
    TwoTowerConfig,
    TwoTowerModel,
    audio_anchor_neighbours,
    batch_loss,
    build_examples,
    build_tower_features,
    cold_popularity,
    dropout_masks,
    retrieve,
    train_two_tower,
    uniform_negatives,
    warm_start_cold_tracks,
)
from dw_assets.evaluation.holdout import recall_at_k, recall_of_lists

torch.set_num_threads(1)

WEEK = "2026-01-26"
N_TRACKS, N_USERS, N_GENRES, D_AUDIO = 120, 40, 4, 8
CONFIG = TwoTowerConfig(dim=8, id_dim=8, hidden=16, epochs=2, batch_size=64, history_len=10, cold_neighbours=4,
                        recall_k=20, id_dropout=0.3, artist_dropout=0.2, uniform_negatives=16,
                        popularity_term=True, popularity_weight=0.7, threads=1)


def synthetic_world(seed: int = 0) -> dict:
    """Users who like one genre each; tracks 100.. 119 never played (cold, a few by a new artist)."""
    rng = np.random.default_rng(seed)
    track_ids = np.arange(1, N_TRACKS + 1, dtype=np.int64)
    genre = rng.integers(0, N_GENRES, N_TRACKS)
    artist = rng.integers(1, 30, N_TRACKS)
    artist[-3:] = 99  # a debut artist: all its tracks are cold
    audio = (np.eye(N_GENRES, D_AUDIO)[genre] + 0.3 * rng.standard_normal((N_TRACKS, D_AUDIO))).astype(np.float32)
    played = np.arange(N_TRACKS) < 100
    _, end = week_bounds(WEEK)
    end = pd.Timestamp(end)
    rows = []
    for user in range(1, N_USERS + 1):
        liked = np.flatnonzero(played & (genre == user % N_GENRES))
        for j, track in enumerate(rng.choice(liked, 25)):
            ts = end - pd.Timedelta(days=float(rng.uniform(0.1, 60)))
            rows.append((user, int(track_ids[track]), ts, True, False, 1.0, f"{user}:{j}", f"g{genre[track]}",
                         int(artist[track])))
        other = np.flatnonzero(played & (genre != user % N_GENRES))
        for j, track in enumerate(rng.choice(other, 5)):
            ts = end - pd.Timedelta(days=float(rng.uniform(0.1, 60)))
            rows.append((user, int(track_ids[track]), ts, False, True, -1.0, f"{user}:s{j}", f"g{genre[track]}",
                         int(artist[track])))
    interactions = pd.DataFrame(rows, columns=["user_id", "track_id", "ts", "is_positive", "is_early_skip", "weight",
                                               "session_id", "genre", "artist_id"])
    interactions["ts"] = pd.to_datetime(interactions["ts"], utc=True)
    counts = interactions.groupby("track_id").agg(plays=("user_id", "size"), listeners=("user_id", "nunique"))
    stats = pd.DataFrame({"track_id": track_ids, "artist_id": artist, "genre": [f"g{g}" for g in genre],
                          "age_days": rng.integers(0, 400, N_TRACKS)}).join(counts, on="track_id")
    stats = stats.fillna({"plays": 0, "listeners": 0})
    stats["is_cold"] = stats["plays"] == 0
    positives = interactions[interactions["is_positive"]].sort_values("ts", ascending=False)
    recent = positives.drop_duplicates(["user_id", "track_id"]).groupby("user_id")["track_id"].apply(list)
    profiles = pd.DataFrame({"user_id": np.arange(1, N_USERS + 1), "country": "SE", "birth_year": 1990.0,
                             "events": 30})
    profiles["recent_tracks"] = [recent.get(u, [])[: CONFIG.history_len] for u in profiles["user_id"]]
    profiles["recent_age_days"] = [[1.0] * len(t) for t in profiles["recent_tracks"]]
    profiles["genre_share"] = [[{"genre": f"g{u % N_GENRES}", "share": 1.0}] for u in profiles["user_id"]]
    features = build_tower_features(interactions, profiles, stats, track_ids, audio, WEEK, CONFIG)
    return dict(interactions=interactions, stats=stats, profiles=profiles, features=features,
                examples=build_examples(interactions, features, CONFIG))


@pytest.fixture(scope="module")
def world():
    return synthetic_world()


@pytest.fixture(scope="module")
def trained(world) -> TrainedTwoTower:
    return train_two_tower(world["features"], world["examples"], CONFIG)


def test_dropout_masks_draw_the_configured_shares_and_are_seeded():
    config = dataclasses.replace(CONFIG, id_dropout=0.3, artist_dropout=0.1)
    drop_id, drop_artist = dropout_masks(np.random.default_rng(5), 20_000, config)
    assert abs(float(drop_id.float().mean()) - 0.3) < 0.02 and abs(float(drop_artist.float().mean()) - 0.1) < 0.01
    assert abs(float((drop_id & drop_artist).float().mean()) - 0.03) < 0.01  # independent draws
    again = dropout_masks(np.random.default_rng(5), 20_000, config)
    assert torch.equal(again[0], drop_id) and torch.equal(again[1], drop_artist)
    off = dataclasses.replace(CONFIG, id_dropout=0.0, artist_dropout=0.0)
    rng = np.random.default_rng(5)
    assert dropout_masks(rng, 100, off) is None and uniform_negatives(rng, 100, 0) is None
    assert rng.random() == np.random.default_rng(5).random()  # off: the stream is untouched


def _model_with_warm_starts(world) -> tuple[TwoTowerModel, np.ndarray]:
    features = world["features"]
    torch.manual_seed(0)
    model = TwoTowerModel(features, CONFIG)
    with torch.no_grad():
        model.popularity.weight.normal_()  # b starts at 0 in training: give it a slope to move
    learnt = ~features.track_is_cold
    anchors = np.flatnonzero(learnt & ~features.track_audio_missing)
    found = audio_anchor_neighbours(features, anchors, np.arange(features.n_tracks), CONFIG.cold_neighbours)
    model.set_warm_starts(found.anchors, found.weights, learnt)
    return model, learnt


def test_dropout_replaces_the_id_and_popularity_of_the_chosen_items_only(world):
    model, learnt = _model_with_warm_starts(world)
    rows = torch.as_tensor(np.flatnonzero(learnt)[:30])
    drop = torch.zeros(30, dtype=torch.bool)
    drop[::3] = True
    no_artist = torch.zeros(30, dtype=torch.bool)
    no_artist[1::5] = True
    with torch.no_grad():
        v, b = model.item_parts(rows, drop, no_artist)
        ids = torch.where(drop[:, None], model.warm_start_ids(rows), model.track_id(rows))
        popularity = torch.where(drop[:, None], cold_popularity(model.track_popularity[rows]), model.track_popularity[rows])
        artist = model.track_artist[rows].masked_fill(no_artist, 0)
        ev, eb = model.encode_items(ids, model.track_audio[rows], artist, model.track_genre[rows], popularity)
        plain_v, plain_b = model.item_parts(rows)
    assert torch.allclose(v, ev) and torch.allclose(b, eb)
    changed = ~torch.isclose(v, plain_v).all(-1)
    assert torch.equal(changed, drop | no_artist)  # exactly the chosen items differ from their plain vectors
    assert torch.equal(~torch.isclose(b, plain_b), drop)  # b moves with the popularity inputs only
    assert (model.track_artist[rows][no_artist] > 0).all()
    # A cold track's popularity inputs: no listeners, no plays, its own age.
    cold = cold_popularity(model.track_popularity[rows])
    assert (cold[:, :2] == 0).all() and torch.equal(cold[:, 2], model.track_popularity[rows][:, 2])


def test_an_anchor_is_never_its_own_neighbour_and_pools_follow_the_genre(world):
    features = world["features"]
    anchors = np.flatnonzero(~features.track_is_cold)
    found = audio_anchor_neighbours(features, anchors, np.arange(features.n_tracks), CONFIG.cold_neighbours)
    assert len(found.rows) == features.n_tracks
    assert not (found.anchors == found.rows[:, None]).any()
    assert np.isin(found.anchors, anchors).all() and np.allclose(found.weights.sum(1), 1.0)
    same = features.track_genre[found.anchors] == features.track_genre[found.rows][:, None]
    assert found.same_genre.all() and same.all()


def test_the_serving_warm_start_is_the_training_warm_start(world, trained):
    features = world["features"]
    model = TrainedTwoTower.from_bytes(trained.to_bytes())
    learnt = model.trained_tracks
    cold = features.track_ids[features.track_is_cold]
    untrained = np.flatnonzero(~learnt)
    anchors = np.flatnonzero(learnt & ~features.track_is_cold & ~features.track_audio_missing)
    found = audio_anchor_neighbours(features, anchors, np.arange(features.n_tracks), CONFIG.cold_neighbours)
    model.model.set_warm_starts(found.anchors, found.weights, learnt)
    with torch.no_grad():
        training = model.model.warm_start_ids(torch.as_tensor(untrained)).clone()
        v_training = model.model.serving_item_vectors(torch.as_tensor(untrained)).clone()
    model.model.set_warm_starts(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), np.zeros(0, bool))
    stats = warm_start_cold_tracks(model, cold, CONFIG.cold_neighbours)
    assert stats["cold_tracks"] == len(cold) and stats["cold_tracks"] + stats["untrained_tracks"] == len(untrained)
    serving = model.model.track_id.weight[torch.as_tensor(untrained)].detach()
    torch.testing.assert_close(serving, training, rtol=0, atol=1e-6)
    rows = features.track_rows(model.track_vectors()[0])
    torch.testing.assert_close(torch.as_tensor(model.track_vectors()[1][rows[untrained]]), v_training,
                               rtol=0, atol=1e-5)


def test_uniform_negatives_cover_never_played_tracks_with_their_logq_term(world):
    features = world["features"]
    cold = np.flatnonzero(features.track_is_cold)
    drawn = np.concatenate([uniform_negatives(np.random.default_rng(s), features.n_tracks, 64).numpy()
                            for s in range(20)])
    assert np.isin(cold, drawn).mean() > 0.9  # uniform over the catalog: never-played tracks are drawn
    assert abs(np.isin(drawn, cold).mean() - len(cold) / features.n_tracks) < 0.05

    # The loss by hand: every column subtracts log(q_j + M / (B n)); the positive's own draw is masked.
    torch.manual_seed(0)
    model = TwoTowerModel(features, CONFIG)
    with torch.no_grad():
        model.popularity.weight.normal_()
    b, m, n = 4, 3, features.n_tracks
    users = F.normalize(torch.randn(b, CONFIG.dim), dim=-1)
    positives = torch.as_tensor([0, 5, 9, 12])
    uniform = torch.as_tensor([int(cold[0]), 5, int(cold[1])])
    q = np.full(n, 1e-3)
    log_q = torch.as_tensor(np.log(q), dtype=torch.float32)
    loss = batch_loss(model, users, positives, torch.arange(b), torch.ones(b), None, log_q, CONFIG, uniform)
    with torch.no_grad():
        rows = torch.cat([positives, uniform])
        v, bias = model.item_parts(rows)
        correction = np.log(q[rows.numpy()] + m / (b * n))
        logits = ((users @ v.T + bias) / CONFIG.temperature).numpy() - correction
    logits[1, b + 1] = -np.inf  # user 1's positive (row 5) drawn as a uniform negative
    expected = np.mean([np.logaddexp.reduce(logits[i]) - logits[i, i] for i in range(b)])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_popularity_weight_adds_exactly_w_times_b_and_the_augmented_inner_product_ranks_the_same(world, trained):
    w = CONFIG.popularity_weight
    track_ids, items = trained.track_vectors()
    user_ids, users = trained.user_vectors(world["profiles"])
    zero = TrainedTwoTower.from_bytes(trained.to_bytes())
    zero.model.popularity_weight = 0.0  # a serving-time setting: only the track side changes
    _, items_zero = zero.track_vectors()
    assert np.array_equal(zero.user_vectors(world["profiles"])[1], users)
    assert items.shape[1] == users.shape[1] == CONFIG.dim + 1 and np.all(users[:, -1] == 1.0)
    with torch.no_grad():
        _, bias = trained.model.item_parts(torch.arange(len(track_ids)))
    bias = bias.numpy()
    assert np.abs(bias).max() > 1e-3  # the term was learnt
    np.testing.assert_allclose(users @ items.T - users @ items_zero.T,
                               w * np.broadcast_to(bias, (len(users), len(bias))), atol=1e-5)
    # The first dim entries are the unit tower outputs; the index's inner product is u.v + w b.
    np.testing.assert_allclose(np.linalg.norm(items[:, :-1], axis=1), 1.0, atol=1e-5)
    expected = users[:, :-1] @ items[:, :-1].T + w * bias[None, :]
    k = 10
    empty = np.zeros(len(users) + 1, np.int64)
    top = retrieve(torch.as_tensor(users), torch.as_tensor(items), empty, np.zeros(0, np.int64), k)
    np.testing.assert_array_equal(top, np.argsort(-expected, axis=1, kind="stable")[:, :k])
    from dw_assets.retrieval.ann import exact_search

    _, ids = exact_search(items, track_ids, users, k)
    np.testing.assert_array_equal(ids, track_ids[top])


def test_training_is_seeded_and_a_model_of_the_old_layout_still_loads(world):
    config = dataclasses.replace(CONFIG, epochs=1)
    first = train_two_tower(world["features"], world["examples"], config)
    second = train_two_tower(world["features"], world["examples"], config)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert first.report["cold_start"]["warm_starts"] and first.report["cold_start"]["unlearnt_with_warm_start"] > 0

    # A model written before the cold-start fields existed: popularity inside the MLP, no term, no dropout.
    old = dataclasses.replace(config, **LEGACY_CONFIG)
    legacy = train_two_tower(world["features"], world["examples"], old)
    data = io.BytesIO(legacy.to_bytes())
    out = io.BytesIO()
    with zipfile.ZipFile(data) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            payload = zin.read(item)
            if item.filename == "meta.json":
                meta = json.loads(payload)
                meta["config"] = {k: v for k, v in meta["config"].items() if k not in LEGACY_CONFIG}
                payload = json.dumps(meta).encode()
            zout.writestr(item, payload)
    loaded = TrainedTwoTower.from_bytes(out.getvalue())
    assert loaded.config == old and loaded.model.popularity is None
    np.testing.assert_array_equal(loaded.track_vectors()[1], legacy.track_vectors()[1])
    assert loaded.track_vectors()[1].shape[1] == config.dim


def test_one_batch_recall_serves_both_forms():
    top = np.array([[1, 2, 3], [4, 5, -1], [7, 8, 9]])
    ptr = np.array([0, 2, 3, 3])
    targets = np.array([2, 9, 5])
    result = recall_of_lists(top, ptr, targets)
    assert result == {"recall": pytest.approx(0.75), "users": 2, "hits": 2, "k": 3}
    # The dict form: user 30 has no list (recall 0), user 20's list has its target, users in any order.
    truth = {10: np.array([2, 9]), 20: np.array([5]), 30: np.array([1])}
    by_dict = recall_at_k(np.array([20, 10, 40]), top[[1, 0, 2]], truth)
    assert by_dict["recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert (by_dict["users"], by_dict["users_covered"], by_dict["hits"], by_dict["k"]) == (3, 2, 2, 3)
    assert recall_at_k(np.zeros(0, np.int64), np.zeros((0, 3), np.int64), {})["recall"] == 0.0
    assert recall_at_k(np.zeros(0, np.int64), np.zeros((0, 3), np.int64), truth)["recall"] == 0.0
