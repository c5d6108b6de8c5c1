"""Two-tower retrieval on the tiny simulated world: time split, hard negatives, logQ, cold start, determinism.

Silver interactions and the gold columns the model reads are built here in
pandas from the landing zone (same labelling rules as the Spark jobs); the
audio CNN is stood in for by each track's hidden style plus as much noise
as signal, so the test does not hand the model the truth.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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
    batch_loss,
    build_examples,
    build_tower_features,
    train_two_tower,
    warm_start_cold_tracks,
)
from dw_assets.embeddings.two_tower_data import profile_user_features
from dw_assets.simulate import load_truth

torch.set_num_threads(1)  # a shared 2-core box: a second thread waits on a busy core more than it helps

# Sized for the tiny world (2k tracks): smaller towers, and the sharper softmax / faster learning rate
# that suit it (the library defaults are tuned on `small`, where 3e-3 over-fits within an epoch).
CONFIG = TwoTowerConfig(dim=32, id_dim=16, hidden=64, epochs=3, batch_size=512, temperature=0.05, learning_rate=3e-3,
                        threads=1)
AUDIO_NOISE = 1.0  # noise norm relative to the (unit) style vector
K = CONFIG.recall_k
MATCHED_USERS = 20  # per cold track: the users whose hidden taste matches it best


def _landed_events(folder: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # malformed line
    return pd.DataFrame(rows)


def silver_interactions(landing: Path, weeks: list[str]) -> pd.DataFrame:
    """The silver rules in pandas: valid, deduplicated, bot-free human plays with labels and weights."""
    manifest = json.loads((landing / "manifest.json").read_text())
    catalog = pd.read_parquet(landing / "catalog" / "tracks.parquet")
    users = pd.read_parquet(landing / "users" / "users.parquet")
    frames = []
    for week in weeks:
        raw = _landed_events(landing / "events" / f"week={week}")
        start, end = week_bounds(week)
        for col in ("user_id", "track_id", "ms_played"):
            raw[col] = pd.to_numeric(raw[col], errors="coerce")
        raw["ts"] = pd.to_datetime(raw["ts"], utc=True, errors="coerce")
        ok = raw[["user_id", "track_id", "ms_played", "ts"]].notna().all(axis=1) & (raw["ms_played"] >= 0)
        ok &= raw["ts"].between(pd.Timestamp(start), pd.Timestamp(end), inclusive="left")
        ok &= raw["user_id"].isin(users["user_id"]) & raw["track_id"].isin(catalog["track_id"])
        ok &= ~raw["user_id"].isin(manifest["bot_user_ids"]) & raw["saved"].isin([True, False])
        frames.append(raw[ok].drop_duplicates("event_id"))
    ev = pd.concat(frames, ignore_index=True)
    ev = ev.astype({"user_id": "int64", "track_id": "int64", "ms_played": "int64", "saved": bool})
    ev = ev.drop_duplicates(["user_id", "track_id", "ts", "ms_played"])
    ev = ev.merge(catalog[["track_id", "artist_id", "genre", "duration_ms"]], on="track_id")
    ev = ev[ev["ms_played"] <= 2 * ev["duration_ms"]]
    full = (ev["ms_played"] >= 0.8 * ev["duration_ms"]) | (ev["reason_end"] == "trackdone")
    ev["is_positive"] = (ev["ms_played"] > 30_000) | ev["saved"]
    ev["is_early_skip"] = (ev["ms_played"] < 10_000) & ~ev["saved"]
    ev["weight"] = np.select(
        [ev["saved"], ev["ms_played"] < 10_000, ev["ms_played"] <= 30_000, full], [5.0, -1.0, -0.3, 1.0], 0.5
    )
    return ev.sort_values(["ts", "event_id"]).reset_index(drop=True)


def gold_tables(landing: Path, interactions: pd.DataFrame, week: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(track_stats, user_profiles) of ``week``: the columns the two-tower reads."""
    end = pd.Timestamp(week_bounds(week)[1])
    catalog = pd.read_parquet(landing / "catalog" / "tracks.parquet")
    released = pd.to_datetime(catalog["release_date"]).dt.tz_localize("UTC")
    catalog = catalog[released <= end].assign(age_days=(end - released[released <= end]).dt.days)
    counts = interactions.groupby("track_id").agg(plays=("user_id", "size"), listeners=("user_id", "nunique"))
    stats = catalog.merge(counts, on="track_id", how="left").fillna({"plays": 0, "listeners": 0})
    stats["is_cold"] = stats["plays"] == 0

    positives = interactions[interactions["is_positive"]]
    latest = positives.groupby(["user_id", "track_id"], as_index=False)["ts"].max()
    latest = latest.sort_values(["user_id", "ts", "track_id"], ascending=[True, False, True])
    latest = latest.groupby("user_id").head(50)
    latest["age"] = (end - latest["ts"]).dt.total_seconds() / 86400
    recent = latest.groupby("user_id").agg(recent_tracks=("track_id", list), recent_age_days=("age", list))
    share = positives.groupby(["user_id", "genre"]).size().rename("n").reset_index()
    share["share"] = share["n"] / share.groupby("user_id")["n"].transform("sum")
    genre_share = share.groupby("user_id")[["genre", "share"]].apply(lambda g: g.to_dict("records"))
    profiles = pd.read_parquet(landing / "users" / "users.parquet").join(recent, on="user_id")
    profiles = profiles.join(genre_share.rename("genre_share"), on="user_id")
    for col in ("recent_tracks", "recent_age_days", "genre_share"):
        profiles[col] = profiles[col].apply(lambda v: v if isinstance(v, list) else [])
    return stats, profiles


