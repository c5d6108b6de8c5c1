"""What today's track representations allow, even to a system that knew every user's taste, on a simulated world.

``python -m dw_assets.bench.representation --lake DIR --world DIR [--week W] [--users N] [--json]``

The world's hidden affinity is taste · style. The product learns three track spaces from the logs and the
audio (item2vec, the audio CNN, the two-tower's item tower). This tool asks how much of the hidden style
they hold, and what that is worth in saves:

- **R² to the style**: a ridge regression from each space (and from all three side by side, with a flag
  for a missing vector) to the hidden style, fitted on 80 % of the week's catalog and scored on the other
  20 % (a seeded split).
- **Perfect user, decoded tracks**: the same regression fitted on every track (generous: it sees the
  answer) decodes a style for each track. Each sampled user is then served the best unheard tracks by
  true taste · decoded style, with the product's hygiene (``north_star.catalog_oracle`` run on a world
  whose styles are the decoded ones), and the real listeners play the lists.
- **Perfect user, noisy styles**: the same with the true style plus isotropic Gaussian noise of each
  ``--noise`` level, renormalized: saves against R², the curve a representation has to climb.

Every figure is saves per user over the catalog oracle's (``oracle_fraction``). docs/evaluation.md, "Is
0.55 of the catalog oracle reachable?" has the `small` numbers. A measurement tool for simulated worlds:
the catalog's vectors and the sample's histories come to the driver (at `small`: 55 k tracks, 5,000 users).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
import numpy as np

from dw_assets.bench.inference import load_week
from dw_assets.bench.north_star import BENCH_USERS, week_sample, window_history
from dw_assets.calendar import shift_week
from dw_assets.evaluation.north_star import NorthStarConfig, catalog_frame, catalog_oracle, per_user_outcomes
from dw_assets.lake.storage import Lake
from dw_assets.simulate import load_truth

HELD_OUT = 0.2  # share of tracks the R² is scored on
RIDGE_ALPHA = 1.0
SPLIT_SEED = 0
NOISE_LEVELS = (0.1, 0.2, 0.3)  # sd per style dimension (unit styles)


def ridge(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA):
    """A ridge regression of ``y`` on ``x`` with an intercept (not penalized): returns predict(x) -> y."""
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc = x - x_mean
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return lambda z: (z - x_mean) @ weights + y_mean


def r_squared(predicted: np.ndarray, actual: np.ndarray) -> float:
    """1 - residual / total sum of squares, over every dimension of ``actual``."""
    return float(1.0 - ((predicted - actual) ** 2).sum() / ((actual - actual.mean(axis=0)) ** 2).sum())


def aligned(track_ids: np.ndarray, space: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(float64[len(track_ids), d] vectors of ``space`` = (ids, vectors) in ``track_ids`` order, zeros where it has
    none; bool[len(track_ids)] which have one)."""
    ids, vectors = np.asarray(space[0], np.int64), np.asarray(space[1], np.float64)
    out = np.zeros((len(track_ids), vectors.shape[1]))
    at = np.searchsorted(ids, track_ids)
    has = at < len(ids)
    has[has] = ids[at[has]] == track_ids[has]
    out[has] = vectors[at[has]]
    return out, has


def space_r_squared(spaces: dict[str, tuple[np.ndarray, np.ndarray]], joined: np.ndarray, style: np.ndarray,
                    held_out: np.ndarray) -> dict[str, float]:
    """Held-out R² to ``style`` of each space alone (its tracks with a vector) and of all side by side
    (``all``: ``joined`` = :func:`side_by_side` of the spaces, every track)."""
    out = {}
    for name, (vectors, has) in spaces.items():
        train, test = has & ~held_out, has & held_out
        out[name] = r_squared(ridge(vectors[train], style[train])(vectors[test]), style[test])
    out["all"] = r_squared(ridge(joined[~held_out], style[~held_out])(joined[held_out]), style[held_out])
    return out


