"""Schema checks of Spark outputs run on every row in Spark, with the Pandera schema's semantics.

Each bad case is one bad row among tens of thousands: a sample would miss it; the check must not.
Each case is also run through the pandas Pandera schema to show both paths agree.
"""

from __future__ import annotations

import pandera.pandas as pa
import pytest
from dagster import AssetCheckResult, Output
from pandera.pandas import Check, Column
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dw_assets.ingest import schemas
from dw_assets.ingest.events import MAX_MS_PLAYED
from dw_assets.ingest.profiles import GENRE_OUTCOME_TYPE
from dw_assets.lake.quality import as_checked, emit_checked, spark_schema_check_result, validate_frame
from dw_assets.lake.spark_checks import UntranslatedCheck, check_spark, plan
from dw_assets.ranking.schemas import RANKED_PLAYLISTS
from dw_assets.retrieval.schemas import CANDIDATES

ROWS = 10_000
ODD = 7_389  # the one bad row


def _both(frame: DataFrame, schema: pa.DataFrameSchema):
    """(Spark report on every row, pandas Pandera verdict on the same rows)."""
    report = check_spark(frame, schema)
    passed, _ = validate_frame(as_checked(frame.toPandas()), schema)
    assert report.passed == passed, (schema.name, report.failures)
    assert report.rows == frame.count()
    return report


def assert_only_failure(report, check: str, failures: int):
    assert not report.passed
    assert [(f.check, f.failures) for f in report.failures] == [(check, failures)], report.failures


@pytest.fixture(scope="module")
def playlists(spark):
    ids = spark.range(ROWS)
    return ids.select(
        (F.col("id") / 30).cast("long").alias("playlist_id"), (F.col("id") % 1000).alias("user_id"),
        (F.col("id") * 7 % 5000).alias("track_id"), (F.col("id") % 30).cast("int").alias("pos"),
    ).persist()


@pytest.fixture(scope="module")
def events(spark):
    ids = spark.range(ROWS)
    return ids.select(
        F.concat(F.lit("e"), F.col("id").cast("string")).alias("event_id"), (F.col("id") % 997).alias("user_id"),
        (F.col("id") % 499).alias("track_id"),
        F.timestamp_seconds(F.lit(1_767_600_000) + F.col("id")).alias("ts"),
        (F.col("id") * 13 % MAX_MS_PLAYED).alias("ms_played"), F.lit("trackdone").alias("reason_end"),
        (F.col("id") % 5 == 0).alias("saved"), F.lit("album").alias("context"),
        F.when(F.col("id") % 3 == 0, F.lit(None)).otherwise(F.col("id") % 40).cast("int").alias("position"),
        F.lit("ios").alias("platform"),
    ).persist()


def test_valid_tables_pass_on_every_row(playlists, events):
    assert _both(playlists, schemas.USER_PLAYLISTS).passed
    assert _both(events, schemas.RAW_PLAY_EVENTS).passed


def test_one_duplicate_pair_among_many_rows_fails(playlists, events):
    copy = playlists.where(F.col("playlist_id") * 30 + F.col("pos") == ODD)
    assert_only_failure(_both(playlists.unionByName(copy), schemas.USER_PLAYLISTS), "multiple_fields_uniqueness", 2)
    again = events.where(F.col("event_id") == f"e{ODD}").withColumn("user_id", F.lit(1).cast("long"))
    assert_only_failure(_both(events.unionByName(again), schemas.RAW_PLAY_EVENTS), "field_uniqueness", 2)


def test_a_single_out_of_range_value_fails(events):
    bad = events.withColumn("ms_played", F.when(F.col("event_id") == f"e{ODD}", MAX_MS_PLAYED + 1)
                            .otherwise(F.col("ms_played")))
    report = _both(bad, schemas.RAW_PLAY_EVENTS)
    assert_only_failure(report, f"in_range(0, {MAX_MS_PLAYED})", 1)
    assert report.failures[0].sample == [str(MAX_MS_PLAYED + 1)]
    negative = events.withColumn("position", F.when(F.col("event_id") == f"e{ODD}", -1).otherwise(F.col("position")))
    assert_only_failure(_both(negative, schemas.RAW_PLAY_EVENTS), "greater_than_or_equal_to(0)", 1)
    reason = events.withColumn("reason_end", F.when(F.col("event_id") == f"e{ODD}", "exploded")
                               .otherwise(F.col("reason_end")))
    assert _both(reason, schemas.RAW_PLAY_EVENTS).failures[0].check.startswith("isin(")