@pytest.fixture(scope="module")
def world(tiny_world):
    landing = tiny_world / "landing"
    manifest = json.loads((landing / "manifest.json").read_text())
    weeks, week = manifest["training_weeks"], manifest["last_training_week"]
    interactions = silver_interactions(landing, weeks)
    track_stats, profiles = gold_tables(landing, interactions, week)
    truth = load_truth(tiny_world)
    rng = np.random.default_rng(0)
    style = truth.track_style
    audio = style + AUDIO_NOISE * rng.standard_normal(style.shape) / np.sqrt(style.shape[1])
    # Unreadable clips: a few tracks have no audio vector at all.
    has_audio = np.ones(len(truth.track_ids), dtype=bool)
    has_audio[rng.choice(len(truth.track_ids), 10, replace=False)] = False
    audio_ids, audio_vectors = truth.track_ids[has_audio], audio[has_audio].astype(np.float32)
    features = build_tower_features(interactions, profiles, track_stats, audio_ids, audio_vectors, week, CONFIG)
    examples = build_examples(interactions, features, CONFIG)
    return dict(interactions=interactions, track_stats=track_stats, profiles=profiles, truth=truth,
                features=features, examples=examples, audio_ids=audio_ids)


@pytest.fixture(scope="module")
def trained(world) -> TrainedTwoTower:
    return train_two_tower(world["features"], world["examples"], CONFIG)


# logQ on its own: the cold-start options off in both arms. With them on, both arms put cold tracks
# (listeners percentile 0) in their top-K, which moves the popularity compared here for another reason.
LOGQ_ALONE = dataclasses.replace(CONFIG, **LEGACY_CONFIG)


@pytest.fixture(scope="module")
def trained_logq_alone(world) -> TrainedTwoTower:
    return train_two_tower(world["features"], world["examples"], LOGQ_ALONE)


@pytest.fixture(scope="module")
def trained_without_logq(world) -> TrainedTwoTower:
    return train_two_tower(world["features"], world["examples"],
                           dataclasses.replace(LOGQ_ALONE, logq_correction=False))


def _ms(ts: pd.Series) -> np.ndarray:
    return ts.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").astype(np.int64)


def test_examples_are_split_by_time_and_histories_never_see_the_future(world):
    features, ex, inter = world["features"], world["examples"], world["interactions"]
    assert len(ex.train) > 1000 and len(ex.validation) > 500
    # Time split, not random: every validation example is later than every training one.
    assert ex.train.ts_ms.max() < ex.validation_start_ms <= ex.validation.ts_ms.min()
    assert ex.validation_start_ms == features.window_end_ms - CONFIG.validation_days * 86_400_000

    # Recompute a sample of histories independently: last 50 distinct liked tracks before the cutoff.
    positives = inter[inter["is_positive"]].assign(ms=lambda f: _ms(f["ts"]))
    by_user = dict(tuple(positives.groupby("user_id")))
    rng = np.random.default_rng(1)
    train_states = rng.choice(np.unique(ex.train.state), 40, replace=False)
    val_states = rng.choice(np.unique(ex.validation.state), 40, replace=False)
    for state in np.r_[train_states, val_states]:
        user = ex.user_ids[ex.state_user[state]]
        cutoff = ex.state_cutoff_ms[state]
        before = by_user[user][by_user[user]["ms"] < cutoff]
        latest = before.groupby("track_id")["ms"].max().reset_index()
        latest = latest.sort_values(["ms", "track_id"], ascending=[False, True]).head(CONFIG.history_len)
        got = ex.states.history[state]
        assert features.track_ids[got[got >= 0]].tolist() == latest["track_id"].tolist()
    # Validation histories end where validation starts; training ones before the example's own day.
    assert (ex.state_cutoff_ms[ex.validation.state] == ex.validation_start_ms).all()
    cut = ex.state_cutoff_ms[ex.train.state]
    assert (cut <= ex.train.ts_ms).all() and (ex.train.ts_ms - cut < 86_400_000).all()
    # No validation-period like shows up in any history of a validation user.
    val_only = positives[positives["ms"] >= ex.validation_start_ms]
    first_liked = positives.groupby(["user_id", "track_id"])["ms"].min()
    new_in_val = {k for k, v in first_liked.items() if v >= ex.validation_start_ms} & set(
        zip(val_only["user_id"], val_only["track_id"], strict=True))
    for state in np.unique(ex.validation.state):
        user = ex.user_ids[ex.state_user[state]]
        hist = features.track_ids[ex.states.history[state][ex.states.history[state] >= 0]]
        assert not {(user, t) for t in hist} & new_in_val


