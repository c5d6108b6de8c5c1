"""Re-ranking: 30 unique unheard tracks per user, artist cap, calibration, MMR, exploration, posteriors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dw_assets.ranking.rerank import (
    FALLBACK_SOURCE,
    OUTPUT_COLUMNS,
    RerankConfig,
    exploration_positions,
    genre_kl,
    max_per_artist,
    rerank_batch,
    update_posteriors,
)

WEEK = "2026-01-26"
GENRES = np.array([f"genre_{i}" for i in range(8)])
NO_POSTERIORS = pd.DataFrame({"user_id": pd.Series(dtype=np.int64), "genre": pd.Series(dtype=object),
                              "alpha": pd.Series(dtype=float), "beta": pd.Series(dtype=float)})  # fmt: skip


class World:
    """A synthetic catalog, per-user scored candidates, histories and country popularity pools.

    Each artist plays one genre. The ranker over-scores one genre per user (``favored``), which
    is usually not the user's main history genre, so the pure score order is miscalibrated.
    """

    def __init__(self, n_users: int = 60, n_candidates: int = 200, seed: int = 0, history_peak: float = 0.0,
                 first_user: int = 1_000, countries: tuple[str, ...] = ("SE", "US")):  # fmt: skip
        rng = np.random.default_rng(seed)
        n_tracks, n_artists = 6_000, 600
        artist_genre = rng.integers(0, len(GENRES), n_artists)
        self.track_ids = np.arange(n_tracks, dtype=np.int64) * 3 + 7
        self.track_artist = rng.integers(0, n_artists, n_tracks).astype(np.int64) + 90_000
        self.track_genre = artist_genre[self.track_artist - 90_000]
        popularity = rng.pareto(1.2, n_tracks) + 1.0
        candidates, users = [], []
        for u in range(n_users):
            user_id = first_user + u
            if history_peak:  # one genre dominates the history
                main = rng.integers(0, len(GENRES))
                share = np.full(len(GENRES), (1.0 - history_peak) / (len(GENRES) - 1))
                share[main] = history_peak
            else:
                share = rng.dirichlet(np.full(len(GENRES), 0.5))
            favored = rng.integers(0, len(GENRES))
            picked = rng.choice(n_tracks, n_candidates + 40, replace=False)
            heard, pool = self.track_ids[picked[:40]], picked[40:]
            score = rng.normal(0.0, 1.0, n_candidates) + 1.5 * (self.track_genre[pool] == favored)
            candidates.append(pd.DataFrame({
                "user_id": user_id, "track_id": self.track_ids[pool], "score": score,
                "sources": np.where(rng.random(n_candidates) < 0.5, "two_tower", "item2vec|two_tower"),
                "artist_id": self.track_artist[pool], "genre": GENRES[self.track_genre[pool]],
                "popularity_percentile": rng.random(n_candidates),
            }))
            users.append({
                "user_id": user_id, "country": countries[u % len(countries)],
                "genre_share": [{"genre": g, "share": float(s)} for g, s in zip(GENRES, share, strict=True)],
                "heard": heard.tolist(),
            })
        self.scored = pd.concat(candidates, ignore_index=True)
        self.users = pd.DataFrame(users)
        pools = []
        for country in countries:
            top = np.argsort(-(popularity * rng.lognormal(0.0, 0.2, n_tracks)))[:300]
            pools.append(pd.DataFrame({
                "country": country, "track_id": self.track_ids[top], "artist_id": self.track_artist[top],
                "genre": GENRES[self.track_genre[top]], "score": popularity[top], "popularity_percentile": 0.9,
            }))
        self.fallback = pd.concat(pools, ignore_index=True)

    def history(self, user_id: int) -> dict[str, float]:
        row = self.users.loc[self.users["user_id"] == user_id, "genre_share"].iat[0]
        return {entry["genre"]: entry["share"] for entry in row}

    def rerank(self, config: RerankConfig, users: pd.DataFrame | None = None,
               posteriors: pd.DataFrame = NO_POSTERIORS, week: str = WEEK) -> pd.DataFrame:  # fmt: skip
        return rerank_batch(self.scored, self.users if users is None else users, posteriors, self.fallback,
                            config, week)  # fmt: skip


def new_user(user_id: int, country: str, heard: list[int] | None = None) -> dict:
    return {"user_id": user_id, "country": country, "genre_share": [], "heard": heard or []}


def concentration(genres: pd.Series) -> float:
    """Herfindahl index of a playlist's genre mix (1 = one genre)."""
    return float((genres.value_counts(normalize=True) ** 2).sum())


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def playlists(world: World) -> pd.DataFrame:
    return world.rerank(RerankConfig())


