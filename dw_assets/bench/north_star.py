"""Measure the north star (simulated saves, ``dw_assets.evaluation.north_star``) of a materialized week.

``python -m dw_assets.bench.north_star --lake DIR --world DIR --week W [--users N] [--json]``

Reads the week's playlists (``ranked_playlists``, ``last_week_playlists``), candidates, models and the
12-week history from a local lake and the hidden truth from the world, and plays every system to the
world's listeners in the week after W: the pipeline, the ranker's own order of the candidates (the
shipped ranker and ``list_score``, with the hygiene only: no MMR, calibration, exploration or cold
slots), the evaluation's baselines (two-tower top-30, popularity, item-CF, ALS), last week's models,
and the two oracles. A measurement tool for small worlds (the lake's tables are read into pandas):
users are a seeded hash sample of at most ``--users`` of the week's playlist users (numpy's hash: the
same users as ``offline_evaluation``'s Spark draw whenever the cap holds them all). The product's
measurement is ``offline_evaluation`` (``north_star_evaluation``, ``dw evaluate``): the same functions
(``evaluation.north_star``, ``evaluation.ranker_order``) and the same tables.
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
from dw_assets.calendar import shift_week
from dw_assets.evaluation.baselines import AlsConfig, ItemCfConfig
from dw_assets.evaluation.north_star import (
    RANKER_ORDER,
    NorthStarConfig,
    catalog_frame,
    north_star,
    north_star_summary,
    north_star_table,
)
from dw_assets.evaluation.ranker_order import USERS_PER_BATCH, ranker_order
from dw_assets.evaluation.report import north_star_markdown
from dw_assets.evaluation.systems import baseline_lists
from dw_assets.lake.storage import Lake
from dw_assets.partitions import history_window_weeks
from dw_assets.ranking.features import USER_COLUMNS, FeatureContext
from dw_assets.ranking.ranker import user_hash_unit
from dw_assets.ranking.rerank import RerankConfig
from dw_assets.simulate import load_truth

# Users the bench tools play in their one process (the measurements in docs/evaluation.md used 5,000).
BENCH_USERS = 5_000

HISTORY_COLUMNS = ["user_id", "track_id", "ts", "is_positive", "weight"]


def sample_user_ids(user_ids: np.ndarray, cap: int, salt: int = NorthStarConfig.sample_seed) -> np.ndarray:
    """At most ``cap`` of ``user_ids`` by a seeded hash, sorted: numpy's hash, not the Spark draw of
    ``offline_evaluation`` (the same users whenever the cap holds them all, as on every demo world)."""
    ids = np.unique(np.asarray(user_ids, np.int64))
    keep = np.argsort(user_hash_unit(ids, salt), kind="stable")[:cap]
    return np.sort(ids[keep])


def week_sample(lake: Lake, week: str, users: int) -> tuple[np.ndarray, pd.DataFrame]:
    """The sampled playlist users of ``week`` (``sample_user_ids``) and their candidates (read filtered in
    pyarrow: only the sample's rows)."""
    listed = lake.read_frame(lake.uri("gold", "ranked_playlists", week), columns=["user_id"])["user_id"].unique()
    sample = sample_user_ids(listed, users)
    return sample, lake.read_frame(lake.uri("gold", "candidates", week), filters=[("user_id", "in", sample.tolist())])


def window_history(lake: Lake, week: str, users: np.ndarray | None = None) -> pd.DataFrame:
    """``HISTORY_COLUMNS`` of the week's history window (of ``users`` only when given, filtered in pyarrow)."""
    filters = None if users is None else [("user_id", "in", np.asarray(users).tolist())]
    return pd.concat([lake.read_frame(lake.uri("silver", "interactions", key), columns=HISTORY_COLUMNS, filters=filters)
                      for key in history_window_weeks(week) if lake.exists(lake.uri("silver", "interactions", key))],
                     ignore_index=True)


def measure(lake_root: str, world: str, week: str, users: int, config: NorthStarConfig, say=print) -> dict:
    started = time.perf_counter()
    lake = Lake(str(lake_root))
    models = load_week(lake_root, week)
    playlists_uri = lake.uri("gold", "ranked_playlists", week)
    sample, candidates = week_sample(lake, week, users)
    say(f"{len(sample)} users sampled")
    # Only the sampled users' rows are read (filtered in pyarrow); the baselines still train on the
    # whole history window below, so this tool is for simulated worlds, not a 500 M-user lake.
    of_sample = [("user_id", "in", sample.tolist())]
    lists = {"pipeline": lake.read_frame(playlists_uri, columns=["user_id", "position", "track_id"],
                                         filters=of_sample)}
    last_week_uri = lake.uri("gold", "last_week_playlists", week)
    if lake.exists(last_week_uri):
        lists["last_week"] = lake.read_frame(last_week_uri, columns=["user_id", "position", "track_id"],
                                             filters=of_sample)
    history = window_history(lake, week)
    heard = history.loc[history["user_id"].isin(sample), ["user_id", "track_id"]].drop_duplicates()
    say(f"loaded in {time.perf_counter() - started:.0f} s; ranker order")
    lists[RANKER_ORDER] = week_ranker_order(models, sample, candidates, config)
    say(f"baselines ({time.perf_counter() - started:.0f} s)")
    lists.update(baseline_lists(history, sample, (models.user_ids, models.user_vectors),
                                (models.track_ids, models.track_vectors), config.playlist_size,
                                AlsConfig(), ItemCfConfig()))
    say(f"north star ({time.perf_counter() - started:.0f} s)")
    lists = {name: frame[frame["user_id"].isin(sample)] for name, frame in lists.items()}
    report = north_star(load_truth(world), lists, sample, heard, candidates[["user_id", "track_id"]],
                        catalog_frame(models.track_stats), shift_week(week, 1), config)
    report.update(week=week, listened_week=shift_week(week, 1), lake=str(lake_root),
                  elapsed_s=round(time.perf_counter() - started, 1))
    return report


def week_ranker_order(models, users: np.ndarray, candidates: pd.DataFrame, config: NorthStarConfig,
                      two_tower_prior: float = RerankConfig().two_tower_prior,
                      users_per_batch: int = USERS_PER_BATCH) -> pd.DataFrame:
    """``evaluation.ranker_order`` of the sample with the week's models as ``load_week`` read them."""
    frame, context = week_ranker_inputs(models, users)
    return ranker_order(models.ranker, context, frame, candidates, models.track_stats, two_tower_prior,
                        config.playlist_size, config.max_per_artist, users_per_batch)


def week_ranker_inputs(models, users: np.ndarray) -> tuple[pd.DataFrame, FeatureContext]:
    """(one row per user of ``users`` the week's profiles know: ``USER_COLUMNS`` and ``user_vector``, sorted by
    user; the week's track-side feature context) from the models ``load_week`` read: what the ranker's
    features of these users' candidates are built from."""
    profiles = models.profiles[models.profiles["user_id"].isin(users)].sort_values("user_id")
    frame = profiles[USER_COLUMNS].reset_index(drop=True)
    row = pd.Series(np.arange(len(models.user_ids)), index=models.user_ids)
    known = frame["user_id"].isin(models.user_ids).to_numpy()
    vectors = [None] * len(frame)
    for i in np.flatnonzero(known):
        vectors[i] = models.user_vectors[row[frame["user_id"].iat[i]]]
    frame["user_vector"] = vectors
    context = FeatureContext.build(None, models.track_stats, models.item2vec, models.audio, None,
                                   (models.track_ids, models.track_vectors))
    return frame, context


def table(report: dict) -> str:
    """The offline evaluation's north-star tables (``report.north_star_markdown``) of a ``measure`` report."""
    return north_star_markdown(north_star_summary(north_star_table(report, report["week"], report["listened_week"])))


@click.command()
@click.option("--lake", required=True, help="Local lake root (a materialized week with its evaluation group).")
@click.option("--world", required=True, help="The simulated world's root (holds simulator/truth.npz).")
@click.option("--week", default=None, help="Week key; default: the manifest's last training week.")
@click.option("--users", default=BENCH_USERS, show_default=True,
              help="User sample cap (played in this one process: the pipeline plays its sample on Spark).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Listener seeds, comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def main(lake: str, world: str, week: str | None, users: int, seeds: str, as_json: bool) -> None:
    if week is None:
        manifest = json.loads(Path(world, "landing", "manifest.json").read_text())
        week = manifest["last_training_week"]
    config = dataclasses.replace(NorthStarConfig(), max_users=users,
                                 seeds=tuple(int(s) for s in seeds.split(",") if s.strip()))
    report = measure(lake, world, week, users, config, say=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(report, indent=2) if as_json else table(report))


if __name__ == "__main__":
    main()
