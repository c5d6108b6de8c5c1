"""Measure the north star (simulated saves, ``dw_assets.evaluation.north_star``) of a materialized week.

``python -m dw_assets.bench.north_star --lake DIR --world DIR --week W [--users N] [--json]``

Reads the week's playlists (``ranked_playlists``, ``last_week_playlists``), candidates, models and the
12-week history from a local lake and the hidden truth from the world, and plays every system to the
world's listeners in the week after W: the pipeline, the ranker's own order of the candidates (the
shipped ranker and ``list_score``, with the hygiene only: no MMR, calibration, exploration or cold
slots), the evaluation's baselines (two-tower top-30, popularity, item-CF, ALS), last week's models,
and the two oracles. A measurement tool for small worlds (the lake's tables are read into pandas):
users are a seeded hash sample of at most ``--users`` of the week's playlist users, the same sample
the evaluation would draw.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from dw_assets.bench.inference import load_week, pack_candidates
from dw_assets.calendar import shift_week
from dw_assets.evaluation.baselines import AlsConfig, ItemCfConfig
from dw_assets.evaluation.north_star import (
    CANDIDATE_ORACLE,
    CATALOG_ORACLE,
    RANKER_ORDER,
    NorthStarConfig,
    catalog_frame,
    hygienic_top_k,
    north_star,
)
from dw_assets.evaluation.systems import baseline_lists
from dw_assets.lake.storage import Lake
from dw_assets.partitions import history_window_weeks
from dw_assets.ranking.features import USER_COLUMNS, FeatureContext, build_features
from dw_assets.ranking.playlists import explode_candidates, list_score
from dw_assets.ranking.ranker import user_hash_unit
from dw_assets.ranking.rerank import RerankConfig
from dw_assets.simulate import load_truth

SAMPLE_SALT = 2101  # the user sample's hash salt
HISTORY_COLUMNS = ["user_id", "track_id", "ts", "is_positive", "weight"]
TABLE_SYSTEMS = ("pipeline", RANKER_ORDER, "retrieval", "als", "item_cf", "popularity", "last_week",
                 CANDIDATE_ORACLE, CATALOG_ORACLE)


def sample_user_ids(user_ids: np.ndarray, cap: int, salt: int = SAMPLE_SALT) -> np.ndarray:
    """At most ``cap`` of ``user_ids`` by a seeded hash (the draw the evaluation makes in Spark), sorted."""
    ids = np.unique(np.asarray(user_ids, np.int64))
    keep = np.argsort(user_hash_unit(ids, salt), kind="stable")[:cap]
    return np.sort(ids[keep])


def ranker_order(models, users: np.ndarray, candidates: pd.DataFrame, rerank: RerankConfig,
                 k: int, max_per_artist: int) -> pd.DataFrame:
    """The shipped ranker's order (``list_score``: log P(positive) + two-tower prior) of each user's
    candidates, best ``k`` with the hygiene only. Users without candidates (the pipeline's popularity
    fallback) get no list here: the candidate oracle has none for them either."""
    profiles = models.profiles[models.profiles["user_id"].isin(users)].sort_values("user_id")
    frame = profiles[USER_COLUMNS].reset_index(drop=True)
    row = pd.Series(np.arange(len(models.user_ids)), index=models.user_ids)
    known = frame["user_id"].isin(models.user_ids).to_numpy()
    vectors = [None] * len(frame)
    for i in np.flatnonzero(known):
        vectors[i] = models.user_vectors[row[frame["user_id"].iat[i]]]
    frame["user_vector"] = vectors
    frame["recent_tracks"] = frame["recent_tracks"].map(lambda t: np.asarray(t if t is not None else [], np.int64))
    packed = pack_candidates(frame, candidates)
    exploded = explode_candidates(packed)
    context = FeatureContext.build(None, models.track_stats, models.item2vec, models.audio, None,
                                   (models.track_ids, models.track_vectors))
    features = build_features(exploded, context, users=frame)
    probability = models.ranker.predict(features)
    scored = exploded[["user_id", "track_id"]].assign(score=list_score(probability, features, rerank.two_tower_prior))
    scored = scored.merge(models.track_stats[["track_id", "artist_id"]], on="track_id", how="inner")
    return hygienic_top_k(scored, k, max_per_artist)


def measure(lake_root: str, world: str, week: str, users: int, config: NorthStarConfig, say=print) -> dict:
    started = time.perf_counter()
    lake = Lake(str(lake_root))
    models = load_week(lake_root, week)
    playlists_uri = lake.uri("gold", "ranked_playlists", week)
    listed = lake.read_frame(playlists_uri, columns=["user_id"])["user_id"].unique()
    sample = sample_user_ids(listed, users)
    say(f"{len(sample)} users sampled of {len(listed)}")
    # Only the sampled users' rows are read (filtered in pyarrow); the baselines still train on the
    # whole history window below, so this tool is for simulated worlds, not a 500 M-user lake.
    of_sample = [("user_id", "in", sample.tolist())]
    lists = {"pipeline": lake.read_frame(playlists_uri, columns=["user_id", "position", "track_id"],
                                         filters=of_sample)}
    last_week_uri = lake.uri("gold", "last_week_playlists", week)
    if lake.exists(last_week_uri):
        lists["last_week"] = lake.read_frame(last_week_uri, columns=["user_id", "position", "track_id"],
                                             filters=of_sample)
    candidates = lake.read_frame(lake.uri("gold", "candidates", week), filters=of_sample)
    history = pd.concat([lake.read_frame(lake.uri("silver", "interactions", key), columns=HISTORY_COLUMNS)
                         for key in history_window_weeks(week) if lake.exists(lake.uri("silver", "interactions", key))],
                        ignore_index=True)
    heard = history.loc[history["user_id"].isin(sample), ["user_id", "track_id"]].drop_duplicates()
    say(f"loaded in {time.perf_counter() - started:.0f} s; ranker order")
    rerank = RerankConfig()
    lists[RANKER_ORDER] = ranker_order(models, sample, candidates, rerank, config.playlist_size, config.max_per_artist)
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


def table(report: dict) -> str:
    """A markdown table of every system under the base listener, then the decomposition and robustness."""
    lines = ["| system | saves/user (95 % CI) | positive plays/user | early-skip share | cold-slot share | "
             "cold saves/user | pop. TPR max/min | cold TPR / median |", "|---|---|---|---|---|---|---|---|"]
    systems = report["systems"]
    for name in [s for s in TABLE_SYSTEMS if s in systems] + [s for s in systems if s not in TABLE_SYSTEMS]:
        s, bias = systems[name], report["popularity_bias"][name]
        lo, hi = s["saves_per_user_ci"]
        lines.append(f"| {name} | {s['saves_per_user']:.3f} ({lo:.3f}–{hi:.3f}) | {s['positives_per_user']:.2f} | "
                     f"{_f(s['early_skip_share'])} | {_f(s['cold_slot_share'])} | {s['cold_saves_per_user']:.3f} | "
                     f"{_f(bias['max_min_tpr_ratio'], 2)} | {_f(bias['cold_tpr_over_median'], 2)} |")
    lines += ["", "| listener model | pipeline saves/user | ALS | catalog oracle | candidate oracle | retrieval eff. | "
              "ranking eff. | re-rank eff. | pipeline / oracle |", "|---|---|---|---|---|---|---|---|---|"]
    rows = {"base": {**report, "systems": {k: v["saves_per_user"] for k, v in systems.items()}},
            **report["robustness"]}
    for name, r in rows.items():
        lines.append(f"| {name} | {_f(r['saves_per_user'])} | {_f(r['systems'].get('als'))} | "
                     f"{_f(r['oracle_saves_per_user'])} | {_f(r['candidate_oracle_saves_per_user'])} | "
                     f"{_f(r['retrieval_efficiency'])} | {_f(r['ranking_efficiency'])} | "
                     f"{_f(r['rerank_efficiency'])} | {_f(r['oracle_efficiency'])} |")
    return "\n".join(lines)


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@click.command()
@click.option("--lake", required=True, help="Local lake root (a materialized week with its evaluation group).")
@click.option("--world", required=True, help="The simulated world's root (holds simulator/truth.npz).")
@click.option("--week", default=None, help="Week key; default: the manifest's last training week.")
@click.option("--users", default=NorthStarConfig.max_users, show_default=True, help="User sample cap.")
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
