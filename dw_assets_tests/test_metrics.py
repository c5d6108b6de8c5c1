"""Offline metrics: accuracy cross-checked against scikit-learn, beyond-accuracy metrics by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from dw_assets.evaluation.metrics import (
    METRIC_KEYS,
    evaluate_lists,
    evaluate_segments,
    metric_keys,
    ranking_metrics,
)
from dw_assets.ranking.rerank import RerankConfig, genre_kl


def _recs(lists: dict[int, list[int]]) -> pd.DataFrame:
    """user -> ranked track ids (position 1 first)."""
    rows = [(u, p, t) for u, tracks in lists.items() for p, t in enumerate(tracks, start=1)]
    return pd.DataFrame(rows, columns=["user_id", "position", "track_id"]).astype(np.int64)


def _truth(positives: dict[int, list[int]]) -> pd.DataFrame:
    rows = [(u, t) for u, tracks in positives.items() for t in tracks]
    return pd.DataFrame(rows, columns=["user_id", "track_id"]).astype(np.int64)


def _tracks(track_ids, artist=None, genre=None, share=None, percentile=None, cold=None) -> pd.DataFrame:
    n = len(track_ids)
    return pd.DataFrame({
        "track_id": np.asarray(track_ids, dtype=np.int64),
        "artist_id": np.asarray(artist if artist is not None else track_ids, dtype=np.int64),
        "genre": genre if genre is not None else ["rock"] * n,
        "popularity_share": np.asarray(share if share is not None else [1.0 / n] * n, dtype=np.float64),
        "popularity_percentile": np.asarray(percentile if percentile is not None else [0.5] * n, dtype=np.float64),
        "is_cold": np.asarray(cold if cold is not None else [False] * n, dtype=bool),
    })


def _history(user_ids, genre_share=None, mean_percentile=None, level=None, new=None) -> pd.DataFrame:
    n = len(user_ids)
    return pd.DataFrame({
        "user_id": np.asarray(user_ids, dtype=np.int64),
        "genre_share": genre_share if genre_share is not None else [{"rock": 1.0}] * n,
        "mean_popularity_percentile": mean_percentile if mean_percentile is not None else [0.5] * n,
        "history_level": level if level is not None else ["medium"] * n,
        "is_new_user": new if new is not None else [False] * n,
    })


def _random_case(rng: np.random.Generator, k: int) -> tuple[list[int], list[int]]:
    """A ranked list of 0..k tracks and 1..k+10 positives, some listed, some not (truth may exceed k)."""
    universe = rng.permutation(200)[:80]
    length = int(rng.integers(0, k + 1)) if rng.random() > 0.1 else 0
    listed = universe[:length].tolist()
    n_truth = int(rng.integers(1, k + 11))
    pool = np.concatenate([universe[:length], universe[length:length + n_truth]])
    truth = rng.choice(pool, size=min(n_truth, len(pool)), replace=False).tolist()
    return listed, truth


def test_metric_keys_carry_k_and_evaluate_lists_returns_all_of_them():
    assert metric_keys(30) == METRIC_KEYS
    assert METRIC_KEYS[:5] == ("precision@30", "recall@30", "ndcg@30", "hit_rate@30", "map@30")
    result = evaluate_lists(_recs({1: [1, 2]}), _truth({1: [2]}), _tracks([1, 2]), _history([1]), k=10)
    assert set(metric_keys(10)) <= set(result)
    assert {"users", "users_with_recs", "rec_popularity_percentile", "history_popularity_percentile",
            "ild_uses_vectors"} <= set(result)  # fmt: skip


@pytest.mark.parametrize("k", [5, 10, 30])
def test_ndcg_matches_sklearn_on_random_lists(k):
    """Each user's list becomes one sklearn query over k slots + its unlisted positives.

    Slot p holds the listed track at p or, past the list's end, a filler of relevance 0; the
    unlisted positives follow after slot k. Every item gets a distinct, descending score, so
    sklearn's tie handling never applies and its top-k is exactly our k slots: a short list is
    not credited with positives it did not list, and the ideal DCG covers min(|truth|, k).
    """
    rng = np.random.default_rng(k)
    cases = {user: _random_case(rng, k) for user in range(25)}
    cases[25] = ([], [1, 2, 3])  # no recs at all
    cases[26] = (list(range(k)), list(range(k + 20)))  # more positives than slots
    per_user = ranking_metrics(_recs({u: c[0] for u, c in cases.items()}),
                               _truth({u: c[1] for u, c in cases.items()}), k=k)  # fmt: skip
    assert list(per_user.index) == sorted(cases)
    for user, (listed, truth) in cases.items():
        positives = set(truth)
        relevance = [1.0 if t in positives else 0.0 for t in listed] + [0.0] * (k - len(listed))
        relevance += [1.0] * len(positives - set(listed))
        scores = -np.arange(len(relevance), dtype=np.float64)
        expected = ndcg_score([relevance], [scores], k=k)
        assert per_user.loc[user, "ndcg"] == pytest.approx(expected, abs=1e-12), (user, listed, truth)


def test_average_precision_matches_sklearn_when_the_list_ranks_every_positive():
    """AP@k = sklearn's AP when all positives are listed and |truth| <= k (same denominator, no cut)."""
    rng = np.random.default_rng(3)
    k = 20
    lists, positives = {}, {}
    for user in range(40):
        length = int(rng.integers(2, k + 1))
        tracks = rng.permutation(500)[:length]
        n_truth = int(rng.integers(1, length))
        lists[user] = tracks.tolist()
        positives[user] = rng.choice(tracks, size=n_truth, replace=False).tolist()
    per_user = ranking_metrics(_recs(lists), _truth(positives), k=k)
    for user, tracks in lists.items():
        relevance = np.isin(tracks, positives[user]).astype(int)
        expected = average_precision_score(relevance, -np.arange(len(tracks), dtype=np.float64))
        assert per_user.loc[user, "ap"] == pytest.approx(expected, abs=1e-12)