def test_early_skips_are_hard_negatives_and_interaction_weights_carry_over(world):
    features, ex, inter = world["features"], world["examples"], world["interactions"]
    train = inter[_ms(inter["ts"]) < ex.validation_start_ms]
    liked = set(zip(train.loc[train["is_positive"], "user_id"], train.loc[train["is_positive"], "track_id"],
                    strict=True))
    skipped = set(zip(train.loc[train["is_early_skip"], "user_id"], train.loc[train["is_early_skip"], "track_id"],
                      strict=True))
    hard = {
        (ex.user_ids[u], features.track_ids[t])
        for u in range(len(ex.user_ids))
        for t in ex.hard_negative_tracks[ex.hard_negative_ptr[u] : ex.hard_negative_ptr[u + 1]]
    }
    assert hard == skipped - liked and len(hard) > 500

    # Each example carries its interaction's graded weight: saves count 5x a full play.
    rows = pd.DataFrame({"user_id": ex.user_ids[ex.train.user], "track_id": features.track_ids[ex.train.track],
                         "ms": ex.train.ts_ms, "example_weight": ex.train.weight})
    joined = rows.merge(train.assign(ms=_ms(train["ts"])), on=["user_id", "track_id", "ms"])
    assert len(joined) == len(rows)
    assert np.allclose(joined["example_weight"], joined["weight"])
    assert set(np.unique(ex.train.weight)) == {0.5, 1.0, 5.0}
    assert (joined.loc[joined["saved"], "example_weight"] == 5.0).all()


def test_two_tower_retrieves_far_better_than_popularity_and_random(trained):
    report = trained.report
    recall = report[f"final_val_recall@{K}"]
    base = report["baselines"]
    print(f"\nval recall@{K}: two-tower {recall:.3f} (per epoch {np.round(report[f'val_recall@{K}'], 3)}), "
          f"popularity {base['popularity']:.3f}, random {base['random']:.3f}; "
          f"{report['examples_per_second']:.0f} examples/s on {report['device']}")
    assert len(report[f"val_recall@{K}"]) == len(report["loss"]) == CONFIG.epochs
    assert report["loss"][-1] < report["loss"][0]
    assert recall == max(report[f"val_recall@{K}"])  # the best epoch's weights are the ones kept
    assert recall > base["popularity"] + 0.2
    assert recall > 2 * base["random"]


class _OneContext(torch.nn.Module):
    """Every user is the same: the best a model can learn is how often each track is liked."""

    def __init__(self, n_tracks: int):
        super().__init__()
        self.tracks = torch.nn.Embedding(n_tracks, 8)
        self.user = torch.nn.Parameter(torch.randn(8))

    def item_vectors(self, rows):
        return F.normalize(self.tracks(rows), dim=-1)


