"""Publishing the week's playlists to the serving store; the week goes live only when whole and verified."""

import time

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    ConfigurableResource,
    MaterializeResult,
    MetadataValue,
    asset,
)

from dw_assets.partitions import ONE_WEEK_PER_RUN, weekly_partitions
from dw_assets.serving.publish import publish_week
from dw_assets.serving.stores import PLAYLIST_COLUMNS, PlaylistStore, open_store


class PlaylistStoreResource(ConfigurableResource):
    """The serving store: ``sqlite:///path.db``, ``redis://host:port/db`` or ``scylla://h1,h2/keyspace``.

    Credentials never go in the URL; the stores read them from the environment.
    """

    url: str
    keep_weeks: int = 4

    def open(self) -> PlaylistStore:
        if not self.url:
            raise ValueError("no serving store configured: set DW_STORE_URL (sqlite:///..., redis://..., scylla://...)")
        return open_store(self.url)


def redacted(url: str) -> str:
    """The URL without its query string (which may name hosts' options, never credentials)."""
    return url.split("?", 1)[0]


@asset(
    group_name="serving",
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    ins={"ranked_playlists": AssetIn()},
    check_specs=[AssetCheckSpec("served_week_matches_lake", asset="published_playlists",
                                description="The store holds every user of the week, read back after publishing.")],
    description="ranked_playlists written whole to the serving store, verified, then made live (current_week flip).",
)
def published_playlists(
    context: AssetExecutionContext, playlist_store: PlaylistStoreResource, ranked_playlists: pd.DataFrame
) -> MaterializeResult:
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
        stats = publish_week(store, week, ranked_playlists[list(PLAYLIST_COLUMNS)],
                             keep_weeks=playlist_store.keep_weeks, progress=progress)
        stored_users, expected_users = store.count_users(week), int(ranked_playlists["user_id"].nunique())
    check = AssetCheckResult(check_name="served_week_matches_lake", passed=stored_users == expected_users,
                             metadata={"stored_users": stored_users, "lake_users": expected_users})
    return MaterializeResult(check_results=[check], metadata={
        "store": redacted(playlist_store.url),
        "users": stats["users"],
        "dagster/row_count": stats["rows"],
        "live": stats["live"],
        "live_week": stats["live_week"] or "",
        "users_per_s": round(float(stats["users_per_s"]), 1),
        "kept_weeks": MetadataValue.json(stats["kept_weeks"]),
        "dropped_weeks": MetadataValue.json(stats["dropped_weeks"]),
        "elapsed_s": round(time.perf_counter() - started, 1),
    })


serving_assets = [published_playlists]