def side_by_side(spaces: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.hstack([np.hstack([vectors, has[:, None].astype(np.float64)]) for vectors, has in spaces.values()])


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def measure(lake_root: str, world: str, week: str, users: int, config: NorthStarConfig,
            noise_levels: tuple[float, ...] = NOISE_LEVELS, say=print) -> dict:
    """The module's report for ``week`` of a local lake (its models, catalog and history window)."""
    started = time.perf_counter()
    lake, truth, models = Lake(str(lake_root)), load_truth(world), load_week(lake_root, week)
    catalog = catalog_frame(models.track_stats)
    track_ids = np.sort(catalog["track_id"].to_numpy(np.int64))
    cold = catalog.loc[catalog["is_cold"], "track_id"].to_numpy(np.int64)
    rows = truth.track_index(track_ids)
    style = truth.track_style[rows].astype(np.float64)
    spaces = {"item2vec": aligned(track_ids, models.item2vec), "audio": aligned(track_ids, models.audio),
              "two_tower": aligned(track_ids, (models.track_ids, models.track_vectors))}
    held_out = np.random.default_rng(SPLIT_SEED).random(len(track_ids)) < HELD_OUT
    joined = side_by_side(spaces)
    r2 = space_r_squared(spaces, joined, style, held_out)
    say(f"R² to the hidden style: {', '.join(f'{k} {v:.3f}' for k, v in r2.items())}")

    sample, _ = week_sample(lake, week, users)
    heard = window_history(lake, week, sample)[["user_id", "track_id"]].drop_duplicates()
    listened = shift_week(week, 1)

    def served(styles: np.ndarray) -> float:
        """Saves per user of the perfect-taste lists over ``styles`` (the catalog's tracks, unit rows)."""
        believed = truth.track_style.copy()
        believed[rows] = styles
        lists = catalog_oracle(dataclasses.replace(truth, track_style=believed), sample, heard, catalog, config).oracle
        return float(per_user_outcomes(truth, lists, sample, cold, listened, config.seeds)["saves"].mean())

    oracle = served(style)
    if oracle <= 0:
        raise click.ClickException(f"the catalog oracle earns no saves for week {week}'s {len(sample)} users")
    decoded = served(unit_rows(ridge(joined, style)(joined)))
    say(f"{len(sample)} users: catalog oracle {oracle:.3f}, perfect user x decoded styles {decoded:.3f} "
        f"({time.perf_counter() - started:.0f} s)")
    noisy = []
    for level in noise_levels:  # one seeded draw, scaled by each level: the curve is over noise size alone
        styles = unit_rows(style + np.random.default_rng(SPLIT_SEED + 1).normal(0.0, level, style.shape))
        saves = served(styles)
        noisy.append({"noise": level, "r_squared": r_squared(ridge(styles, style)(styles), style),
                      "saves_per_user": saves, "oracle_fraction": saves / oracle})
        say(f"noise {level}: R² {noisy[-1]['r_squared']:.3f}, {saves:.3f} saves/user")
    return {
        "week": week, "listened_week": listened, "users": int(len(sample)), "seeds": list(config.seeds),
        "tracks": int(len(track_ids)), "style_dim": int(style.shape[1]),
        "r_squared": r2, "catalog_oracle_saves_per_user": oracle,
        "decoded": {"saves_per_user": decoded, "oracle_fraction": decoded / oracle},
        "noisy": noisy, "elapsed_s": round(time.perf_counter() - started, 1),
    }


@click.command()
@click.option("--lake", required=True, help="Local lake root (week W materialized).")
@click.option("--world", required=True, help="The simulated world's root (holds simulator/truth.npz).")
@click.option("--week", default=None, help="Week key; default: the manifest's last training week.")
@click.option("--users", default=BENCH_USERS, show_default=True, help="Served users (seeded hash).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Listener seeds, comma-separated.")
@click.option("--noise", default=",".join(str(n) for n in NOISE_LEVELS), show_default=True,
              help="Noise levels (sd per style dimension), comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def main(lake: str, world: str, week: str | None, users: int, seeds: str, noise: str, as_json: bool) -> None:
    if week is None:
        week = json.loads(Path(world, "landing", "manifest.json").read_text())["last_training_week"]
    config = dataclasses.replace(NorthStarConfig(), max_users=users,
                                 seeds=tuple(int(s) for s in seeds.split(",") if s.strip()))
    levels = tuple(float(n) for n in noise.split(",") if n.strip())
    report = measure(lake, world, week, users, config, levels, say=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"week {week}, {report['users']} users; catalog oracle {report['catalog_oracle_saves_per_user']:.3f} "
               f"saves/user\nR² of the hidden style, held out: "
               + ", ".join(f"{k} {v:.3f}" for k, v in report["r_squared"].items())
               + f"\nperfect user x decoded styles: {report['decoded']['oracle_fraction']:.3f} of the oracle")
    for row in report["noisy"]:
        click.echo(f"perfect user x styles at R² {row['r_squared']:.3f}: {row['oracle_fraction']:.3f} of the oracle")


if __name__ == "__main__":
    main()
