"""item2vec: sentence building, cross-process determinism, neighbours that mean something."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dw_assets.embeddings.item2vec import (
    Item2VecConfig,
    neighbours,
    playlist_sentences,
    session_sentences,
    train_item2vec,
)
from dw_assets.simulate import load_truth

REPO = Path(__file__).resolve().parents[1]
SMALL = Item2VecConfig(dim=16, epochs=5)


def genre_playlists(
    seed: int, genres: int = 6, tracks_per_genre: int = 40, playlists: int = 300
) -> pd.DataFrame:
    """Playlists that each draw 8-20 tracks from one genre; track t belongs to genre t % genres."""
    rng = np.random.default_rng(seed)
    rows = []
    for playlist_id in range(playlists):
        genre = rng.integers(genres)
        members = np.arange(genre, genres * tracks_per_genre, genres)
        picks = rng.choice(members, size=rng.integers(8, 21), replace=False)
        rows += [(playlist_id, int(t), pos) for pos, t in enumerate(picks)]
    return pd.DataFrame(rows, columns=["playlist_id", "track_id", "pos"])


def test_playlist_sentences_follow_pos_and_drop_single_tracks():
    playlists = pd.DataFrame(
        {"playlist_id": [2, 1, 2, 1, 3, 1], "track_id": [20, 12, 21, 11, 30, 13], "pos": [1, 2, 0, 1, 0, 3]}
    )
    # playlist 3 has one track: no context, no sentence
    assert playlist_sentences(playlists) == [["11", "12", "13"], ["21", "20"]]


def test_long_playlists_are_cut_into_chunks_and_short_tails_dropped():
    playlists = pd.DataFrame({"playlist_id": 1, "track_id": np.arange(100, 107), "pos": np.arange(7)})
    config = Item2VecConfig(max_sentence_len=3, min_sentence_len=2)
    assert playlist_sentences(playlists, config) == [["100", "101", "102"], ["103", "104", "105"]]


def test_session_sentences_keep_positive_plays_in_time_order():
    ts = pd.Timestamp("2026-01-05 10:00", tz="UTC") + pd.to_timedelta([3, 1, 2, 4, 5, 0, 1, 0], unit="min")
    interactions = pd.DataFrame(
        {
            "session_id": ["a", "a", "a", "a", "a", "b", "b", "c"],
            "ts": ts,
            "track_id": [3, 1, 2, 2, 4, 7, 8, 9],
            "is_positive": [True, True, True, True, False, True, False, True],
        }
    )
    # a: 1,2,3 by time, the repeat of 2 right after 3 is kept (not adjacent), 4 was skipped;
    # b and c have a single positive play each.
    assert session_sentences(interactions) == [["1", "2", "3", "2"]]


def test_session_sentences_collapse_immediate_repeats():
    ts = pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(np.arange(4), unit="min")
    interactions = pd.DataFrame({"session_id": "s", "ts": ts, "track_id": [5, 5, 6, 6], "is_positive": True})
    assert session_sentences(interactions) == [["5", "6"]]


_TRAIN_SCRIPT = """
import json, sys
from dw_assets.embeddings.item2vec import Item2VecConfig, playlist_sentences, train_item2vec
from dw_assets_tests.test_item2vec import genre_playlists
result = train_item2vec(playlist_sentences(genre_playlists(seed=1)), Item2VecConfig(dim=16, epochs=5))
json.dump({"ids": result.track_ids.tolist(), "vectors": result.vectors.tobytes().hex()}, sys.stdout)
"""


def test_training_is_identical_across_processes_and_input_orders():
    sentences = playlist_sentences(genre_playlists(seed=1))
    here = train_item2vec(sentences, SMALL)
    shuffled = [sentences[i] for i in np.random.default_rng(0).permutation(len(sentences))]
    assert np.array_equal(train_item2vec(shuffled, SMALL).vectors, here.vectors)

    # Python's str hash differs between these two processes; started together to save wall time.
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _TRAIN_SCRIPT],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            stdout=subprocess.PIPE,
            text=True,
        )
        for hash_seed in ("1", "2")
    ]
    runs = []
    for process in processes:
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0
        runs.append(json.loads(out))
    for run in runs:
        assert run["ids"] == here.track_ids.tolist()
        assert bytes.fromhex(run["vectors"]) == here.vectors.tobytes()


def test_different_seeds_give_different_vectors():
    sentences = playlist_sentences(genre_playlists(seed=1))
    other = Item2VecConfig(dim=16, epochs=5, seed=8)
    assert not np.allclose(train_item2vec(sentences, SMALL).vectors, train_item2vec(sentences, other).vectors)


def test_result_shapes_and_unit_norms():
    result = train_item2vec(playlist_sentences(genre_playlists(seed=2)), SMALL)
    assert result.track_ids.dtype == np.int64 and np.all(np.diff(result.track_ids) > 0)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (len(result.track_ids), 16)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert result.stats["vocab_size"] == len(result.track_ids) == 240
    assert result.stats["sentences"] == 300 and result.stats["words"] > 0


def test_neighbours_share_the_genre_of_synthetic_playlists():
    result = train_item2vec(playlist_sentences(genre_playlists(seed=3)), SMALL)
    ids, _ = neighbours(result, result.track_ids, k=10)
    same_genre = (ids % 6) == (result.track_ids[:, None] % 6)
    assert same_genre.mean() > 0.9  # chance: ~1/6


def test_neighbours_share_genre_in_the_simulated_world(tiny_world):
    """Playlists of the tiny world; genre from the simulator's hidden truth."""
    manifest = json.loads((tiny_world / "landing" / "manifest.json").read_text())
    week = manifest["last_training_week"]
    playlists = pd.read_parquet(tiny_world / "landing" / "playlists" / f"week={week}")
    result = train_item2vec(playlist_sentences(playlists), Item2VecConfig())
    truth = load_truth(tiny_world)

    ids, cosine = neighbours(result, result.track_ids, k=10)
    genre = truth.track_genre[truth.track_index(result.track_ids)]
    found = ids >= 0
    neighbour_genre = truth.track_genre[truth.track_index(np.where(found, ids, result.track_ids[:, None]))]
    agreement = (neighbour_genre == genre[:, None])[found].mean()
    chance = np.mean([(genre == g).mean() for g in genre])
    assert found.mean() > 0.99
    assert agreement > max(0.6, 5 * chance)
    assert np.all(np.diff(cosine, axis=1)[found[:, 1:]] <= 1e-6)  # best first


