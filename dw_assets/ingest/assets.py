"""Bronze → silver → gold as weekly Dagster assets (thin wrappers over this domain's functions)."""


import time

import pandera.pandas as pa
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    MetadataValue,
    multi_asset,
)
from dagster_pyspark import LazyPySparkResource
from pyspark import StorageLevel
from pyspark.sql import DataFrame

from dw_assets.config_fields import config_fields, parameter_default
from dw_assets.ingest import schemas
from dw_assets.ingest.bronze import build_bronze, landed_event_files
from dw_assets.ingest.events import QUARANTINE_REASONS
from dw_assets.ingest.interactions import InteractionRules, build_interactions
from dw_assets.ingest.profiles import ProfileRules, build_track_stats, build_user_profiles, track_counts
from dw_assets.ingest.snapshots import track_catalog as read_track_catalog
from dw_assets.ingest.snapshots import user_directory as read_user_directory
from dw_assets.ingest.snapshots import user_playlists as read_user_playlists
from dw_assets.lake.landing_fs import LandingFS
from dw_assets.lake.quality import emit_checked, schema_check_spec, table_schema
from dw_assets.lake.resources import LAYER_KEY, LakeResource
from dw_assets.partitions import ONE_WEEK_PER_RUN, history_window, weekly_partitions

GROUP = "ingest"


def _meta(layer: str, schema: pa.DataFrameSchema) -> dict:
    return {LAYER_KEY: layer, "dagster/column_schema": table_schema(schema)}


def _landing(lake: LakeResource) -> LandingFS:
    return lake.landing()


def _snapshot(name: str, schema: pa.DataFrameSchema, description: str, read, doc: str):
    """A bronze snapshot asset: the week's landed ``name`` table, read by ``read(spark, landing, week)`` and
    checked on the executors, never collected. One builder, so the three snapshots cannot drift apart."""

    @multi_asset(
        name=name,
        outs={name: AssetOut(group_name=GROUP, metadata=_meta("bronze", schema), description=description)},
        partitions_def=weekly_partitions,
        backfill_policy=ONE_WEEK_PER_RUN,
        check_specs=[schema_check_spec(name, schema)],
        description=doc,
    )
    def snapshot(context: AssetExecutionContext, pyspark: LazyPySparkResource, lake: LakeResource):
        table = read(pyspark.spark_session, _landing(lake), context.partition_key)
        yield from emit_checked(name, table, schema, {})

    return snapshot


track_catalog = _snapshot(
    "track_catalog", schemas.TRACK_CATALOG,
    "Tracks released by the end of the week (new releases are cold: audio, no plays).", read_track_catalog,
    "The landed catalog read and checked on the executors: 100 M rows at the target (~10 GB), never collected.")
user_directory = _snapshot(
    "user_directory", schemas.USER_DIRECTORY,
    "Users signed up by the end of the week, with country and birth year.", read_user_directory,
    "The landed users read and checked on the executors: 500 M rows at the target, never collected.")
user_playlists = _snapshot(
    "user_playlists", schemas.USER_PLAYLISTS,
    "Snapshot of user playlists at the end of the week (the item2vec corpus).", read_user_playlists,
    "The week's playlist snapshot on the executors: ~1 G playlists x ~30 tracks at the target; item2vec samples it.")


class RawPlayEventsConfig(Config):
    # A week without a single landed line is an upstream outage until someone says otherwise.
    allow_empty_week: bool = parameter_default(build_bronze, "allow_empty_week")


