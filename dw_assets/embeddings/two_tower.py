"""Two-tower retrieval model: user tower x item tower, inner product in a shared space.

User tower: the user's last 50 distinct positive tracks (recency-weighted and
plain mean of their id + audio embeddings), genre shares, country and
birth-year band -> MLP -> ``dim``, L2-normalised. Item tower: track id
embedding + projected audio CNN vector + artist and genre embeddings +
popularity inputs -> MLP -> ``dim``, L2-normalised. The track id table is
shared by both towers, so the history speaks the items' language.

Loss: sampled softmax over in-batch negatives, ``logit_ij = (u_i.v_j + b_j) / T``,
with the logQ correction ``logit_ij - log q_j`` applied to every in-batch
column, the positive's own included (Yi et al. 2019), plus the user's early
skips as extra (weighted) softmax columns and ``uniform_negatives`` tracks
drawn uniformly from the whole catalog (mixed negative sampling, Yang et al.
2020: the only negatives a never-played track can be); each example weighs
its graded interaction weight. ``b_j`` is the popularity term (below; 0 when
``popularity_term`` is off, and the popularity inputs then enter the item MLP).

What logQ does to popularity: in-batch candidates are drawn in proportion to
how often tracks are liked, so without the correction the softmax learns
``log P(track | user) - log q(track)`` (a PMI) and under-retrieves popular
tracks; with it the model learns ``log P(track | user)``. The correction
raises recall and moves the popularity of what is retrieved up, toward that
of what users really like next; it does not lower it.

Popularity out of the dot product (``popularity_term``): the item MLP does not
see the popularity inputs; ``b(track) = linear(popularity inputs)`` is added to
the score, so ``v`` carries taste only and popularity has one knob. Serving
scores ``u.v + w * b`` (``popularity_weight``), folded into one inner product:
``track_vectors()`` are ``[v, w b]`` and ``user_vectors()`` ``[u, 1]`` (``dim + 1``
wide; the first ``dim`` entries are the unit tower outputs). The weight sits on
the per-track side, so changing it at serving rewrites the track vectors (100 M rows,
``item_tower``) and never the user table (500 M rows at the target).

Cold start, inside the towers: tracks never played get their id row set to
the similarity-weighted mean id of their k nearest played "anchor" tracks in
audio space (``warm_start_cold_tracks``; the neighbours come from
``audio_anchor_neighbours``). Training shows the item tower that same input
(DropoutNet, Volkovs et al. 2017): for an ``id_dropout`` share of the played
items of each batch the id embedding is replaced by its warm start (self
excluded) and the popularity inputs by a cold track's, and an
``artist_dropout`` share loses its artist; items never played in training
(uniform negatives, hard negatives) always go through their warm start, as
at serving. So a cold track is scored by a tower trained on such inputs, not
by one that only ever saw learnt ids.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dw_assets.embeddings.device import device
from dw_assets.embeddings.threads import torch_threads
from dw_assets.embeddings.two_tower_data import (
    BIRTH_BUCKETS,
    POPULARITY_INPUTS,
    Examples,
    FeatureSpace,
    TwoTowerConfig,
    UserFeatures,
    build_examples,
    build_tower_features,
    most_recent,
    profile_user_features,
    sampling_probability,
    tower_training_sample,
)
from dw_assets.evaluation.holdout import recall_of_lists

__all__ = [
    "Examples",
    "FeatureSpace",
    "TrainedTwoTower",
    "TwoTowerConfig",
    "TwoTowerModel",
    "batch_loss",
    "build_examples",
    "build_tower_features",
    "retrieve",
    "train_two_tower",
    "tower_training_sample",
    "warm_start_cold_tracks",
    "audio_anchor_neighbours",
    "cold_popularity",
]

ARTIST_DIM = 16
GENRE_DIM = 8
COUNTRY_DIM = 8
BIRTH_DIM = 4
INIT_STD = 0.01  # small id init: an id row that never trains stays near neutral
SCORE_CHUNK_USERS = 1024
VECTOR_CHUNK = 65_536
USER_CHUNK = 1024  # users per user-tower call, padded to this many (see encode_users)
FIXED_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
AGE_INPUT = POPULARITY_INPUTS.index("log_age")  # the one popularity input a never-played track has
# Models written before a config field existed were trained without it: load them as they were trained.
LEGACY_CONFIG = {"id_dropout": 0.0, "artist_dropout": 0.0, "uniform_negatives": 0, "popularity_term": False,
                 "popularity_weight": 1.0}


class TwoTowerModel(nn.Module):
    """Both towers. Static per-track inputs live in (non-persistent) buffers set from a FeatureSpace."""

    def __init__(self, features: FeatureSpace, config: TwoTowerConfig):
        super().__init__()
        n_tracks, d_audio = features.track_audio.shape
        n_genres, n_popularity = len(features.genres), len(POPULARITY_INPUTS)
        self.temperature = config.temperature
        self.half_life_days = config.recency_half_life_days
        self.history_len = config.history_len
        self.popularity_weight = config.popularity_weight
        self.track_id = nn.Embedding(n_tracks, config.id_dim)
        self.audio = nn.Linear(d_audio + 1, config.id_dim)  # + missing flag
        self.artist = nn.Embedding(len(features.artist_ids), ARTIST_DIM, padding_idx=0)
        self.genre = nn.Embedding(n_genres, GENRE_DIM, padding_idx=0)
        self.country = nn.Embedding(len(features.countries), COUNTRY_DIM, padding_idx=0)
        self.birth = nn.Embedding(BIRTH_BUCKETS + 1, BIRTH_DIM, padding_idx=0)
        item_in = 2 * config.id_dim + ARTIST_DIM + GENRE_DIM + (0 if config.popularity_term else n_popularity)
        self.item_mlp = nn.Sequential(nn.Linear(item_in, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.dim))
        # b(track): starts at 0, so the first steps train taste as the plain model does.
        self.popularity = nn.Linear(n_popularity, 1) if config.popularity_term else None
        if self.popularity is not None:
            nn.init.zeros_(self.popularity.weight)
            nn.init.zeros_(self.popularity.bias)
        user_in = 4 * config.id_dim + n_genres + COUNTRY_DIM + BIRTH_DIM + 1
        self.user_mlp = nn.Sequential(nn.Linear(user_in, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.dim))
        nn.init.normal_(self.track_id.weight, std=INIT_STD)
        for table in (self.artist, self.genre, self.country, self.birth):
            nn.init.normal_(table.weight, std=INIT_STD)
            table.weight.data[0] = 0.0
        self.register_buffer("track_audio", torch.zeros(n_tracks, d_audio + 1), persistent=False)
        self.register_buffer("track_artist", torch.zeros(n_tracks, dtype=torch.long), persistent=False)
        self.register_buffer("track_genre", torch.zeros(n_tracks, dtype=torch.long), persistent=False)
        self.register_buffer("track_popularity", torch.zeros(n_tracks, n_popularity), persistent=False)
        # Training only (``set_warm_starts``): each track's audio anchors and weights, and which tracks have
        # a learnt id. Empty: every item reads its own id row.
        self.register_buffer("warm_rows", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("warm_weights", torch.zeros(0, 0), persistent=False)
        self.register_buffer("learnt_id", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.set_track_inputs(features)

    def set_track_inputs(self, features: FeatureSpace, popularity: np.ndarray | None = None) -> None:
        """Load the per-track inputs; ``popularity`` overrides the window's (training uses its own period)."""
        audio = features.track_audio.astype(np.float64)
        present = ~features.track_audio_missing
        mean = audio[present].mean(axis=0) if present.any() else np.zeros(audio.shape[1])
        std = audio[present].std(axis=0) + 1e-6 if present.any() else np.ones(audio.shape[1])
        standard = np.where(present[:, None], (audio - mean) / std, 0.0)
        dev = self.track_id.weight.device
        self.track_audio = torch.as_tensor(
            np.c_[standard, features.track_audio_missing], dtype=torch.float32, device=dev
        )
        self.track_artist = torch.as_tensor(features.track_artist, device=dev)
        self.track_genre = torch.as_tensor(features.track_genre, device=dev)
        pop = features.track_popularity if popularity is None else popularity
        self.track_popularity = torch.as_tensor(pop, dtype=torch.float32, device=dev)

    def encode_items(
        self,
        id_vectors: torch.Tensor,
        audio_inputs: torch.Tensor,
        artist_rows: torch.Tensor,
        genre_rows: torch.Tensor,
        popularity: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v float32[..., dim] unit, b float32[...]) from item-tower inputs: the one item function, for
        catalog rows, warm starts and tracks outside the catalog (``incremental.warm_start_from_audio``).

        ``id_vectors``: [..., id_dim]; ``audio_inputs``: [..., d_audio + 1] standardized audio and the missing
        flag; ``artist_rows`` / ``genre_rows``: int64[...] (0 = unknown); ``popularity``: [..., 3]
        ``POPULARITY_INPUTS`` (a never-played track: ``cold_popularity``). b is 0 without ``popularity_term``.
        """
        parts = [id_vectors, self.audio(audio_inputs), self.artist(artist_rows), self.genre(genre_rows)]
        if self.popularity is None:
            parts.append(popularity)
        v = F.normalize(self.item_mlp(torch.cat(parts, dim=-1)), dim=-1)
        b = self.popularity(popularity).squeeze(-1) if self.popularity is not None else v.new_zeros(v.shape[:-1])
        return v, b

    def item_parts(
        self, rows: torch.Tensor, drop_id: torch.Tensor | None = None, drop_artist: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v, b) of track rows. ``drop_id`` / ``drop_artist``: bool[...] items shown as a cold track /
        without artist (training's dropout). Once ``set_warm_starts`` ran, rows without a learnt id always
        read their warm start, as at serving (``warm_start_cold_tracks``)."""
        ids = self.track_id(rows)
        popularity = self.track_popularity[rows]
        if len(self.learnt_id):
            has_warm = self.warm_weights[rows].sum(-1) > 0  # tracks without audio keep their id row
            drop = drop_id & has_warm if drop_id is not None else torch.zeros_like(has_warm)
            ids = torch.where(((~self.learnt_id[rows] & has_warm) | drop)[..., None], self.warm_start_ids(rows), ids)
            popularity = torch.where(drop[..., None], cold_popularity(popularity), popularity)
        artist = self.track_artist[rows]
        if drop_artist is not None:
            artist = artist.masked_fill(drop_artist, 0)
        return self.encode_items(ids, self.track_audio[rows], artist, self.track_genre[rows], popularity)

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """float32[..., dim] L2-normalised item vectors of track rows (the taste part, without b)."""
        return self.item_parts(rows)[0]

    def serving_item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """What the index holds for track rows (``serve_items``)."""
        return self.serve_items(*self.item_parts(rows))

    def serve_items(self, v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[v, w b] with ``popularity_term`` (w = ``popularity_weight``; the inner product with [u, 1] is
        u.v + w b), else v."""
        return torch.cat([v, self.popularity_weight * b[..., None]], dim=-1) if self.popularity is not None else v

    def serving_user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """[u, 1] with ``popularity_term``, else u."""
        if self.popularity is None:
            return users
        return torch.cat([users, users.new_ones((*users.shape[:-1], 1))], dim=-1)

    def set_warm_starts(self, rows: np.ndarray, weights: np.ndarray, learnt: np.ndarray) -> None:
        """Training's warm starts: ``rows`` int64[n_tracks, k] anchor rows, ``weights`` float32[n_tracks, k]
        (rows sum to 1; all 0: no warm start, no audio), ``learnt`` bool[n_tracks] tracks with a learnt id."""
        dev = self.track_id.weight.device
        self.warm_rows = torch.as_tensor(rows, dtype=torch.long, device=dev)
        self.warm_weights = torch.as_tensor(weights, dtype=torch.float32, device=dev)
        self.learnt_id = torch.as_tensor(learnt, dtype=torch.bool, device=dev)

    def warm_start_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """[..., id_dim] the similarity-weighted mean id of each row's anchors (``set_warm_starts``)."""
        return weighted_ids(self.track_id.weight, self.warm_rows[rows], self.warm_weights[rows])

    def user_vectors(
        self,
        history: torch.Tensor,
        history_age_days: torch.Tensor,
        genre_share: torch.Tensor,
        country: torch.Tensor,
        birth_bucket: torch.Tensor,
    ) -> torch.Tensor:
        """float32[B, dim] L2-normalised user vectors; ``history``: int64[B, L] track rows, -1 = padding."""
        valid = (history >= 0).float()
        rows = history.clamp(min=0)
        recency = torch.pow(0.5, history_age_days / self.half_life_days) * valid
        count = valid.sum(1, keepdim=True)
        pools = []
        for w in (recency / recency.sum(1, keepdim=True).clamp(min=1e-6), valid / count.clamp(min=1.0)):
            # The audio projection is affine, so pooling raw audio first equals pooling projected audio.
            pools += [_pool(w, self.track_id(rows)), self.audio(_pool(w, self.track_audio[rows]))]
        recent, mean = torch.cat(pools[:2], dim=-1), torch.cat(pools[2:], dim=-1)
        x = torch.cat(
            [recent, mean, genre_share, self.country(country), self.birth(birth_bucket),
             torch.log1p(count) / np.log1p(self.history_len)],
            dim=-1,
        )
        return F.normalize(self.user_mlp(x), dim=-1)

    def history_centroids(self, history: torch.Tensor) -> torch.Tensor:
        """float32[B, dim]: the unit mean of the item vectors (the taste part v) of each user's history rows
        (int64[B, L], -1 = padding); zeros for an empty history."""
        valid = (history >= 0).float()
        items = self.item_vectors(history.clamp(min=0).reshape(-1)).reshape(*history.shape, -1)
        return F.normalize(_pool(valid, items), dim=-1)

    def encode_users(self, users: UserFeatures, query_centroid: float = 0.0) -> torch.Tensor:
        """float32[n, dim] user vectors, computed in chunks (the history gather is [chunk, L, d_audio]).

        ``query_centroid`` (λ in [0, 1]): the serving query normalize((1 - λ) u + λ c), u the user tower's
        vector and c the unit centroid of the item vectors of the user's history (``history_centroids``);
        u alone for a user without history. 0: the user tower (what training optimises and validates).

        Every chunk is padded to ``USER_CHUNK`` rows: BLAS picks its kernel by the matrix shape and rounds
        differently for a few rows than for many, so a fixed shape makes a user's vector the same whatever
        batch it arrives in (a Spark partition, the evaluation's control arm, one user)."""
        dev = self.track_id.weight.device
        parts = []
        for s in range(0, len(users), USER_CHUNK):
            chunk = [torch.as_tensor(_pad_rows(a[s : s + USER_CHUNK], USER_CHUNK), device=dev)
                     for a in _user_arrays(users)]
            n = min(USER_CHUNK, len(users) - s)
            vectors = self.user_vectors(*chunk)
            if query_centroid > 0:
                history = chunk[0]
                centroid = self.history_centroids(history)
                blended = F.normalize((1.0 - query_centroid) * vectors + query_centroid * centroid, dim=-1)
                vectors = torch.where((history >= 0).any(1, keepdim=True), blended, vectors)
            parts.append(vectors[:n])
        return torch.cat(parts) if parts else torch.zeros(0, self.user_mlp[-1].out_features, device=dev)


def _pool(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_l weights[b, l] values[b, l, :]: float[B, d]. Elementwise, not a batched matrix product: on some
    CPUs bmm rounds a row differently by its place in the batch, and a user's vector must not depend on
    which users share its chunk (a Spark partition against the driver)."""
    return (weights[..., None] * values).sum(1)


def cold_popularity(popularity: torch.Tensor) -> torch.Tensor:
    """The popularity inputs of a never-played track (``popularity_inputs`` of 0 listeners and 0 plays):
    listeners percentile 0, log plays 0, its own age."""
    out = torch.zeros_like(popularity)
    out[..., AGE_INPUT] = popularity[..., AGE_INPUT]
    return out


def _pad_rows(values: np.ndarray, rows: int) -> np.ndarray:
    """``values`` with zero rows appended up to ``rows`` (a padded user has an empty history: -1 tracks)."""
    if len(values) == rows:
        return values
    pad = np.zeros((rows - len(values), *values.shape[1:]), dtype=values.dtype)
    if values.ndim == 2 and values.dtype == np.int64:
        pad -= 1  # history rows: -1 is padding
    return np.concatenate([values, pad])


def _user_arrays(users: UserFeatures) -> tuple[np.ndarray, ...]:
    return (users.history, users.history_age_days.astype(np.float32), users.genre_share.astype(np.float32),
            users.country, users.birth_bucket)


@dataclass
class TrainedTwoTower:
    """A trained model with its feature space; produces the vectors the ANN index and retrieval use."""

    model: TwoTowerModel
    features: FeatureSpace
    config: TwoTowerConfig
    report: dict = field(default_factory=dict)
    trained_tracks: np.ndarray | None = None  # bool[n_tracks] tracks with training positives (cold-start anchors)

    @torch.no_grad()
    def track_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(track_ids int64[n], vectors float32[n, dim (+ 1)]) for every catalog track, cold ones included:
        the serving vectors, [v, w b] with ``popularity_term`` (the module docstring; w =
        ``model.popularity_weight``, the config's unless a serving setting replaced it)."""
        vectors = all_item_vectors(self.model).cpu().numpy()
        return self.features.track_ids.copy(), vectors.astype(np.float32)

    @torch.no_grad()
    def user_vectors(self, user_profiles, query_centroid: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(user_ids int64[m], vectors float32[m, dim (+ 1)]) for the profiles' users with any listening:
        [u, 1] with ``popularity_term``, so [u, 1].[v, w b] = u.v + w b. ``query_centroid``: the serving
        query's share of the user's history centroid (``TwoTowerModel.encode_users``); None: the config's.

        A user with events but no known positive track gets a vector from genre shares and
        demographics alone (the tower saw such empty histories in training: a user's first
        positive). Users without any listening are omitted (popularity-by-country fallback downstream).
        """
        self.model.eval()
        users = profile_user_features(user_profiles, self.features, self.config.history_len)
        ids = user_profiles["user_id"].to_numpy(dtype=np.int64)
        listened = user_profiles["events"].to_numpy() > 0 if "events" in user_profiles else False
        keep = np.flatnonzero((users.history_length > 0) | listened)
        weight = self.config.query_centroid if query_centroid is None else query_centroid
        vectors = self.model.serving_user_vectors(self.model.encode_users(users.take(keep), weight)).cpu().numpy()
        return ids[keep], vectors.astype(np.float32)

    def to_bytes(self) -> bytes:
        """A self-contained zip: model state dict, feature arrays, config and report."""
        arrays, meta = self.features.to_arrays()
        if self.trained_tracks is not None:
            arrays["trained_tracks"] = self.trained_tracks
        buffers = {
            "model.pt": _torch_bytes({k: v.detach().cpu() for k, v in self.model.state_dict().items()}),
            "features.npz": _npz_bytes(arrays),
            "meta.json": json.dumps(
                {"features": meta, "config": asdict(self.config), "report": self.report}, sort_keys=True
            ).encode(),
        }
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for name, data in buffers.items():
                zf.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME), data)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainedTwoTower:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = json.loads(zf.read("meta.json"))
            with np.load(io.BytesIO(zf.read("features.npz")), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            state = torch.load(io.BytesIO(zf.read("model.pt")), map_location="cpu", weights_only=True)
        trained_tracks = arrays.pop("trained_tracks", None)
        features = FeatureSpace.from_arrays(arrays, meta["features"])
        config = TwoTowerConfig(**{**LEGACY_CONFIG, **meta["config"]})
        model = TwoTowerModel(features, config)
        model.load_state_dict(state)
        model = model.to(device()).eval()
        return cls(model=model, features=features, config=config, report=meta["report"], trained_tracks=trained_tracks)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            part = io.BytesIO()
            np.lib.format.write_array(part, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_ZIP_TIME), part.getvalue())
    return buf.getvalue()


def retrieve(
    user_vectors: torch.Tensor,
    track_vectors: torch.Tensor,
    seen_ptr: np.ndarray,
    seen_tracks: np.ndarray,
    k: int,
) -> np.ndarray:
    """int64[B, k] exact top-k track rows by inner product, each user's seen tracks excluded."""
    k = min(k, track_vectors.shape[0])
    out = []
    for s in range(0, user_vectors.shape[0], SCORE_CHUNK_USERS):
        e = min(s + SCORE_CHUNK_USERS, user_vectors.shape[0])
        scores = user_vectors[s:e] @ track_vectors.T
        lo, hi = seen_ptr[s], seen_ptr[e]
        owner = np.repeat(np.arange(e - s), np.diff(seen_ptr[s : e + 1]))
        scores[torch.as_tensor(owner, device=scores.device),
               torch.as_tensor(seen_tracks[lo:hi], device=scores.device)] = -torch.inf
        out.append(torch.topk(scores, k, dim=1).indices.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def popularity_concentration(top: np.ndarray, percentile: np.ndarray) -> dict:
    """Popularity of retrieved tracks: mean listeners percentile and share from the top 10 % most popular."""
    pct = percentile[top]
    return {"mean_popularity_percentile": float(pct.mean()), "top10pct_share": float((pct >= 0.9).mean())}


def _validation_users(examples: Examples) -> UserFeatures:
    return examples.states.take(examples.validation_state)


@torch.no_grad()
def item_vector_chunk(model: TwoTowerModel, start: int, size: int = VECTOR_CHUNK) -> torch.Tensor:
    """Serving item vectors of track rows start .. start + size (fewer at the end). Vectors are computed in
    these fixed chunks wherever they run (the driver, or ``item_tower`` on the executors), so every track's
    vector is bit-identical whichever process computed it (a matrix product's last bits can depend on how
    many rows it multiplies at once)."""
    model.eval()
    dev, n = model.track_id.weight.device, model.track_id.num_embeddings
    return model.serving_item_vectors(torch.arange(start, min(start + size, n), device=dev))


@torch.no_grad()
def all_item_vectors(model: TwoTowerModel) -> torch.Tensor:
    """float32[n_tracks, dim (+ 1)] serving item vectors of every track row, on the model's device."""
    model.eval()
    n = model.track_id.num_embeddings
    parts = [item_vector_chunk(model, s) for s in range(0, n, VECTOR_CHUNK)]
    width = model.item_mlp[-1].out_features + (model.popularity is not None)
    return torch.cat(parts) if parts else torch.zeros(0, width, device=model.track_id.weight.device)


@torch.no_grad()
def evaluate_retrieval(model: TwoTowerModel, examples: Examples, k: int) -> dict:
    """Exact full-catalog recall@k for the validation users (the serving score), and the popularity of
    what was retrieved."""
    tracks = all_item_vectors(model)
    users = model.serving_user_vectors(model.encode_users(_validation_users(examples)))
    top = retrieve(users, tracks, examples.validation_seen_ptr, examples.validation_seen_tracks, k)
    recall = recall_of_lists(top, examples.validation_target_ptr, examples.validation_target_tracks)["recall"]
    return {"recall": recall, **popularity_concentration(top, examples.train_popularity_percentile)}


def baseline_recall(examples: Examples, n_tracks: int, k: int) -> dict:
    """Recall@k of the training-period popularity ranking, and the expected recall of a random ranking."""
    popular = np.bincount(examples.train.track, minlength=n_tracks)
    top = _popularity_top(popular, examples, k)
    seen = np.diff(examples.validation_seen_ptr)
    random = np.minimum(k / np.maximum(n_tracks - seen, 1), 1.0)
    return {
        "popularity": recall_of_lists(top, examples.validation_target_ptr, examples.validation_target_tracks)["recall"],
        "popularity_concentration": popularity_concentration(top, examples.train_popularity_percentile),
        "random": float(random.mean()) if len(random) else float("nan"),
        # What validation users really went on to like: the popularity retrieval should aim at.
        "targets_popularity": popularity_concentration(
            examples.validation_target_tracks[None, :], examples.train_popularity_percentile
        ),
    }


def _popularity_top(popular: np.ndarray, examples: Examples, k: int) -> np.ndarray:
    """int64[v, k] most popular tracks per validation user, the user's seen tracks excluded."""
    out = []
    ptr, seen = examples.validation_seen_ptr, examples.validation_seen_tracks
    order = np.argsort(-popular, kind="stable")
    for i in range(len(examples.validation_users)):
        excluded = np.isin(order[: k + ptr[i + 1] - ptr[i]], seen[ptr[i] : ptr[i + 1]])
        out.append(order[: k + ptr[i + 1] - ptr[i]][~excluded][:k])
    return np.stack(out) if out else np.zeros((0, k), dtype=np.int64)


def _sample_hard_negatives(examples: Examples, users: np.ndarray, h: int, rng: np.random.Generator) -> np.ndarray:
    """int64[n, h] random early-skipped tracks of each example's user; -1 where the user has none."""
    ptr, tracks = examples.hard_negative_ptr, examples.hard_negative_tracks
    if len(tracks) == 0 or h == 0:
        return np.full((len(users), h), -1, dtype=np.int64)
    count = ptr[users + 1] - ptr[users]
    pick = ptr[users][:, None] + (rng.random((len(users), h)) * count[:, None]).astype(np.int64)
    return np.where(count[:, None] > 0, tracks[np.minimum(pick, len(tracks) - 1)], -1)


def batch_loss(
    model: TwoTowerModel,
    users: torch.Tensor,
    positives: torch.Tensor,
    user_ids: torch.Tensor,
    weights: torch.Tensor,
    hard_negatives: torch.Tensor | None,
    log_q: torch.Tensor | None,
    config: TwoTowerConfig,
    uniform: torch.Tensor | None = None,
    dropout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Weighted sampled-softmax loss of one batch.

    ``users``: float32[B, dim] user vectors; ``positives``: int64[B] track rows;
    ``user_ids``: int64[B] (a user's other in-batch positives are not negatives);
    ``hard_negatives``: int64[B, H] track rows or -1; ``log_q``: float32[n_tracks]
    log probability that one in-batch draw is the track. ``uniform``: int64[M] catalog
    rows drawn uniformly, extra columns shared by every example. The sample then
    holds each track ``B q_j + M / n_tracks`` times in expectation, and every column
    (positive, in-batch, uniform) subtracts the log of that, less the constant log B:
    ``logaddexp(log q_j, log(M / (B n)))`` (plain ``log q_j`` without uniform columns).
    ``dropout``: bool masks (drop_id, drop_artist) over the batch's items in the order
    positives, hard negatives (row-major), uniform (``TwoTowerModel.item_parts``).
    """
    b = len(positives)
    hard_rows = hard_negatives.clamp(min=0).reshape(-1) if hard_negatives is not None else positives[:0]
    uniform = positives[:0] if uniform is None else uniform
    v, bias = _item_parts(model, torch.cat([positives, hard_rows, uniform]), dropout)
    correction = None
    if log_q is not None:
        correction = log_q if len(uniform) == 0 else torch.logaddexp(
            log_q, torch.tensor(np.log(len(uniform) / (b * len(log_q))), dtype=log_q.dtype, device=log_q.device))
    logits = (users @ v[:b].T + bias[None, :b]) / config.temperature
    if correction is not None:
        logits = logits - correction[positives][None, :]
    eye = torch.eye(b, dtype=torch.bool, device=logits.device)
    # Duplicates of the positive track, and the same user's other positives, are not negatives.
    collide = (positives[:, None] == positives[None, :]) | (user_ids[:, None] == user_ids[None, :])
    logits = logits.masked_fill(collide & ~eye, -torch.inf)
    columns = [logits]
    if len(hard_rows):
        valid = hard_negatives >= 0
        hv, hb = v[b : b + len(hard_rows)].view(b, -1, v.shape[-1]), bias[b : b + len(hard_rows)].view(b, -1)
        hard = ((users[:, None, :] * hv).sum(-1) + hb) / config.temperature
        hard = hard + np.log(max(config.hard_negative_weight, 1e-12))
        columns.append(hard.masked_fill(~valid, -torch.inf))
    if len(uniform):
        u = (users @ v[b + len(hard_rows) :].T + bias[None, b + len(hard_rows) :]) / config.temperature
        if correction is not None:
            u = u - correction[uniform][None, :]
        columns.append(u.masked_fill(uniform[None, :] == positives[:, None], -torch.inf))  # a draw of the positive
    per_example = F.cross_entropy(torch.cat(columns, dim=1), torch.arange(b, device=logits.device), reduction="none")
    return (per_example * weights).sum() / weights.sum().clamp(min=1e-12)


def uniform_negatives(rng: np.random.Generator, n_tracks: int, m: int, dev=None) -> torch.Tensor | None:
    """int64[m] catalog rows drawn uniformly with replacement (never-played tracks and new releases as likely
    as any); None when m = 0 (no draw: the generator's stream is as without the option)."""
    return torch.as_tensor(rng.integers(0, n_tracks, m), device=dev) if m else None


def dropout_masks(rng: np.random.Generator, n_items: int, config: TwoTowerConfig, dev=None):
    """(drop_id, drop_artist) bool[n_items], independent draws at ``id_dropout`` / ``artist_dropout``; None
    when both are 0. Drawn on the host by the seeded numpy generator, so every device trains the same."""
    if config.id_dropout == 0 and config.artist_dropout == 0:
        return None
    return (torch.as_tensor(rng.random(n_items) < config.id_dropout, device=dev),
            torch.as_tensor(rng.random(n_items) < config.artist_dropout, device=dev))


def _item_parts(model, rows: torch.Tensor, dropout) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, b) of ``rows``; a model with item vectors only (no popularity term, no dropout) has b = 0."""
    if isinstance(model, TwoTowerModel):
        return model.item_parts(rows, *(dropout if dropout is not None else (None, None)))
    v = model.item_vectors(rows)
    return v, v.new_zeros(v.shape[:-1])


def train_two_tower(features: FeatureSpace, examples: Examples, config: TwoTowerConfig) -> TrainedTwoTower:
    """Train both towers; validation recall@k is measured after every epoch (exact, full catalog).

    With ``restore_best_epoch`` the returned weights are those of the epoch
    with the best validation recall (the validation split then also selects
    the epoch count; ``final_val_recall@k`` is that epoch's).

    The model trains on the training period's popularity inputs and ends with
    the window's (``features.track_popularity``) for serving. Runs with ``config.threads`` torch threads
    (the caller's setting is restored after).
    """
    with torch_threads(config.threads):
        return _train(features, examples, config)


def _train(features: FeatureSpace, examples: Examples, config: TwoTowerConfig) -> TrainedTwoTower:
    dev = device()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = TwoTowerModel(features, config).to(dev)
    model.set_track_inputs(features, popularity=examples.train_popularity)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    train = most_recent(examples.train, config.max_examples)
    q = examples.sampling_probability
    if len(train) < len(examples.train):
        q = sampling_probability(train.track, features.n_tracks)
    state_tensors = [torch.as_tensor(a, device=dev) for a in _user_arrays(examples.states)]
    log_q = None
    if config.logq_correction:
        log_q = torch.as_tensor(np.log(np.maximum(q, 1e-12)), dtype=torch.float32, device=dev)
    state_t = torch.as_tensor(train.state, device=dev)
    track_t = torch.as_tensor(train.track, device=dev)
    user_t = torch.as_tensor(train.user, device=dev)
    weight_t = torch.as_tensor(train.weight, dtype=torch.float32, device=dev)
    h = config.hard_negatives_per_example if len(examples.hard_negative_tracks) else 0
    learnt = np.bincount(train.track, minlength=features.n_tracks) > 0
    cold_start = _cold_start_report(model, features, learnt, config, dev)
    m = config.uniform_negatives

    report: dict = {
        "device": str(dev),
        "logq": config.logq_correction,
        "train_examples": len(train),
        "val_examples": len(examples.validation),
        "val_users": len(examples.validation_users),
        "examples": examples.stats,
        "loss": [],
        f"val_recall@{config.recall_k}": [],
        "baselines": baseline_recall(examples, features.n_tracks, config.recall_k),
        "cold_start": cold_start,
    }
    seconds = validation_seconds = 0.0
    final: dict = {}
    best_epoch, best_state = config.epochs - 1, {}
    for epoch in range(config.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.as_tensor(rng.permutation(len(train)), device=dev)
        hard_all = torch.as_tensor(_sample_hard_negatives(examples, train.user, h, rng), device=dev)
        total, weight_sum = 0.0, 0.0
        for s in range(0, len(train), config.batch_size):
            idx = order[s : s + config.batch_size]
            if len(idx) < 2:
                continue
            users = model.user_vectors(*(t[state_t[idx]] for t in state_tensors))
            uniform = uniform_negatives(rng, features.n_tracks, m, dev)
            dropout = dropout_masks(rng, len(idx) * (1 + h) + m, config, dev)
            loss = batch_loss(model, users, track_t[idx], user_t[idx], weight_t[idx],
                              hard_all[idx] if h else None, log_q, config, uniform, dropout)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            w = float(weight_t[idx].sum())
            total += loss.item() * w
            weight_sum += w
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        report["loss"].append(total / max(weight_sum, 1e-12))
        if len(examples.validation_users):
            t0 = time.perf_counter()
            result = evaluate_retrieval(model, examples, config.recall_k)
            report[f"val_recall@{config.recall_k}"].append(result["recall"])
            validation_seconds += time.perf_counter() - t0
            if not config.restore_best_epoch or not final or result["recall"] > final["recall"]:
                final, best_epoch = result, epoch
                if config.restore_best_epoch:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state:
        model.load_state_dict(best_state)

    report.update(
        {
            f"final_val_recall@{config.recall_k}": final.get("recall", float("nan")),
            "best_epoch": best_epoch + 1,
            "retrieved_popularity": {k: v for k, v in final.items() if k != "recall"},
            "train_seconds": seconds,
            "validation_seconds": validation_seconds,
            "examples_per_second": len(train) * config.epochs / max(seconds, 1e-9),
        }
    )
    model.set_track_inputs(features)  # serve with the whole window's popularity
    model.set_warm_starts(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), np.zeros(0, bool))
    model.eval()  # serving warm-starts cold and unlearnt ids in the table itself (warm_start_cold_tracks)
    return TrainedTwoTower(model=model, features=features, config=config, report=_plain(report),
                           trained_tracks=learnt)


def _reads_warm_starts(config: TwoTowerConfig) -> bool:
    """Whether training showed every item without a learnt id through its warm start (then serving must)."""
    return config.id_dropout > 0 or config.uniform_negatives > 0


def _cold_start_report(model: TwoTowerModel, features: FeatureSpace, learnt: np.ndarray, config: TwoTowerConfig,
                       dev: torch.device) -> dict:
    """Precompute every track's warm start for training (``set_warm_starts``): audio vectors are fixed, so
    the k anchors and weights of a track are found once (exact top-k in chunks, per genre pool; at 100 M
    tracks: int64 + float32 [n_tracks, k] = 1.2 GB at k = 10, and the search wants an ANN over anchors)."""
    if not _reads_warm_starts(config):
        return {"warm_starts": False}
    anchors = np.flatnonzero(learnt & ~features.track_is_cold & ~features.track_audio_missing)
    found = audio_anchor_neighbours(features, anchors, np.arange(features.n_tracks), config.cold_neighbours, dev)
    k = found.anchors.shape[1]
    rows = np.zeros((features.n_tracks, k), np.int64)
    weights = np.zeros((features.n_tracks, k), np.float32)
    rows[found.rows], weights[found.rows] = found.anchors, found.weights
    model.set_warm_starts(rows, weights, learnt)
    return {"warm_starts": True, "anchors": int(len(anchors)), "with_warm_start": int(len(found.rows)),
            "unlearnt_with_warm_start": int((~learnt[found.rows]).sum()),
            "mean_neighbour_cosine": float(found.cosine.mean()) if len(found.rows) else float("nan")}


def _plain(obj):
    """JSON-able copy of a report (numpy scalars to Python)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


@dataclass
class AnchorNeighbours:
    """Each served track's audio anchors (``audio_anchor_neighbours``)."""

    rows: np.ndarray  # int64[m] the track rows served (those with audio), ascending
    anchors: np.ndarray  # int64[m, k] anchor track rows (padding: weight 0)
    weights: np.ndarray  # float32[m, k] each row sums to 1
    cosine: np.ndarray  # float32[m] mean audio cosine of the neighbours
    same_genre: np.ndarray  # bool[m] the neighbours come from the track's own genre


@torch.no_grad()
def audio_anchor_neighbours(features: FeatureSpace, anchors: np.ndarray, rows: np.ndarray, k: int,
                            dev: torch.device | None = None) -> AnchorNeighbours:
    """The warm-start rule, one function for training and serving: each of ``rows`` with audio gets its k
    nearest ``anchors`` by audio cosine, itself excluded, from its own genre when that genre has k anchors
    besides it, else from all anchors; weights = similarities clamped at 0, normalised (all non-positive:
    equal weights). Exact top-k in chunks of ``SCORE_CHUNK_USERS`` rows against the pool."""
    anchors = np.sort(np.asarray(anchors, dtype=np.int64))
    rows = np.asarray(rows, dtype=np.int64)
    rows = np.unique(rows[~features.track_audio_missing[rows]])
    m, kk = len(rows), max(min(k, len(anchors)), 1)
    found = AnchorNeighbours(rows, np.zeros((m, kk), np.int64), np.zeros((m, kk), np.float32),
                             np.full(m, np.nan, np.float32), np.zeros(m, bool))
    if m == 0 or len(anchors) == 0:
        return found
    unit = F.normalize(torch.as_tensor(features.track_audio, device=dev), dim=1)
    is_anchor = np.zeros(features.n_tracks, bool)
    is_anchor[anchors] = True
    anchor_genre, genre = features.track_genre[anchors], features.track_genre[rows]
    for g in np.unique(genre):
        for itself in (False, True):  # an anchor's own row is not its neighbour
            members = np.flatnonzero((genre == g) & (is_anchor[rows] == itself))
            pool = np.flatnonzero(anchor_genre == g) if g > 0 else np.zeros(0, dtype=np.int64)
            same = len(pool) - itself >= k
            if not same:
                pool = np.arange(len(anchors))
            take = min(k, len(pool) - itself)
            if len(members) == 0 or take <= 0:
                continue
            found.same_genre[members] = same
            pool_rows = anchors[pool]
            pool_unit = unit[torch.as_tensor(pool_rows, device=dev)]
            for s in range(0, len(members), SCORE_CHUNK_USERS):
                at = members[s : s + SCORE_CHUNK_USERS]
                scores = unit[torch.as_tensor(rows[at], device=dev)] @ pool_unit.T
                if itself:
                    own = torch.as_tensor(np.searchsorted(pool_rows, rows[at]), device=dev)
                    scores[torch.arange(len(at), device=dev), own] = -torch.inf
                top, idx = torch.topk(scores, take, dim=1)
                w = top.clamp(min=0)
                w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
                found.anchors[at, :take] = pool_rows[idx.cpu().numpy()]
                found.weights[at, :take] = (w / w.sum(1, keepdim=True)).cpu().numpy()
                found.cosine[at] = top.mean(1).cpu().numpy()
    return found


def weighted_ids(table: torch.Tensor, anchors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[..., id_dim] sum_k weights * table[anchors]: a warm start's id vector (training and serving).

    Gathered with ``F.embedding``, not ``table[anchors]``: the backward of advanced indexing on CPU is an
    accumulating ``index_put_`` whose threads add in a varying order, so two processes trained different
    last digits (the cluster test's playlists then differed); the embedding backward adds in index order."""
    return (weights[..., None] * F.embedding(anchors, table)).sum(-2)


@torch.no_grad()
def warm_start_cold_tracks(trained: TrainedTwoTower, cold_track_ids: np.ndarray, k: int) -> dict:
    """Set each cold track's id row to the similarity-weighted mean id of its k nearest warm anchors in audio
    space (``audio_anchor_neighbours``: the rule training's id dropout applies).

    Anchors: tracks with training positives, readable audio and not cold. A model trained with the cold
    start options (``id_dropout`` or ``uniform_negatives``) saw every track without a learnt id through its
    warm start, so those are warm-started too (``untrained_tracks``: e.g. last week's new releases, played
    only after the training period). Cold tracks without audio fall back to the mean id of their artist's
    anchors, else their genre's. Returns counts and the mean neighbour similarity. Call after training,
    before ``track_vectors()``.
    """
    features = trained.features
    rows = features.track_rows(np.asarray(cold_track_ids, dtype=np.int64))
    rows = np.unique(rows[rows >= 0])
    n_cold = len(rows)
    is_anchor = ~features.track_is_cold & ~features.track_audio_missing
    if trained.trained_tracks is not None:
        is_anchor &= trained.trained_tracks
        if _reads_warm_starts(trained.config):
            rows = np.union1d(rows, np.flatnonzero(~trained.trained_tracks))
    is_anchor[rows] = False
    anchors = np.flatnonzero(is_anchor)
    stats = {"cold_tracks": int(n_cold), "untrained_tracks": int(len(rows) - n_cold), "anchors": int(len(anchors)),
             "from_audio": 0, "same_genre_neighbours": 0,
             "from_artist": 0, "from_genre": 0, "unchanged": 0, "mean_neighbour_cosine": float("nan")}
    if len(rows) == 0 or len(anchors) == 0:
        stats["unchanged"] = int(len(rows))
        return stats
    table = trained.model.track_id.weight
    dev = table.device
    found = audio_anchor_neighbours(features, anchors, rows, k, dev)
    if len(found.rows):
        table[torch.as_tensor(found.rows, device=dev)] = weighted_ids(
            table, torch.as_tensor(found.anchors, device=dev), torch.as_tensor(found.weights, device=dev))
        stats["mean_neighbour_cosine"] = float(found.cosine.mean())
    stats["from_audio"] = int(len(found.rows))
    stats["same_genre_neighbours"] = int(found.same_genre.sum())
    for row in rows[features.track_audio_missing[rows]]:
        for key, group in (("from_artist", features.track_artist), ("from_genre", features.track_genre)):
            same = anchors[group[anchors] == group[row]] if group[row] > 0 else anchors[:0]
            if len(same):
                table[int(row)] = table[torch.as_tensor(same, device=dev)].mean(0)
                stats[key] += 1
                break
        else:
            stats["unchanged"] += 1
    return stats
