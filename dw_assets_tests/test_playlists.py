"""Batch inference glue: popularity fallback pools and the per-user candidate arrays Spark hands over."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dw_assets.ranking.playlists import explode_candidates, fallback_pool, user_posteriors


def test_every_countrys_fallback_pool_is_topped_up_from_the_global_ranking():
    interactions = pd.DataFrame({"user_id": [1, 1, 2, 3, 3, 3], "track_id": [10, 11, 10, 12, 13, 14],
                                 "is_positive": [True, True, True, True, True, False]})
    users = pd.DataFrame({"user_id": [1, 2, 3, 4], "country": ["US", "US", "MX", "SE"]})
    tracks = pd.DataFrame({"track_id": [10, 11, 12, 13, 14], "artist_id": [1, 2, 3, 4, 5], "genre": ["a"] * 5,
                           "popularity_percentile": [0.1, 0.2, 0.3, 0.4, 0.5]})
    pool = fallback_pool(interactions, users, tracks, per_country=3)
    assert pool.groupby("country").size().to_dict() == {"MX": 3, "SE": 3, "US": 3}
    us = pool[pool["country"] == "US"]
    assert us["track_id"].tolist()[:2] == [10, 11]  # local listeners first: 2 for track 10
    assert 14 not in pool["track_id"].tolist()  # a negative never makes a track popular
    assert (pool.groupby("country")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    se = pool[pool["country"] == "SE"]  # no local listening: the global order
    assert se["track_id"].tolist() == [10, 11, 12]


def test_candidate_arrays_explode_back_to_rows_aligned_per_user():
    users = pd.DataFrame({
        "user_id": [5, 6, 7],
        "c_track_id": [np.array([1, 2]), None, np.array([3])],
        "c_sources": [np.array(["two_tower", "audio"], dtype=object), None, np.array(["item2vec"], dtype=object)],
        **{f"c_{c}": [np.array([1, 2]), None, np.array([1])] for c in ("two_tower_rank", "item2vec_rank", "audio_rank")},
        **{f"c_{c}": [np.array([0.5, np.nan]), None, np.array([0.1])]
           for c in ("two_tower_score", "item2vec_score", "audio_score")},
        "p_genre": [np.array(["rock"], dtype=object), None, np.array([], dtype=object)],
        "p_alpha": [np.array([2.0]), None, np.array([])],
        "p_beta": [np.array([1.0]), None, np.array([])],
    })
    rows = explode_candidates(users)
    assert rows[["user_id", "track_id", "sources"]].values.tolist() == [[5, 1, "two_tower"], [5, 2, "audio"],
                                                                      [7, 3, "item2vec"]]
    assert rows["two_tower_rank"].dtype == np.int32 and rows["audio_score"].dtype == np.float32
    posteriors = user_posteriors(users)
    assert posteriors.values.tolist() == [[5, "rock", 2.0, 1.0]]


def test_a_heard_window_with_a_missing_week_is_refused_by_name(tmp_path):
    import pytest

    from dw_assets.lake.resources import require_partitions
    from dw_assets.lake.storage import Lake, LakeError

    lake = Lake(str(tmp_path))
    frame = pd.DataFrame({"user_id": [1], "track_id": [2]})
    for week in ("2026-01-05", "2026-01-19"):
        lake.write_frame(frame, lake.uri("silver", "interactions", week))
    require_partitions(lake, "silver", "interactions", ["2026-01-05", "2026-01-19"], "heard tracks")
    with pytest.raises(LakeError, match="2026-01-12"):
        require_partitions(lake, "silver", "interactions", ["2026-01-05", "2026-01-12", "2026-01-19"], "heard tracks")


def test_candidates_of_two_model_versions_are_refused():
    import pytest

    from dw_assets.ranking.batch import one_version as _one_version
    from dw_assets.versioning import VersionMismatch

    assert _one_version(["2026-01-05-abc", "2026-01-05-abc"]) == "2026-01-05-abc"
    with pytest.raises(VersionMismatch):
        _one_version(["2026-01-05-abc", "2026-01-05-def"])
    with pytest.raises(VersionMismatch):
        _one_version([])
