"""Pandera validation turned into Dagster asset checks (one per table)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pandera.pandas as pa
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, Output, TableColumn, TableSchema
from pandera.errors import SchemaErrors

SCHEMA_CHECK = "pandera_schema"
MAX_CHECK_ROWS = 5_000_000  # larger Spark outputs are checked on a seeded sample


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


def schema_check_result(
    asset: str, frame: pd.DataFrame, schema: pa.DataFrameSchema, blocking: bool = True, rows_total: int | None = None
) -> AssetCheckResult:
    passed, failures = validate_frame(frame, schema)
    metadata: dict[str, Any] = {
        "rows_checked": len(frame),
        "failures": len(failures),
    }
    if rows_total is not None and rows_total != len(frame):
        metadata["rows_total"] = rows_total
    if not passed:
        sample = failures[["column", "check", "failure_case"]].head(20).astype(str)
        metadata["failure_sample"] = sample.to_markdown(index=False) if hasattr(sample, "to_markdown") else str(sample)
    return AssetCheckResult(
        asset_key=asset,
        check_name=SCHEMA_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN,
        metadata=metadata,
    )


def emit_checked(
    name: str, frame: Any, schema: pa.DataFrameSchema, metadata: dict, blocking: bool = True
) -> Iterator[Output | AssetCheckResult]:
    """Yield a Spark output (written by the lake IO manager) and its Pandera check on (a sample of) its rows."""
    frame = frame.persist()
    rows = frame.count()
    yield Output(frame, output_name=name, metadata={"dagster/row_count": rows, **metadata})
    sample = frame if rows <= MAX_CHECK_ROWS else frame.sample(fraction=MAX_CHECK_ROWS / rows, seed=0)
    yield schema_check_result(name, sample.toPandas(), schema, blocking=blocking, rows_total=rows)
    frame.unpersist()
