"""Weekly drift, volume and batch-window checks as plain values (no Dagster here).

Every check returns a :class:`CheckOutcome`; ``assets.py`` turns it into an asset check result.
Thresholds follow the usual PSI reading: below 0.1 stable, 0.1-0.25 a shift worth a look,
above 0.25 a shift that should stop a model from shipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

Severity = Literal["WARN", "ERROR"]

# Share floor for an empty bin: keeps ln(a/e) finite. 1e-4 caps one empty bin's PSI term at
# about share * ln(share / 1e-4) (0.1 * 6.9 = 0.69 for a 10% bin), far above the error threshold,
# so an emptied bin still fails loudly without turning the whole index into infinity.
PSI_EPS = 1e-4
SUMMARY_COLUMNS = ["name", "status", "passed", "severity", "value", "threshold", "description"]


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict.

    severity: the severity the check carries when it fails ("WARN" or "ERROR"); on a passing
    check it is the lowest severity the check could have failed with.
    value / threshold: the measured number and the bound it was held against (same units).
    metadata: plain JSON-able numbers and strings only.
    """

    name: str
    passed: bool
    severity: Severity
    value: float
    threshold: float
    description: str
    metadata: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        """PASS, WARN or ERROR: what a person reads first."""
        return "PASS" if self.passed else self.severity


def _sample(values, what: str) -> np.ndarray:
    """Flattened float64 copy of ``values``; ValueError when empty or not finite."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{what} is empty: drift needs at least one value on each side")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds {int((~np.isfinite(array)).sum())} non-finite values (NaN/inf)")
    return array


def _finite(values) -> tuple[np.ndarray, int]:
    """(the finite values of ``values`` as float64[n], how many NaN/inf were dropped)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(array)
    return array[keep], int(array.size - keep.sum())


def _dropped_note(dropped_now: int, dropped_last: int) -> str:
    if not dropped_now and not dropped_last:
        return ""
    return f"; ignored {dropped_now:,} NaN/inf values this week and {dropped_last:,} last week"