def test_nulls_dtypes_and_columns_follow_the_schema(events):
    null_user = events.withColumn("user_id", F.when(F.col("event_id") == f"e{ODD}", None).otherwise(F.col("user_id")))
    report = check_spark(null_user, schemas.RAW_PLAY_EVENTS)
    assert_only_failure(report, "not_nullable", 1)
    # nullable position: nulls pass, and so does an int column where pandas coerces to Int32
    assert check_spark(events.withColumn("position", F.col("position").cast("long")), schemas.RAW_PLAY_EVENTS).passed
    assert_only_failure(_both(events.withColumn("user_id", F.col("user_id").cast("int")), schemas.RAW_PLAY_EVENTS),
          "dtype('int64')", 1)
    # a column of another type fails its dtype; its range check is not run on values it cannot compare
    assert_only_failure(check_spark(events.withColumn("ms_played", F.col("ms_played").cast("string")), schemas.RAW_PLAY_EVENTS),
          "dtype('int64')", 1)
    assert_only_failure(_both(events.withColumn("extra", F.lit(1)), schemas.RAW_PLAY_EVENTS), "column_in_schema", 1)
    assert_only_failure(_both(events.drop("platform"), schemas.RAW_PLAY_EVENTS), "column_in_dataframe", 1)


def test_nan_counts_as_missing_like_pandas(spark):
    schema = pa.DataFrameSchema({"x": Column(float, Check.in_range(0.0, 1.0), nullable=True),
                                 "y": Column(float, Check.in_range(0.0, 1.0))}, name="nan_case")
    frame = spark.range(1000).select(
        F.when(F.col("id") == 7, F.lit(float("nan"))).otherwise(F.lit(0.5)).alias("x"), F.lit(0.5).alias("y"))
    assert _both(frame, schema).passed
    assert_only_failure(_both(frame.select(F.col("x").alias("y"), F.col("y").alias("x")), schema), "not_nullable", 1)


