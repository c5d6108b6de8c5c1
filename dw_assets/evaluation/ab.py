"""Simulated online A/B test of two weeks' discovery playlists.

Users are the randomization unit: each user is hashed deterministically into
control (last week's model) or treatment (this week's), gets the playlist of
its arm, and the simulator's response function plays it. Metrics are
aggregated per user first, then compared between arms, so the unit of
analysis matches the unit of randomization.

Statistics (documented here once):

- Per-arm CIs: normal approximation of the mean of per-user values,
  ``mean ± z · sd / sqrt(n)`` with ``z`` the two-sided quantile of ``confidence``.
- Treatment − control: Welch's t-test on per-user values
  (``scipy.stats.ttest_ind(equal_var=False)``) for the p-value; the CI of the
  difference uses the same Welch standard error and Welch–Satterthwaite
  degrees of freedom, so "CI excludes 0" and "p < 1 − confidence" always agree
  (at the thousands of users of a real arm it equals the normal CI).
- Verdict: "do not ship" when the primary metric or the skip rate is
  significantly worse; "ship" when the primary metric is significantly better
  (and the skip rate is not significantly worse); otherwise "inconclusive".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from dw_assets.simulate import Truth, respond

CONTROL, TREATMENT = "control", "treatment"
ARMS = (CONTROL, TREATMENT)
# metric → True when higher is better
METRICS = {"discovery_save_rate": True, "tracks_played_30s": True, "skip_rate": False}
SKIP_METRIC = "skip_rate"
POSITIVE_MS = 30_000  # "played > 30 s"
HASH_CHUNK = 1 << 22  # ids hashed per chunk: bounds temporaries at ~32 MiB each for 500M users

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_BUCKET_BITS = 53  # top bits of the hash compared against the share: exact integer threshold


@dataclass(frozen=True)
class ABConfig:
    experiment: str = "discover-weekly"  # salt of the user split: a new name reshuffles users
    treatment_share: float = 0.05
    confidence: float = 0.95
    seed: int = 0  # the simulator's response randomness
    primary_metric: str = "discovery_save_rate"
    power: float = 0.8  # for the minimum detectable effect reported beside each difference


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 step (increment + finalizer) on uint64[n], wrapping modulo 2**64."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def experiment_key(experiment: str) -> np.uint64:
    """64-bit salt of an experiment: blake2b-64 of its UTF-8 name, read little-endian."""
    digest = hashlib.blake2b(experiment.encode("utf-8"), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def assign_arms(user_ids: np.ndarray, experiment: str, treatment_share: float = 0.05) -> np.ndarray:
    """True where a user is in the treatment arm: bool[n], aligned with ``user_ids`` (int64[n]).

    ``h = splitmix64(splitmix64(user_id ^ blake2b64(experiment)))`` over the
    id's two's-complement uint64 bits; a user is treated when the top 53 bits
    of ``h`` fall below ``round(treatment_share · 2**53)``. Pure integer
    arithmetic with a cryptographic salt (never Python's ``hash()``), so the
    split is the same in every process, platform and run, independent of the
    order or the set of users passed, and nearly independent between
    experiments. Growing ``treatment_share`` only adds users to treatment.
    """
    if not 0.0 <= treatment_share <= 1.0:
        raise ValueError(f"treatment_share must be in [0, 1], got {treatment_share}")
    ids = np.ascontiguousarray(user_ids, dtype=np.int64).view(np.uint64)
    salt = experiment_key(experiment)
    threshold = np.uint64(round(treatment_share * (1 << _BUCKET_BITS)))
    shift = np.uint64(64 - _BUCKET_BITS)
    treated = np.empty(len(ids), dtype=bool)
    with np.errstate(over="ignore"):
        for start in range(0, len(ids), HASH_CHUNK):
            h = _splitmix64(_splitmix64(ids[start : start + HASH_CHUNK] ^ salt))
            treated[start : start + HASH_CHUNK] = (h >> shift) < threshold
    return treated


def play_arms(
    truth: Truth, control: pd.DataFrame, treatment: pd.DataFrame, week: str, config: ABConfig
) -> pd.DataFrame:
    """Deliver each user its arm's playlist, let the simulator play it, count outcomes per user.

    ``control``/``treatment``: the two systems' playlists for all users
    (user_id, position 1-based, track_id). ``truth``: the simulator's
    :class:`~dw_assets.simulate.Truth`. Users with no playlist in their own
    arm's frame are left out; their count is ``result.attrs["missing"]``.

    The simulator is called once on all delivered rows; its random stream runs
    over the rows sorted by user, so one user's draws depend on which other
    users are in the call (not on their arm). Results are reproducible for a
    given (playlists, week, seed), and each row's draws are i.i.d., so the
    comparison is unbiased.

    Returns one row per user, sorted by user_id: user_id (int64), arm
    ("control"/"treatment"), slots (tracks delivered), played, saves,
    played_30s (tracks played > 30 s), skips, early_skips (< 10 s); counts int64.
    ``attrs``: missing, week, experiment.
    """
    columns = ["user_id", "position", "track_id"]
    control, treatment = control[columns], treatment[columns]

    def treated(user_ids: pd.Series) -> np.ndarray:  # hashing per row is O(n), cheaper than a join
        return assign_arms(user_ids.to_numpy(np.int64), config.experiment, config.treatment_share)

    users = np.union1d(control["user_id"].to_numpy(np.int64), treatment["user_id"].to_numpy(np.int64))
    delivered = pd.concat(
        [control[~treated(control["user_id"])], treatment[treated(treatment["user_id"])]], ignore_index=True
    )
    outcome = respond(truth, delivered, week=week, seed=config.seed)
    counts = pd.DataFrame(
        {
            "user_id": outcome["user_id"].to_numpy(np.int64),
            "slots": 1,
            "played": outcome["played"].to_numpy(bool),
            "saves": outcome["saved"].to_numpy(bool),
            "played_30s": outcome["played"].to_numpy(bool) & (outcome["ms_played"].to_numpy() > POSITIVE_MS),
            "skips": outcome["skipped"].to_numpy(bool),
            "early_skips": outcome["early_skip"].to_numpy(bool),
        }
    )
    per_user = counts.groupby("user_id", sort=True).sum().astype(np.int64).reset_index()
    per_user.insert(1, "arm", np.where(treated(per_user["user_id"]), TREATMENT, CONTROL))
    per_user.attrs.update(missing=int(len(users) - len(per_user)), week=week, experiment=config.experiment)
    return per_user


def metric_values(per_user: pd.DataFrame) -> dict[str, pd.Series]:
    """Per-user value of each metric (index aligned with ``per_user``).

    discovery_save_rate = saves / slots (share of delivered tracks saved);
    tracks_played_30s = tracks played > 30 s; skip_rate = skips / played, NaN
    for users who played nothing (they are left out of that metric only).
    """
    slots = per_user["slots"].astype(float)
    played = per_user["played"].astype(float)
    return {
        "discovery_save_rate": per_user["saves"] / slots.where(slots > 0),
        "tracks_played_30s": per_user["played_30s"].astype(float),
        "skip_rate": per_user["skips"] / played.where(played > 0),
    }


def _number(value) -> float | None:
    """Plain float for JSON; None for NaN/inf (undefined with too few users)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _arm_row(arm: str, metric: str, values: np.ndarray, z: float) -> dict:
    n = len(values)
    mean = values.mean() if n else math.nan
    se = values.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return {
        "arm": arm,
        "metric": metric,
        "users": int(n),
        "mean": _number(mean),
        "ci_low": _number(mean - z * se),
        "ci_high": _number(mean + z * se),
    }


def _effect_row(metric: str, control: np.ndarray, treatment: np.ndarray, config: ABConfig) -> dict:
    alpha = 1.0 - config.confidence
    n_c, n_t = len(control), len(treatment)
    mean_c = control.mean() if n_c else math.nan
    mean_t = treatment.mean() if n_t else math.nan
    difference = mean_t - mean_c
    var_c = control.var(ddof=1) / n_c if n_c > 1 else math.nan
    var_t = treatment.var(ddof=1) / n_t if n_t > 1 else math.nan
    se = math.sqrt(var_c + var_t)
    if n_c > 1 and n_t > 1 and se > 0:
        p_value = float(stats.ttest_ind(treatment, control, equal_var=False).pvalue)
        dof = (var_c + var_t) ** 2 / (var_c**2 / (n_c - 1) + var_t**2 / (n_t - 1))
        t = float(stats.t.ppf(1.0 - alpha / 2.0, dof))
    else:  # no spread (or no users): nothing can be concluded
        p_value, t = math.nan, math.nan
    significant = bool(p_value < alpha)
    better = bool((difference > 0) == METRICS[metric])
    return {
        "metric": metric,
        "control": _number(mean_c),
        "treatment": _number(mean_t),
        "difference": _number(difference),
        "ci_low": _number(difference - t * se),
        "ci_high": _number(difference + t * se),
        "relative_lift": _number(difference / mean_c) if mean_c else None,
        "p_value": _number(p_value),
        "significant": significant,
        "better": significant and better,
        "worse": significant and not better,
        "min_detectable_effect": _number(
            (stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(config.power)) * se
        ),
    }


def _describe(effect: dict) -> str:
    def fmt(x):
        return "n/a" if x is None else f"{x:.4g}"

    lift = "" if effect["relative_lift"] is None else f" ({effect['relative_lift']:+.1%})"
    p = effect["p_value"]
    p = "p=n/a" if p is None else "p<0.0001" if p < 1e-4 else f"p={p:.3g}"
    return (
        f"{effect['metric']} {fmt(effect['treatment'])} vs {fmt(effect['control'])}{lift}, "
        f"CI [{fmt(effect['ci_low'])}, {fmt(effect['ci_high'])}], {p}"
    )


def summarize_ab(per_user: pd.DataFrame, config: ABConfig) -> dict:
    """Per-arm means with CIs, treatment − control effects with p-values, and a verdict.

    ``per_user``: the frame of :func:`play_arms`. Returns a JSON-serializable
    dict: experiment, week, confidence, primary_metric, treatment_share,
    treatment_share_observed, users {arm: n}, missing_users, arms (rows: arm,
    metric, users, mean, ci_low, ci_high), effects (rows: metric, control,
    treatment, difference, ci_low, ci_high, relative_lift, p_value,
    significant, better, worse, min_detectable_effect), verdict ("ship" /
    "do not ship" / "inconclusive") and reason (one sentence with numbers).
    Undefined numbers (e.g. a CI from one user) are None.
    """
    if config.primary_metric not in METRICS:
        raise ValueError(f"unknown primary_metric {config.primary_metric!r}; one of {sorted(METRICS)}")
    z = float(stats.norm.ppf(0.5 + config.confidence / 2.0))
    arm = per_user["arm"].to_numpy()
    users = {name: int((arm == name).sum()) for name in ARMS}
    values = {
        metric: {name: series.to_numpy(float)[(arm == name) & series.notna().to_numpy()] for name in ARMS}
        for metric, series in metric_values(per_user).items()
    }
    arms = [_arm_row(name, metric, values[metric][name], z) for metric in METRICS for name in ARMS]
    effects = [
        _effect_row(metric, values[metric][CONTROL], values[metric][TREATMENT], config) for metric in METRICS
    ]
    by_metric = {e["metric"]: e for e in effects}
    primary, skips = by_metric[config.primary_metric], by_metric[SKIP_METRIC]
    if primary["worse"] or skips["worse"]:
        verdict = "do not ship"
    elif primary["better"]:
        verdict = "ship"
    else:
        verdict = "inconclusive"
    total = sum(users.values())
    level = f"{config.confidence:.0%}"
    reason = f"{verdict}: {_describe(primary)}; {_describe(skips)} (treatment vs control, {level} level"
    reason += f", {users[TREATMENT]} vs {users[CONTROL]} users)."
    return {
        "experiment": config.experiment,
        "week": per_user.attrs.get("week"),
        "confidence": float(config.confidence),
        "primary_metric": config.primary_metric,
        "treatment_share": float(config.treatment_share),
        "treatment_share_observed": _number(users[TREATMENT] / total) if total else None,
        "users": users,
        "missing_users": int(per_user.attrs.get("missing", 0)),
        "arms": arms,
        "effects": effects,
        "verdict": verdict,
        "reason": reason,
    }


def ab_frame(summary: dict) -> pd.DataFrame:
    """The arms table of a summary: one row per (arm, metric) with users, mean, ci_low, ci_high."""
    return pd.DataFrame(summary["arms"], columns=["arm", "metric", "users", "mean", "ci_low", "ci_high"])


# The summary's scalars, stored on every row of the arms table: the report reads the verdict as data.
SUMMARY_COLUMNS = ("experiment", "primary_metric", "confidence", "treatment_share", "treatment_share_observed",
                   "missing_users", "verdict", "reason")


def ab_table(summary: dict, week: str) -> pd.DataFrame:
    """The stored ``simulated_ab_test`` table of week ``week``: the arms (``ab_frame``) with the summary's
    verdict, reason and settings repeated on each row (6 rows: arms x metrics)."""
    frame = ab_frame(summary).assign(week=week, **{column: summary[column] for column in SUMMARY_COLUMNS})
    return frame.astype({"users": "int64", "mean": float, "ci_low": float, "ci_high": float,  # None -> NaN
                         "confidence": float, "treatment_share": float, "treatment_share_observed": float,
                         "missing_users": "int64"})


def stored_summary(table: pd.DataFrame) -> dict | None:
    """What the report shows of a stored ``ab_table``: {"arms": the arms, verdict, reason, ...}; None when
    the table is empty (no simulated A/B that week). A table written before the verdict was stored has
    only its arms."""
    if table.empty:
        return None
    arms = table.drop(columns=[c for c in (*SUMMARY_COLUMNS, "week") if c in table.columns]).reset_index(drop=True)
    first = table.iloc[0]
    return {"arms": arms, **{c: first[c].item() if hasattr(first[c], "item") else first[c]
                             for c in SUMMARY_COLUMNS if c in table.columns}}