def test_neighbours_exclude_the_query_and_pad_unknown_tracks():
    result = train_item2vec(playlist_sentences(genre_playlists(seed=4)), SMALL)
    known = result.track_ids[:3]
    ids, cosine = neighbours(result, np.array([*known, 999_999]), k=5)
    assert ids.shape == cosine.shape == (4, 5) and ids.dtype == np.int64 and cosine.dtype == np.float32
    for row, query in enumerate(known):
        assert query not in ids[row] and np.all(ids[row] >= 0)
        expected = result.vectors[result.index_of(ids[row])] @ result.vectors[result.index_of([query])[0]]
        np.testing.assert_allclose(cosine[row], expected, rtol=1e-5, atol=1e-6)
    assert np.all(ids[3] == -1) and np.all(np.isnan(cosine[3]))

    ids, cosine = neighbours(result, known[:1], k=len(result) + 5)  # more than the n-1 other tracks
    assert (ids[0] >= 0).sum() == len(result) - 1 and np.all(ids[0, len(result) - 1 :] == -1)
    assert np.isnan(cosine[0, -1])


def test_training_without_enough_repeated_tracks_raises():
    with pytest.raises(ValueError, match="no track occurs"):
        train_item2vec([["1", "2"], ["3", "4"]], Item2VecConfig(min_count=2))