def _learned_popularity_slope(log_q: torch.Tensor | None, q: np.ndarray) -> float:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = _OneContext(len(q))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    config = TwoTowerConfig(temperature=0.1)
    for _ in range(200):
        positives = torch.as_tensor(rng.choice(len(q), size=128, p=q))
        users = F.normalize(model.user, dim=0).expand(128, -1)
        loss = batch_loss(model, users, positives, torch.arange(128), torch.ones(128), None, log_q, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = model.item_vectors(torch.arange(len(q))) @ F.normalize(model.user, dim=0) / config.temperature
    return float(np.polyfit(np.log(q), scores.numpy(), 1)[0])


def test_logq_sign_recovers_how_often_tracks_are_liked():
    """With one context the full softmax's logits are log P(track): logQ-corrected in-batch training
    must learn them (slope 1 on log q); uncorrected in-batch training cancels popularity out (slope 0);
    the wrong sign would learn -log q."""
    q = 1.0 / np.arange(1, 41) ** 1.1
    q /= q.sum()
    log_q = torch.as_tensor(np.log(q), dtype=torch.float32)
    corrected = _learned_popularity_slope(log_q, q)
    uncorrected = _learned_popularity_slope(None, q)
    print(f"\nlearned score vs log q slope: corrected {corrected:.2f}, uncorrected {uncorrected:.2f}")
    assert 0.8 < corrected < 1.2
    assert abs(uncorrected) < 0.3


def test_logq_gives_equal_or_better_recall_and_retrieval_popularity_closer_to_what_users_like(
    trained_logq_alone, trained_without_logq
):
    """In-batch negatives over-sample popular tracks, so uncorrected training learns PMI and
    under-retrieves them; logQ removes that bias: retrieved popularity moves up toward the popularity
    of the tracks validation users really liked, at equal or better recall."""
    with_q, without_q = trained_logq_alone.report, trained_without_logq.report
    target = with_q["baselines"]["targets_popularity"]
    pop_q, pop_plain = with_q["retrieved_popularity"], without_q["retrieved_popularity"]
    print(f"\nrecall@{K}: logQ {with_q[f'final_val_recall@{K}']:.3f} vs none "
          f"{without_q[f'final_val_recall@{K}']:.3f}; mean popularity percentile of top-{K}: logQ "
          f"{pop_q['mean_popularity_percentile']:.3f}, none {pop_plain['mean_popularity_percentile']:.3f}, "
          f"liked targets {target['mean_popularity_percentile']:.3f}; top-10% share: logQ "
          f"{pop_q['top10pct_share']:.3f}, none {pop_plain['top10pct_share']:.3f}, "
          f"targets {target['top10pct_share']:.3f}")
    assert with_q["logq"] and not without_q["logq"]
    assert with_q[f"final_val_recall@{K}"] >= without_q[f"final_val_recall@{K}"] - 0.01
    for key in ("mean_popularity_percentile", "top10pct_share"):
        assert abs(pop_q[key] - target[key]) < abs(pop_plain[key] - target[key])
    assert pop_q["mean_popularity_percentile"] > pop_plain["mean_popularity_percentile"] + 0.05


def _cold_hit_rates(model: TrainedTwoTower, world, cold_ids: np.ndarray) -> tuple[float, float]:
    """Share of (user, cold track) pairs with the track in the user's top-K: matched users vs random users."""
    truth, inter = world["truth"], world["interactions"]
    user_ids, users = model.user_vectors(world["profiles"])
    track_ids, tracks = model.track_vectors()
    scores = users @ tracks.T
    heard = inter.groupby("user_id")["track_id"].unique()
    for i, user in enumerate(user_ids):
        if user in heard.index:
            scores[i, model.features.track_rows(heard[user])] = -np.inf
    kth = -np.partition(-scores, K - 1, axis=1)[:, K - 1]
    cold_scores = scores[:, model.features.track_rows(cold_ids)]
    in_top = cold_scores >= kth[:, None]
    affinity = truth.affinity(np.repeat(user_ids, len(cold_ids)), np.tile(cold_ids, len(user_ids)))
    matched = np.argsort(-affinity.reshape(len(user_ids), len(cold_ids)), axis=0)[:MATCHED_USERS]
    random = np.random.default_rng(3).integers(0, len(user_ids), matched.shape)
    cols = np.arange(len(cold_ids))
    return float(in_top[matched, cols].mean()), float(in_top[random, cols].mean())


def test_cold_tracks_reach_the_users_whose_taste_matches_them(trained, world):
    features = world["features"]
    model = TrainedTwoTower.from_bytes(trained.to_bytes())  # leave the shared model untouched
    cold = features.track_ids[features.track_is_cold]
    with_audio = cold[np.isin(cold, world["audio_ids"])]
    assert len(with_audio) > 100

    before = model.track_vectors()[1]
    matched_before, random_before = _cold_hit_rates(model, world, with_audio)
    stats = warm_start_cold_tracks(model, cold, CONFIG.cold_neighbours)
    track_ids, after = model.track_vectors()
    matched, random = _cold_hit_rates(model, world, with_audio)
    print(f"\ncold tracks in top-{K}: matched users {matched:.3f} vs random users {random:.3f} after warm start "
          f"(before: {matched_before:.3f} vs {random_before:.3f}); {stats}")
    # Trained with id dropout, the model saw every track without a learnt id through its warm start:
    # serving warm-starts those too (cold ones, and e.g. tracks first played after the training period).
    learnt = model.trained_tracks
    warm_started = np.union1d(features.track_rows(cold), np.flatnonzero(~learnt))
    assert stats["cold_tracks"] == len(cold) and stats["cold_tracks"] + stats["untrained_tracks"] == len(warm_started)
    assert stats["from_audio"] == int((~features.track_audio_missing[warm_started]).sum())
    assert stats["from_audio"] + stats["from_artist"] + stats["from_genre"] + stats["unchanged"] == len(warm_started)
    assert matched > 0.5 and matched > 2.5 * random
    # Audio neighbours' ids aim cold tracks at the right users rather than at everyone.
    assert matched / random >= 0.95 * matched_before / random_before
    # Every catalog track has a vector, cold and audio-less ones included; tracks with learnt ids did not move.
    assert np.array_equal(track_ids, features.track_ids) and np.isfinite(after).all()
    assert np.array_equal(before[learnt], after[learnt]) and not np.array_equal(before[~learnt], after[~learnt])


def test_training_is_deterministic_and_round_trips_through_bytes(world):
    config = dataclasses.replace(CONFIG, epochs=1, max_examples=2000)
    first = train_two_tower(world["features"], world["examples"], config)
    second = train_two_tower(world["features"], world["examples"], config)
    assert first.report["train_examples"] == 2000
    assert np.array_equal(first.track_vectors()[1], second.track_vectors()[1])
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name

    loaded = TrainedTwoTower.from_bytes(first.to_bytes())
    users, vectors = first.user_vectors(world["profiles"])
    loaded_users, loaded_vectors = loaded.user_vectors(world["profiles"])
    assert np.array_equal(users, loaded_users) and np.array_equal(vectors, loaded_vectors)
    assert np.array_equal(first.track_vectors()[1], loaded.track_vectors()[1])
    assert loaded.report == first.report and loaded.config == config
    # Users without any history get no vector (the popularity fallback serves them).
    no_history = world["profiles"]["recent_tracks"].map(len) == 0
    assert no_history.any()
    assert set(users) == set(world["profiles"].loc[~no_history, "user_id"])


def test_the_serving_query_blends_the_user_tower_with_the_centroid_of_the_users_history(trained, world):
    """``query_centroid`` λ: normalize((1 - λ) u + λ c), c the unit mean of the item vectors of the user's
    history; users without history keep the tower's vector; the vectors do not depend on the batch."""
    profiles = world["profiles"]
    # A user with events but no positive track yet: the tower's vector from genre shares and demographics.
    newcomer = profiles.iloc[[0]].assign(user_id=int(profiles["user_id"].max()) + 1, events=3)
    newcomer["recent_tracks"], newcomer["recent_age_days"] = [[]], [[]]
    profiles = pd.concat([profiles, newcomer], ignore_index=True)
    users, tower = trained.user_vectors(profiles, 0.0)
    # None: the model's config (the shipped default); 0: the tower alone, as training validates it.
    assert np.array_equal(trained.user_vectors(profiles)[1],
                          trained.user_vectors(profiles, trained.config.query_centroid)[1])
    with torch.no_grad():
        assert np.array_equal(tower[:5], trained.model.encode_users(
            profile_user_features(profiles.set_index("user_id").loc[users[:5]].reset_index(), trained.features,
                                  trained.config.history_len)).numpy())
    _, centroid = trained.user_vectors(profiles, 1.0)
    _, half = trained.user_vectors(profiles, 0.5)

    features = profile_user_features(profiles.set_index("user_id").loc[users].reset_index(), trained.features,
                                     trained.config.history_len)
    has_history = features.history_length > 0
    assert has_history.any() and (~has_history).sum() == 1
    with torch.no_grad():
        rows = torch.as_tensor(features.history)
        items = trained.model.item_vectors(rows.clamp(min=0)).numpy() * (features.history >= 0)[..., None]
    expected = items.sum(1)
    expected /= np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(centroid[has_history], expected[has_history], atol=2e-5)
    blend = tower + centroid
    blend /= np.linalg.norm(blend, axis=1, keepdims=True)
    np.testing.assert_allclose(half[has_history], blend[has_history], atol=2e-5)
    assert np.array_equal(centroid[~has_history], tower[~has_history])
    assert np.array_equal(half[~has_history], tower[~has_history])
    # One user alone gets the bits it gets among all of them.
    one = profiles[profiles["user_id"] == users[has_history][0]]
    assert np.array_equal(trained.user_vectors(one, 1.0)[1][0], centroid[has_history][0])
    with pytest.raises(ValueError, match="query_centroid"):
        dataclasses.replace(CONFIG, query_centroid=1.5)
