"""The evaluation's baselines and tables: item-item CF, top-k lists, the JSON contract and the targets."""

import numpy as np
import pandas as pd
import pytest

from dw_assets.evaluation.baselines import item_cf_top_k, top_k_frame
from dw_assets.evaluation.metrics import metric_keys
from dw_assets.evaluation.systems import SYSTEMS, evaluation_json, holdout_truth, quality_targets

CONTRACT_KEYS = {"precision@30", "recall@30", "ndcg@30", "hit_rate@30", "map@30", "coverage", "ild", "novelty",
                 "popularity_lift", "calibration_kl", "max_tracks_per_artist", "cold_share", "cold_hit_rate"}


def _plays(pairs: list[tuple[int, int]], weight: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "track_id": [t for _, t in pairs],
                         "weight": weight, "is_positive": weight > 0})


def test_item_cf_recommends_what_similar_listeners_liked_and_never_what_was_heard():
    # Tracks 10 and 11 are liked together by users 1-4; user 5 liked 10 only and skipped 12.
    liked = [(u, t) for u in (1, 2, 3, 4) for t in (10, 11)] + [(u, 12) for u in (6, 7)] + [(5, 10)]
    history = pd.concat([_plays(liked), _plays([(5, 12)], weight=-1.0)], ignore_index=True)
    users, top = item_cf_top_k(history, k=3)
    row = top[list(users).index(5)]
    assert row[0] == 11  # the co-liked track first
    assert 10 not in row and 12 not in row  # heard (liked or skipped) tracks are never proposed
    assert set(row[row >= 0]) <= {11}  # 12 shares no listener with 10: cosine 0, not recommended


def test_top_k_frames_drop_padding_and_number_positions_from_one():
    frame = top_k_frame(np.array([7, 8]), np.array([[3, 4, -1], [5, -1, -1]]))
    assert frame.to_dict("list") == {"user_id": [7, 7, 8], "position": [1, 2, 1], "track_id": [3, 4, 5]}


def test_holdout_truth_keeps_only_new_positives():
    history = pd.DataFrame({"user_id": [1, 1], "track_id": [10, 11], "is_positive": [True, False]})
    holdout = pd.DataFrame({"user_id": [1, 1, 1, 2], "track_id": [10, 11, 12, 12],
                            "is_positive": [True, True, True, False]})
    truth = holdout_truth(history, holdout)
    assert truth.to_dict("list") == {"user_id": [1], "track_id": [12]}  # 10, 11 heard; user 2 did not like 12


def _table(ndcg: dict[str, float]) -> pd.DataFrame:
    rows = []
    for system in SYSTEMS:
        row = {"week": "2026-02-23", "holdout_week": "2026-03-02", "system": system, "segment": "all", "users": 100,
               "retrieval_recall@500": 0.55, "ann_recall@500": 1.0}
        row.update({key: 0.1 for key in metric_keys(30)})
        row.update({"ndcg@30": ndcg.get(system, 0.01), "popularity_lift": 0.9, "max_tracks_per_artist": 2.0,
                    "calibration_kl": 0.05 if system == "pipeline" else 0.2, "cold_share": 0.06,
                    "cold_hit_rate": float("nan") if system == "als" else 0.01})
        rows.append(row)
    rows.append({**rows[0], "segment": "heavy", "ndcg@30": 0.9})
    return pd.DataFrame(rows)


def test_evaluation_json_keeps_the_contract_names():
    summary = evaluation_json(_table({"pipeline": 0.05}))
    assert set(summary) == {"week", "holdout_week", "systems", "retrieval_recall@500", "ann_recall@500"}
    assert set(summary["systems"]) == set(SYSTEMS)
    for metrics in summary["systems"].values():
        assert set(metrics) >= CONTRACT_KEYS
    assert summary["systems"]["pipeline"]["ndcg@30"] == 0.05  # the "all" segment, not "heavy"
    assert summary["systems"]["als"]["cold_hit_rate"] is None  # NaN becomes null: valid JSON
    assert summary["week"] == "2026-02-23" and summary["holdout_week"] == "2026-03-02"


def test_quality_targets_report_each_target_met_or_missed():
    targets = quality_targets(_table({"pipeline": 0.05, "als": 0.045, "popularity": 0.02})).set_index("target")
    assert "pipeline NDCG vs ALS" not in targets.index  # the holdout rewards exposure: a monitor, not a target
    assert targets.at["pipeline NDCG vs popularity", "met"]  # 2.5x
    assert abs(targets.at["pipeline NDCG vs popularity", "value"] - 0.05 / 0.02) < 1e-9
    assert targets.at["calibration KL vs retrieval", "met"]
    assert targets.at["max tracks per artist", "met"] and targets.at["cold-track share of slots", "met"]


