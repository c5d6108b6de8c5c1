"""Publishing the week's playlists to the serving store; the week goes live only when whole and verified.

Retention (weeks the store keeps, the live one always included), first set wins: the asset's run
config ``keep_weeks`` (launchpad: ``ops: {published_playlists: {config: {keep_weeks: 8}}}``), the
resource's ``keep_weeks``, the store URL's ``?keep_weeks=N``, else 4.

Credentials come from the environment only (``DW_REDIS_PASSWORD``, ``DW_SCYLLA_USERNAME`` /
``DW_SCYLLA_PASSWORD``, boto3's ``AWS_*``): a store URL carrying one is refused before any run
starts, with a message that does not repeat it, and metadata shows ``redact_url(url)``.
"""

import time
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    ConfigurableResource,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)
from pydantic import Field
from pyspark.sql import DataFrame

from dw_assets.config_fields import config_fields
from dw_assets.partitions import ONE_WEEK_PER_RUN, weekly_partitions
from dw_assets.serving.publish import PublishSettings, publish_week
from dw_assets.serving.stores import (
    PLAYLIST_COLUMNS,
    PlaylistStore,
    open_store,
    redact_url,
    url_has_credentials,
)


def refuse_credentials(url: Any) -> None:
    """ValueError (not repeating the URL) if a store URL carries a user or password."""
    if isinstance(url, str) and url_has_credentials(url):  # an EnvVar is checked with its value at run time
        raise ValueError("the serving store URL carries credentials: remove them from the URL and set "
                         "DW_REDIS_PASSWORD (Redis) or DW_SCYLLA_USERNAME / DW_SCYLLA_PASSWORD (Scylla) instead")


class PlaylistStoreResource(ConfigurableResource):
    """The serving store: ``sqlite:///path.db``, ``redis://host:port/db`` or ``scylla://h1,h2/keyspace``.

    Credentials never go in the URL (refused); the stores read them from the environment.
    """

    url: str = Field(description="Store URL without credentials; options as query parameters "
                                 "(e.g. ?keep_weeks=8). Secrets come from DW_REDIS_PASSWORD / DW_SCYLLA_*.")
    keep_weeks: int | None = Field(default=None, description="Weeks the store keeps (overrides the URL's "
                                                             "keep_weeks; default 4).")

    def __init__(self, **data: Any):
        # Before pydantic sees the value: its validation errors would echo the URL, password included.
        refuse_credentials(data.get("url"))
        super().__init__(**data)

    def open(self) -> PlaylistStore:
        if not self.url:
            raise ValueError("no serving store configured: set DW_STORE_URL (sqlite:///..., redis://..., scylla://...)")
        return open_store(self.url)


class PublishConfig(config_fields(PublishSettings)):
    keep_weeks: int | None = Field(default=None, description="Weeks the store keeps after this publish (the "
                                                             "newest ones plus the live week). None: the "
                                                             "resource's, else the store URL's, else 4.")

    def settings(self) -> PublishSettings:
        return self.to_domain(PublishSettings)


# multi_asset, as every other asset: @asset's backfill_policy is beta in Dagster 1.13 and would print its
# warning at the top of every `dw` command's output.
@multi_asset(
    outs={"published_playlists": AssetOut(
        group_name="serving",
        description="ranked_playlists written whole to the serving store, verified, then made live "
                    "(current_week flip).")},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    ins={"ranked_playlists": AssetIn()},
    check_specs=[AssetCheckSpec("served_week_matches_lake", asset="published_playlists",
                                description="The store holds every user of the week, read back after publishing.")],
)
def published_playlists(
    context: AssetExecutionContext, config: PublishConfig, playlist_store: PlaylistStoreResource,
    ranked_playlists: DataFrame,
) -> MaterializeResult:
    """The week stays in Spark: Redis and Cassandra/Scylla are written from the executors, SQLite
    by the driver from a stream of encoded users; the driver holds counts and a 64-user sample
    (``serving/publish.py`` has the steps and their sizes at 500 M users)."""
    week = context.partition_key
    started = time.perf_counter()
    last_logged, written = 0.0, 0

    def progress(users: int) -> None:
        nonlocal last_logged, written
        written += users
        if time.perf_counter() - last_logged > 10:
            last_logged = time.perf_counter()
            context.log.info(f"published {written:,} users of week {week}")

    with playlist_store.open() as store:
        keep_weeks = config.keep_weeks if config.keep_weeks is not None else playlist_store.keep_weeks
        stats = publish_week(store, week, ranked_playlists.select(*PLAYLIST_COLUMNS),
                             keep_weeks=keep_weeks, progress=progress, settings=config.settings())
        stored_users, expected_users = store.count_users(week), stats["expected_users"]
    check = AssetCheckResult(check_name="served_week_matches_lake", passed=stored_users == expected_users,
                             metadata={"stored_users": stored_users, "lake_users": expected_users})
    return MaterializeResult(check_results=[check], metadata={
        "store": redact_url(playlist_store.url),
        "users": stats["users"],
        "dagster/row_count": stats["rows"],
        "live": stats["live"],
        "live_week": stats["live_week"] or "",
        "users_per_s": round(float(stats["users_per_s"]), 1),
        "writers": stats["writers"],
        "keep_weeks": stats["keep_weeks"],
        "kept_weeks": MetadataValue.json(stats["kept_weeks"]),
        "dropped_weeks": MetadataValue.json(stats["dropped_weeks"]),
        "elapsed_s": round(time.perf_counter() - started, 1),
    })


serving_assets = [published_playlists]