def test_every_user_gets_thirty_unique_unheard_tracks_with_at_most_two_per_artist(world, playlists):
    assert tuple(playlists.columns) == OUTPUT_COLUMNS
    assert playlists.dtypes.to_dict() == {
        "user_id": np.int64, "position": np.int16, "track_id": np.int64, "score": np.float32,
        "source": object, "is_exploration": bool, "artist_id": np.int64, "genre": object,
    }
    assert set(playlists["user_id"]) == set(world.users["user_id"])
    heard = world.users.set_index("user_id")["heard"]
    for user_id, playlist in playlists.groupby("user_id"):
        assert len(playlist) == 30
        assert playlist["track_id"].is_unique
        assert sorted(playlist["position"]) == list(range(1, 31))
        assert max_per_artist(playlist) <= 2
        assert not set(playlist["track_id"]) & set(heard[user_id])
    # every row is one of the user's candidates, with its score and sources, except exploration
    # slots in a genre the user's candidates lack (taken from the country's popular tracks)
    fallback = playlists["source"] == FALLBACK_SOURCE
    assert playlists.loc[fallback, "is_exploration"].all()
    joined = playlists[~fallback].merge(world.scored, on=["user_id", "track_id"], suffixes=("", "_candidate"))
    assert len(joined) == (~fallback).sum()
    assert np.allclose(joined["score"], joined["score_candidate"].astype(np.float32))
    assert (joined["source"] == joined["sources"]).all()


def test_fallback_fill_obeys_the_rules_and_never_adds_a_heard_track():
    world = World(n_users=4, n_candidates=200)
    # user 1000 has just 6 candidates, all from one artist; the country's top tracks are heard
    small = world.scored[world.scored["user_id"] == 1000].head(6).assign(artist_id=np.int64(5))
    world.scored = pd.concat([small, world.scored[world.scored["user_id"] != 1000]], ignore_index=True)
    country_top = world.fallback[world.fallback["country"] == "SE"].nlargest(40, "score")["track_id"].tolist()
    world.users.at[0, "heard"] = world.users.at[0, "heard"] + country_top
    playlist = world.rerank(RerankConfig()).query("user_id == 1000")

    assert len(playlist) == 30 and playlist["track_id"].is_unique
    assert not set(playlist["track_id"]) & set(world.users.at[0, "heard"])
    assert max_per_artist(playlist) <= 2
    from_candidates = playlist["source"] != FALLBACK_SOURCE
    assert from_candidates.sum() == 2  # the artist cap lets only 2 of the 6 candidates in
    assert set(playlist.loc[~from_candidates, "track_id"]) <= set(world.fallback.query("country == 'SE'")["track_id"])


def test_a_playlist_is_short_rather_than_breaking_a_rule_when_every_pool_runs_dry():
    world = World(n_users=1, n_candidates=10)
    world.scored = world.scored.assign(artist_id=np.repeat([1, 2, 3, 4, 5], 2))
    world.fallback = world.fallback.assign(artist_id=np.int64(6))  # one artist: two tracks at most
    playlist = world.rerank(RerankConfig())
    assert len(playlist) == 12
    assert sorted(playlist["position"]) == list(range(1, 13))
    assert max_per_artist(playlist) == 2


def test_calibration_brings_the_genre_mix_closer_to_a_skewed_history():
    world = World(n_users=60, history_peak=0.7, seed=1)
    score_order = world.rerank(RerankConfig(mmr_lambda=1.0, calibration_lambda=0.0, exploration_slots=0))
    calibrated = world.rerank(RerankConfig(mmr_lambda=1.0, calibration_lambda=0.5, exploration_slots=0))

    def kl(frame: pd.DataFrame) -> pd.Series:
        return frame.groupby("user_id")["genre"].apply(lambda g: genre_kl(world.history(g.name), g.tolist()))

    before, after = kl(score_order), kl(calibrated)
    assert after.mean() < 0.6 * before.mean()
    assert (after <= before + 1e-9).mean() >= 0.9
    # ... at a small cost in ranker score
    assert calibrated["score"].mean() > score_order["score"].mean() - 0.5