@multi_asset(
    outs={
        "raw_play_events": AssetOut(group_name=GROUP, metadata=_meta("bronze", schemas.RAW_PLAY_EVENTS),
                                    description="Bronze: the week's landed play events, typed and validated."),
        "quarantined_events": AssetOut(group_name=GROUP, metadata=_meta("bronze", schemas.QUARANTINED_EVENTS),
                                       description="Every rejected landed line with its reason; nothing is dropped silently."),
    },
    ins={
        "user_directory": AssetIn(),
        "track_catalog": AssetIn(),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[
        schema_check_spec("raw_play_events", schemas.RAW_PLAY_EVENTS),
        schema_check_spec("quarantined_events", schemas.QUARANTINED_EVENTS, blocking=False),
    ],
)
def raw_play_events(
    context: AssetExecutionContext,
    config: RawPlayEventsConfig,
    pyspark: LazyPySparkResource,
    lake: LakeResource,
    user_directory: DataFrame,
    track_catalog: DataFrame,
):
    """Every landed line parsed, typed and checked on the executors: ~9 G lines a week at the target (18 per
    user-week); the known-id joins are plain shuffle joins (500 M users, 100 M tracks: too big to broadcast).
    The driver gets the per-reason counts."""
    started = time.perf_counter()
    week = context.partition_key
    landing = _landing(lake)
    files = landing.spark_uris(pyspark.spark_session, landed_event_files(landing, week))
    bronze = build_bronze(pyspark.spark_session, files, week, user_directory.select("user_id"),
                          track_catalog.select("track_id"), allow_empty_week=config.allow_empty_week)
    if bronze.landing.extra_fields:
        context.log.warning(f"week {week}: lines carry fields beyond the contract (events kept, fields "
                            f"ignored): {bronze.landing.extra_fields}")
    quarantined = bronze.quarantined.persist()
    by_reason = {r: 0 for r in QUARANTINE_REASONS}
    by_reason.update({row["reason"]: row["count"] for row in quarantined.groupBy("reason").count().collect()})
    yield from emit_checked("raw_play_events", bronze.events, schemas.RAW_PLAY_EVENTS,
                     {"landed_files": len(files), "landed_lines": bronze.landing.lines,
                      "unexpected_fields": MetadataValue.json(bronze.landing.extra_fields),
                      "elapsed_s": round(time.perf_counter() - started, 2)})
    yield from emit_checked("quarantined_events", quarantined, schemas.QUARANTINED_EVENTS,
                     {"quarantined_by_reason": MetadataValue.json(by_reason)}, blocking=False)
    quarantined.unpersist()
    bronze.release()


class InteractionsConfig(config_fields(InteractionRules, exclude=["session_gap_s"])):
    # The run config has taken the session gap in minutes from the start; the rules take seconds.
    session_gap_minutes: int = InteractionRules.session_gap_s // 60

    def rules(self) -> InteractionRules:
        return self.to_domain(InteractionRules, session_gap_s=self.session_gap_minutes * 60)


@multi_asset(
    outs={
        "interactions": AssetOut(group_name=GROUP, metadata=_meta("silver", schemas.INTERACTIONS),
                                 description="Silver: deduplicated, bot-free, sessionized interactions with labels and graded weights."),
        "flagged_activity": AssetOut(group_name=GROUP, metadata=_meta("silver", schemas.FLAGGED_ACTIVITY),
                                     description="Bot accounts and hijacked sessions removed from interactions, with the evidence."),
    },
    ins={"raw_play_events": AssetIn(), "track_catalog": AssetIn()},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[
        schema_check_spec("interactions", schemas.INTERACTIONS),
        schema_check_spec("flagged_activity", schemas.FLAGGED_ACTIVITY, blocking=False),
    ],
)
def interactions(
    context: AssetExecutionContext, config: InteractionsConfig, raw_play_events: DataFrame, track_catalog: DataFrame
):
    """Dedup, bot and hijack removal, sessions and labels on the executors: ~9 G events in, ~20 G rows a
    week's window-ready table at the target (the 12-week window reads 12 of them); the driver gets counts."""
    started = time.perf_counter()
    silver = build_interactions(raw_play_events, track_catalog, context.partition_key, config.rules())
    flagged = silver.flagged.persist()
    kinds = {row["kind"]: (row["count"], row["events"]) for row in
             flagged.groupBy("kind").agg({"*": "count", "events": "sum"})
             .withColumnsRenamed({"count(1)": "count", "sum(events)": "events"}).collect()}
    bronze_rows = raw_play_events.count()
    yield from emit_checked("interactions", silver.interactions, schemas.INTERACTIONS, {
        "bronze_events": bronze_rows,
        "bot_users_removed": kinds.get("bot", (0, 0))[0],
        "bot_events_removed": kinds.get("bot", (0, 0))[1],
        "hijacked_sessions_removed": kinds.get("hijacked_session", (0, 0))[0],
        "hijacked_events_removed": kinds.get("hijacked_session", (0, 0))[1],
        "elapsed_s": round(time.perf_counter() - started, 2),
    })
    yield from emit_checked("flagged_activity", flagged, schemas.FLAGGED_ACTIVITY, {}, blocking=False)
    flagged.unpersist()
    silver.release()


@multi_asset(
    outs={
        "track_stats": AssetOut(group_name=GROUP, metadata=_meta("gold", schemas.TRACK_STATS),
                                description="Gold: per-track popularity, skip/save rates and age over the 12-week window."),
    },
    ins={"interactions": AssetIn(partition_mapping=history_window), "track_catalog": AssetIn()},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("track_stats", schemas.TRACK_STATS)],
)
def track_stats(context: AssetExecutionContext, interactions: DataFrame, track_catalog: DataFrame):
    """Per-track aggregates of the 12-week window (~240 G interactions at the target) on the executors:
    100 M rows out, the popularity percentile from a histogram, not a global sort."""
    # Cached: the percentile's histogram and the output both read the 12-week aggregate.
    counts = track_counts(interactions, context.partition_key).persist(StorageLevel.MEMORY_AND_DISK)
    stats = build_track_stats(interactions, track_catalog, context.partition_key, counts=counts)
    yield from emit_checked("track_stats", stats, schemas.TRACK_STATS, {
        "history_weeks": len(context.asset_partition_keys_for_input("interactions")),
    })
    counts.unpersist()


class UserProfilesConfig(config_fields(ProfileRules)):
    def rules(self) -> ProfileRules:
        return self.to_domain(ProfileRules)


@multi_asset(
    outs={
        "user_profiles": AssetOut(group_name=GROUP, metadata=_meta("gold", schemas.USER_PROFILES),
                                  description="Gold: last-50 positive tracks, genre mix, top artists and popularity habits per user."),
    },
    ins={
        "interactions": AssetIn(partition_mapping=history_window),
        "user_directory": AssetIn(),
        "track_stats": AssetIn(),
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[schema_check_spec("user_profiles", schemas.USER_PROFILES)],
)
def user_profiles(
    context: AssetExecutionContext,
    config: UserProfilesConfig,
    interactions: DataFrame,
    user_directory: DataFrame,
    track_stats: DataFrame,
):
    """One row per user (500 M at the target) from the 12-week window, built and checked on the executors."""
    profiles = build_user_profiles(interactions, user_directory, track_stats, context.partition_key, config.rules())
    yield from emit_checked("user_profiles", profiles, schemas.USER_PROFILES, {
        "history_weeks": len(context.asset_partition_keys_for_input("interactions")),
    })


ingest_assets = [track_catalog, user_directory, user_playlists, raw_play_events, interactions, track_stats, user_profiles]