def test_custom_checks_of_every_contract_run_in_spark(spark):
    base = spark.range(ROWS).select(
        F.lit("2026-01-05").alias("week"), (F.col("id") / 30).cast("long").alias("user_id"),
        (F.col("id") % 30 + 1).cast("short").alias("position"), F.col("id").alias("track_id"),
        F.lit(1.0).cast("float").alias("score"), F.lit("two_tower").alias("source"), F.lit(False).alias("is_exploration"),
        F.col("id").alias("artist_id"), F.lit("rock").alias("genre"), F.lit(None).cast("float").alias("ranker_score"),
    )
    assert _both(base, RANKED_PLAYLISTS).passed
    odd = F.col("user_id") * 30 + F.col("position") - 1 == ODD
    repeat = base.withColumn("track_id", F.when(odd, F.col("track_id") - 1).otherwise(F.col("track_id")))
    assert_only_failure(_both(repeat, RANKED_PLAYLISTS), "a track repeats within a playlist", 1)
    artist = base.withColumn("artist_id", F.when((F.col("user_id") == ODD // 30) & (F.col("position") <= 3), 1)
                             .otherwise(F.col("artist_id")))
    assert_only_failure(_both(artist, RANKED_PLAYLISTS), "more than max_per_artist tracks by one artist", 3)

    candidates = spark.range(ROWS).select(
        (F.col("id") / 500).cast("long").alias("user_id"), F.col("id").alias("track_id"), F.lit("audio").alias("sources"),
        F.lit(0).alias("two_tower_rank"), F.lit(0).alias("item2vec_rank"),
        F.when(F.col("id") == ODD, 0).otherwise(1).alias("audio_rank"),
        *[F.lit(None).cast("float").alias(f"{s}_score") for s in ("two_tower", "item2vec", "audio")],
        F.lit("v1").alias("model_version"),
    )
    assert_only_failure(_both(candidates, CANDIDATES), "a candidate without any source rank", 1)
    wrong_source = candidates.withColumn("audio_rank", F.lit(1)).withColumn(
        "sources", F.when(F.col("track_id") == ODD, "audio|bm25").otherwise(F.col("sources")))
    assert _both(wrong_source, CANDIDATES).failures[0].check.startswith("str_matches(")


def test_ingest_custom_checks_run_in_spark(spark):
    stats = spark.range(ROWS).select(
        F.col("id").alias("track_id"), F.col("id").alias("artist_id"), F.lit("rock").alias("genre"),
        F.to_date(F.lit("2025-01-01")).alias("release_date"), F.lit(3).alias("age_days"),
        F.lit(False).alias("is_new_release"), (F.col("id") % 4).alias("plays"), (F.col("id") % 3).alias("listeners"),
        F.lit(0).cast("long").alias("positives"), F.lit(0).cast("long").alias("saves"),
        F.lit(0).cast("long").alias("plays_last_week"), F.lit(0.0).alias("early_skip_rate"),
        F.lit(0.0).alias("skip_rate"), F.lit(0.0).alias("save_rate"), F.lit(0.5).alias("popularity_percentile"),
        (F.col("id") % 4 == 0).alias("is_cold"),
    )
    assert _both(stats, schemas.TRACK_STATS).passed
    flipped = stats.withColumn("is_cold", F.when(F.col("track_id") == ODD, True).otherwise(F.col("is_cold")))
    assert_only_failure(_both(flipped, schemas.TRACK_STATS), "is_cold iff no plays", 1)

    profiles = spark.range(2000).select(
        F.col("id").alias("user_id"), F.lit("SE").alias("country"), F.to_date(F.lit("2025-01-01")).alias("signup_date"),
        F.lit(None).cast("double").alias("birth_year"), F.lit(False).alias("is_new_user"),
        F.lit(1).cast("long").alias("events"), F.lit(1).cast("long").alias("positives"),
        F.lit(1).cast("long").alias("weeks_active"), F.lit(None).cast("timestamp").alias("last_active"),
        F.lit("light").alias("history_level"),
        F.array_repeat(F.col("id"), F.when(F.col("id") == 1234, 51).otherwise(50).cast("int")).alias("recent_tracks"),
        F.array().cast("array<float>").alias("recent_age_days"),
        F.array().cast("array<struct<genre:string,share:double>>").alias("genre_share"),
        F.array().cast("array<bigint>").alias("top_artists"), F.lit(None).cast("double").alias("mean_popularity_percentile"),
        F.array().cast("array<bigint>").alias("saved_tracks"), F.array().cast("array<bigint>").alias("early_skipped_tracks"),
        *[F.lit(0.1).alias(name) for name in ("user_save_rate", "user_skip_rate", "user_early_skip_rate")],
        F.array().cast(GENRE_OUTCOME_TYPE).alias("genre_outcomes"),
    )
    assert_only_failure(_both(profiles, schemas.USER_PROFILES), "at most 50 recent tracks", 1)
    assert _both(profiles.where(F.col("user_id") != 1234), schemas.USER_PROFILES).passed


def test_every_contract_of_the_lake_is_translated(spark):
    contracts = [s for s in vars(schemas).values() if isinstance(s, pa.DataFrameSchema)]
    contracts += [RANKED_PLAYLISTS, CANDIDATES]
    for contract in contracts:  # an empty frame with the contract's columns: planning reads no row
        frame = spark.createDataFrame([], ", ".join(f"`{c}` string" for c in contract.columns))
        _, rules = plan(frame, contract)
        assert rules, contract.name  # every contract has row rules to run


def test_a_rule_without_translation_fails_loudly(spark):
    frame = spark.range(3).select(F.col("id").alias("x"))
    with pytest.raises(UntranslatedCheck, match="no Spark equivalent"):
        check_spark(frame, pa.DataFrameSchema({"x": Column("int64", Check(lambda s: s < 5))}, name="custom_case"))
    with pytest.raises(UntranslatedCheck, match="no Spark equivalent"):
        check_spark(frame, pa.DataFrameSchema({"x": Column("int64", Check.unique_values_eq([0, 1, 2]))}, name="u"))


def test_emit_checked_checks_every_row_without_pulling_the_table(spark, playlists, monkeypatch):
    copy = playlists.where(F.col("playlist_id") * 30 + F.col("pos") == ODD)
    frame = playlists.unionByName(copy)

    def refuse(self):
        raise AssertionError("a Spark output was pulled to the driver for its schema check")

    monkeypatch.setattr(DataFrame, "toPandas", refuse)
    output, result = list(emit_checked("user_playlists", frame, schemas.USER_PLAYLISTS, {"k": 1}))
    assert isinstance(output, Output) and output.metadata["dagster/row_count"].value == ROWS + 1
    assert isinstance(result, AssetCheckResult) and not result.passed
    assert result.check_name == "pandera_schema"
    assert result.metadata["rows_checked"].value == ROWS + 1 and result.metadata["failures"].value == 2
    sample = result.metadata["failure_sample"].value
    assert "multiple_fields_uniqueness" in sample and '"playlist_id":246' in sample.replace(" ", "")
    assert spark_schema_check_result("user_playlists", playlists, schemas.USER_PLAYLISTS).passed
