"""Weekly snapshots of the metadata extracts: catalog, user directory, playlists.

The landing zone holds every track and user ever known; a week's snapshot is
what existed by the end of that week. New releases of week W are delivered in W
with a release date of the Monday after W, so they are in W's catalog (cold:
audio, no plays yet).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dw_assets.calendar import week_bounds
from dw_assets.ingest.bronze import LandingError
from dw_assets.lake.landing_fs import LandingFS, as_landing


def _require(spark: SparkSession, landing: LandingFS, relative: str, what: str) -> str:
    """What Spark reads for a landed file or folder (``s3a://`` on S3), or a ``LandingError`` naming it."""
    if not landing.exists(relative):
        raise LandingError(f"missing {what}: {landing.location(relative)} does not exist")
    return landing.spark_uris(spark, [landing.location(relative)])[0]


def track_catalog(spark: SparkSession, landing: LandingFS | str, week: str) -> DataFrame:
    """Tracks released by the Monday after ``week``, with release week and age."""
    _, end = week_bounds(week)
    tracks = spark.read.parquet(_require(spark, as_landing(landing), "catalog/tracks.parquet", "track catalog"))
    end_date = F.lit(end.date())
    return (
        tracks.where(F.col("release_date") <= end_date)
        .withColumn("age_days", F.datediff(end_date, F.col("release_date")).cast("int"))
        .withColumn("is_new_release", F.col("release_date") == end_date)
        .select("track_id", "artist_id", "album_id", "genre", "release_date", "duration_ms", "age_days", "is_new_release")
    )


def user_directory(spark: SparkSession, landing: LandingFS | str, week: str) -> DataFrame:
    """Users who had signed up before the end of ``week``."""
    start, end = week_bounds(week)
    users = spark.read.parquet(_require(spark, as_landing(landing), "users/users.parquet", "user directory"))
    return (
        users.where(F.col("signup_date") < F.lit(end.date()))
        .withColumn("is_new_user", F.col("signup_date") >= F.lit(start.date()))
        .select("user_id", "country", "signup_date", "birth_year", "is_new_user")
    )


def user_playlists(spark: SparkSession, landing: LandingFS | str, week: str) -> DataFrame:
    """The week's snapshot of user playlists (``playlist_id, user_id, track_id, pos``)."""
    folder = _require(spark, as_landing(landing), f"playlists/week={week}", f"playlist snapshot for week {week}")
    return spark.read.parquet(folder).select(
        F.col("playlist_id").cast("long"),
        F.col("user_id").cast("long"),
        F.col("track_id").cast("long"),
        F.col("pos").cast("int"),
    )