def test_mmr_spreads_a_list_the_ranker_concentrates_on_one_genre():
    world = World(n_users=40, seed=2)
    world.scored["score"] += 3.0 * (world.scored["genre"] == "genre_3")  # every user's top is one genre
    plain = world.rerank(RerankConfig(mmr_lambda=1.0, calibration_lambda=0.0, exploration_slots=0))
    diverse = world.rerank(RerankConfig(mmr_lambda=0.5, calibration_lambda=0.0, exploration_slots=0))
    plain_hhi = plain.groupby("user_id")["genre"].apply(concentration)
    diverse_hhi = diverse.groupby("user_id")["genre"].apply(concentration)
    assert diverse_hhi.mean() < 0.8 * plain_hhi.mean()
    assert (diverse_hhi < plain_hhi).mean() >= 0.9
    # artist de-duplication is part of MMR too: fewer artists with two tracks
    assert diverse.groupby(["user_id", "artist_id"]).size().max() <= 2


def test_exploration_slots_are_counted_marked_spread_and_in_little_heard_genres():
    world = World(n_users=60, history_peak=0.8, seed=3)
    config = RerankConfig.fixed_slots(exploration_max_history_share=0.05)
    playlists = world.rerank(config)
    counts = playlists.groupby("user_id")["is_exploration"].sum()
    assert counts.between(2, 3).all() and set(counts) == {2, 3}
    for user_id, playlist in playlists.groupby("user_id"):
        explored = playlist[playlist["is_exploration"]]
        assert sorted(explored["position"]) == exploration_positions(len(explored), 30).tolist()
        history = world.history(user_id)
        assert all(history[g] < 0.05 for g in explored["genre"])
        assert explored["genre"].is_unique
        # each exploration track is the best-scored candidate of its genre not otherwise listed
        for row in explored.itertuples():
            rest = world.scored.query("user_id == @user_id and genre == @row.genre")
            rest = rest[~rest["track_id"].isin(playlist["track_id"]) | (rest["track_id"] == row.track_id)]
            rest = rest[~rest["artist_id"].isin(playlist["artist_id"].value_counts().loc[lambda c: c >= 2].index)
                        | (rest["track_id"] == row.track_id)]  # fmt: skip
            assert row.track_id == rest.nlargest(1, "score")["track_id"].iat[0]
    assert exploration_positions(2, 30).tolist() == [10, 20]
    assert (world.rerank(RerankConfig(exploration_slots=0))["is_exploration"]).sum() == 0


def test_thompson_sampling_prefers_the_genre_with_the_stronger_posterior():
    world = World(n_users=300, n_candidates=60, history_peak=0.0, seed=4)
    only_two = world.users["genre_share"].map(
        lambda shares: [{"genre": e["genre"], "share": 0.0 if e["genre"] in ("genre_1", "genre_2") else 1.0}
                        for e in shares]  # fmt: skip
    )
    world.users = world.users.assign(genre_share=only_two)
    config = RerankConfig.fixed_slots(exploration_slots=1)
    strong = pd.DataFrame({
        "user_id": np.repeat(world.users["user_id"].to_numpy(), 2), "genre": ["genre_1", "genre_2"] * 300,
        "alpha": [12.0, 2.0] * 300, "beta": [3.0, 12.0] * 300,
    })
    explored = world.rerank(config, posteriors=strong).query("is_exploration")
    assert len(explored) == 300
    assert (explored["genre"] == "genre_1").mean() > 0.9
    # with no evidence both genres get explored
    prior_only = world.rerank(config).query("is_exploration")
    assert 0.3 < (prior_only["genre"] == "genre_1").mean() < 0.7


