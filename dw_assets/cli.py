"""The ``dw`` command line (its contract: docs/contracts.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import click

from dw_assets import settings
from dw_assets.bench.aggregate import all_command
from dw_assets.bench.ann_bench import ann_command
from dw_assets.bench.demo import demo_command
from dw_assets.bench.inference import inference_command
from dw_assets.bench.projection import project_command
from dw_assets.bench.scale import scale_command
from dw_assets.bench.stages import stages_command
from dw_assets.evaluation.ab import ABConfig


def _echo_step(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """dw_assets: weekly discovery playlists as Dagster assets."""


@main.command()
@click.option("--out", "out_dir", required=True,
              help="World root; writes OUT/landing/ (and the hidden truth OUT/simulator/). s3://bucket/prefix: "
                   "the landing zone is uploaded there, the truth is not kept (the simulated A/B needs a local world).")
@click.option("--preset", type=click.Choice(["tiny", "small", "large"]), default="small", show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed (default: the preset's).")
@click.option("--users", type=int, default=None, help="Users at the start (overrides the preset).")
@click.option("--tracks", type=int, default=None, help="Tracks at the start (overrides the preset).")
@click.option("--weeks", type=int, default=None, help="Training weeks; one holdout week follows.")
@click.option("--new-tracks-per-week", type=int, default=None)
@click.option("--bad-event-rate", type=float, default=None, help="Fraction of landed lines that are malformed.")
@click.option("--audio-seconds", type=float, default=None, help="Length of each synthesized clip.")
def simulate(out_dir, preset, seed, users, tracks, weeks, new_tracks_per_week, bad_event_rate, audio_seconds):
    """Generate a synthetic music world's landing zone (events, catalog, users, playlists, audio)."""
    from dw_assets.simulate import config_for
    from dw_assets.simulate import simulate as run_simulation

    try:
        config = config_for(
            preset, seed=seed, users=users, tracks=tracks, weeks=weeks,
            new_tracks_per_week=new_tracks_per_week, bad_event_rate=bad_event_rate, audio_seconds=audio_seconds,
        )
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    started = time.perf_counter()
    if out_dir.startswith("s3://"):
        import tempfile

        from dw_assets.lake.storage import LakeError, open_lake, resolve_lake_root

        try:
            lake = open_lake(resolve_lake_root(out_dir))
            lake.verify()  # before simulating: a missing bucket or credentials fail in a second, not after the world
            with tempfile.TemporaryDirectory(prefix="dw-simulate-") as scratch:
                manifest = run_simulation(config, scratch, progress=_echo_step)
                files = lake.landing_fs().upload_dir(Path(scratch) / "landing")
        except LakeError as exc:
            raise click.ClickException(str(exc)) from exc
        _echo_step(f"uploaded {files:,} landing files to {lake.landing}")
        where = lake.landing
    else:
        manifest = run_simulation(config, out_dir, progress=_echo_step)
        where = f"{Path(out_dir).resolve()}/landing"
    elapsed = time.perf_counter() - started
    lines = sum(manifest["counts"]["lines"].values())
    bad = sum(sum(kinds.values()) for kinds in manifest["malformed_events"].values())
    click.echo(
        f"world written to {where} in {elapsed:.1f}s: "
        f"{manifest['counts']['users']:,} users, {manifest['counts']['tracks']:,} tracks, "
        f"{lines:,} event lines ({bad:,} malformed), weeks {manifest['training_weeks'][0]}..{manifest['last_training_week']} "
        f"+ holdout {manifest['holdout_week']}"
    )


def _check_store(store_url: str) -> None:
    """Refuse a store URL that is malformed, carries credentials or cannot be reached before anything is
    built: one error naming the setting, and nothing published."""
    from dw_assets.serving.stores import StoreError, open_store, redact_url, url_has_credentials

    shown = redact_url(store_url)
    if url_has_credentials(store_url):  # credentials come from the environment, never the command line
        raise click.UsageError(f"--store {shown}: put credentials in the environment, not the URL")
    try:
        with open_store(store_url) as store:
            store.ping()
    except ValueError as exc:
        raise click.UsageError(f"--store / DW_STORE_URL {shown}: {exc}") from None
    except StoreError as exc:
        raise click.UsageError(f"--store / DW_STORE_URL {shown}: {exc}; nothing was built or published") from None


