"""How far the shipped ranker is from the best ranker its features allow, on a simulated world.

``python -m dw_assets.bench.ranker_ceiling --lake DIR --world DIR [--week W] [--users N] [--train-users N] [--json]``

Week W's shipped ranker learns from week W-1's candidates that the users heard in week W, labelled by how
they listened. The **ceiling ranker** is the same LightGBM (``RankerConfig``, regression) on the same
features (``ranking.training.pooled_training_set``: week W-1's candidates featurized as of W-1, as
``ranker_model`` does) trained on *every* candidate of a seeded-hash sample of W-1's users, labelled with
the world's hidden true affinity: no exposure bias, no label noise — what the features allow. Both order
week W's candidates of the north star's user sample (``evaluation.ranker_order``, the hygiene only) and the
world's listeners play them (``north_star.per_user_outcomes``, paired across systems). Ranking efficiency =
a system's saves per user / the candidate oracle's. ``shipped_vs_ceiling`` says how much of what the
features allow the ranker reaches; ``ceiling_efficiency`` how much the features allow at all
(docs/evaluation.md, "What limits the ranker"; on ``small`` 0.503 and 0.539: 0.93).

Candidate by candidate, ``within_user_correlation`` gives each ranker's mean within-user Spearman correlation
with the hidden affinity, warm and cold candidates apart (a cold track: no plays in the window or released in
the week): where the features know more than the shipped ranker takes from them (on ``small``, cold: 0.32
shipped against 0.45 ceiling; docs/evaluation.md, "Cold tracks in the ranker").

The ceiling ranker orders by its own prediction (two-tower prior 0: the prior is part of the shipped
``list_score`` only because the shipped ranker does not know affinity); the shipped order is reported with
the shipped prior and with 0. A measurement tool for simulated worlds: the north star's sample comes to
the driver as pandas (``bench.north_star``) and the training sample through Spark (``--train-users`` users'
candidates, ~500 rows each).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from dw_assets.bench.inference import load_week
from dw_assets.bench.north_star import (
    BENCH_USERS,
    week_ranker_inputs,
    week_ranker_order,
    week_sample,
    window_history,
)
from dw_assets.calendar import shift_week
from dw_assets.evaluation.north_star import (
    NorthStarConfig,
    candidate_oracle,
    catalog_frame,
    per_user_outcomes,
)
from dw_assets.evaluation.ranker_order import USERS_PER_BATCH, pack_candidates, packed_features, user_batches
from dw_assets.lake.storage import Lake
from dw_assets.ranking.ranker import RankerConfig, TrainedRanker, train_ranker
from dw_assets.ranking.rerank import RerankConfig
from dw_assets.ranking.training import PoolWeek, pooled_training_set
from dw_assets.simulate import load_truth

AFFINITY_BINS = 40  # the regression's labels: affinity in [-1, 1] rounded to 1/20 (train_ranker takes int grades)
MIN_ROWS_PER_USER = 5  # a user's within-user correlation needs this many candidates of the kind (warm or cold)


def affinity_grades(affinity: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Affinity in [-1, 1] as int grades 0..AFFINITY_BINS and each grade's value (the regression target)."""
    grades = np.clip(np.round((np.asarray(affinity, np.float64) + 1.0) * AFFINITY_BINS / 2), 0, AFFINITY_BINS)
    values = tuple(float(v) for v in np.arange(AFFINITY_BINS + 1) * 2.0 / AFFINITY_BINS - 1.0)
    return grades.astype(np.int32), values


def ceiling_training_set(spark, lake_root: str, week: str, train_users: int, config: RankerConfig):
    """Every candidate of at most ``train_users`` of week W-1's users (seeded hash, drawn in Spark), featurized
    as ``ranker_model`` featurizes week W-1: a ``ranking.training.TrainingSet``."""
    lake, previous = Lake(lake_root), shift_week(week, -1)

    def table(layer: str, name: str, key: str):
        return lake.read_spark(spark, [lake.uri(layer, name, key)])

    def frame(layer: str, name: str) -> pd.DataFrame:
        return lake.read_frame(lake.uri(layer, name, previous))

    pool = [PoolWeek(previous, table("gold", "candidates", previous), table("silver", "interactions", week),
                     table("gold", "user_profiles", previous), frame("gold", "track_stats"),
                     frame("models", "item2vec_embeddings"), table("models", "audio_vectors", previous),
                     table("models", "user_embeddings", previous), frame("models", "track_embeddings"))]
    return pooled_training_set(pool, dataclasses.replace(config, training_rows="all", sample_users=train_users,
                                                          pool_weeks=1))