def test_rerun_is_identical_and_a_user_does_not_depend_on_the_batch(world, playlists):
    pd.testing.assert_frame_equal(world.rerank(RerankConfig()), playlists)

    users = pd.concat([world.users, pd.DataFrame([new_user(7, "SE"), new_user(8, "US")])], ignore_index=True)
    posteriors = pd.DataFrame({"user_id": users["user_id"].iloc[::3].to_numpy(), "genre": "genre_4",
                               "alpha": 5.0, "beta": 1.0})  # fmt: skip
    whole = world.rerank(RerankConfig(), users=users, posteriors=posteriors)
    shuffled = users.sample(frac=1.0, random_state=5)
    halves = [world.rerank(RerankConfig(), users=part, posteriors=posteriors)
              for part in (shuffled.iloc[:25], shuffled.iloc[25:])]  # fmt: skip
    split = pd.concat(halves).sort_values(["user_id", "position"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(split, whole.sort_values(["user_id", "position"]).reset_index(drop=True))
    # the week seeds the exploration draws
    fixed = RerankConfig.fixed_slots()
    next_week = world.rerank(fixed, week="2026-02-02")
    assert not next_week.query("is_exploration")["track_id"].equals(world.rerank(fixed).query("is_exploration")["track_id"])


def test_a_new_user_gets_the_country_popularity_pool_under_the_same_rules():
    world = World(n_users=2, seed=6)
    se_pool = world.fallback.query("country == 'SE'").sort_values("score", ascending=False)
    # the country's 40 most popular tracks are one genre, and two artists have 4 each
    crowded = se_pool.head(40).index
    world.fallback.loc[crowded, "artist_id"] = np.r_[[1] * 4, [2] * 4, np.arange(10, 42)].astype(np.int64)
    world.fallback.loc[crowded, "genre"] = "genre_0"
    se_pool = world.fallback.query("country == 'SE'").sort_values("score", ascending=False)
    heard_top = se_pool["track_id"].iloc[40:43].tolist()
    users = pd.concat([world.users, pd.DataFrame([new_user(5, "SE", heard_top), new_user(6, "XX")])],
                      ignore_index=True)  # fmt: skip
    playlists = world.rerank(RerankConfig.fixed_slots(), users=users)  # MMR 0.7 and fixed exploration slots
    default = world.rerank(RerankConfig(), users=users).query("user_id == 5")
    assert len(default) == 30 and concentration(default["genre"]) < 0.75  # MMR 0.9 spreads it too

    newcomer = playlists.query("user_id == 5")
    assert len(newcomer) == 30 and newcomer["track_id"].is_unique
    assert (newcomer["source"] == FALLBACK_SOURCE).all()
    assert set(newcomer["track_id"]) <= set(se_pool["track_id"]) - set(heard_top)
    assert max_per_artist(newcomer) <= 2
    capped = se_pool[se_pool.groupby("artist_id").cumcount() < 2]  # popularity order under the cap
    assert concentration(capped.head(30)["genre"]) == 1.0
    assert concentration(newcomer["genre"]) < 0.5  # genre MMR spreads it
    assert newcomer["is_exploration"].sum() in (2, 3)
    # a country without a pool falls back to the pool of all countries
    stranger = playlists.query("user_id == 6")
    assert len(stranger) == 30 and set(stranger["track_id"]) <= set(world.fallback["track_id"])


def test_update_posteriors_counts_successes_and_failures_and_decays_toward_the_prior():
    config = RerankConfig(prior_alpha=1.0, prior_beta=1.0, posterior_decay=0.5)
    past = pd.DataFrame({
        "week": ["2026-01-05", "2026-01-05", "2026-01-12", "2026-01-12", "2026-01-12"],
        "user_id": [1, 1, 1, 1, 2],
        "track_id": [10, 11, 12, 13, 20],
        "genre": ["jazz", "jazz", "jazz", "metal", "jazz"],
    })
    outcomes = pd.DataFrame({  # listening weeks: 01-12 for the first playlist, 01-19 for the second
        "user_id": [1, 1, 1, 1, 1, 3],
        "track_id": [10, 11, 12, 13, 99, 20],
        "week": ["2026-01-12", "2026-01-12", "2026-01-19", "2026-01-19", "2026-01-19", "2026-01-19"],
        "is_positive": [True, False, True, False, True, True],
    })
    posteriors = update_posteriors(past, outcomes, config).set_index(["user_id", "genre"])
    # user 2 never listened that week: no evidence, stays at the prior (absent)
    assert set(posteriors.index) == {(1, "jazz"), (1, "metal")}
    # jazz: week-old success and failure weigh 0.5 each; this week's success weighs 1
    assert posteriors.loc[(1, "jazz"), "alpha"] == pytest.approx(1.0 + 0.5 + 1.0)
    assert posteriors.loc[(1, "jazz"), "beta"] == pytest.approx(1.0 + 0.5)
    assert posteriors.loc[(1, "metal"), ["alpha", "beta"]].tolist() == pytest.approx([1.0, 2.0])

    later = update_posteriors(past, outcomes, config, as_of_week="2026-02-02").set_index(["user_id", "genre"])
    assert later.loc[(1, "metal"), "beta"] == pytest.approx(1.0 + 0.5**2)  # two weeks on: closer to the prior
    outside = update_posteriors(past, outcomes, RerankConfig(posterior_window_weeks=1), as_of_week="2026-02-02")
    assert outside.empty

    # the posteriors feed straight back into rerank_batch's input shape
    assert list(update_posteriors(past, outcomes, config).columns) == ["user_id", "genre", "alpha", "beta"]


def test_genre_kl_and_max_per_artist():
    history = {"jazz": 0.5, "metal": 0.5}
    assert genre_kl(history, ["jazz", "metal"] * 15) == pytest.approx(0.0, abs=1e-12)
    assert genre_kl(history, ["jazz"] * 30) > genre_kl(history, ["jazz"] * 20 + ["metal"] * 10) > 0.0
    assert genre_kl(history, ["pop"] * 30) == pytest.approx(np.log(1 / 0.01))  # q~ = alpha * p everywhere
    assert np.isnan(genre_kl({}, ["jazz"]))
    assert max_per_artist([1, 2, 2, 3, 2]) == 3
    assert max_per_artist(pd.DataFrame({"artist_id": []})) == 0


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="exploration_slots"):
        RerankConfig(exploration_slots=(2, 30))
    with pytest.raises(ValueError, match="calibration_lambda"):
        RerankConfig(calibration_lambda=1.5)
    with pytest.raises(ValueError, match="Monday"):
        rerank_batch(pd.DataFrame(), pd.DataFrame({"user_id": []}), NO_POSTERIORS, pd.DataFrame(),
                     RerankConfig(), "2026-01-27")  # fmt: skip


def test_cold_slots_go_to_the_best_scored_cold_candidates_at_the_end():
    world = World(n_users=40, seed=5)
    rng = np.random.default_rng(5)
    world.scored = world.scored.assign(is_cold=rng.random(len(world.scored)) < 0.05)
    # relevance only, so "best" is plain score order (with MMR/calibration on, it is their greedy gain)
    config = RerankConfig(exploration_slots=0, cold_slots=2, mmr_lambda=1.0, calibration_lambda=0.0)
    playlists = world.rerank(config).merge(world.scored[["user_id", "track_id", "is_cold"]],
                                           on=["user_id", "track_id"])
    for user_id, playlist in playlists.groupby("user_id"):
        cold = playlist[playlist["is_cold"]].sort_values("position")
        assert len(cold) >= 2 and cold["position"].tail(2).tolist() == [29, 30], user_id
        # the last two slots hold the best-scored cold candidates the list did not already have
        others = playlist[playlist["position"] <= 28]
        pool = world.scored.query("user_id == @user_id and is_cold")
        pool = pool[~pool["track_id"].isin(others["track_id"])
                    & ~pool["artist_id"].isin(others["artist_id"].value_counts().loc[lambda c: c >= 2].index)]
        assert set(cold["track_id"].tail(2)) == set(pool.nlargest(2, "score")["track_id"]), user_id
    natural = world.rerank(RerankConfig(exploration_slots=0, cold_slots=0, mmr_lambda=1.0,
                                        calibration_lambda=0.0)).merge(
        world.scored[["user_id", "track_id", "is_cold"]], on=["user_id", "track_id"])
    assert playlists["is_cold"].mean() > natural["is_cold"].mean()


def test_exploration_reaches_into_the_country_pool_only_when_configured():
    world = World(n_users=30, seed=6)
    familiar = GENRES[:4]  # every candidate is in a genre the user hears a lot; the pool has all genres
    world.scored = world.scored[world.scored["genre"].isin(familiar)].reset_index(drop=True)
    world.users["genre_share"] = [[{"genre": g, "share": 0.25} for g in familiar]] * len(world.users)
    closed = world.rerank(RerankConfig.fixed_slots(calibration_lambda=0.0))
    assert closed["is_exploration"].sum() == 0 and (closed.groupby("user_id").size() == 30).all()
    opened = world.rerank(RerankConfig.fixed_slots(calibration_lambda=0.0, explore_country_pool=True))
    explored = opened[opened["is_exploration"]]
    assert explored.groupby("user_id").size().between(2, 3).all() and explored["user_id"].nunique() == 30
    assert (explored["source"] == FALLBACK_SOURCE).all() and not explored["genre"].isin(familiar).any()


def test_the_list_order_adds_a_two_tower_prior_to_the_ranker_log_probability():
    from dw_assets.ranking.playlists import list_score

    probability = np.array([0.5, 0.4, 0.4, 0.0])
    features = pd.DataFrame({"two_tower_score": [0.0, 2.0, np.nan, 1.0]})
    assert np.allclose(list_score(probability, features, 0.0), np.log(np.clip(probability, 1e-6, 1)))
    score = list_score(probability, features, 0.2)
    assert score[1] > score[0]  # a likelier encounter outranks a slightly better taste match
    assert score[2] == pytest.approx(np.log(0.4))  # no two-tower score, no prior
    assert np.isfinite(score).all()
    with pytest.raises(ValueError, match="cold_slots"):
        RerankConfig(exploration_slots=2, cold_slots=28)


# --------------------------------------------------------------------------- value-based exploration


def test_value_scores_add_an_uncertainty_bonus_that_shrinks_with_plays_and_the_users_genre_evidence():
    from dw_assets.ranking.rerank import value_scores

    p = np.array([0.3, 0.3, 0.3])
    score = np.log(p) + np.array([0.0, 0.1, 0.2])  # the two-tower prior rides along unchanged
    no = np.zeros(3)
    known = np.zeros(3, dtype=bool)
    plays = np.array([0.0, 10.0, 1_000.0])
    none = value_scores(score, p, plays, no, no, known, RerankConfig(uncertainty="none"), None)
    assert np.array_equal(none, score)
    for scale in ("spread", "probability"):
        config = RerankConfig(uncertainty="ucb", ucb_z=1.0, bonus_scale=scale)
        bonus = value_scores(score, p, plays, no, no, known, config, None) - score
        assert (bonus > 0).all() and bonus[0] > bonus[1] > bonus[2]  # a cold track is the least certain
        assert bonus[2] < bonus[0] / 5
    # "spread": the bonus is in the user's own units, whatever the ranker's scale
    wide = value_scores(3 * score, p, plays, no, no, known, RerankConfig(ucb_z=1.0), None) - 3 * score
    assert np.allclose(wide, 3 * (value_scores(score, p, plays, no, no, known, RerankConfig(ucb_z=1.0), None) - score))
    # a little-heard genre: as uncertain as a cold track until the user's own exploration outcomes narrow it
    little = np.ones(3, dtype=bool)
    config = RerankConfig(uncertainty="ucb", ucb_z=1.0)
    untried = value_scores(score, p, plays, no, no, little, config, None) - score
    tried = value_scores(score, p, plays, np.full(3, 5.0), np.full(3, 50.0), little, config, None) - score
    assert np.allclose(untried, untried[0])  # every one as uncertain as the cold one
    assert tried[0] == pytest.approx(untried[0])  # a cold track stays a cold track
    assert tried[1] < untried[0] and tried[2] < untried[0] / 3  # well-played ones in a genre the user tried
    # ... and with the Beta on the ranker's output read as P, they also move its mean
    config = RerankConfig(uncertainty="ucb", ucb_z=0.0, bonus_scale="probability")
    hits = value_scores(score, p, plays, np.full(3, 50.0), np.full(3, 50.0), little, config, None)
    misses = value_scores(score, p, plays, no, np.full(3, 50.0), little, config, None)
    untried = value_scores(score, p, plays, no, no, little, config, None)
    assert (hits > untried).all() and (misses < untried).all()
    assert np.allclose(untried, score)  # no evidence: the mean is the ranker's
    # the Beta on the ranker's output read as a probability: Thompson reproducible from the generator,
    # centred on the mean, wider for a cold track
    thompson = RerankConfig(uncertainty="thompson", bonus_scale="probability", prior_strength=2.0)
    many = np.full(20_000, 0.3)
    draws = [value_scores(np.log(many), many, np.full(20_000, n), np.zeros(20_000), np.zeros(20_000),
                          np.zeros(20_000, dtype=bool), thompson, np.random.default_rng(1)) for n in (0.0, 100.0)]
    assert np.exp(draws[0]).mean() == pytest.approx(0.3, abs=0.005)
    assert np.exp(draws[0]).std() > 2 * np.exp(draws[1]).std()
    again = value_scores(np.log(many), many, np.zeros(20_000), np.zeros(20_000), np.zeros(20_000),
                         np.zeros(20_000, dtype=bool), thompson, np.random.default_rng(1))
    assert np.array_equal(again, draws[0])


def _one_user(cold_probability: list[float]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One user, 40 well-known tracks (P 0.5 .. 0.4) and cold tracks of the given P, one artist each, one genre."""
    warm = np.linspace(0.5, 0.4, 40)
    probability = np.r_[warm, cold_probability]
    n = len(probability)
    scored = pd.DataFrame({
        "user_id": 1, "track_id": np.arange(100, 100 + n), "score": np.log(probability), "probability": probability,
        "sources": "two_tower", "artist_id": np.arange(500, 500 + n), "genre": "genre_0",
        "is_cold": np.r_[np.zeros(40, dtype=bool), np.ones(n - 40, dtype=bool)],
        "plays": np.r_[np.full(40, 1_000.0), np.zeros(n - 40)],
    })
    users = pd.DataFrame([{"user_id": 1, "country": "SE", "genre_share": [{"genre": "genre_0", "share": 1.0}],
                           "heard": []}])
    fallback = pd.DataFrame({"country": "SE", "track_id": [9_000], "artist_id": [9_000], "genre": "genre_0",
                             "score": [1.0], "popularity_percentile": [1.0]})
    return scored, users, fallback


def test_a_cold_track_gets_a_slot_when_its_upper_bound_beats_the_list_and_no_slot_is_reserved():
    scored, users, fallback = _one_user([0.38, 0.05])  # a promising cold track and a poor one
    plain = dict(mmr_lambda=1.0, calibration_lambda=0.0)
    listed = {name: set(rerank_batch(scored, users, NO_POSTERIORS, fallback, config, WEEK)["track_id"])
              for name, config in (("ucb", RerankConfig(uncertainty="ucb", ucb_z=1.0, **plain)),
                                   ("mean", RerankConfig(uncertainty="none", **plain)),
                                   ("fixed", RerankConfig.fixed_slots(exploration_slots=0, **plain)))}
    promising, poor = 140, 141
    assert promising in listed["ucb"] and poor not in listed["ucb"]  # on value, not by a count
    assert promising not in listed["mean"]  # the ranker's mean alone leaves it out
    assert {promising, poor} <= listed["fixed"]  # the fixed cold slots take the poor one too


def test_value_based_lists_keep_the_hygiene_are_seeded_per_user_and_week_and_mark_little_heard_genres():
    world = World(n_users=40, seed=8, history_peak=0.8)
    rng = np.random.default_rng(8)
    cold = rng.random(len(world.scored)) < 0.1
    world.scored = world.scored.assign(probability=1.0 / (1.0 + np.exp(-world.scored["score"])), is_cold=cold,
                                       plays=np.where(cold, 0.0, rng.integers(1, 200, len(world.scored))))
    world.scored["score"] = np.log(world.scored["probability"])
    for config in (RerankConfig(), RerankConfig(uncertainty="thompson")):
        playlists = world.rerank(config)
        assert (playlists.groupby("user_id").size() == 30).all()
        assert not playlists.duplicated(["user_id", "track_id"]).any()
        assert playlists.groupby(["user_id", "artist_id"]).size().max() <= 2
        heard = world.users.set_index("user_id")["heard"]
        assert not any(t in set(heard[u]) for u, t in zip(playlists["user_id"], playlists["track_id"], strict=True))
        pd.testing.assert_frame_equal(world.rerank(config), playlists)
        share = [world.history(u).get(g, 0.0) for u, g in zip(playlists["user_id"], playlists["genre"], strict=True)]
        assert np.array_equal(playlists["is_exploration"].to_numpy(), np.array(share) < 0.05)
    # with fixed exploration slots, those slots alone are the exploration
    fixed = world.rerank(RerankConfig(exploration_slots=(2, 3))).groupby("user_id")["is_exploration"].sum()
    assert fixed.between(2, 3).all()
    thompson = RerankConfig(uncertainty="thompson")
    first = world.rerank(thompson)
    halves = pd.concat([world.rerank(thompson, users=world.users.iloc[:15]),
                        world.rerank(thompson, users=world.users.iloc[15:])], ignore_index=True)
    pd.testing.assert_frame_equal(halves, first)
    assert not world.rerank(thompson, week="2026-02-02")["track_id"].equals(first["track_id"])
