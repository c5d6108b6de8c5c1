"""item2vec: skip-gram with negative sampling (gensim Word2Vec) over playlists and listening sessions.

A "sentence" is the ordered track ids of one user playlist or of the positive plays
of one listening session; tracks that co-occur within ``window`` positions end up
close in the embedding space. Words are track ids as decimal strings.

Determinism: same sentences (in any order) + same config => identical vectors, in
any process. Sentences are put in a seeded hash order before training, training is
single-threaded (``workers=1``), and gensim's per-word seeding uses a stable hash
instead of Python's per-process randomized ``hash``.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from gensim.models import Word2Vec


@dataclass(frozen=True)
class Item2VecConfig:
    dim: int = 32
    window: int = 10  # positions either side of the centre track
    negative: int = 5  # negative samples per positive pair
    # 6, not gensim's 10: on `small` (week 2026-02-23) top-10 neighbours share the query's genre
    # 99.38 % at both, hidden-style cosine 0.295 vs 0.303, in ~40 % of the time (the demo's largest step).
    epochs: int = 6
    min_count: int = 2  # tracks seen fewer times get no vector
    sample: float = 1e-3  # down-sampling threshold for very frequent tracks
    ns_exponent: float = 0.75  # negative-sampling distribution ~ count**ns_exponent
    seed: int = 7
    workers: int = 1  # more than one thread makes gensim non-deterministic
    min_sentence_len: int = 2  # a single track has no context
    max_sentence_len: int = 200  # longer playlists/sessions are cut into chunks
    # Training samples drawn in Spark by seeded hash (``sampled_sentences``); both cover the `small` demo
    # (~0.5 M sessions with a positive in 12 weeks, ~50 k playlists), so its vectors are the full-data ones.
    # At 500 M users the window holds ~10 G sessions: the cap, not the users, sets the driver's corpus.
    max_sessions: int = 4_000_000
    max_playlists: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("dim", "window", "negative", "epochs", "min_count", "workers", "min_sentence_len",
                     "max_sessions", "max_playlists"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_sentence_len < self.min_sentence_len:
            raise ValueError("max_sentence_len must be >= min_sentence_len")


DEFAULT_CONFIG = Item2VecConfig()


@dataclass
class Item2VecResult:
    """Trained track vectors.

    track_ids: int64[n], sorted ascending. vectors: float32[n, dim], unit L2 norm, row i
    belongs to track_ids[i]. stats: vocab_size, sentences, words (per epoch), epochs,
    train_seconds, words_per_second.
    """

    track_ids: np.ndarray
    vectors: np.ndarray
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.track_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def index_of(self, track_ids: np.ndarray) -> np.ndarray:
        """Row of each track in ``vectors``: int64[q], -1 for tracks without a vector."""
        wanted = np.asarray(track_ids, dtype=np.int64).reshape(-1)
        if len(self.track_ids) == 0:
            return np.full(len(wanted), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.track_ids, wanted), len(self.track_ids) - 1)
        return np.where(self.track_ids[pos] == wanted, pos, -1).astype(np.int64)


def stable_hash(text: str) -> int:
    """Process-independent replacement for ``hash`` in gensim's per-word vector seeding."""
    return zlib.crc32(text.encode("utf-8"))


def playlist_sentences(playlists: pd.DataFrame, config: Item2VecConfig = DEFAULT_CONFIG) -> list[list[str]]:
    """One sentence per playlist (columns playlist_id, track_id, pos), tracks in ``pos`` order.

    Playlists are emitted in playlist_id order; ones longer than ``max_sentence_len`` are
    cut into consecutive chunks, and chunks shorter than ``min_sentence_len`` are dropped.
    """
    ordered = playlists.sort_values(["playlist_id", "pos", "track_id"], kind="mergesort")
    return _split_sentences(ordered["playlist_id"].to_numpy(), ordered["track_id"].to_numpy(np.int64), config)


def session_sentences(interactions: pd.DataFrame, config: Item2VecConfig = DEFAULT_CONFIG) -> list[list[str]]:
    """One sentence per listening session (columns session_id, ts, track_id, is_positive).

    Only positive plays count; they are ordered by ``ts`` (ties by track_id) and
    immediate repeats of the same track are collapsed, since a track is not its own context.
    Sessions are emitted in session_id order, with the same length rules as playlists.
    """
    positives = interactions.loc[interactions["is_positive"].to_numpy(bool), ["session_id", "ts", "track_id"]]
    ordered = positives.sort_values(["session_id", "ts", "track_id"], kind="mergesort")
    sessions = ordered["session_id"].to_numpy()
    tracks = ordered["track_id"].to_numpy(np.int64)
    repeat = np.zeros(len(tracks), dtype=bool)
    repeat[1:] = (sessions[1:] == sessions[:-1]) & (tracks[1:] == tracks[:-1])
    return _split_sentences(sessions[~repeat], tracks[~repeat], config)