def candidate_scores(models, users: np.ndarray, candidates: pd.DataFrame, rankers: dict[str, TrainedRanker],
                     users_per_batch: int = USERS_PER_BATCH) -> pd.DataFrame:
    """user_id, track_id and one column per ranker of ``rankers`` (its prediction) for every candidate of
    ``users``: the features are built once per batch of ``users_per_batch`` users, as the ranker order builds
    them (``evaluation.ranker_order.packed_features``)."""
    frame, context = week_ranker_inputs(models, users)
    parts = []
    for batch, rows in user_batches(frame, candidates, users_per_batch):
        exploded, features = packed_features(context, pack_candidates(batch, rows))
        if features is None:
            continue
        parts.append(exploded[["user_id", "track_id"]].reset_index(drop=True).assign(
            **{name: ranker.predict(features, engine="auto") for name, ranker in rankers.items()}))
    if not parts:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "track_id": pd.Series(dtype="int64"),
                             **{name: pd.Series(dtype="float64") for name in rankers}})
    return pd.concat(parts, ignore_index=True)


def within_user_correlation(frame: pd.DataFrame, score: str, truth: str = "affinity",
                            min_rows: int = MIN_ROWS_PER_USER) -> tuple[float | None, int]:
    """(mean over users of the Spearman correlation of ``score`` with ``truth`` among the user's rows, users
    counted): users with fewer than ``min_rows`` rows, or a constant score or truth, are left out (None when
    none is left). Ties get average ranks, as ``scipy.stats.spearmanr``."""
    rows = frame[["user_id", score, truth]].dropna()
    rows = rows[rows.groupby("user_id")["user_id"].transform("size") >= min_rows]
    if rows.empty:
        return None, 0
    ranks = rows.groupby("user_id")[[score, truth]].rank()
    centred = ranks - ranks.groupby(rows["user_id"]).transform("mean")
    sums = pd.DataFrame({"xy": centred[score] * centred[truth], "xx": centred[score] ** 2,
                         "yy": centred[truth] ** 2}).groupby(rows["user_id"]).sum()
    sums = sums[(sums["xx"] > 0) & (sums["yy"] > 0)]
    if sums.empty:
        return None, 0
    return float((sums["xy"] / np.sqrt(sums["xx"] * sums["yy"])).mean()), int(len(sums))