def test_exact_top_k_never_returns_a_heard_track_whatever_the_user_order():
    from dw_assets.evaluation.baselines import embedding_top_k

    rng = np.random.default_rng(3)
    tracks = np.arange(100, 160, dtype=np.int64)
    users = np.array([9, 2, 7, 4, 1], dtype=np.int64)  # embedding ids come in any order
    heard = _plays([(int(u), int(t)) for u in users for t in rng.choice(tracks, 20, replace=False)])
    user_vectors = rng.normal(size=(len(users), 8)).astype(np.float32)
    track_vectors = rng.normal(size=(len(tracks), 8)).astype(np.float32)
    top = embedding_top_k(user_vectors, tracks, track_vectors, users, heard, k=10)
    for row, user in enumerate(users):
        listened = set(heard.loc[heard["user_id"] == user, "track_id"])
        assert not listened & set(top[row].tolist()), user
        scores = track_vectors @ user_vectors[row]
        best = [int(t) for t in tracks[np.argsort(-scores)] if t not in listened][:10]
        assert top[row].tolist() == best  # each row is that user's own exact top-k


def test_cold_truth_keeps_each_users_cold_positives_in_order_and_drops_users_without_any():
    from dw_assets.evaluation.assets import _only

    rng = np.random.default_rng(3)
    truth = {int(u): rng.choice(200, size=int(rng.integers(0, 9)), replace=False).astype(np.int64) for u in range(300)}
    cold = rng.choice(200, size=40, replace=False).astype(np.int64)
    expected = {u: t[np.isin(t, cold)] for u, t in truth.items()}
    expected = {u: t for u, t in expected.items() if len(t)}
    got = _only(truth, cold)
    assert list(got) == list(expected) and 0 < len(got) < len(truth)
    assert all(np.array_equal(got[u], expected[u]) for u in expected)
    assert _only({}, cold) == {} and _only(truth, np.empty(0, np.int64)) == {}


def test_simulator_truth_is_found_in_a_local_world_only(tmp_path):
    from dw_assets.evaluation.truth import has_simulator_truth, no_north_star_reason, simulator_truth
    from dw_assets.lake.storage import Lake

    lake = Lake(str(tmp_path))
    assert not has_simulator_truth(tmp_path) and not has_simulator_truth(str(tmp_path))
    assert no_north_star_reason(lake).startswith(f"no simulator truth under {lake.root}/simulator/")
    with pytest.raises(FileNotFoundError, match="dw simulate"):
        simulator_truth(lake)
    (tmp_path / "simulator").mkdir()
    assert has_simulator_truth(tmp_path) and no_north_star_reason(lake).startswith("no user fitted")
    assert not has_simulator_truth("s3://bucket/lake")


def test_the_control_arm_takes_the_candidates_assets_settings_under_the_same_names():
    """``last_week_playlists`` builds its candidates with ``CandidatesConfig``'s settings (prefixed
    ``candidates_``), its playlists with ``PlaylistsConfig``'s and its user vectors with
    ``tower_embeddings``' serving settings (``SERVING_SETTINGS``, in W-1's index's version): by default the
    treatment's."""
    from dw_assets.embeddings.assets import TrackEmbeddingsConfig
    from dw_assets.embeddings.two_tower_data import SERVING_SETTINGS
    from dw_assets.evaluation.assets import LastWeekPlaylistsConfig, RetrievalEvaluationConfig
    from dw_assets.ranking.config import PlaylistsConfig
    from dw_assets.retrieval.assets import CandidatesConfig
    from dw_assets.retrieval.candidates import CandidateConfig

    control = LastWeekPlaylistsConfig()
    assert control.candidate_settings() == CandidatesConfig().settings(threads=1)
    assert control.settings() == PlaylistsConfig().settings()
    served = TrackEmbeddingsConfig()
    assert {name: getattr(control, name) for name in SERVING_SETTINGS} == {name: getattr(served, name)
                                                                            for name in SERVING_SETTINGS}
    fields = set(LastWeekPlaylistsConfig.model_fields)
    assert ({f"candidates_{name}" for name in CandidatesConfig.model_fields} | set(PlaylistsConfig.model_fields)
            | set(SERVING_SETTINGS)) == fields
    given = {"total": 300, "audio_quota": 20, "users_per_partition": 5, "partitions": 3}
    assert (LastWeekPlaylistsConfig(**{f"candidates_{k}": v for k, v in given.items()}).candidate_settings()
            == CandidatesConfig(**given).settings(threads=1))
    assert LastWeekPlaylistsConfig(seed=3, candidates_seed=4).settings().rerank.seed == 3
    assert RetrievalEvaluationConfig().k == CandidateConfig.total  # recall@k of the candidates' list