def test_precision_recall_hit_match_brute_force_and_ignore_slots_past_k():
    lists = {1: [5, 6, 7, 8, 9], 2: [1, 2, 3], 3: [4, 4, 10]}  # user 3 lists track 4 twice
    positives = {1: [6, 9, 99], 2: [50], 3: [4], 4: [7]}  # user 4: no recs
    k = 4
    per_user = ranking_metrics(_recs(lists), _truth(positives), k=k)
    assert list(per_user.index) == [1, 2, 3, 4]
    for user, truth in positives.items():
        top = list(dict.fromkeys(lists.get(user, [])[:k]))
        hits = sum(t in truth for t in top)
        assert per_user.loc[user, "precision"] == hits / k
        assert per_user.loc[user, "recall"] == hits / len(truth)
        assert per_user.loc[user, "hit"] == float(hits > 0)
    assert per_user.loc[1, "hits"] == 1  # track 9 sits at position 5 > k
    assert per_user.loc[3, "ap"] == 1.0  # the duplicate is one track, hit at position 1


def test_map_and_ndcg_by_hand():
    # positives at positions 2 and 4 of 4 slots, 3 positives: AP = (1/2 + 2/4) / 3
    per_user = ranking_metrics(_recs({1: [10, 11, 12, 13]}), _truth({1: [11, 13, 99]}), k=4)
    assert per_user.loc[1, "ap"] == pytest.approx((0.5 + 0.5) / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert per_user.loc[1, "ndcg"] == pytest.approx(dcg / idcg)


def test_perfect_lists_score_one_and_shuffled_lists_score_lower():
    rng = np.random.default_rng(11)
    k = 30
    positives = {user: rng.permutation(1000)[: int(rng.integers(1, k + 1))].tolist() for user in range(50)}
    tracks = _tracks(np.arange(1000))
    history = _history(list(positives))
    perfect = evaluate_lists(_recs(positives), _truth(positives), tracks, history, k=k)
    assert perfect["ndcg@30"] == pytest.approx(1.0)
    assert perfect["map@30"] == pytest.approx(1.0)
    assert perfect["recall@30"] == pytest.approx(1.0)
    assert perfect["hit_rate@30"] == 1.0

    # pad each list to k with non-positives, then shuffle the tracks: positives drift down
    padded = {u: t + [1000 + 40 * u + i for i in range(k - len(t))] for u, t in positives.items()}
    shuffled = {u: rng.permutation(t).tolist() for u, t in padded.items()}
    scored = evaluate_lists(_recs(shuffled), _truth(positives), tracks, history, k=k)
    assert scored["ndcg@30"] < 0.9
    assert scored["recall@30"] == pytest.approx(1.0)  # same tracks, worse order


def test_accuracy_is_averaged_over_truth_users_only():
    recs = _recs({1: [1, 2], 2: [3, 4], 3: [5, 6]})  # user 3 has no positives
    truth = _truth({1: [1], 2: [99], 4: [1]})  # user 4 has no recs
    result = evaluate_lists(recs, truth, _tracks(range(1, 7)), _history([1, 2, 3, 4]), k=2)
    assert result["users"] == 3
    assert result["users_with_recs"] == 3
    assert result["hit_rate@2"] == pytest.approx(1 / 3)
    assert result["precision@2"] == pytest.approx((1 / 2) / 3)


def test_coverage_counts_distinct_recommended_tracks_over_the_catalog():
    recs = _recs({1: [1, 2, 3], 2: [2, 3, 4]})
    tracks = _tracks(range(1, 11))
    assert evaluate_lists(recs, _truth({1: [1]}), tracks, _history([1, 2]), k=3)["coverage"] == pytest.approx(0.4)
    wider = evaluate_lists(recs, _truth({1: [1]}), tracks, _history([1, 2]), k=3, catalog_size=100)
    assert wider["coverage"] == pytest.approx(0.04)


def test_intra_list_diversity_from_vectors_and_from_genres():
    recs = _recs({1: [1, 2, 3], 2: [4, 5]})
    tracks = _tracks([1, 2, 3, 4, 5], genre=["rock", "rock", "jazz", "pop", "pop"])
    truth, history = _truth({1: [1]}), _history([1, 2])
    # user 1: cos(1,2)=0, cos(1,3)=1, cos(2,3)=0 -> ILD 2/3; user 2: cos=0.8 -> 0.2 (scale ignored)
    vectors = (np.array([1, 2, 3, 4, 5], dtype=np.int64),
               np.array([[1, 0], [0, 2], [3, 0], [3, 4], [0, 1]], dtype=np.float32))  # fmt: skip
    by_vectors = evaluate_lists(recs, truth, tracks, history, k=3, vectors=vectors)
    assert by_vectors["ild"] == pytest.approx((2 / 3 + 0.2) / 2)
    assert by_vectors["ild_uses_vectors"] == 1.0
    # genres: user 1 has 2 of 3 pairs of different genres, user 2 none
    by_genre = evaluate_lists(recs, truth, tracks, history, k=3)
    assert by_genre["ild"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert by_genre["ild_uses_vectors"] == 0.0
    # a track without a vector drops out of its list: user 2 has one rated track left and is skipped
    partial = (vectors[0][:4], vectors[1][:4])
    assert evaluate_lists(recs, truth, tracks, history, k=3, vectors=partial)["ild"] == pytest.approx(2 / 3)


def test_novelty_is_mean_surprisal_with_unplayed_tracks_floored():
    tracks = _tracks([1, 2, 3, 4], share=[0.5, 0.25, 0.25, 0.0])
    recs = _recs({1: [1, 2], 2: [4]})
    result = evaluate_lists(recs, _truth({1: [1]}), tracks, _history([1, 2]), k=2)
    floor = 0.25 / 10  # a tenth of the rarest played track's share
    assert result["novelty"] == pytest.approx((1.0 + 2.0 - math.log2(floor)) / 3)


def test_popularity_lift_compares_the_list_with_the_users_own_history():
    tracks = _tracks([1, 2, 3, 4], percentile=[0.2, 0.4, 0.9, 0.6])
    recs = _recs({1: [1, 2], 2: [3, 4], 3: [1, 3]})
    history = _history([1, 2, 3], mean_percentile=[0.6, 0.5, np.nan], level=["light", "heavy", "none"])
    result = evaluate_lists(recs, _truth({1: [1]}), tracks, history, k=2)
    assert result["popularity_lift"] == pytest.approx((0.3 / 0.6 + 0.75 / 0.5) / 2)  # user 3: no history
    assert result["rec_popularity_percentile"] == pytest.approx((0.3 + 0.75) / 2)
    assert result["history_popularity_percentile"] == pytest.approx(0.55)


def test_calibration_kl_is_the_rerankers_genre_kl_for_both_share_formats():
    tracks = _tracks([1, 2, 3, 4], genre=["rock", "rock", "jazz", "pop"])
    recs = _recs({1: [1, 2, 3], 2: [3, 4], 3: [1, 4]})
    shares = [{"rock": 0.5, "jazz": 0.5},
              [{"genre": "jazz", "share": 0.8}, {"genre": "folk", "share": 0.2}],
              None]  # user 3: no genre history  # fmt: skip
    history = _history([1, 2, 3], genre_share=shares)
    alpha = RerankConfig().calibration_alpha
    expected = [genre_kl({"rock": 0.5, "jazz": 0.5}, ["rock", "rock", "jazz"], alpha),
                genre_kl({"jazz": 0.8, "folk": 0.2}, ["jazz", "pop"], alpha)]  # fmt: skip
    result = evaluate_lists(recs, _truth({1: [1]}), tracks, history, k=3)
    assert result["calibration_kl"] == pytest.approx(np.mean(expected))
    # by hand for user 1: p = (.5, .5), q = (2/3, 1/3)
    q = np.array([2 / 3, 1 / 3]) * (1 - alpha) + 0.5 * alpha
    assert expected[0] == pytest.approx(float(np.sum(0.5 * np.log(0.5 / q))))


def test_calibration_kl_matches_genre_kl_on_random_users():
    rng = np.random.default_rng(5)
    genres = np.array(["rock", "jazz", "pop", "folk", "metal"])
    track_genre = rng.choice(genres, size=100)
    tracks = _tracks(np.arange(100), genre=track_genre.tolist())
    lists, shares, expected = {}, [], []
    for user in range(30):
        lists[user] = rng.permutation(100)[: int(rng.integers(1, 11))].tolist()
        mix = dict(zip(genres[: int(rng.integers(1, 6))], rng.random(5), strict=False))
        shares.append(mix)
        expected.append(genre_kl(mix, track_genre[lists[user]].tolist(), RerankConfig().calibration_alpha))
    result = evaluate_lists(_recs(lists), _truth({0: [0]}), tracks, _history(list(lists), genre_share=shares), k=10)
    assert result["calibration_kl"] == pytest.approx(np.mean(expected), rel=1e-12)


def test_tracks_per_artist():
    tracks = _tracks([1, 2, 3, 4, 5], artist=[7, 7, 7, 8, 9])
    recs = _recs({1: [1, 2, 3, 4], 2: [4, 5]})
    result = evaluate_lists(recs, _truth({1: [1]}), tracks, _history([1, 2]), k=4)
    assert result["max_tracks_per_artist"] == 3
    assert result["mean_tracks_per_artist"] == pytest.approx((4 / 2 + 2 / 2) / 2)


def test_cold_share_and_cold_hit_rate():
    tracks = _tracks([1, 2, 3, 4, 5], cold=[False, True, True, False, True])
    recs = _recs({1: [1, 2], 2: [3, 4]})
    truth = _truth({1: [2, 5], 2: [4], 3: [3]})  # cold positives: 2 (hit), 5, 3 (user 3 has no list)
    result = evaluate_lists(recs, truth, tracks, _history([1, 2, 3]), k=2)
    assert result["cold_share"] == pytest.approx(2 / 4)
    assert result["cold_hit_rate"] == pytest.approx(1 / 3)
    warm_truth = _truth({1: [1], 2: [4]})
    assert math.isnan(evaluate_lists(recs, warm_truth, tracks, _history([1, 2]), k=2)["cold_hit_rate"])


def test_segments_hold_the_right_users():
    recs = _recs({1: [10], 2: [20], 3: [30], 4: [40], 5: [50]})
    truth = _truth({1: [10], 2: [20], 3: [99], 4: [40], 5: [50]})
    history = _history([1, 2, 3, 4, 5], level=["light", "medium", "heavy", "none", "light"],
                       new=[False, False, False, True, True])  # fmt: skip
    table = evaluate_segments(recs, truth, _tracks([10, 20, 30, 40, 50, 99]), history, k=1)
    assert list(table.index) == ["all", "light", "medium", "heavy", "new"]
    assert table["users"].to_dict() == {"all": 5, "light": 2, "medium": 1, "heavy": 1, "new": 2}
    assert table.loc["heavy", "hit_rate@1"] == 0.0  # user 3 missed, alone in heavy
    assert table.loc["all", "hit_rate@1"] == pytest.approx(4 / 5)
    assert table.loc["new", "hit_rate@1"] == 1.0  # users 4 (level none) and 5
    assert table.loc["light", "coverage"] == pytest.approx(2 / 6)  # still over the whole catalog
    assert set(metric_keys(1)) <= set(table.columns)