def sampled_sentences(playlists, interactions, config: Item2VecConfig = DEFAULT_CONFIG) -> tuple[list[list[str]], dict]:
    """Sentences of a seeded-hash sample of playlists and sessions, both Spark DataFrames (user- and
    event-scale: they never come to the driver whole).

    Spark groups each playlist's tracks by ``pos`` and each session's positive plays by ``ts`` (ties by
    track id), then keeps the ``max_playlists`` / ``max_sessions`` groups with the smallest seeded hash;
    only those arrays reach the driver, where ``playlist_sentences`` / ``session_sentences`` apply the
    same rules as on pandas input. Returns (sentences, counts of what was sampled).
    """
    from dw_assets.embeddings.samples import explode_groups, sampled_groups

    lists = sampled_groups(playlists, "playlist_id", ["pos"], "track_id", config.max_playlists, config.seed)
    plays = interactions.where("is_positive").select("session_id", "ts", "track_id")
    sessions = sampled_groups(plays, "session_id", ["ts"], "track_id", config.max_sessions, config.seed)
    # Position in the time-ordered group stands in for ts: session_sentences only needs the order.
    session_rows = explode_groups(sessions, "session_id", "track_id", position="ts").assign(is_positive=True)
    sentences = (playlist_sentences(explode_groups(lists, "playlist_id", "track_id"), config)
                 + session_sentences(session_rows, config))
    return sentences, {"sampled_playlists": len(lists), "sampled_sessions": len(sessions)}


def _split_sentences(groups: np.ndarray, tracks: np.ndarray, config: Item2VecConfig) -> list[list[str]]:
    """Cut sorted ``tracks`` into sentences at group changes and every ``max_sentence_len`` items."""
    n = len(tracks)
    if n == 0:
        return []
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = groups[1:] != groups[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    pos_in_group = np.arange(n) - group_start
    starts = np.flatnonzero(new_group | (pos_in_group % config.max_sentence_len == 0))
    words = tracks.astype(str)
    sentences = np.split(words, starts[1:])
    return [s.tolist() for s in sentences if len(s) >= config.min_sentence_len]


def _training_order(sentences: list[list[str]], seed: int) -> list[list[str]]:
    """A seeded pseudo-random order that depends only on sentence contents, not on input order.

    Shuffled rather than sorted so that SGD's decaying learning rate does not meet
    playlists and sessions (or one genre) in blocks.
    """
    salt = f"{seed}|".encode()
    keyed = [(zlib.crc32(salt + " ".join(s).encode()), s) for s in sentences]
    keyed.sort()
    return [s for _, s in keyed]


def train_item2vec(sentences: list[list[str]], config: Item2VecConfig = DEFAULT_CONFIG) -> Item2VecResult:
    """Train skip-gram with negative sampling on ``sentences`` (lists of track-id strings).

    Returns unit-norm float32[n, dim] vectors for the tracks seen at least ``min_count``
    times, sorted by track id. Raises ValueError when no track qualifies.
    """
    corpus = _training_order([s for s in sentences if len(s) >= config.min_sentence_len], config.seed)
    model = Word2Vec(
        vector_size=config.dim,
        window=config.window,
        min_count=config.min_count,
        sample=config.sample,
        seed=config.seed,
        workers=config.workers,
        sg=1,
        hs=0,
        negative=config.negative,
        ns_exponent=config.ns_exponent,
        epochs=config.epochs,
        hashfxn=stable_hash,
    )
    model.build_vocab(corpus_iterable=corpus)
    if len(model.wv) == 0:
        raise ValueError(f"item2vec: no track occurs {config.min_count}+ times in {len(corpus)} sentences")
    started = time.perf_counter()
    _, raw_words = model.train(
        corpus_iterable=corpus, total_examples=model.corpus_count, epochs=config.epochs
    )
    seconds = time.perf_counter() - started

    track_ids = np.asarray(model.wv.index_to_key, dtype=np.int64)
    order = np.argsort(track_ids, kind="stable")
    vectors = np.asarray(model.wv.vectors, dtype=np.float32)[order]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    stats = {
        "vocab_size": len(track_ids),
        "sentences": len(corpus),
        "words": int(model.corpus_total_words),
        "epochs": config.epochs,
        "train_seconds": round(seconds, 3),
        "words_per_second": round(raw_words / seconds, 1) if seconds > 0 else float("nan"),
    }
    return Item2VecResult(track_ids=track_ids[order], vectors=vectors, stats=stats)


def neighbours(
    result: Item2VecResult, query_track_ids: np.ndarray, k: int, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k item2vec neighbours of each query track, the query itself excluded.

    Returns (ids int64[q, k], cosine float32[q, k]), best first (ties by track id). Rows of
    queries without a vector, and slots beyond the n-1 available tracks, are padded with
    id -1 and cosine NaN. Brute force over all n tracks; large catalogs go through FAISS.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = result.index_of(query_track_ids)
    ids = np.full((len(rows), k), -1, dtype=np.int64)
    cosine = np.full((len(rows), k), np.nan, dtype=np.float32)
    take = min(k, len(result) - 1)
    known = np.flatnonzero(rows >= 0)
    if take < 1 or len(known) == 0:
        return ids, cosine
    for start in range(0, len(known), batch_size):
        batch = known[start : start + batch_size]
        sims = result.vectors[rows[batch]] @ result.vectors.T
        sims[np.arange(len(batch)), rows[batch]] = -np.inf  # the query is not its own neighbour
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((result.track_ids[top], -top_sims), axis=-1)
        top = np.take_along_axis(top, order, axis=1)
        ids[batch, :take] = result.track_ids[top]
        cosine[batch, :take] = np.take_along_axis(top_sims, order, axis=1)
    return ids, cosine