@main.command()
@click.option("--lake", "lake_dir", required=True, help="Lake root (holds landing/): a directory or s3://bucket/prefix.")
@click.option("--week", default=None, help="Week key (Monday, YYYY-MM-DD); default: the manifest's last training week.")
@click.option("--rebuild-history", is_flag=True, help="Re-materialize earlier weeks even if they are in the lake.")
@click.option("--store", "store_url", default=None,
              help="Serving store URL (sqlite:///path.db, redis://host:port/db, scylla://h1,h2/keyspace); "
                   "default: $DW_STORE_URL, else LAKE/serving/playlists.db.")
def run(lake_dir, week, rebuild_history, store_url):
    """Materialize the weekly asset graph for WEEK through Dagster (runs are recorded in DAGSTER_HOME)."""
    from dw_assets.automation.runner import RunError, materialize_week
    from dw_assets.lake.storage import LakeError

    lake_root, manifest = _lake_and_manifest(lake_dir)
    if not manifest and week is None:
        raise click.UsageError(f"{lake_root}/landing/manifest.json not found: pass --week or run "
                               f"`dw simulate --out {lake_dir}` first")
    week = week or manifest["last_training_week"]
    if store := store_url or settings.get("DW_STORE_URL"):
        _check_store(store)
    _echo_step(f"DAGSTER_HOME={settings.get('DAGSTER_HOME')}")
    try:
        report = materialize_week(lake_root, week, manifest.get("weeks"), rebuild_history, progress=_echo_step,
                                  store_url=store_url)
    except (RunError, LakeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(report)
    click.echo(_week_summary(lake_root, week))
    click.echo(
        f"\nbrowse it: DAGSTER_HOME={settings.get('DAGSTER_HOME')} DW_LAKE={lake_root} dagster dev -w workspace.yaml"
    )



@main.command("backfill")
@click.option("--lake", "lake_dir", required=True, help="Lake root (holds landing/): a directory or s3://bucket/prefix.")
@click.option("--from", "first_week", required=True, help="First week key to build (Monday, YYYY-MM-DD).")
@click.option("--to", "last_week", required=True, help="Last week key to build, inclusive.")
@click.option("--store", "store_url", default=None,
              help="Serving store URL (sqlite:///path.db, redis://host:port/db, scylla://h1,h2/keyspace); "
                   "default: $DW_STORE_URL, else LAKE/serving/playlists.db.")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="Also evaluate each week whose following week has landed.")
