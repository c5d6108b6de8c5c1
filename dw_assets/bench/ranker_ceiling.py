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
from dw_assets.bench.north_star import BENCH_USERS, week_ranker_order, week_sample, window_history
from dw_assets.calendar import shift_week
from dw_assets.evaluation.north_star import (
    NorthStarConfig,
    candidate_oracle,
    catalog_frame,
    per_user_outcomes,
)
from dw_assets.lake.storage import Lake
from dw_assets.ranking.ranker import RankerConfig, train_ranker
from dw_assets.ranking.rerank import RerankConfig
from dw_assets.ranking.training import PoolWeek, pooled_training_set
from dw_assets.simulate import load_truth

AFFINITY_BINS = 40  # the regression's labels: affinity in [-1, 1] rounded to 1/20 (train_ranker takes int grades)


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


if __name__ == "__main__":
    main()
