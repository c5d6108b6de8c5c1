"""Bronze on Spark: read a landed week, validate every line, split valid from quarantined.

Before anything is returned the week's lines are profiled once (line-level reasons per
field, unknown keys): a week with no lines raises ``EmptyWeekError`` and a week where one
field fails systematically raises ``SchemaDriftError`` naming it (see ``events.schema_drift``),
so an upstream change stops the run instead of quarantining the whole week.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dw_assets.calendar import week_bounds
from dw_assets.ingest.events import (
    PARSED_SPARK_SCHEMA,
    REQUIRED_FIELDS,
    EmptyWeekError,
    EventRules,
    LandingError,
    LandingProfile,
    SchemaDriftError,
    parse_event_batches,
    schema_drift,
)
from dw_assets.lake.landing_fs import LandingFS, as_landing

__all__ = [
    "BronzeTables", "EmptyWeekError", "LandingError", "SchemaDriftError", "build_bronze",
    "landed_event_files", "profile_landing",
]  # fmt: skip

QUARANTINE_COLUMNS = ["reason", "detail", "event_id", "raw"]
TOP_EXTRA_FIELDS = 20  # unknown keys listed in the profile (the most frequent)

log = logging.getLogger(__name__)


@dataclass
class BronzeTables:
    """The week's valid events and quarantined lines (lazy), and the profile of its landed lines.

    The parsed lines behind both frames are cached once; ``release()`` frees them when done.
    """

    events: DataFrame
    quarantined: DataFrame
    landing: LandingProfile
    _parsed: DataFrame | None = field(default=None, repr=False)
    _ranked: DataFrame | None = field(default=None, repr=False)

    def release(self) -> None:
        for cached in (self._ranked, self._parsed):
            if cached is not None:
                cached.unpersist()


def landed_event_files(landing: LandingFS | str, week: str) -> list[str]:
    """Locations of the week's ``*.jsonl`` files (local paths or ``s3://`` URIs; Spark reads them
    through ``LandingFS.spark_uris``)."""
    landing = as_landing(landing)
    folder = f"events/week={week}"
    if not landing.exists(folder):
        raise LandingError(f"no landed events for week {week}: {landing.location(folder)} does not exist")
    return landing.list_files(folder, suffix=".jsonl")


def profile_landing(parsed: DataFrame) -> LandingProfile:
    """Line-level reasons, the fields they are about and unknown keys of parsed lines
    (``PARSED_SPARK_SCHEMA``); three small aggregates, so ``parsed`` should be cached."""
    reasons = parsed.groupBy("reject_reason").count().collect()
    fields = (
        parsed.where(F.col("reject_field").isNotNull())
        .select("reject_reason", F.explode(F.split("reject_field", ",")).alias("field"), "reject_detail")
        .groupBy("reject_reason", "field")
        .agg(F.count("*").alias("lines"), F.min("reject_detail").alias("example"))
        .collect()
    )
    extra = (
        parsed.where(F.col("extra_fields").isNotNull())
        .select(F.explode(F.split("extra_fields", ",")).alias("key"))
        .groupBy("key").count()
        .orderBy(F.col("count").desc(), "key")
        .limit(TOP_EXTRA_FIELDS)
        .collect()
    )
    return LandingProfile(
        lines=sum(row["count"] for row in reasons),
        by_reason={row["reject_reason"]: row["count"] for row in reasons if row["reject_reason"] is not None},
        field_problems={(row["reject_reason"], row["field"]): (row["lines"], row["example"]) for row in fields},
        extra_fields={row["key"]: row["count"] for row in extra},
    )


def build_bronze(
    spark: SparkSession,
    event_files: list[str],
    week: str,
    user_ids: DataFrame,
    track_ids: DataFrame,
    *,
    rules: EventRules | None = None,
    allow_empty_week: bool = False,
) -> BronzeTables:
    """Typed valid events and quarantined lines for one week.

    ``user_ids`` / ``track_ids``: one-column frames of the ids known as of the week. ``rules``
    defaults to the week's bounds with the default limits. Raises ``EmptyWeekError`` when no
    line landed (unless ``allow_empty_week``: then both tables are empty) and
    ``SchemaDriftError`` when one field fails systematically (the message names it).

    Size at the target: ~9 G landed lines a week (18.4 per user-week x 500 M users) joined with
    500 M user ids and 100 M track ids, all on the executors; the driver gets the landing profile
    (a few rows per reject reason and field, the top unknown keys).
    """
    if rules is None:
        start, end = week_bounds(week)
        rules = EventRules(week_start=start, week_end=end)
    if not event_files and not allow_empty_week:
        raise EmptyWeekError(f"week {week} landed no event files; pass allow_empty_week=True if that is expected")
    if event_files:
        lines = spark.read.text(event_files, wholetext=False).where(F.length("value") > 0)
    else:
        lines = spark.createDataFrame([], "value string")
    parsed = lines.mapInPandas(lambda batches: parse_event_batches(batches, rules), PARSED_SPARK_SCHEMA)
    # Parsed once: the profile, the valid events and the quarantine all read this cache.
    parsed = parsed.persist(StorageLevel.MEMORY_AND_DISK)
    landing = profile_landing(parsed)
    if landing.lines == 0 and not allow_empty_week:
        parsed.unpersist()
        raise EmptyWeekError(
            f"week {week} landed {len(event_files)} event file(s) holding no event lines; "
            "pass allow_empty_week=True if that is expected"
        )
    drift = schema_drift(landing, rules)
    if drift:
        parsed.unpersist()
        raise SchemaDriftError(f"week {week}: {drift} (nothing was ingested for the week)")
    if landing.extra_fields:
        log.warning("week %s: lines carry fields beyond the contract (kept, fields ignored): %s",
                    week, landing.extra_fields)

    # Plain joins: the known ids are 500 M users / 100 M tracks at the target (16-20 GB, past Spark's
    # 8 GB broadcast limit); adaptive execution broadcasts them only when they are small. The output
    # order is the copy-rank window's (by event_id), whichever join Spark picks.
    users = user_ids.select(F.col("user_id").alias("_known_user")).withColumn("_user_ok", F.lit(True))
    tracks = track_ids.select(F.col("track_id").alias("_known_track")).withColumn("_track_ok", F.lit(True))
    checked = (
        parsed.join(users, parsed.user_id == users._known_user, "left")
        .join(tracks, parsed.track_id == tracks._known_track, "left")
        .withColumn(
            "reject_reason",
            F.when(F.col("reject_reason").isNotNull(), F.col("reject_reason"))
            .when(F.col("_user_ok").isNull(), F.lit("unknown_user"))
            .when(F.col("_track_ok").isNull(), F.lit("unknown_track")),
        )
        .withColumn(
            "reject_detail",
            F.when(F.col("reject_detail").isNotNull(), F.col("reject_detail"))
            .when(F.col("reject_reason") == "unknown_user", F.concat(F.lit("user_id="), F.col("user_id")))
            .when(F.col("reject_reason") == "unknown_track", F.concat(F.lit("track_id="), F.col("track_id"))),
        )
    )
    # Among otherwise-valid rows the first copy of an event_id wins; ordering by
    # the raw line makes "first" the same on every re-run.
    copy_rank = F.row_number().over(
        Window.partitionBy("event_id").orderBy(F.col("reject_reason").isNotNull(), "raw")
    )
    ranked = checked.withColumn(
        "reject_reason",
        F.when(F.col("reject_reason").isNull() & (copy_rank > 1), F.lit("duplicate_event_id")).otherwise(
            F.col("reject_reason")
        ),
    ).withColumn(
        "reject_detail",
        F.when(F.col("reject_reason") == "duplicate_event_id", F.concat(F.lit("event_id="), F.col("event_id")))
        .otherwise(F.col("reject_detail")),
    ).persist(StorageLevel.MEMORY_AND_DISK)  # both outputs split it: the joins and the window run once
    events = ranked.where(F.col("reject_reason").isNull()).select(*REQUIRED_FIELDS)
    quarantined = ranked.where(F.col("reject_reason").isNotNull()).select(
        F.col("reject_reason").alias("reason"),
        F.col("reject_detail").alias("detail"),
        "event_id",
        "raw",
    )
    return BronzeTables(events=events, quarantined=quarantined, landing=landing, _parsed=parsed, _ranked=ranked)