def backfill_command(lake_dir, first_week, last_week, store_url, evaluate):
    """Materialize weeks FROM..TO through Dagster, oldest first, one week at a time (runs recorded in DAGSTER_HOME).

    The first landed week's playlists come from a stand-in ranker (retrieval order; no week before it
    to learn from). The backfill stops at the first failing week; --from that week resumes it.
    """
    from dw_assets.automation.backfill import backfill_weeks, describe
    from dw_assets.automation.runner import RunError
    from dw_assets.lake.storage import LakeError

    lake_root, _ = _lake_and_manifest(lake_dir)
    _echo_step(f"DAGSTER_HOME={settings.get('DAGSTER_HOME')}")
    try:
        outcomes = backfill_weeks(lake_root, first_week, last_week, store_url=store_url, evaluate=evaluate,
                                  progress=_echo_step)
    except (RunError, LakeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for outcome in outcomes:
        click.echo(f"week {outcome.week}: {describe(outcome)}\n{outcome.report}")
    click.echo(f"\nbackfilled {len(outcomes)} week(s) {first_week}..{last_week}; browse them: "
               f"DAGSTER_HOME={settings.get('DAGSTER_HOME')} DW_LAKE={lake_root} dagster dev -w workspace.yaml")


SUMMARY_ROWS = 30_000  # playlist rows `dw run` reads to pick the user it prints (the first ~1,000 users)


def _week_summary(lake_root: str, week: str) -> str:
    """The week's evaluation (when its holdout had landed) and one user's playlist, as the demo prints them."""
    from dw_assets.evaluation.summaries import DETAIL_COLUMNS, ab_summary
    from dw_assets.evaluation.systems import quality_targets
    from dw_assets.lake.resources import parquet_rows
    from dw_assets.lake.storage import open_lake

    lake, lines = open_lake(lake_root), []
    evaluation = lake.uri("gold", "offline_evaluation", week)
    if lake.exists(evaluation):
        table = lake.read_frame(evaluation)
        lines += ["", _evaluation_text(lake, table, quality_targets(table), week)]
    ab_test = lake.uri("gold", "simulated_ab_test", week)
    if lake.exists(ab_test):
        arms = lake.read_frame(ab_test)
        shown = arms.drop(columns=["week", *(c for c in DETAIL_COLUMNS if c in arms.columns)])
        lines += ["", "simulated A/B (control: last week's models, treatment: this week's):",
                  shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")]
        summary = ab_summary(arms)
        if summary:
            lines.append(f"verdict: {summary['verdict']} - {summary['reason']}")
    playlists = lake.uri("gold", "ranked_playlists", week)
    if lake.exists(playlists):
        frame = lake.read_head(playlists, SUMMARY_ROWS)  # a peek: the week holds 15 G rows at the target
        heavy = frame.groupby("user_id")["source"].apply(lambda s: (s != "popularity_fallback").sum()).idxmax()
        sample = frame[frame["user_id"] == heavy][["position", "track_id", "artist_id", "genre", "score", "source",
                                                   "is_exploration"]]
        lines += ["", f"sample playlist: user {heavy}, week {week} ({parquet_rows(lake, playlists) // 30:,} users in all)",
                  sample.to_string(index=False)]
    return "\n".join(lines)


@main.command("export-playlists")
@click.option("--lake", "lake_dir", required=True, help="Lake root (local directory or s3://bucket/prefix).")
@click.option("--week", required=True, help="Week key (Monday, YYYY-MM-DD).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="Parquet file to write.")
def export_playlists(lake_dir, week, out_file):
    """Write WEEK's playlists as Parquet: user_id, position, track_id, score, source, is_exploration."""
    from dw_assets.lake.storage import LakeError, open_lake, resolve_lake_root
    from dw_assets.serving.export import export_playlists as export

    try:
        lake = open_lake(resolve_lake_root(lake_dir))
        lake.verify()
        rows = export(lake, week, Path(out_file))
    except (LakeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {rows:,} rows to {out_file}")


@main.command()
@click.option("--store", "store_url", required=True,
              help="sqlite:///path.db, redis://host:port/db or scylla://h1,h2/keyspace (credentials from the env).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True)
def serve(store_url, host, port, workers):
    """Serve the live week's playlists over HTTP (read-only): GET /v1/users/{id}/discover-weekly."""
    from dw_assets.serving.api import serve as run_server

    try:
        run_server(store_url, host=host, port=port, workers=workers)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc



@main.command()
@click.option("--lake", "lake_dir", required=True, help="Lake root (holds landing/): a directory or s3://bucket/prefix.")
@click.option("--week", default=None, help="Week key; default: the manifest's last training week.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (week, holdout_week, systems, the north "
              "star's saves_per_user, oracle_saves_per_user, retrieval/ranking/rerank_efficiency, ...).")
@click.option("--refresh", is_flag=True, help="Re-materialize the evaluation even if the lake has it.")
def evaluate(lake_dir, week, as_json, refresh):
    """Every system side by side on WEEK: the north star (simulated saves, on a simulated world) and the
    discovery holdout's NDCG & co. (an exposure monitor); materializes the evaluation assets if needed."""
    from dw_assets.automation.runner import RunError, evaluate_week
    from dw_assets.evaluation.systems import evaluation_json, quality_targets
    from dw_assets.lake.storage import open_lake

    lake_root, manifest = _lake_and_manifest(lake_dir)
    week = week or manifest.get("last_training_week")
    if week is None:
        raise click.UsageError("no manifest in the lake: pass --week")
    try:
        evaluate_week(lake_root, week, manifest.get("weeks"), refresh=refresh, progress=_echo_step)
    except RunError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    lake = open_lake(lake_root)
    table = lake.read_frame(lake.uri("gold", "offline_evaluation", week))
    if as_json:
        click.echo(json.dumps({**evaluation_json(table), **_north_star(lake, week)}))
        return
    click.echo(_evaluation_text(lake, table, quality_targets(table), week))


def _north_star(lake, week: str) -> dict:
    """The week's north star (``north_star_summary`` of its stored table), or null keys and why there are none."""
    from dw_assets.evaluation.north_star import north_star_summary
    from dw_assets.evaluation.truth import no_north_star_reason

    uri = lake.uri("gold", "north_star_evaluation", week)
    table = lake.read_frame(uri) if lake.exists(uri) else None
    reason = no_north_star_reason(lake) if table is None or table.empty else None
    if table is None and reason.startswith("no user"):
        reason = f"the week's evaluation predates the north star: re-run `dw evaluate --refresh --week {week}`"
    return north_star_summary(table, reason)


def _lake_and_manifest(lake_dir: str) -> tuple[str, dict]:
    """The lake root (a directory made absolute, or ``s3://…`` checked: one clear error for a missing
    bucket or credentials), its landing manifest ({} if none), and ``DAGSTER_HOME`` (default: beside a
    local lake; an S3 lake needs it set, since the instance never lives in the bucket)."""
    from dw_assets.lake.landing_fs import read_manifest
    from dw_assets.lake.storage import LakeError, open_lake, resolve_lake_root

    try:
        lake = open_lake(resolve_lake_root(lake_dir))
        lake.verify()
        manifest = read_manifest(lake.landing_fs())
    except LakeError as exc:
        raise click.ClickException(str(exc)) from exc
    if not settings.is_set("DAGSTER_HOME"):
        if lake.is_s3:
            raise click.UsageError(f"set DAGSTER_HOME for the S3 lake {lake.root}: Dagster records its runs in a "
                                   "local directory (or a Postgres instance, docs/operations.md), never in the bucket")
        os.environ["DAGSTER_HOME"] = f"{lake.root}/dagster_home"
    return lake.root, manifest


def _evaluation_text(lake, table, targets, week: str) -> str:
    from dw_assets.evaluation.report import EXPOSURE_NOTE, north_star_markdown
    from dw_assets.evaluation.summaries import REPORT_COLUMNS

    overall = table[table["segment"] == "all"].set_index("system")
    pipeline = table[table["system"] == "pipeline"].set_index("segment")
    columns = [c for c in REPORT_COLUMNS if c in overall.columns]
    first = table.iloc[0]
    lines = [north_star_markdown(_north_star(lake, week)), "",
             f"exposure monitor: offline evaluation of week {week} on the discovery holdout of {first['holdout_week']} "
             f"({int(overall.at['pipeline', 'users']):,} users with holdout positives). {EXPOSURE_NOTE}",
             overall[["users", *columns]].to_string(float_format=lambda v: f"{v:.4f}"),
             "", "pipeline by user segment:",
             pipeline[["users", "ndcg@30", "recall@30", "hit_rate@30", "popularity_lift", "cold_share"]].to_string(
                 float_format=lambda v: f"{v:.4f}"),
             "", f"retrieval recall@500 {first['retrieval_recall@500']:.4f}, "
                 f"ANN recall@500 vs exact {first['ann_recall@500']:.4f}",
             "", "quality targets:", targets.to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    report = lake.uri("reports", "evaluation_report", week)
    if lake.exists(report):
        lines += ["", f"report: {report}/report.html"]
    return "\n".join(lines)


@main.command()
@click.option("--lake", "lake_dir", required=True, help="Lake root (holds landing/ and the simulator's simulator/).")
@click.option("--week", default=None, help="Week key; default: the manifest's last training week.")
@click.option("--experiment", default=ABConfig.experiment, show_default=True, help="Salts the user split.")
@click.option("--treatment-share", type=float, default=ABConfig.treatment_share, show_default=True)
@click.option("--seed", type=int, default=ABConfig.seed, show_default=True, help="Seed of the simulated listeners.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def ab(lake_dir, week, experiment, treatment_share, seed, as_json):
    """Simulated A/B test: last week's models (control) vs this week's (treatment), played by the simulator."""
    from dagster import AssetSelection

    from dw_assets.automation.runner import RunError, evaluate_week
    from dw_assets.evaluation.truth import has_simulator_truth

    lake_root, manifest = _lake_and_manifest(lake_dir)
    week = week or manifest.get("last_training_week")
    if week is None:
        raise click.UsageError("no manifest in the lake: pass --week")
    if not 0 < treatment_share < 1:
        raise click.UsageError(f"--treatment-share must be in (0, 1), got {treatment_share}")
    if not has_simulator_truth(lake_root):
        raise click.UsageError(f"{lake_root}/simulator/ not found: the simulated A/B needs a world from `dw simulate`")
    ops = _ab_run_config(ABConfig(experiment=experiment, treatment_share=treatment_share, seed=seed))
    selection = (AssetSelection.assets("simulated_ab_test").upstream()
                 & AssetSelection.groups("evaluation")) - AssetSelection.assets("retrieval_evaluation")
    try:
        evaluate_week(lake_root, week, manifest.get("weeks"), refresh=True, progress=_echo_step, ops=ops,
                      selection=_missing_then(lake_root, week, selection))
    except RunError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    summary = _ab_summary(lake_root, week)
    if as_json:
        click.echo(json.dumps(summary))
        return
    import pandas as pd

    click.echo(f"simulated A/B, week {week}: experiment {summary['experiment']!r}, users {summary['users']}")
    click.echo(pd.DataFrame(summary["arms"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    click.echo(pd.DataFrame(summary["effects"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    click.echo(f"verdict: {summary['verdict']} - {summary['reason']}")


def _ab_run_config(settings: ABConfig):
    """The ``simulated_ab_test`` op's typed run config of ``settings`` (every ``ABConfig`` field, under its
    own name in ``AbTestConfig``; the evaluated users keep their defaults)."""
    from dagster import RunConfig

    from dw_assets.evaluation.config import AbTestConfig

    return RunConfig(ops={"simulated_ab_test": AbTestConfig(**dataclasses.asdict(settings))})


def _ab_summary(lake_root: str, week: str) -> dict | None:
    """The simulated A/B summary of ``week`` (``ab.summarize_ab``'s dict) from its table in the lake, its
    keys sorted at every level (as `dw ab` has always printed it); None when the lake has none."""
    from dw_assets.evaluation.summaries import ab_summary
    from dw_assets.lake.storage import open_lake

    lake = open_lake(lake_root)
    uri = lake.uri("gold", "simulated_ab_test", week)
    summary = ab_summary(lake.read_frame(uri)) if lake.exists(uri) else None
    return None if summary is None else json.loads(json.dumps(summary, sort_keys=True))


def _missing_then(lake_root: str, week: str, selection):
    """The A/B alone when the control arm is in the lake already, else the control arm first."""
    from dagster import AssetSelection

    from dw_assets.lake.storage import open_lake

    lake = open_lake(lake_root)
    if lake.exists(lake.uri("gold", "last_week_playlists", week)):
        return AssetSelection.assets("simulated_ab_test")
    return selection


@main.group()
def bench() -> None:
    """Benchmarks (medians of several runs, the quality figure beside each speed figure)."""


@bench.command("serving")
@click.option("--store", "store_url", required=True, help="A scratch store URL: the benchmark publishes to it.")
@click.option("--users", type=int, default=20_000, show_default=True, help="Synthetic playlists published first.")
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Requests per second, fixed rate.")
@click.option("--seconds", type=float, default=15.0, show_default=True)
@click.option("--runs", type=int, default=3, show_default=True, help="Repetitions; medians are reported.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_serving_command(store_url, users, rate, seconds, runs, as_json):
    """HTTP API latency at a fixed request rate over a real store (p50/p99 ms, errors)."""
    import statistics

    from dw_assets.serving.loadtest import bench_serving

    results = [bench_serving(store_url, users=users, rate=rate, seconds=seconds, seed=run) for run in range(runs)]
    loads = [r["load"] for r in results]
    summary = {"store": store_url.split("?", 1)[0], "users": users, "rate": rate, "seconds": seconds, "runs": runs,
               "connections": loads[0]["connections"], "unknown_fraction": loads[0]["unknown_fraction"],
               **{f"median_{k}": statistics.median(float(x[k]) for x in loads)
                  for k in ("achieved_rps", "errors", "server_cpu_pct", "client_cpu_pct")},
               **{f"median_latency_{q}_ms": statistics.median(x["latency_ms"][q] for x in loads)
                  for q in ("p50", "p95", "p99", "max")},
               "max_latency_p99_ms": max(x["latency_ms"]["p99"] for x in loads),
               "publish_users_per_s": statistics.median(float(r["publish"]["users_per_s"]) for r in results)}
    click.echo(json.dumps(summary, indent=None if as_json else 2, default=str))


bench.add_command(stages_command)
bench.add_command(ann_command)
bench.add_command(inference_command)
bench.add_command(all_command)
bench.add_command(project_command)
bench.add_command(demo_command)
bench.add_command(scale_command)


if __name__ == "__main__":
    main()
