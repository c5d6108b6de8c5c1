"""The north star (dw_assets/evaluation/north_star.py) on a small synthetic hidden truth: seconds, no lake."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from dw_assets.evaluation.north_star import (
    CANDIDATE_ORACLE,
    CATALOG_ORACLE,
    SUMMARY_KEYS,
    NorthStarConfig,
    catalog_oracle,
    north_star,
    per_user_outcomes,
)
from dw_assets.ranking.playlists import hygienic_top_k
from dw_assets.simulate import config_for, respond
from dw_assets.simulate.behaviour import LISTENER
from dw_assets.simulate.truth import Truth

USERS, TRACKS, GENRES, DIM, PER_ARTIST = 60, 400, 4, 16, 5
WEEK = "2026-02-02"
CONFIG = NorthStarConfig(seeds=(0, 1, 2), chunk_users=16)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world():
    """A truth whose users and tracks cluster by genre (same-genre affinity ~0.86, around the save
    midpoint), the users' heard tracks, their candidates and the catalog frame."""
    rng = np.random.default_rng(3)
    centroid = _unit(rng.normal(size=(GENRES, DIM)))
    user_genre = rng.integers(0, GENRES, USERS)
    artist_genre = rng.integers(0, GENRES, TRACKS // PER_ARTIST)
    track_artist = np.repeat(np.arange(TRACKS // PER_ARTIST), PER_ARTIST)
    track_genre = artist_genre[track_artist]
    truth = Truth(
        config=config_for("tiny"), genres=[f"g{i}" for i in range(GENRES)], genre_centroid=centroid,
        user_ids=np.arange(1, USERS + 1, dtype=np.int64),
        user_taste=_unit(centroid[user_genre] + 0.1 * rng.normal(size=(USERS, DIM))),
        user_genre_mix=np.eye(GENRES, dtype=np.float32)[user_genre], user_is_bot=np.zeros(USERS, bool),
        user_activity=np.ones(USERS, np.float32), track_ids=np.arange(1, TRACKS + 1, dtype=np.int64),
        track_style=_unit(centroid[track_genre] + 0.1 * rng.normal(size=(TRACKS, DIM))),
        track_genre=track_genre.astype(np.int16), track_artist_id=track_artist.astype(np.int64) + 1,
        track_popularity=np.full(TRACKS, 1.0 / TRACKS), track_duration_ms=np.full(TRACKS, 200_000, np.int64),
        track_release_week=np.full(TRACKS, -1, np.int16), track_tempo_bpm=np.full(TRACKS, 120.0, np.float32),
        track_brightness=np.full(TRACKS, 0.5, np.float32),
    )
    users = truth.user_ids
    heard = pd.DataFrame({"user_id": np.repeat(users, 20),
                          "track_id": np.concatenate([rng.choice(TRACKS, 20, replace=False) + 1 for _ in users])})
    candidates = pd.DataFrame({"user_id": np.repeat(users, 100),
                               "track_id": np.concatenate([rng.choice(TRACKS, 100, replace=False) + 1 for _ in users])})
    popularity = rng.poisson(5, TRACKS).astype(np.float64)
    catalog = pd.DataFrame({"track_id": truth.track_ids, "artist_id": truth.track_artist_id,
                            "popularity": popularity, "is_cold": np.arange(TRACKS) % 10 == 0})
    return truth, users, heard, candidates, catalog


def _random_lists(world, seed: int) -> pd.DataFrame:
    _, users, heard, _, catalog = world
    rng = np.random.default_rng(seed)
    scored = pd.DataFrame({"user_id": np.repeat(users, TRACKS), "track_id": np.tile(catalog["track_id"], USERS),
                           "artist_id": np.tile(catalog["artist_id"], USERS), "score": rng.random(USERS * TRACKS)})
    seen = pd.MultiIndex.from_frame(heard)
    scored = scored[~pd.MultiIndex.from_frame(scored[["user_id", "track_id"]]).isin(seen)]
    return hygienic_top_k(scored)


def test_catalog_oracle_obeys_hygiene_and_beats_random_lists(world):
    truth, users, heard, _, catalog = world
    oracle = catalog_oracle(truth, users, heard, catalog, CONFIG).oracle
    assert (oracle.groupby("user_id").size() == 30).all() and oracle["user_id"].nunique() == USERS
    assert not oracle.duplicated(["user_id", "track_id"]).any()
    assert (oracle.groupby("user_id")["position"].apply(lambda p: list(p) == list(range(1, 31)))).all()
    assert not pd.MultiIndex.from_frame(oracle[["user_id", "track_id"]]).isin(pd.MultiIndex.from_frame(heard)).any()
    artists = oracle.merge(catalog[["track_id", "artist_id"]], on="track_id")
    assert artists.groupby(["user_id", "artist_id"]).size().max() <= 2
    # the best allowed tracks: no unheard track of an artist not yet at its cap scores higher than the list's last
    aff = truth.affinity(oracle["user_id"], oracle["track_id"])
    assert np.all(np.diff(aff.reshape(USERS, 30), axis=1) <= 1e-6)
    cold = catalog.loc[catalog["is_cold"], "track_id"].to_numpy()
    best = per_user_outcomes(truth, oracle, users, cold, WEEK, CONFIG.seeds)["saves"].mean()
    random = per_user_outcomes(truth, _random_lists(world, 0), users, cold, WEEK, CONFIG.seeds)["saves"].mean()
    assert best > 2 * random > 0


@pytest.fixture(scope="module")
def report(world):
    truth, users, heard, candidates, catalog = world
    oracle = catalog_oracle(truth, users, heard, catalog, CONFIG).oracle
    # a "ranker" that keeps the oracle's best 20 and fills with random tracks; the "pipeline" shuffles it
    noisy = _random_lists(world, 1)
    ranker = pd.concat([oracle[oracle["position"] <= 20], noisy.assign(position=noisy["position"] + 100)])
    ranker = ranker.drop_duplicates(["user_id", "track_id"]).sort_values(["user_id", "position"])
    ranker = ranker.assign(position=ranker.groupby("user_id").cumcount() + 1).query("position <= 30")
    pipeline = ranker.assign(position=31 - ranker["position"])
    lists = {"pipeline": pipeline, "ranker_order": ranker, "random": _random_lists(world, 2)}
    return north_star(truth, lists, users, heard, candidates, catalog, WEEK, CONFIG)


def test_decomposition_multiplies_out(report):
    assert set(SUMMARY_KEYS) <= set(report)
    product = report["retrieval_efficiency"] * report["ranking_efficiency"] * report["rerank_efficiency"]
    assert product == pytest.approx(report["oracle_efficiency"], rel=1e-9)
    assert product == pytest.approx(report["saves_per_user"] / report["oracle_saves_per_user"], rel=1e-9)
    assert report["candidate_oracle_saves_per_user"] <= report["oracle_saves_per_user"] * 1.05
    assert report["systems"]["random"]["saves_per_user"] < report["systems"][CATALOG_ORACLE]["saves_per_user"]


def test_seeds_give_intervals(report):
    for key in ("saves_per_user", "oracle_saves_per_user", "retrieval_efficiency", "ranking_efficiency"):
        low, high = report[f"{key}_ci"]
        assert low < report[key] < high
    pipeline = report["systems"]["pipeline"]
    assert pipeline["early_skip_share_ci"][0] <= pipeline["early_skip_share"] <= pipeline["early_skip_share_ci"][1]
    assert report["seeds"] == [0, 1, 2] and report["users"] == USERS
    assert report["systems"][CATALOG_ORACLE]["cold_slot_share"] > 0


def test_perturbed_listeners_give_different_numbers(report):
    assert len(report["robustness"]) >= 2
    for name, numbers in report["robustness"].items():
        assert numbers["oracle_saves_per_user"] != report["oracle_saves_per_user"], name
    plus = next(v for k, v in report["robustness"].items() if k.startswith("save_midpoint+"))
    minus = next(v for k, v in report["robustness"].items() if k.startswith("save_midpoint-"))
    assert plus["oracle_saves_per_user"] < report["oracle_saves_per_user"] < minus["oracle_saves_per_user"]


def test_popularity_bias_rates(report):
    bias = report["popularity_bias"][CATALOG_ORACLE]
    rates = [v for v in bias["tpr_by_bin"].values() if v is not None]
    assert len(rates) == 11 and all(0 <= r <= 1 for r in rates)
    assert bias["max_min_tpr_ratio"] >= 1 and bias["cold_tpr_over_median"] > 0


def test_the_oracle_as_playlist_has_efficiency_one(world):
    truth, users, heard, _, catalog = world
    oracle = catalog_oracle(truth, users, heard, catalog, CONFIG).oracle
    everything = pd.DataFrame({"user_id": np.repeat(users, TRACKS), "track_id": np.tile(catalog["track_id"], USERS)})
    out = north_star(truth, {"pipeline": oracle, "ranker_order": oracle}, users, heard, everything, catalog, WEEK,
                     dataclasses.replace(CONFIG, seeds=(4, 5, 6)))
    for key in ("retrieval_efficiency", "ranking_efficiency", "rerank_efficiency", "oracle_efficiency"):
        assert out[key] == pytest.approx(1.0), key
    assert out["saves_per_user"] == out["oracle_saves_per_user"] == out["candidate_oracle_saves_per_user"]
    assert out["systems"][CANDIDATE_ORACLE]["saves_per_user"] == out["oracle_saves_per_user"]


def test_respond_default_listener_is_unchanged(world):
    truth, users, heard, _, catalog = world
    lists = _random_lists(world, 5)
    default = respond(truth, lists, WEEK, 3)
    pd.testing.assert_frame_equal(default, respond(truth, lists, WEEK, 3, dataclasses.replace(LISTENER)))
    noisier = respond(truth, lists, WEEK, 3, dataclasses.replace(LISTENER, judgement_noise=0.2))
    assert not default["ms_played"].equals(noisier["ms_played"])


def test_the_stored_table_gives_back_the_report(report):
    from dw_assets.evaluation.north_star import north_star_summary, north_star_table
    from dw_assets.evaluation.report import north_star_markdown

    table = north_star_table(report, WEEK, "2026-02-09")
    assert not table.duplicated(["listener", "system", "metric"]).any()
    summary = north_star_summary(table)
    for key in (*SUMMARY_KEYS, "oracle_efficiency"):
        assert summary[key] == pytest.approx(report[key], rel=1e-12), key
        assert summary[f"{key}_ci"] == pytest.approx(report[f"{key}_ci"], rel=1e-12), key
    found = summary["north_star"]
    assert found["measured"] and found["users"] == USERS and found["seeds"] == [0, 1, 2]
    assert found["systems"]["random"]["saves_per_user"] == report["systems"]["random"]["saves_per_user"]
    assert set(found["robustness"]) == set(report["robustness"])
    for name, numbers in report["robustness"].items():
        assert found["robustness"][name]["ranking_efficiency"] == pytest.approx(numbers["ranking_efficiency"])
        assert found["robustness"][name]["systems"] == pytest.approx(numbers["systems"])
    text = north_star_markdown(summary)
    assert all(system in text for system in ("pipeline", "random", CATALOG_ORACLE, CANDIDATE_ORACLE))
    assert "save_midpoint+0.05" in text


def test_without_truth_the_keys_are_null_and_the_report_says_why():
    from dw_assets.evaluation.assets import _empty_north_star
    from dw_assets.evaluation.north_star import north_star_summary
    from dw_assets.evaluation.report import north_star_markdown, render_report

    summary = north_star_summary(_empty_north_star(), "no simulator truth here")
    assert all(summary[key] is None for key in SUMMARY_KEYS)
    assert summary["north_star"] == {"measured": False, "reason": "no simulator truth here"}
    assert north_star_markdown(summary) == "north star not measured: no simulator truth here"
    page, _ = render_report("2026-01-26", None, None, None, {}, None, None, None, None, north_star=summary)
    assert "not measured: no simulator truth here" in page


def test_a_system_without_lists_scores_zero_and_no_users_give_null_keys(world):
    truth, users, heard, candidates, catalog = world
    empty = pd.DataFrame({c: pd.Series(dtype="int64") for c in ("user_id", "position", "track_id")})
    out = north_star(truth, {"pipeline": _random_lists(world, 1), "ranker_order": empty, "als": empty}, users[:5],
                     heard, candidates, catalog, WEEK, CONFIG)
    assert out["systems"]["als"]["saves_per_user"] == 0.0 and out["systems"]["als"]["users_with_list"] == 0
    assert out["ranking_efficiency"] == 0.0 and out["users"] == 5
    nobody = north_star(truth, {"pipeline": empty, "ranker_order": empty}, users[:0], heard, candidates, catalog,
                        WEEK, CONFIG)
    assert nobody["users"] == 0 and all(nobody[key] is None for key in SUMMARY_KEYS)
