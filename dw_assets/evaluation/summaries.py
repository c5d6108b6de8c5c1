"""What the evaluation stores for others to read back (Dagster-free): the systems table's key columns, and
the simulated A/B test's whole summary as the ``simulated_ab_test`` table.

Summaries that other assets and commands need are stored as data in the lake, never read back from
Dagster's event-log metadata (which is for the UI): ``dw run`` prints the week's A/B verdict and ``dw ab``
its arms, effects and verdict from the table, and the weekly report reads it as an input.

The ``simulated_ab_test`` table: one row per (arm, metric) with the arm's users, mean and CI
(``ab.ab_frame``); on every row the summary's scalars (``ab.SUMMARY_COLUMNS``: experiment, verdict,
reason, ...), the week the listeners played (``listened_week``) and the users of the row's arm
(``arm_users``); on both arms' rows of a metric, that metric's treatment - control effect (``effect_*``:
difference, its CI, relative lift, p-value, significant / better / worse, minimum detectable effect).
:func:`ab_summary` gives back exactly the dict ``ab.summarize_ab`` returned.
"""

from __future__ import annotations

import math

import pandas as pd

from dw_assets.evaluation.ab import ARMS, CONTROL, TREATMENT, ab_table, stored_summary

# The systems table's key numbers: the report's and `dw evaluate`'s columns, the assets' "systems" metadata.
REPORT_COLUMNS = ("ndcg@30", "recall@30", "precision@30", "hit_rate@30", "map@30", "coverage", "novelty",
                  "popularity_lift", "calibration_kl", "max_tracks_per_artist", "cold_share", "cold_hit_rate")

# The fields of a summary's effect rows beyond metric, control and treatment (those two are the arms' means).
EFFECT_FIELDS = ("difference", "ci_low", "ci_high", "relative_lift", "p_value", "significant", "better", "worse",
                 "min_detectable_effect")
EFFECT_FLAGS = ("significant", "better", "worse")
EFFECT_COLUMNS = tuple(f"effect_{name}" for name in EFFECT_FIELDS)
# Beyond ab.ab_table's columns: what the whole summary needs back.
DETAIL_COLUMNS = ("listened_week", "arm_users", *EFFECT_COLUMNS)


def ab_result_table(summary: dict, week: str) -> pd.DataFrame:
    """The stored ``simulated_ab_test`` table of week ``week`` (``summary``: ``ab.summarize_ab``'s dict):
    ``ab.ab_table`` with the listened week, each arm's users and each metric's effect on its rows."""
    table = ab_table(summary, week)
    effects = pd.DataFrame(summary["effects"]).set_index("metric")
    table["listened_week"] = summary["week"]
    table["arm_users"] = table["arm"].map(summary["users"]).astype("int64")
    for name in EFFECT_FIELDS:
        values = table["metric"].map(effects[name])
        table[f"effect_{name}"] = values.astype(bool if name in EFFECT_FLAGS else float)  # None -> NaN
    return table


def ab_summary(table: pd.DataFrame) -> dict | None:
    """``ab.summarize_ab``'s dict (its keys, their order and values, None where a number is undefined) of a
    stored ``ab_result_table``; None when the table is empty (no simulated A/B that week) or was written
    before the verdict was stored. A table written before the whole summary was (no ``DETAIL_COLUMNS``)
    gives the keys it holds: the settings, arms, verdict and reason."""
    if table.empty or "verdict" not in table.columns:
        return None
    first = table.iloc[0]
    arms = [{"arm": row["arm"], "metric": row["metric"], "users": int(row["users"]),
             **{key: _number(row[key]) for key in ("mean", "ci_low", "ci_high")}}
            for _, row in table.iterrows()]
    summary = {key: _value(first[key]) for key in ("experiment",) if key in table.columns}
    if "listened_week" in table.columns:
        summary["week"] = first["listened_week"]
    summary.update({key: _value(first[key]) for key in ("confidence", "primary_metric", "treatment_share",
                                                         "treatment_share_observed") if key in table.columns})
    if "arm_users" in table.columns:
        by_arm = table.groupby("arm")["arm_users"].first()
        summary["users"] = {arm: int(by_arm.get(arm, 0)) for arm in ARMS}
    if "missing_users" in table.columns:
        summary["missing_users"] = int(first["missing_users"])
    summary["arms"] = arms
    if set(EFFECT_COLUMNS) <= set(table.columns):
        summary["effects"] = [_effect(rows) for _, rows in table.groupby("metric", sort=False)]
    summary.update({key: _value(first[key]) for key in ("verdict", "reason") if key in table.columns})
    return summary


def report_ab(table: pd.DataFrame) -> dict | None:
    """What the weekly report shows of a stored table (``ab.stored_summary``: the arms as a frame, the
    verdict, reason and settings), the same whichever layout wrote it."""
    return stored_summary(table.drop(columns=[c for c in DETAIL_COLUMNS if c in table.columns]))


def _effect(rows: pd.DataFrame) -> dict:
    """One metric's effect row of the summary from its two arms' rows."""
    means = dict(zip(rows["arm"], rows["mean"], strict=True))
    first = rows.iloc[0]
    effect = {"metric": first["metric"], "control": _number(means.get(CONTROL, math.nan)),
              "treatment": _number(means.get(TREATMENT, math.nan))}
    for name in EFFECT_FIELDS:
        value = first[f"effect_{name}"]
        effect[name] = bool(value) if name in EFFECT_FLAGS else _number(value)
    return effect


def _number(value) -> float | None:
    """A stored float as the summary holds it: None where it is NaN (undefined)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _value(value):
    """A stored scalar as plain Python (numpy scalars unwrapped, NaN as None)."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value