def measure(spark, lake_root: str, world: str, week: str, users: int, train_users: int,
            config: NorthStarConfig, ranker: RankerConfig | None = None, say=print) -> dict:
    """The module's report for ``week`` of a local lake: the shipped and the ceiling ranker's orders of the north
    star's ``users`` (seeded hash), played with ``config.seeds``; the ceiling trained on ``train_users`` users of
    W-1 with ``ranker``'s settings (default: the shipped ``RankerConfig``)."""
    ranker = ranker or RankerConfig()
    started = time.perf_counter()
    lake, truth = Lake(str(lake_root)), load_truth(world)
    models = load_week(lake_root, week)
    sample, candidates = week_sample(lake, week, users)
    heard = window_history(lake, week, sample)[["user_id", "track_id"]].drop_duplicates()
    catalog = catalog_frame(models.track_stats)
    cold = catalog.loc[catalog["is_cold"], "track_id"].to_numpy(np.int64)
    listened = shift_week(week, 1)

    def saves(lists: pd.DataFrame) -> float:
        return float(per_user_outcomes(truth, lists, sample, cold, listened, config.seeds)["saves"].mean())

    oracle = saves(candidate_oracle(truth, candidates, heard, catalog, config))
    if oracle <= 0:
        raise click.ClickException(f"the candidate oracle earns no saves for week {week}'s {len(sample)} users")
    shipped_prior = RerankConfig().two_tower_prior
    shipped = {prior: saves(week_ranker_order(models, sample, candidates, config, prior))
               for prior in (shipped_prior, 0.0)}
    say(f"{len(sample)} users; candidate oracle {oracle:.3f}, shipped ranker {shipped[shipped_prior]:.3f} saves/user "
        f"({time.perf_counter() - started:.0f} s); ceiling training set")

    rows = ceiling_training_set(spark, str(lake_root), week, train_users, ranker)
    affinity = truth.affinity(rows.user_ids, rows.track_ids)
    grades, values = affinity_grades(affinity)
    trained = train_ranker(rows.features, grades, rows.user_ids,
                           dataclasses.replace(ranker, objective="regression", label_scheme="outcome",
                                               outcome_values=values), query_ids=rows.query_ids)
    fitted = trained.predict(rows.features)
    say(f"ceiling ranker on {len(rows.features):,} rows ({time.perf_counter() - started:.0f} s)")
    ceiling = saves(week_ranker_order(dataclasses.replace(models, ranker=trained), sample, candidates, config, 0.0))
    # Where the rankers differ, candidate by candidate: within each user, warm and cold candidates apart.
    scored = candidate_scores(models, sample, candidates, {"shipped": models.ranker, "ceiling": trained})
    scored["affinity"] = truth.affinity(scored["user_id"].to_numpy(np.int64), scored["track_id"].to_numpy(np.int64))
    is_cold = scored["track_id"].isin(cold).to_numpy()
    correlation = {}
    for kind, part in (("warm", scored[~is_cold]), ("cold", scored[is_cold])):
        (shipped_r, users_r), (ceiling_r, _) = (within_user_correlation(part, name) for name in ("shipped", "ceiling"))
        correlation[kind] = {"shipped": shipped_r, "ceiling": ceiling_r, "users": users_r}
    say(f"within-user correlations ({time.perf_counter() - started:.0f} s)")
    return {
        "week": week, "listened_week": listened, "users": int(len(sample)), "seeds": list(config.seeds),
        "candidate_oracle_saves_per_user": oracle,
        "shipped_saves_per_user": shipped[shipped_prior], "shipped_efficiency": shipped[shipped_prior] / oracle,
        "shipped_prior": shipped_prior, "shipped_efficiency_prior_0": shipped[0.0] / oracle,
        "ceiling_saves_per_user": ceiling, "ceiling_efficiency": ceiling / oracle,
        "shipped_vs_ceiling": shipped[shipped_prior] / ceiling if ceiling > 0 else None,
        "ceiling_training": {"users": int(rows.weeks[0]["sampled_users"]), "rows": int(len(rows.features)),
                             "affinity_mean": float(affinity.mean()), "affinity_std": float(affinity.std()),
                             "fit_correlation": float(np.corrcoef(fitted, affinity)[0, 1])},
        "cold_candidate_share": float(is_cold.mean()) if len(is_cold) else 0.0,
        "within_user_correlation": correlation,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


@click.command()
@click.option("--lake", required=True, help="Local lake root (week W materialized, with week W-1's candidates).")
@click.option("--world", required=True, help="The simulated world's root (holds simulator/truth.npz).")
@click.option("--week", default=None, help="Week key; default: the manifest's last training week.")
@click.option("--users", default=BENCH_USERS, show_default=True,
              help="Evaluated users (seeded hash) (played in this one process: the pipeline plays its sample on Spark).")
@click.option("--train-users", default=8_000, show_default=True, help="Users whose every candidate trains the ceiling.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Listener seeds, comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def main(lake: str, world: str, week: str | None, users: int, train_users: int, seeds: str, as_json: bool) -> None:
    from dw_assets.bench.stages import spark_session

    if week is None:
        week = json.loads(Path(world, "landing", "manifest.json").read_text())["last_training_week"]
    config = dataclasses.replace(NorthStarConfig(), max_users=users,
                                 seeds=tuple(int(s) for s in seeds.split(",") if s.strip()))
    report = measure(spark_session(), lake, world, week, users, train_users, config,
                     say=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"week {week}, {report['users']} users: ranking efficiency (saves / candidate oracle's "
               f"{report['candidate_oracle_saves_per_user']:.3f})\n"
               f"  shipped ranker  {report['shipped_efficiency']:.3f}  (prior {report['shipped_prior']:g}; "
               f"{report['shipped_efficiency_prior_0']:.3f} with prior 0)\n"
               f"  ceiling ranker  {report['ceiling_efficiency']:.3f}  (true affinity of every candidate of "
               f"{report['ceiling_training']['users']:,} users)\n"
               f"  shipped / ceiling {report['shipped_vs_ceiling']:.3f}")
    click.echo(f"within-user Spearman correlation of the prediction with the hidden affinity "
               f"(cold: {report['cold_candidate_share']:.1%} of the candidates)")
    for kind, row in report["within_user_correlation"].items():
        values = "  ".join(f"{name} {row[name]:.3f}" if row[name] is not None else f"{name} n/a"
                           for name in ("shipped", "ceiling"))
        click.echo(f"  {kind:<5} {values}  ({row['users']:,} users)")


if __name__ == "__main__":
    main()
