"""A Pandera (pandas) schema checked on every row of a Spark DataFrame, on the executors.

The lake's contracts are ``pandera.pandas`` schemas (``*/schemas.py``). ``pandera.pyspark`` is no
way to run them on Spark here: it has schemas of its own (every contract twice), and with the
pinned pyspark it does not even import (pyspark's Connect client wants ``google.rpc``). So the
rules are translated into Spark:

- column presence, ``strict`` and dtypes from the Spark schema (no row is read);
- nullability and the row-level checks (ge, gt, le, lt, in_range, eq, ne, isin, notin,
  str_length, str_matches, str_contains, str_startswith, str_endswith): one conditional count per
  rule, all in **one** aggregation pass over the table;
- ``unique`` columns and the schema's ``unique`` key sets: a group-by count per key set (one
  shuffle each);
- custom checks (a Python lambda on a pandas frame): the Spark equivalent registered with
  ``register_spark_check`` under the schema's name, the column (or None) and the check's
  ``error`` text. A check kind without a translation raises ``UntranslatedCheck``: a new rule
  cannot be skipped silently.

Size at the target (10^10 events a week, 500 M profiles): one pass plus one shuffle per unique
key set; the driver receives one row of counts, and for each failing rule at most
``sample_rows`` example rows (``limit``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandera.pandas as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

# What a custom rule gives: a row predicate (true where the row fails; evaluated in the shared pass)
# or a frame of failing groups with a ``_failures`` row count and a ``failure_case`` string each.
SparkRule = Callable[[DataFrame], Column | DataFrame]

_CUSTOM: dict[tuple[str, str | None, str], SparkRule] = {}

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_NUMERIC = (*_INTEGRAL, T.FloatType, T.DoubleType, T.DecimalType)
_EXACT: dict[str, tuple[type, ...]] = {
    "int64": (T.LongType,), "int32": (T.IntegerType,), "int16": (T.ShortType,), "int8": (T.ByteType,),
    "float64": (T.DoubleType,), "float32": (T.FloatType,), "bool": (T.BooleanType,),
    "str": (T.StringType, T.VarcharType, T.CharType),
}
# pandas holds these as Python objects (toPandas: str, datetime.date, ndarray, dict, ...)
_OBJECT = (T.StringType, T.VarcharType, T.CharType, T.DateType, T.ArrayType, T.StructType, T.MapType,
           T.BinaryType, T.DecimalType)


_BUILTIN = frozenset({
    "greater_than_or_equal_to", "greater_than", "less_than_or_equal_to", "less_than", "in_range", "equal_to",
    "not_equal_to", "isin", "notin", "str_length", "str_matches", "str_contains", "str_startswith", "str_endswith",
})


class UntranslatedCheck(NotImplementedError):
    """A Pandera rule this module cannot run in Spark (add its translation, never skip it)."""


def register_spark_check(schema: str, error: str, rule: SparkRule, column: str | None = None) -> None:
    """The Spark equivalent of the custom check ``error`` of ``schema`` (of its ``column``, or of the frame)."""
    _CUSTOM[(schema, column, error)] = rule


@dataclass(frozen=True)
class Failure:
    column: str | None
    check: str
    failures: int
    sample: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Rule:
    column: str | None
    check: str
    fails: Column | None = None  # a row predicate, counted in the shared pass
    failing: Callable[[DataFrame], DataFrame] | None = None  # failing groups (_failures, failure_case)
    case: Column | None = None  # what the sample shows of a failing row


@dataclass(frozen=True)
class SparkCheckReport:
    rows: int
    failures: list[Failure]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failure_count(self) -> int:
        return sum(f.failures for f in self.failures)


def _dtype_ok(expected: str, actual: T.DataType, coerce: bool) -> bool:
    if expected in ("Int64", "Int32", "Int16", "Int8"):
        return isinstance(actual, _INTEGRAL) or (coerce and isinstance(actual, _NUMERIC))
    if coerce and (expected.startswith("int") or expected.startswith("float")):
        return isinstance(actual, _NUMERIC)
    if expected in _EXACT:
        return isinstance(actual, _EXACT[expected])
    if expected.startswith("datetime64"):
        return isinstance(actual, (T.TimestampType, T.TimestampNTZType))
    if expected == "object":
        return isinstance(actual, _OBJECT)
    raise UntranslatedCheck(f"no Spark translation of the Pandera dtype {expected!r}")


def _value(name: str, dtype: T.DataType) -> Column:
    """The column with NaN as null: pandas counts NaN as missing (nullability) and checks skip it."""
    column = F.col(name)
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        return F.when(F.isnan(column), F.lit(None)).otherwise(column)
    return column


def _builtin_fails(check: pa.Check, v: Column) -> Column:
    """True where the non-null value ``v`` fails the built-in ``check``."""
    s = check.statistics
    name = check.name
    if name == "greater_than_or_equal_to":
        return v < F.lit(s["min_value"])
    if name == "greater_than":
        return v <= F.lit(s["min_value"])
    if name == "less_than_or_equal_to":
        return v > F.lit(s["max_value"])
    if name == "less_than":
        return v >= F.lit(s["max_value"])
    if name == "in_range":
        low = v < F.lit(s["min_value"]) if s.get("include_min", True) else v <= F.lit(s["min_value"])
        high = v > F.lit(s["max_value"]) if s.get("include_max", True) else v >= F.lit(s["max_value"])
        return low | high
    if name == "equal_to":
        return v != F.lit(s["value"])
    if name == "not_equal_to":
        return v == F.lit(s["value"])
    if name == "isin":
        return ~v.isin(list(s["allowed_values"]))
    if name == "notin":
        return v.isin(list(s["forbidden_values"]))
    if name == "str_length":
        length = F.length(v)
        if s.get("exact_value") is not None:
            return length != F.lit(s["exact_value"])
        fails = F.lit(False)
        if s.get("min_value") is not None:
            fails = fails | (length < F.lit(s["min_value"]))
        if s.get("max_value") is not None:
            fails = fails | (length > F.lit(s["max_value"]))
        return fails
    if name in ("str_matches", "str_contains"):
        pattern = getattr(s["pattern"], "pattern", s["pattern"])
        # pandas' str.match anchors at the start only; str.contains searches (as rlike does)
        return ~v.rlike(f"^(?:{pattern})" if name == "str_matches" else pattern)
    if name == "str_startswith":
        return ~v.startswith(s["string"])
    if name == "str_endswith":
        return ~v.endswith(s["string"])
    raise UntranslatedCheck(f"no Spark translation of the Pandera check {check.error or name!r}")


def _custom(schema: pa.DataFrameSchema, column: str | None, check: pa.Check) -> SparkRule | None:
    """The registered Spark equivalent of a check, None for a built-in one; raises for a custom
    check nobody translated."""
    rule = _CUSTOM.get((schema.name, column, check.error))
    if rule is None and check.name not in _BUILTIN:
        where = f"column {column!r}" if column else "the frame"
        raise UntranslatedCheck(
            f"schema {schema.name!r}: the check {check.error or check.name!r} on {where} has no Spark "
            "equivalent; register one with dw_assets.lake.spark_checks.register_spark_check")
    if check.groupby is not None or check.groups is not None or not check.ignore_na:
        raise UntranslatedCheck(
            f"schema {schema.name!r}: check {check.error or check.name!r} uses groupby/groups/ignore_na=False")
    return rule


def _check_rule(schema: pa.DataFrameSchema, column: str | None, check: pa.Check, frame: DataFrame,
                value: Column | None) -> _Rule:
    label = check.error or check.name
    custom = _custom(schema, column, check)
    if custom is None:
        if value is None:
            raise UntranslatedCheck(f"schema {schema.name!r}: built-in check {label!r} on the whole frame")
        return _Rule(column, label, fails=value.isNotNull() & _builtin_fails(check, value))
    rule = custom(frame)
    if isinstance(rule, Column):
        case = F.col(column).cast("string") if column else F.to_json(F.struct(*frame.columns))
        gate = value.isNotNull() if value is not None else F.lit(True)
        return _Rule(column, label, fails=gate & F.coalesce(rule, F.lit(False)), case=case)
    return _Rule(column, label, failing=lambda _frame, groups=rule: groups)


def _translatable(schema: pa.DataFrameSchema, column: str, checks: list[pa.Check]) -> None:
    """Raise ``UntranslatedCheck`` for a check of ``column`` that could not run in Spark (no row read)."""
    for check in checks:
        if _custom(schema, column, check) is None:
            _builtin_fails(check, F.col(column))


def _duplicates(keys: list[str]) -> Callable[[DataFrame], DataFrame]:
    """Every row of a key that occurs more than once fails (pandera reports all copies)."""
    def failing(frame: DataFrame) -> DataFrame:
        counts = frame.groupBy(*keys).agg(F.count(F.lit(1)).alias("_failures")).where(F.col("_failures") > 1)
        case = F.col(keys[0]).cast("string") if len(keys) == 1 else F.to_json(F.struct(*keys))
        return counts.select("_failures", case.alias("failure_case"))
    return failing


def plan(frame: DataFrame, schema: pa.DataFrameSchema) -> tuple[list[Failure], list[_Rule]]:
    """(failures found from the Spark schema alone, the rules to run on the rows). Raises
    ``UntranslatedCheck`` for any rule without a translation, before any row is read."""
    structural: list[Failure] = []
    rules: list[_Rule] = []
    types = {f.name: f.dataType for f in frame.schema.fields}
    for name in types:
        if schema.strict and name not in schema.columns:
            structural.append(Failure(None, "column_in_schema", 1, [name]))
    if schema.strict not in (True, False):
        raise UntranslatedCheck(f"schema {schema.name!r}: strict={schema.strict!r}")
    if schema.coerce or schema.ordered:
        raise UntranslatedCheck(f"schema {schema.name!r}: schema-level coerce/ordered")
    for name, column in schema.columns.items():
        if column.regex:
            raise UntranslatedCheck(f"schema {schema.name!r}: regex column {name!r}")
        if name not in types:
            if column.required:
                structural.append(Failure(None, "column_in_dataframe", 1, [name]))
            _translatable(schema, name, column.checks)  # not run without the column (as in pandera)
            continue
        expected = str(column.dtype)
        value = _value(name, types[name])
        if not column.nullable:
            rules.append(_Rule(name, "not_nullable", fails=value.isNull(), case=F.lit("null")))
        if column.dtype is not None and not _dtype_ok(expected, types[name], column.coerce):
            structural.append(Failure(name, f"dtype('{expected}')", 1, [types[name].simpleString()]))
            _translatable(schema, name, column.checks)  # already failed; values of another type may not compare
        else:
            rules.extend(_check_rule(schema, name, check, frame, value) for check in column.checks)
        if column.unique:
            rules.append(_Rule(name, "field_uniqueness", failing=_duplicates([name])))
    if schema.unique:
        keys = [schema.unique] if isinstance(schema.unique, str) else list(schema.unique)
        if all(k in types for k in keys):
            rules.append(_Rule(None, "multiple_fields_uniqueness", failing=_duplicates(keys)))
    for check in schema.checks:
        rules.append(_check_rule(schema, None, check, frame, None))
    return structural, rules


def check_spark(frame: DataFrame, schema: pa.DataFrameSchema, sample_rows: int = 5) -> SparkCheckReport:
    """Every rule of ``schema`` on every row of ``frame``: the row count and the failing rules,
    each with how many rows fail it and up to ``sample_rows`` examples."""
    structural, rules = plan(frame, schema)
    row_rules = [r for r in rules if r.fails is not None]
    counts = frame.agg(
        F.count(F.lit(1)).alias("_rows"),
        *[F.sum(F.when(r.fails, 1).otherwise(0)).alias(f"_r{i}") for i, r in enumerate(row_rules)],
    ).first()
    failures = list(structural)
    for i, rule in enumerate(row_rules):
        failed = int(counts[f"_r{i}"] or 0)
        if failed:
            case = rule.case if rule.case is not None else F.col(rule.column).cast("string")
            examples = frame.where(rule.fails).select(case.alias("c")).limit(sample_rows).collect()
            failures.append(Failure(rule.column, rule.check, failed, [str(r["c"]) for r in examples]))
    for rule in rules:
        if rule.failing is None:
            continue
        groups = rule.failing(frame).persist()
        failed = int(groups.agg(F.sum("_failures")).first()[0] or 0)
        if failed:
            examples = groups.orderBy("failure_case").limit(sample_rows).collect()
            failures.append(Failure(rule.column, rule.check, failed, [str(r["failure_case"]) for r in examples]))
        groups.unpersist()
    return SparkCheckReport(rows=int(counts["_rows"]), failures=failures)
