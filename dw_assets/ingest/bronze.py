"""Bronze on Spark: read a landed week, validate every line, split valid from quarantined."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dw_assets.calendar import week_bounds
from dw_assets.ingest.events import (
    PARSED_SPARK_SCHEMA,
    REQUIRED_FIELDS,
    EventRules,
    parse_event_batches,
)

QUARANTINE_COLUMNS = ["reason", "detail", "event_id", "raw"]


@dataclass
class BronzeTables:
    events: DataFrame
    quarantined: DataFrame


class LandingError(RuntimeError):
    """The landing zone does not hold what the pipeline was asked to read."""


def landed_event_files(landing: str, week: str) -> list[str]:
    folder = Path(landing) / "events" / f"week={week}"
    if not folder.is_dir():
        raise LandingError(f"no landed events for week {week}: {folder} does not exist")
    return sorted(str(p) for p in folder.glob("*.jsonl"))


def build_bronze(
    spark: SparkSession,
    event_files: list[str],
    week: str,
    user_ids: DataFrame,
    track_ids: DataFrame,
) -> BronzeTables:
    """Typed valid events and quarantined lines for one week.

    ``user_ids`` / ``track_ids``: one-column frames of the ids known as of the week.
    """
    start, end = week_bounds(week)
    rules = EventRules(week_start=start, week_end=end)
    if event_files:
        lines = spark.read.text(event_files, wholetext=False).where(F.length("value") > 0)
    else:
        lines = spark.createDataFrame([], "value string")
    parsed = lines.mapInPandas(lambda batches: parse_event_batches(batches, rules), PARSED_SPARK_SCHEMA)

    users = user_ids.select(F.col("user_id").alias("_known_user")).withColumn("_user_ok", F.lit(True))
    tracks = track_ids.select(F.col("track_id").alias("_known_track")).withColumn("_track_ok", F.lit(True))
    checked = (
        parsed.join(F.broadcast(users), parsed.user_id == users._known_user, "left")
        .join(F.broadcast(tracks), parsed.track_id == tracks._known_track, "left")
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
    )
    events = ranked.where(F.col("reject_reason").isNull()).select(*REQUIRED_FIELDS)
    quarantined = ranked.where(F.col("reject_reason").isNotNull()).select(
        F.col("reject_reason").alias("reason"),
        F.col("reject_detail").alias("detail"),
        "event_id",
        "raw",
    )
    return BronzeTables(events=events, quarantined=quarantined)
