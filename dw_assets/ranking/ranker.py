"""The LightGBM ranker: scores each user's candidates so the best 30 can be picked.

Training data (time split, never random): week W-1's candidates, featurized by
:func:`dw_assets.ranking.features.build_ranker_features` with week W-1's inputs, labelled by week W's
interactions (:func:`~dw_assets.ranking.features.training_examples`). The trained model
then scores week W's candidates through the same feature function.

Which rows. By default only the candidates the user actually heard in week W are training rows
(``training_rows="exposed"``). Labelling every candidate instead (``"all"``, unheard = negative)
makes the label "heard *and* liked", and what a listener hears next week on their own is mostly what
is popular and easy to run into: that model learns exposure (its top features are plays last week and
popularity), not taste. A delivered playlist decides exposure itself, so the outcome given that the
track is heard is the quantity to rank by. Measured on rough candidates of the ``small`` world (6,000
users, 4 seeds) with a simulated A/B (top 30 of held-out users played through the simulator's
listener, positives per user): two-tower order 10.38; "all" 8.89 although it beats the two-tower
order on offline NDCG@30 against next-week positives (0.229 vs 0.165); "exposed" 11.85.

Labels and objective (``RankerConfig.label_scheme`` / ``objective``). What the product counts is saves,
and an early skip also costs reach (the listener is likelier to stop the list), so by default each
heard row carries its outcome grade (``label_scheme="outcome"``: early skip < short skip < late skip <
full play < save, :func:`~dw_assets.ranking.features.outcome_grades`) and the model regresses the
expected value of the grade's silver-table weight (``objective="regression"``, ``outcome_values`` =
``InteractionRules``' -1, -0.3, 0.5, 1, 5: a save is worth five full plays, an early skip costs one),
early-stopping on held-out users' squared error. ``predict`` returns the logistic of that expected
value, so ``playlists.list_score`` and the re-ranker keep a (0, 1) score. A binary P(play > 30 s or
save | heard) cannot tell a track the user will save from one they will merely finish: on ``tiny``
(3 training seeds x 3 listener seeds; ranking efficiency = ranker order / candidate oracle saves)
binary 0.423, outcome regression 0.458, outcome LambdaRank (gains 2^grade - 1) 0.455, all with the
artist / nearest-track features of ``features.py`` (binary before them: 0.442). The binary
(``label_scheme="positive"``, log-loss: a calibrated P(positive | heard) from every heard row),
saved-graded (``"saved"``) and LambdaRank / XE-NDCG variants stay selectable; LambdaRank on binary
labels measured like binary on ``small`` (11.86 vs 11.85 positives). The ranking objectives and
binary early-stop on validation NDCG@30 (only users with both labels can measure it), regression on
its own loss.

Pooled weeks (``pool_weeks``, ``ranking/training.py``): weeks W-1 .. W-k, each week w's candidates
labelled by w+1's listening and featurized as of w, one query group per (user, week), the caps for the
pool as a whole. On ``tiny`` (3 training x 3 listener seeds, paired listeners; docs/evaluation.md
"Pooled ranker weeks") it measured no gain: ranking efficiency 0.462 (1 week, ~1,390 rows), 0.452
(2 weeks), 0.463 (3 weeks, ~4,000 rows), so the default pools one week. ``ranker_model`` reads week
W-1 only until the lake's IO manager can load a window of artifacts week by week.

Outcome history. ``user_profiles`` keeps each user's last saved and early-skipped (never liked) tracks
and their save / skip / early-skip counts per genre, so the features reach beyond what the user heard:
the user's rates in the candidate's genre, Beta-shrunk toward the user's and the catalog's
(``features.GENRE_OUTCOME_FEATURES``), and in item2vec and audio space the saved-minus-early-skipped
centroid contrast and the nearest saved track (``CONTRAST_FEATURES``). Ranking efficiency, 3 listener
seeds, without -> with them: tiny (1,393 heard training rows, 3 training seeds, which alone spread
+-0.03) 0.481 -> 0.484; tiny with 4x the users (4,967 rows, 5 training seeds) 0.528 -> 0.536, higher
for every training seed and every perturbed listener model; the genre rates carry the most split gain,
dropping the nearest saved track costs the most (-0.008), and the contrast alone measured nothing
(0.537 without it): it is kept as the one feature of the user's rejections, which the denser saved
and skipped lists of a longer window make less noisy than tiny's four weeks.

Users. A user whose rows all share one label (typically: no positive) has no pair to order: such
users are left out of validation and, for the ranking objectives (no LambdaRank gradient), out of
training; the report counts them. Validation users are a seeded hash fraction of users (the
week-to-week split is already the time split); training users can be capped (lowest seeded hash
first) and each training user's negatives subsampled (all positives kept) to bound cost.
Validation users keep all their rows; the report puts the model's validation NDCG@30 beside the
same metric for the retrieval order (``baseline_feature``, the two-tower score) on the same users.

Position bias. Part of week W's plays come from the legacy discovery list
(``context == "discover_weekly"``, 1-based ``position``), where attention decays with position:
after each track the listener stops with a probability that grows with position and after skips,
and perceived quality drops a little deeper in the list (dw_assets/simulate/behaviour.py).

* Exposed rows (default): a listed track is a training row only if the listener reached it, so
  examination is already conditioned on; what is left is the position's effect on the reaction.
  The feature ``list_position`` carries the slot the track was heard at (1 for tracks heard outside
  the list) and is fixed to 1 at inference (:data:`~dw_assets.ranking.features.INFERENCE_POSITION`),
  so every candidate is scored as if heard with full attention.
* All rows: a good track deep in the list is rarely reached and looks like a negative. Positives
  seen only in the list are weighted by 1 / examination propensity of their position, estimated
  from the logs as the share of (user, week) lists with a logged play at that position (position 1
  is always played), made non-increasing and clipped below at ``min_propensity``
  (:func:`~dw_assets.ranking.features.position_propensity`). LightGBM's ranking objectives multiply
  each row's gradient and hessian by its weight. ``list_position`` stays 1: only played rows could
  carry a position, so it would encode "was played", a leak.

Determinism: ``deterministic=True`` with row-wise histograms, a fixed ``num_threads`` and seeded
subsampling give the same model text for the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from dw_assets import settings
from dw_assets.ingest.interactions import InteractionRules
from dw_assets.ranking.features import LABEL_SCHEMES, MONOTONE_FEATURES, TRAINING_ROWS

OBJECTIVES = ("binary", "lambdarank", "rank_xendcg", "regression")
_RULES = InteractionRules()
# The silver table's graded weight of each outcome grade (features.outcome_grades order): early skip,
# short skip, late skip, full play, save. One source: the interactions' rules.
OUTCOME_VALUES = (_RULES.weight_early_skip, _RULES.weight_short_skip, _RULES.weight_late_skip,
                  _RULES.weight_full_play, _RULES.weight_saved)
FORMAT_VERSION = 1
MAX_POOL_WEEKS = 4  # weeks of candidates ranker_model can pool (its input window W-4 .. W-1)


@dataclass(frozen=True)
class RankerConfig:
    training_rows: str = "exposed"  # exposed | all: which candidates become rows (training_examples)
    # positive: 1 = play > 30 s or save | saved: 2 = saved positive (LambdaRank gain 3 vs 1) | outcome: the
    # grade of the heard track, early skip 0 < short skip < late skip < full play < save 4 (features.outcome_grades)
    label_scheme: str = "outcome"
    # objective="regression" learns the expected value of these per grade (label_scheme="outcome")
    outcome_values: tuple[float, ...] = OUTCOME_VALUES
    min_propensity: float = 0.05  # training_rows="all": floor of the position propensity (weights <= 20)
    objective: str = "regression"  # regression (outcome_values) | binary (label > 0) | lambdarank | rank_xendcg
    # Monotone constraints of features.MONOTONE_FEATURES. Tiny, ranker order / candidate oracle saves over
    # 3 training x 3 listener seeds: 0.458 unconstrained -> 0.481.
    monotone: bool = True
    num_leaves: int = 31
    learning_rate: float = 0.05
    n_estimators: int = 400  # boosting rounds at most; early stopping picks the best
    early_stopping_rounds: int = 40  # rounds without validation NDCG@k gain before stopping
    min_child_samples: int = 50  # rows per leaf at least
    feature_fraction: float = 0.9  # features drawn (seeded) per tree
    lambda_l2: float = 1.0
    ndcg_k: int = 30  # the playlist length: metric cut-off and LambdaRank truncation
    validation_fraction: float = 0.2  # share of users (seeded hash) held out for early stopping
    max_training_users: int | None = 200_000  # cap on training users (lowest seeded hash first)
    # What comes to the driver (ranking.batch.ranker_training_sample): users drawn in Spark by a seeded hash
    # (covers the demo's 24 k users and `large`'s 232 k: the whole week) and the rows they bring.
    sample_users: int = 250_000
    sample_rows: int = 10_000_000  # candidate + play rows of the sampled users (~1.5 GB of features)
    negatives_per_user: int | None = 200  # negatives kept per training user (seeded); None keeps all
    # Weeks of candidates pooled as training rows: W-1 .. W-pool_weeks, each featurized as of its own week and
    # labelled by the week after it (ranking.training); weeks without candidates are skipped. The caps above
    # (sample_users: (user, week) pairs; sample_rows) hold for the pool as a whole. Tiny, ranker order /
    # candidate oracle over 3 training x 3 listener seeds: 1 week 0.462, 2 weeks 0.452, 3 weeks 0.463.
    pool_weeks: int = 1  # at most MAX_POOL_WEEKS (the window ranker_model reads)
    baseline_feature: str = "two_tower_score"  # retrieval order the report compares with
    seed: int = 7
    deterministic: bool = True
    num_threads: int = 0  # LightGBM threads; 0 = all cores (same model for a fixed thread count)

    def __post_init__(self) -> None:
        if self.training_rows not in TRAINING_ROWS:
            raise ValueError(f"training_rows must be one of {TRAINING_ROWS}, got {self.training_rows!r}")
        if not 0.0 < self.min_propensity <= 1.0:
            raise ValueError(f"min_propensity must be in (0, 1], got {self.min_propensity}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.label_scheme not in LABEL_SCHEMES:
            raise ValueError(f"label_scheme must be one of {LABEL_SCHEMES}, got {self.label_scheme!r}")
        if self.objective == "regression" and self.label_scheme != "outcome":
            raise ValueError("objective='regression' learns outcome_values: it needs label_scheme='outcome'")
        if self.label_scheme == "outcome" and self.objective == "binary":
            raise ValueError("label_scheme='outcome' needs a graded objective (regression, lambdarank, rank_xendcg)")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        for name in ("num_leaves", "n_estimators", "early_stopping_rounds", "min_child_samples", "ndcg_k",
                     "pool_weeks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pool_weeks > MAX_POOL_WEEKS:
            raise ValueError(f"pool_weeks must be <= {MAX_POOL_WEEKS} (the weeks ranker_model reads), got {self.pool_weeks}")
        for name in ("sample_users", "sample_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_training_users", "negatives_per_user"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")


class TrainedRanker:
    """A trained LightGBM model with the feature names it expects, in order, and its training report.

    report: objective, best_iteration, train_users/rows/positives, validation_users/rows/positives,
    users_without_positives, users_without_pairs (all rows one label: not validated, and not trained
    on with a ranking objective), ndcg_k, validation_ndcg and baseline_ndcg (NDCG@ndcg_k, binary gain,
    same validation users; None without validation users), baseline_feature, feature_importance
    (total gain per feature, descending), train_seconds, config. With pooled weeks the user counts are
    of query groups, (user, week) pairs, and ``ranking.training.train_pooled`` adds pooled_weeks (week,
    rows, positives, users, sampled_users of each) and featurize_seconds.
    """

    def __init__(self, model_text: str, feature_names: list[str], report: dict) -> None:
        self.model_text = model_text
        self.feature_names = list(feature_names)
        self.report = report
        self._compiled = None  # lleaves model, False when lleaves is missing

    @cached_property
    def booster(self) -> lgb.Booster:
        return lgb.Booster(model_str=self.model_text)

    def predict(self, features: pd.DataFrame, num_threads: int = 1, engine: str = "lightgbm") -> np.ndarray:
        """Score of each row in (0, 1) (higher = better): float32[n]; with the binary objective P(positive |
        heard), with the others the logistic of the raw score (regression: of the expected outcome value),
        so ``playlists.list_score``'s log and the re-ranker's scales hold for every objective.

        ``features`` needs the model's feature columns (taken by name, any order). ``engine``:
        ``lightgbm`` (the booster), ``compiled`` (the trees compiled to native code by lleaves:
        ~6x faster on one core, the same scores to ~1e-15; raises without lleaves) or ``auto``
        (compiled when lleaves is installed, else lightgbm). Batch inference uses ``auto``.
        """
        if engine not in ("lightgbm", "compiled", "auto"):
            raise ValueError(f"engine must be lightgbm, compiled or auto, got {engine!r}")
        missing = [c for c in self.feature_names if c not in features.columns]
        if missing:
            raise ValueError(f"features lack columns {missing}")
        if len(features) == 0:
            return np.zeros(0, np.float32)
        compiled = self.compiled(required=engine == "compiled") if engine != "lightgbm" else None
        if compiled is not None:
            x = features[self.feature_names].to_numpy(np.float64)
            raw = compiled.predict(x, n_jobs=max(num_threads, 1))
        else:
            x = features[self.feature_names].to_numpy(np.float32)
            raw = self.booster.predict(x, num_threads=num_threads)
        if self.report.get("objective", "binary") != "binary":  # binary's trees already end in a sigmoid
            raw = 1.0 / (1.0 + np.exp(-np.asarray(raw, np.float64)))
        return np.asarray(raw).astype(np.float32)

    def compiled(self, required: bool = False):
        """The lleaves model of these trees, compiled once per machine (cached object file, keyed by
        the model text's hash) and once per process; None without lleaves unless ``required``."""
        if self._compiled is None:
            try:
                self._compiled = compile_trees(self.model_text)
            except ImportError:
                if required:
                    raise
                self._compiled = False
        return self._compiled or None

    def to_bytes(self) -> bytes:
        """One JSON header line (format, feature names, report), then the LightGBM text model."""
        header = {"format": FORMAT_VERSION, "feature_names": self.feature_names, "report": self.report}
        return json.dumps(header).encode() + b"\n" + self.model_text.encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainedRanker:
        head, _, model = data.partition(b"\n")
        header = json.loads(head)
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown ranker format {header.get('format')!r}")
        return cls(model.decode(), header["feature_names"], header["report"])


def compile_trees(model_text: str, cache_dir: str | None = None):
    """A LightGBM text model compiled to native code with lleaves (LLVM), loaded; ImportError without lleaves.

    The object file is cached under ``cache_dir`` (default: ``$DW_COMPILE_CACHE`` or the temp dir)
    by the model's SHA-256: an executor compiles a week's model once (a few seconds), later tasks
    and processes load it. Written to a private name and renamed, so concurrent workers never read
    a half-written file.
    """
    import lleaves

    digest = hashlib.sha256(model_text.encode()).hexdigest()[:32]
    root = Path(cache_dir or settings.get("DW_COMPILE_CACHE") or tempfile.gettempdir()) / "dw_compiled_trees"
    root.mkdir(parents=True, exist_ok=True)
    model_file, objects = root / f"{digest}.txt", root / f"{digest}.o"
    if not model_file.exists():
        _write_atomically(model_file, model_text.encode())
    model = lleaves.Model(model_file=str(model_file))
    if objects.exists():
        model.compile(cache=str(objects))
    else:
        private = root / f"{digest}.{os.getpid()}.{uuid.uuid4().hex}.o"
        model.compile(cache=str(private))
        os.replace(private, objects)
    return model


def _write_atomically(path: Path, data: bytes) -> None:
    private = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    private.write_bytes(data)
    os.replace(private, path)


def user_hash_unit(user_ids: np.ndarray, salt: int) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per user id (splitmix64 of id and salt): float64[n]."""
    with np.errstate(over="ignore"):
        x = np.asarray(user_ids, dtype=np.int64).astype(np.uint64)
        x = x + np.uint64(0x9E3779B97F4A7C15) * np.uint64(salt + 1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def ndcg_at_k(scores: np.ndarray, labels: np.ndarray, user_ids: np.ndarray, k: int = 30) -> float:
    """Mean NDCG@k with binary gain over users with at least one positive (docs/evaluation.md).

    scores: float[n] (NaN ranks last); labels: int[n] (> 0 = relevant); user_ids: int64[n].
    Ties keep row order.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    relevant = np.asarray(labels) > 0
    users = np.asarray(user_ids, dtype=np.int64)
    order = np.lexsort((np.arange(len(users)), -scores, users))
    users, relevant = users[order], relevant[order]
    start = np.r_[True, users[1:] != users[:-1]]
    group = np.cumsum(start) - 1
    rank = np.arange(len(users)) - np.flatnonzero(start)[group]
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    top = rank < k
    dcg = np.bincount(group[top], weights=relevant[top] * discount[rank[top]], minlength=group[-1] + 1 if len(group) else 0)
    n_relevant = np.bincount(group, weights=relevant, minlength=len(dcg)).astype(np.int64)
    ideal = np.r_[0.0, np.cumsum(discount)][np.minimum(n_relevant, k)]
    judged = n_relevant > 0
    return float(np.mean(dcg[judged] / ideal[judged])) if judged.any() else float("nan")


def _grouped(rows: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` ordered by (user, row) and the group size of each user in that order."""
    rows = rows[np.lexsort((rows, users[rows]))]
    _, sizes = np.unique(users[rows], return_counts=True)
    return rows, sizes


def _training_rows(
    users: np.ndarray, labels: np.ndarray, candidates: np.ndarray, config: RankerConfig
) -> np.ndarray:
    """Rows of the training users after the user cap and negative subsampling (seeded)."""
    chosen = np.unique(users[candidates])
    if config.max_training_users is not None and len(chosen) > config.max_training_users:
        chosen = chosen[np.argsort(user_hash_unit(chosen, config.seed + 1), kind="stable")]
        chosen = chosen[: config.max_training_users]
        candidates = candidates[np.isin(users[candidates], chosen)]
    if config.negatives_per_user is None:
        return candidates
    negatives = candidates[labels[candidates] <= 0]
    draw = np.random.default_rng(config.seed).random(len(negatives))
    order = np.lexsort((draw, users[negatives]))
    negatives = negatives[order]
    start = np.r_[True, users[negatives][1:] != users[negatives][:-1]]
    rank = np.arange(len(negatives)) - np.flatnonzero(start)[np.cumsum(start) - 1]
    kept = negatives[rank < config.negatives_per_user]
    return np.sort(np.r_[candidates[labels[candidates] > 0], kept])


def train_ranker(
    features: pd.DataFrame,
    labels,
    user_ids,
    config: RankerConfig = RankerConfig(),
    sample_weight=None,
    query_ids=None,
) -> TrainedRanker:
    """Train on week W-1's candidates labelled by week W (or on several pooled weeks: ``query_ids``).

    features: float32[n, f] (e.g. :func:`build_ranker_features`), its columns become the model's features.
    labels: int[n] relevance (``RankerConfig.label_scheme``: 0/1, 2 = saved, or outcome grades 0-4; the binary
    objective uses label > 0, regression the grade's ``outcome_values``).
    user_ids: int64[n], one query group per user (rows need not be contiguous).
    sample_weight: float[n] or None, e.g. inverse position propensity of positives.
    query_ids: int64[n] or None (= user_ids): the query group of each row, one per (user, week) when weeks are
    pooled; groups, negative sampling and the user cap go by query, the validation split by user (a user's
    weeks stay on one side of it).
    """
    started = time.perf_counter()
    n = len(features)
    y = np.asarray(labels, dtype=np.int32).reshape(-1)
    users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    queries = users if query_ids is None else np.asarray(query_ids, dtype=np.int64).reshape(-1)
    if len(y) != n or len(users) != n or len(queries) != n or (weight is not None and len(weight) != n):
        raise ValueError("features, labels, user_ids, query_ids and sample_weight must have the same length")
    if (y < 0).any():
        raise ValueError("labels must be >= 0")
    x = features.to_numpy(np.float32)
    names = [str(c) for c in features.columns]

    # A query (user, or user-week) whose candidates all share one label (typically: no positive) has no pair to order.
    order = np.argsort(queries, kind="stable")
    starts = np.flatnonzero(np.r_[True, queries[order][1:] != queries[order][:-1]]) if n else np.zeros(0, np.int64)
    lowest = np.minimum.reduceat(y[order], starts) if n else y
    highest = np.maximum.reduceat(y[order], starts) if n else y
    ranked = np.isin(queries, queries[order][starts][lowest < highest])
    held_out = user_hash_unit(users, config.seed) < config.validation_fraction
    # Binary log-loss learns from every labelled row; ranking objectives only from users with pairs.
    trainable = ~held_out if config.objective in ("binary", "regression") else ranked & ~held_out
    train_rows, train_sizes = _grouped(_training_rows(queries, y, np.flatnonzero(trainable), config), queries)
    valid_rows, valid_sizes = _grouped(np.flatnonzero(ranked & held_out), queries)
    if len(train_rows) == 0:
        raise ValueError("no training rows: every user is held out or none has both a positive and a negative")

    if config.objective == "binary":
        target = (y > 0).astype(np.float64)
    elif config.objective == "regression":
        if y.max(initial=0) >= len(config.outcome_values):
            raise ValueError(f"labels must be < {len(config.outcome_values)} (one outcome value per grade)")
        target = np.asarray(config.outcome_values, np.float64)[y]
    else:
        target = y
    params = {
        "objective": config.objective,
        # Regression early-stops on its own loss (NDCG cannot read negative outcome values).
        "metric": "l2" if config.objective == "regression" else "ndcg",
        "eval_at": [config.ndcg_k],
        "lambdarank_truncation_level": config.ndcg_k,
        "num_leaves": config.num_leaves,
        "learning_rate": config.learning_rate,
        "min_child_samples": config.min_child_samples,
        "feature_fraction": config.feature_fraction,
        "lambda_l2": config.lambda_l2,
        "seed": config.seed,
        "objective_seed": config.seed,
        "deterministic": config.deterministic,
        "force_row_wise": True,
        "num_threads": config.num_threads,
        "verbosity": -1,
    }
    if config.monotone:
        params["monotone_constraints"] = [MONOTONE_FEATURES.get(name, 0) for name in names]
        params["monotone_constraints_method"] = "advanced"
    train_set = lgb.Dataset(
        x[train_rows], label=target[train_rows], group=None if config.objective == "regression" else train_sizes, feature_name=names,
        weight=None if weight is None else weight[train_rows], free_raw_data=True,
    )  # fmt: skip
    callbacks, valid_sets = [], []
    if len(valid_rows):
        valid_sets = [lgb.Dataset(x[valid_rows], label=target[valid_rows], group=valid_sizes, reference=train_set)]
        callbacks = [lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False)]
    booster = lgb.train(params, train_set, num_boost_round=config.n_estimators, valid_sets=valid_sets,
                        valid_names=["validation"] * len(valid_sets), callbacks=callbacks)  # fmt: skip
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    ranker = TrainedRanker(booster.model_to_string(num_iteration=best), names, {"objective": config.objective})

    validation_ndcg = baseline_ndcg = None
    if len(valid_rows):
        valid_users = queries[valid_rows]
        scores = ranker.predict(features.iloc[valid_rows], num_threads=max(config.num_threads, 1))
        validation_ndcg = ndcg_at_k(scores, y[valid_rows], valid_users, config.ndcg_k)
        if config.baseline_feature in features.columns:
            baseline = features[config.baseline_feature].to_numpy(np.float64)[valid_rows]
            baseline_ndcg = ndcg_at_k(baseline, y[valid_rows], valid_users, config.ndcg_k)
    gain = ranker.booster.feature_importance(importance_type="gain")
    importance = dict(sorted(((name, float(g)) for name, g in zip(names, gain, strict=True)), key=lambda t: -t[1]))
    ranker.report = {
        "objective": config.objective,
        "best_iteration": int(best),
        "train_users": len(train_sizes),
        "train_rows": len(train_rows),
        "train_positives": int((y[train_rows] > 0).sum()),
        "validation_users": len(valid_sizes),
        "validation_rows": len(valid_rows),
        "validation_positives": int((y[valid_rows] > 0).sum()),
        "users_without_positives": int((highest == 0).sum()),
        "users_without_pairs": int((lowest == highest).sum()),  # not validated (nor trained, ranking objectives)
        "ndcg_k": config.ndcg_k,
        "validation_ndcg": validation_ndcg,
        "baseline_ndcg": baseline_ndcg,
        "baseline_feature": config.baseline_feature,
        "feature_importance": importance,
        "train_seconds": round(time.perf_counter() - started, 3),
        "config": {**asdict(config), "outcome_values": list(config.outcome_values)},  # as JSON reads it back
    }
    return ranker