def population_stability_index(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """PSI of ``actual`` against ``expected`` (both float[n], any n >= 1, order irrelevant).

    Bin edges are the 1/bins .. (bins-1)/bins quantiles of ``expected``, deduplicated (so tied
    values never make an empty bin), and the first and last bins are open-ended so values of
    ``actual`` outside last week's range still count. Shares are floored at ``PSI_EPS`` (1e-4).
    PSI = sum over bins of (a - e) * ln(a / e); 0 means identical binned distributions.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    expected = _sample(expected, "expected")
    actual = _sample(actual, "actual")
    inner_edges = np.unique(np.quantile(expected, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    # Bin i holds inner_edges[i-1] <= x < inner_edges[i]; bin 0 and the last bin are open.
    n_bins = len(inner_edges) + 1
    expected_share = np.bincount(np.searchsorted(inner_edges, expected, side="right"), minlength=n_bins)
    actual_share = np.bincount(np.searchsorted(inner_edges, actual, side="right"), minlength=n_bins)
    e = np.maximum(expected_share / expected.size, PSI_EPS)
    a = np.maximum(actual_share / actual.size, PSI_EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov (statistic D in [0, 1], two-sided p-value) via scipy."""
    result = stats.ks_2samp(_sample(expected, "expected"), _sample(actual, "actual"))
    return float(result.statistic), float(result.pvalue)


def _psi_outcome(name: str, label: str, psi: float, warn: float, error: float, extra: str,
                 metadata: dict) -> CheckOutcome:
    if psi > error:
        passed, severity, threshold = False, "ERROR", error
    elif psi > warn:
        passed, severity, threshold = False, "WARN", warn
    else:
        passed, severity, threshold = True, "WARN", warn
    description = f"{label} PSI {psi:.3f} vs last week (warn above {warn:g}, error above {error:g}){extra}"
    return CheckOutcome(name, passed, severity, psi, threshold, description,
                        {"psi": round(psi, 6), "warn_above": warn, "error_above": error, **metadata})


def _empty_side(name: str, warn: float, unit: str, n_now: int, n_last: int, first_week: str,
                what: str) -> CheckOutcome | None:
    """The drift checks' rule for a week with nothing to compare: none last week (the first week) passes
    with the ``first_week`` note; none this week fails ERROR. None when both weeks have values.
    Metadata counts them as ``{unit}_now`` and ``{unit}_last_week``."""
    if n_last == 0:
        return CheckOutcome(name, True, "WARN", 0.0, warn, first_week,
                            {"note": "first week", f"{unit}_now": n_now, f"{unit}_last_week": 0})
    if n_now == 0:
        return CheckOutcome(name, False, "ERROR", 0.0, warn, f"no {what} this week (last week had {n_last:,})",
                            {f"{unit}_now": 0, f"{unit}_last_week": n_last})
    return None


def prediction_drift(scores_now: np.ndarray, scores_last_week: np.ndarray, warn: float = 0.1,
                     error: float = 0.25) -> CheckOutcome:
    """PSI of this week's ranker scores (float[n_now]) against last week's (float[n_last]).

    NaN/inf scores are left out (counted in metadata and the description). Passes with a note
    when last week has no scores (the first week); fails ERROR when this week has none. ERROR above ``error``, WARN above ``warn``, pass otherwise.
    """
    (scores_now, dropped_now), (scores_last_week, dropped_last) = _finite(scores_now), _finite(scores_last_week)
    name, label = "prediction_drift", "ranker score"
    empty = _empty_side(name, warn, "scores", int(scores_now.size), int(scores_last_week.size),
                        f"{label} PSI not computed: no scores last week (first week), nothing to compare", f"{label}s")
    if empty is not None:
        return empty
    psi = population_stability_index(scores_last_week, scores_now)
    return _psi_outcome(name, label, psi, warn, error, _dropped_note(dropped_now, dropped_last), {
        "scores_now": int(scores_now.size), "scores_last_week": int(scores_last_week.size),
        "non_finite_now": dropped_now, "non_finite_last_week": dropped_last,
        "mean_now": float(scores_now.mean()), "mean_last_week": float(scores_last_week.mean()),
    })


def _norms(values) -> tuple[np.ndarray, int]:
    array = np.asarray(values, dtype=np.float64)
    return _finite(np.linalg.norm(array, axis=1) if array.ndim == 2 else array)


def feature_drift(norms_now: np.ndarray, norms_last_week: np.ndarray, warn: float = 0.1,
                  error: float = 0.25, ks_alpha: float = 0.01, label: str = "user-embedding norm") -> CheckOutcome:
    """Drift of the user-embedding L2 norm distribution, this week vs last week.

    norms_*: float[n_users] norms, or float[n_users, dim] user vectors (norms taken per row);
    NaN/inf norms are left out and counted in metadata.
    Fails on the PSI thresholds like :func:`prediction_drift`; the KS statistic and p-value go
    to metadata and the description as a second opinion (KS flags tiny shifts on large samples,
    so it does not decide). A degraded tower that emits near-constant or rescaled vectors moves
    the norm distribution and fails ERROR. Passes with a note when last week has no users.
    """
    (norms_now, dropped_now), (norms_last_week, dropped_last) = _norms(norms_now), _norms(norms_last_week)
    name = "feature_drift"
    empty = _empty_side(name, warn, "users", int(norms_now.size), int(norms_last_week.size),
                        f"{label} PSI not computed: no user embeddings last week (first week)", "user embeddings")
    if empty is not None:
        return empty
    psi = population_stability_index(norms_last_week, norms_now)
    ks, p_value = ks_statistic(norms_last_week, norms_now)
    shifted = p_value < ks_alpha
    extra = (f"; KS D {ks:.3f}, p {p_value:.2g} "
             f"({'significant' if shifted else 'not significant'} at alpha {ks_alpha:g})"
             f"{_dropped_note(dropped_now, dropped_last)}")
    return _psi_outcome(name, label, psi, warn, error, extra, {
        "ks_statistic": round(ks, 6), "ks_p_value": p_value, "ks_alpha": ks_alpha, "ks_significant": bool(shifted),
        "users_now": int(norms_now.size), "users_last_week": int(norms_last_week.size),
        "non_finite_now": dropped_now, "non_finite_last_week": dropped_last,
        "mean_norm_now": float(norms_now.mean()), "mean_norm_last_week": float(norms_last_week.mean()),
        "std_norm_now": float(norms_now.std()), "std_norm_last_week": float(norms_last_week.std()),
    })


def embedding_statistic(vectors: np.ndarray) -> tuple[str, np.ndarray]:
    """(label, float[n_users]) the per-user statistic whose distribution the feature-drift check watches.

    The L2 norm when norms vary; the two-tower normalizes its outputs (every norm is 1), so then each
    user's cosine to the week's mean user direction: rotation-invariant, so comparable across two
    separately trained models, and it moves when a tower collapses (every user alike) or scatters.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) == 0:
        return "user-embedding norm", np.zeros(0)
    norms = np.linalg.norm(vectors, axis=1)
    if norms.std() > 1e-3 * max(float(norms.mean()), 1e-12):
        return "user-embedding norm", norms
    centroid = vectors.mean(axis=0)
    length = np.linalg.norm(centroid)
    if length == 0:
        return "user-embedding cosine to the mean user", np.zeros(len(vectors))
    return "user-embedding cosine to the mean user", vectors @ (centroid / length) / np.maximum(norms, 1e-12)


def volume_anomaly(name: str, value: float, trailing: list[float], max_ratio_change: float = 0.5,
                   min_history: int = 2) -> CheckOutcome:
    """This week's count (events, active users, new tracks ...) vs the mean of earlier weeks.

    trailing: the same count for earlier weeks (any order). Fails ERROR when this week is 0 while
    earlier weeks were not; fails WARN when |value / mean - 1| >= max_ratio_change (so at the
    default 0.5 a halved or doubled week warns; a tiny float tolerance keeps exact halves
    warning). Passes with a note when fewer than ``min_history`` earlier weeks exist.
    ``value`` of the outcome is |value / mean - 1|.
    """
    check = f"{name}_volume"
    trailing = [float(t) for t in trailing]
    metadata = {"this_week": float(value), "weeks_of_history": len(trailing), "max_ratio_change": max_ratio_change}
    if len(trailing) < min_history:
        return CheckOutcome(check, True, "WARN", 0.0, max_ratio_change,
                            f"{name} {value:,.0f} this week; only {len(trailing)} earlier week(s), "
                            f"need {min_history} to judge volume",
                            {**metadata, "note": "too little history"})
    mean = float(np.mean(trailing))
    metadata["trailing_mean"] = mean
    if value == 0 and mean > 0:
        return CheckOutcome(check, False, "ERROR", 1.0, max_ratio_change,
                            f"{name} is 0 this week vs a trailing mean of {mean:,.1f}",
                            {**metadata, "ratio": 0.0})
    if mean == 0:
        passed = value == 0
        return CheckOutcome(check, passed, "WARN", 0.0 if passed else 1.0, max_ratio_change,
                            f"{name} {value:,.0f} this week vs 0 in every earlier week",
                            {**metadata, "note": "no volume in earlier weeks"})
    ratio = value / mean
    change = abs(ratio - 1.0)
    passed = change < max_ratio_change - 1e-9
    description = (f"{name} {value:,.0f} this week is {ratio:.2f}x the trailing mean {mean:,.1f} "
                   f"of {len(trailing)} weeks (warn at a change of {max_ratio_change:.0%} or more)")
    return CheckOutcome(check, passed, "WARN", change, max_ratio_change, description,
                        {**metadata, "ratio": ratio, "change": change})


def batch_window_sla(users_per_s: float, cores_used: int, target_users: int = 500_000_000,
                     cluster_cores: int = 4096, window_hours: float = 24.0) -> CheckOutcome:
    """Would the full-scale weekly run fit its batch window at this week's measured throughput?

    users_per_s: users scored per second (wall clock) on ``cores_used`` cores this week.
    Assumption: throughput scales linearly with cores (users/s/core x ``cluster_cores``): the
    per-user work is independent (Spark mapInPandas over user batches) and the model artifacts
    are broadcast once, so this ignores shuffle, skew and start-up costs - an optimistic bound.
    Fails WARN when the projected hours exceed ``window_hours``. ``value`` = projected hours.
    """
    if cores_used <= 0:
        raise ValueError(f"cores_used must be positive, got {cores_used}")
    if not users_per_s > 0:
        raise ValueError(f"users_per_s must be positive (no throughput measured), got {users_per_s}")
    per_core = users_per_s / cores_used
    projected_hours = target_users / (per_core * cluster_cores) / 3600.0
    cores_needed = math.ceil(target_users / (per_core * window_hours * 3600.0))
    passed = projected_hours <= window_hours
    description = (f"{target_users:,} users at {per_core:,.1f} users/s/core on {cluster_cores:,} cores "
                   f"take {projected_hours:,.2f} h (window {window_hours:g} h; {cores_needed:,} cores needed)")
    return CheckOutcome("batch_window_sla", passed, "WARN", projected_hours, window_hours, description, {
        "users_per_s": float(users_per_s), "cores_used": int(cores_used),
        "users_per_s_per_core": per_core, "projected_hours": projected_hours,
        "cores_needed_for_window": int(cores_needed), "cluster_cores": int(cluster_cores),
        "target_users": int(target_users), "window_hours": float(window_hours),
    })


def summarize(outcomes: list[CheckOutcome]) -> pd.DataFrame:
    """One row per check: name, status (PASS/WARN/ERROR), passed, severity, value, threshold, description."""
    rows = [{"name": o.name, "status": o.status, "passed": bool(o.passed), "severity": o.severity,
             "value": float(o.value), "threshold": float(o.threshold), "description": o.description}
            for o in outcomes]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
