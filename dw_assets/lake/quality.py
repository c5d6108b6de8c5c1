"""Pandera validation turned into Dagster asset checks (one per table).

A Spark output is checked on every row, on the executors (``lake/spark_checks.py`` runs the same
Pandera rules as Spark aggregates); a pandas output (evaluation tables, small by design) runs the
Pandera schema itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pandera.pandas as pa
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, Output, TableColumn, TableSchema
from pandera.errors import SchemaErrors
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dw_assets.lake.spark_checks import SparkCheckReport, check_spark, register_spark_check

SCHEMA_CHECK = "pandera_schema"
FAILURE_SAMPLE_ROWS = 20  # rows of the failure table shown on the check (collected with limit)
SAMPLE_PER_RULE = 5


def schema_check_spec(asset: str, schema: pa.DataFrameSchema, blocking: bool = True) -> AssetCheckSpec:
    return AssetCheckSpec(
        name=SCHEMA_CHECK,
        asset=asset,
        blocking=blocking,
        description=f"Every row of the partition satisfies the Pandera schema {schema.name!r}.",
    )


def table_schema(schema: pa.DataFrameSchema) -> TableSchema:
    """The Pandera schema as Dagster column metadata, shown on the asset page."""
    return TableSchema(
        columns=[
            TableColumn(name=name, type=str(column.dtype), description="nullable" if column.nullable else None)
            for name, column in schema.columns.items()
        ]
    )


def as_checked(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamps as UTC nanoseconds whichever reader produced them (Spark: naive; pyarrow: µs)."""
    frame = frame.copy()
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_datetime64_any_dtype(column):
            if getattr(column.dt, "tz", None) is None:
                column = column.dt.tz_localize("UTC")
            frame[name] = column.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    return frame


def validate_frame(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> tuple[bool, pd.DataFrame]:
    """(passed, failure cases); failure cases has pandera's columns (column, check, failure_case, index)."""
    frame = as_checked(frame)
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as errors:
        return False, errors.failure_cases
    return True, pd.DataFrame(columns=["schema_context", "column", "check", "failure_case", "index"])


def _result(asset: str, passed: bool, rows: int, failures: int, sample: pd.DataFrame,
            blocking: bool) -> AssetCheckResult:
    metadata: dict[str, Any] = {"rows_checked": rows, "failures": failures}
    if not passed:
        sample = sample[["column", "check", "failure_case"]].head(FAILURE_SAMPLE_ROWS).astype(str)
        metadata["failure_sample"] = sample.to_markdown(index=False) if hasattr(sample, "to_markdown") else str(sample)
    return AssetCheckResult(
        asset_key=asset,
        check_name=SCHEMA_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN,
        metadata=metadata,
    )


def schema_check_result(asset: str, frame: pd.DataFrame, schema: pa.DataFrameSchema,
                        blocking: bool = True) -> AssetCheckResult:
    """The Pandera schema on a pandas output (every row, in this process)."""
    passed, failures = validate_frame(frame, schema)
    return _result(asset, passed, len(frame), len(failures), failures, blocking)


def failure_table(report: SparkCheckReport) -> pd.DataFrame:
    """The report as pandera's failure-case table (one line per example, at most a few per rule)."""
    rows = [{"column": f.column, "check": f.check, "failures": f.failures, "failure_case": case}
            for f in report.failures for case in (f.sample or [""])]
    return pd.DataFrame(rows, columns=["column", "check", "failures", "failure_case"])


def spark_schema_check_result(asset: str, frame: DataFrame, schema: pa.DataFrameSchema,
                              blocking: bool = True) -> AssetCheckResult:
    """The Pandera schema's rules on every row of a Spark output, run as Spark aggregates
    (``spark_checks.check_spark``): one row of counts and a few example rows reach the driver."""
    report = check_spark(frame, schema, sample_rows=SAMPLE_PER_RULE)
    return _result(asset, report.passed, report.rows, report.failure_count, failure_table(report), blocking)


def emit_checked(
    name: str, frame: Any, schema: pa.DataFrameSchema, metadata: dict, blocking: bool = True
) -> Iterator[Output | AssetCheckResult]:
    """Yield an output (a Spark one is written by the lake IO manager) and its Pandera check on every row."""
    if isinstance(frame, pd.DataFrame):
        yield Output(frame, output_name=name, metadata={"dagster/row_count": len(frame), **metadata})
        yield schema_check_result(name, frame, schema, blocking=blocking)
        return
    frame = frame.persist()
    rows = frame.count()
    yield Output(frame, output_name=name, metadata={"dagster/row_count": rows, **metadata})
    yield spark_schema_check_result(name, frame, schema, blocking=blocking)
    frame.unpersist()


# Spark equivalents of the custom checks of ranking/schemas.py and retrieval/schemas.py (keyed by
# their error text; the ingest ones are registered in ingest/schemas.py).
def _repeated_tracks(frame: DataFrame) -> DataFrame:
    # pandas marks every copy after the first (duplicated, keep="first")
    pairs = frame.groupBy("user_id", "track_id").count().where(F.col("count") > 1)
    return pairs.select((F.col("count") - 1).alias("_failures"),
                        F.to_json(F.struct("user_id", "track_id")).alias("failure_case"))


def _artists_over_cap(frame: DataFrame) -> DataFrame:
    from dw_assets.ranking.rerank import RerankConfig  # lazy: the lake does not import the ranking domain

    pairs = frame.groupBy("user_id", "artist_id").count().where(F.col("count") > RerankConfig.max_per_artist)
    return pairs.select(F.col("count").alias("_failures"),
                        F.to_json(F.struct("user_id", "artist_id", "count")).alias("failure_case"))


for _lists in ("ranked_playlists", "ranker_order"):
    register_spark_check(_lists, "a track repeats within a playlist", _repeated_tracks)
    register_spark_check(_lists, "more than max_per_artist tracks by one artist", _artists_over_cap)
register_spark_check("candidates", "a candidate without any source rank", lambda f: ~F.greatest(
    *[F.coalesce(F.col(f"{s}_rank") > 0, F.lit(False)) for s in ("two_tower", "item2vec", "audio")]))
