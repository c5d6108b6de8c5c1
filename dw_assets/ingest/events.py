"""Bronze: landed JSON-lines play events → typed events + quarantine with a reason.

Every landed line ends up in exactly one of the two outputs. Reasons, checked in
this order (the first that applies wins):

    bad_json            not a JSON object
    missing_field       a required key is absent (``position`` may be null, not absent)
    wrong_type          a value of the wrong JSON type (a string where an int belongs, ...)
    invalid_value       an empty ``event_id``, an id outside [0, 2^63), a ``position`` outside
                        [0, 2^31), an unknown ``reason_end``, an unparseable or zone-less timestamp
    negative_ms_played  ms_played < 0
    absurd_ms_played    ms_played > ``max_ms_played`` (4 h)
    ts_outside_week     ts not in [week start, next week start)
    unknown_user        user_id not in the user directory as of the week
    unknown_track       track_id not in the track catalog as of the week
    duplicate_event_id  another copy of an event_id: of the copies that pass every other check, the one
                        whose raw line sorts first is kept (so every re-run keeps the same one)

Keys beyond the contract are not a defect (an upstream producer adding a field is a
compatible change): the event is kept and the unknown keys are counted per week.

A week whose lines fail *the same way* too often is not a week of bad lines but an
upstream change (a renamed or retyped field, a new format, files landed in the wrong
week folder): ``schema_drift`` names the field and the ingest refuses the week with
``SchemaDriftError`` instead of quarantining it whole. A week with no lines at all is an
``EmptyWeekError`` (an upstream outage until proven otherwise).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

REQUIRED_FIELDS = (
    "event_id", "user_id", "track_id", "ts", "ms_played",
    "reason_end", "saved", "context", "position", "platform",
)
REASON_END_VALUES = frozenset({"trackdone", "fwdbtn", "backbtn", "endplay", "logout"})
QUARANTINE_REASONS = (
    "bad_json", "missing_field", "wrong_type", "invalid_value", "negative_ms_played",
    "absurd_ms_played", "ts_outside_week", "unknown_user", "unknown_track", "duplicate_event_id",
)
MAX_MS_PLAYED = 4 * 3600 * 1000
MAX_ID = 2**63 - 1  # ids are int64 in the lake
MAX_POSITION = 2**31 - 1  # position is int32 in the lake
# A fifth of a week's lines failing on the same field is far beyond any rate of random bad
# lines (the simulator's highest allowed bad-line rate puts about 6 % on any one kind): it is upstream.
DRIFT_SHARE = 0.2
DRIFT_MIN_LINES = 20
_MAX_EXTRA_KEYS = 10  # unknown keys recorded per line (a line with thousands of keys stays cheap)

# (field, accepted python types after orjson.loads, nullable)
_FIELD_TYPES: tuple[tuple[str, tuple[type, ...], bool], ...] = (
    ("event_id", (str,), False),
    ("user_id", (int,), False),
    ("track_id", (int,), False),
    ("ts", (str,), False),
    ("ms_played", (int,), False),
    ("reason_end", (str,), False),
    ("saved", (bool,), False),
    ("context", (str,), False),
    ("position", (int,), True),
    ("platform", (str,), False),
)

# reject_field: the contract fields behind a line-level reject ("," joined); extra_fields: the
# line's keys beyond the contract ("," joined, sorted). Both null when there are none.
PARSED_COLUMNS = [
    "event_id", "user_id", "track_id", "ts", "ms_played", "reason_end", "saved",
    "context", "position", "platform", "reject_reason", "reject_detail", "reject_field",
    "extra_fields", "raw",
]
PARSED_SPARK_SCHEMA = (
    "event_id string, user_id long, track_id long, ts timestamp, ms_played long, reason_end string, "
    "saved boolean, context string, position int, platform string, reject_reason string, "
    "reject_detail string, reject_field string, extra_fields string, raw string"
)


class LandingError(RuntimeError):
    """The landing zone does not hold what the pipeline was asked to read."""


class EmptyWeekError(LandingError):
    """A week landed no event lines at all: refused unless the caller says an empty week is expected."""


class SchemaDriftError(LandingError):
    """Most of a week's lines fail on the same field: the upstream schema changed (message names the field)."""


@dataclass(frozen=True)
class EventRules:
    week_start: dt.datetime
    week_end: dt.datetime
    max_ms_played: int = MAX_MS_PLAYED
    # A field failing in >= drift_share of the week's lines (and >= drift_min_lines) stops the ingest.
    drift_share: float = DRIFT_SHARE
    drift_min_lines: int = DRIFT_MIN_LINES


@dataclass(frozen=True)
class LineVerdict:
    """One landed line, classified. ``event`` is set (typed, ts a datetime) only when ``reason`` is None."""

    event: dict | None
    reason: str | None = None
    detail: str | None = None
    fields: tuple[str, ...] = ()  # the contract fields the reject is about
    extra_fields: tuple[str, ...] = ()  # keys beyond the contract, sorted (at most 10)


@dataclass(frozen=True)
class LandingProfile:
    """How a week's landed lines fared in the line-level checks (before ids and duplicates).

    lines: non-empty landed lines; by_reason: line-level reason → lines (valid lines not included);
    field_problems: (reason, field) → (lines, one example detail), a line missing two fields counts
    for both; extra_fields: unknown key → lines carrying it (the most frequent few).
    """

    lines: int
    by_reason: dict[str, int]
    field_problems: dict[tuple[str, str], tuple[int, str]]
    extra_fields: dict[str, int]


def _type_error(event: dict) -> str | None:
    for name, types, nullable in _FIELD_TYPES:
        value = event[name]
        if value is None and nullable:
            continue
        # bool is an int subclass in Python; JSON true is not a user id.
        if isinstance(value, bool) and bool not in types:
            return f"{name}: expected {types[0].__name__}, got bool"
        if not isinstance(value, types):
            return f"{name}: expected {types[0].__name__}, got {type(value).__name__}"
    return None


def _out_of_range(event: dict) -> tuple[str, str] | None:
    """(field, detail) of the first value the lake's integer columns cannot hold, or that is meaningless."""
    if not event["event_id"].strip():
        return "event_id", "event_id: empty"
    for name in ("user_id", "track_id"):
        if not 0 <= event[name] <= MAX_ID:
            return name, f"{name}={event[name]} outside [0, 2^63)"
    position = event["position"]
    if position is not None and not 0 <= position <= MAX_POSITION:
        return "position", f"position={position} outside [0, 2^31)"
    return None


def inspect_line(line: str, rules: EventRules) -> LineVerdict:
    """One landed line → its verdict, with the fields a reject is about and the unknown keys.

    Only the checks that need nothing but the line itself are done here; id and
    duplicate checks need the directory and the whole week (see ``build_bronze``).
    """
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return LineVerdict(None, "bad_json", str(exc)[:200])
    if not isinstance(event, dict):
        return LineVerdict(None, "bad_json", f"expected an object, got {type(event).__name__}")
    unknown = sorted(str(k)[:60].replace(",", ";") for k in event.keys() - set(REQUIRED_FIELDS))
    extra = tuple(unknown[:_MAX_EXTRA_KEYS])
    missing = tuple(name for name in REQUIRED_FIELDS if name not in event)
    if missing:
        return LineVerdict(None, "missing_field", "missing: " + ",".join(missing), missing, extra)
    type_error = _type_error(event)
    if type_error:
        return LineVerdict(None, "wrong_type", type_error, (type_error.split(":", 1)[0],), extra)
    out_of_range = _out_of_range(event)
    if out_of_range:
        return LineVerdict(None, "invalid_value", out_of_range[1], (out_of_range[0],), extra)
    if event["reason_end"] not in REASON_END_VALUES:
        return LineVerdict(None, "invalid_value", f"reason_end: {event['reason_end'][:40]!r}", ("reason_end",), extra)
    try:
        ts = dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    except ValueError:
        return LineVerdict(None, "invalid_value", f"ts: {event['ts'][:40]!r} is not ISO-8601", ("ts",), extra)
    if ts.tzinfo is None:
        return LineVerdict(None, "invalid_value", f"ts: {event['ts'][:40]!r} has no time zone", ("ts",), extra)
    ms = event["ms_played"]
    if ms < 0:
        return LineVerdict(None, "negative_ms_played", f"ms_played={ms}", ("ms_played",), extra)
    if ms > rules.max_ms_played:
        return LineVerdict(None, "absurd_ms_played", f"ms_played={ms}", ("ms_played",), extra)
    if not rules.week_start <= ts < rules.week_end:
        return LineVerdict(None, "ts_outside_week", f"ts={event['ts'][:40]}", ("ts",), extra)
    event["ts"] = ts
    return LineVerdict(event, extra_fields=extra)


def classify_line(line: str, rules: EventRules) -> tuple[dict | None, str | None, str | None]:
    """One landed line → (event, reason, detail). Reason None means valid so far (see ``inspect_line``)."""
    verdict = inspect_line(line, rules)
    return verdict.event, verdict.reason, verdict.detail


_CONTRACT_KEYS = frozenset(REQUIRED_FIELDS)


def _valid_row(line: str, rules: EventRules) -> tuple | None:
    """The typed ``REQUIRED_FIELDS`` of a line that passes every line-level check with no unknown key, else
    None (``inspect_line`` then says why). The same checks as ``inspect_line``, without building a verdict:
    nearly every landed line is valid, and this path parses them ~3x faster."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(event) is not dict or event.keys() != _CONTRACT_KEYS:
        return None
    event_id, user, track, ts, ms, reason_end, saved, context, position, platform = (
        event[name] for name in REQUIRED_FIELDS)
    # type() is, not isinstance: JSON true is a bool, not a user id (bool subclasses int).
    if not (type(event_id) is str and type(user) is int and type(track) is int and type(ts) is str
            and type(ms) is int and type(reason_end) is str and type(saved) is bool and type(context) is str
            and (position is None or type(position) is int) and type(platform) is str):
        return None
    if not (event_id.strip() and 0 <= user <= MAX_ID and 0 <= track <= MAX_ID and reason_end in REASON_END_VALUES
            and (position is None or 0 <= position <= MAX_POSITION) and 0 <= ms <= rules.max_ms_played):
        return None
    try:
        when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None or not rules.week_start <= when < rules.week_end:
        return None
    return (event_id, user, track, when, ms, reason_end, saved, context, position, platform)


_NO_REJECT = (None, None, None, None)  # reject_reason, reject_detail, reject_field, extra_fields


def parse_event_lines(lines: pd.Series, rules: EventRules) -> pd.DataFrame:
    """Landed lines → one row per line with typed fields and ``reject_reason``.

    ``lines``: str[n]. Returns ``PARSED_COLUMNS``; rows with a reject reason keep
    the raw line and nulls elsewhere. The Spark job runs this over each batch.
    """
    rows = []
    for line in lines:
        valid = _valid_row(line, rules)
        if valid is not None:
            rows.append((*valid, *_NO_REJECT, line))
            continue
        verdict = inspect_line(line, rules)
        extra = ",".join(verdict.extra_fields) or None
        if verdict.event is None:
            fields = ",".join(verdict.fields) or None
            rows.append((None,) * 10 + (verdict.reason, verdict.detail, fields, extra, line))
        else:
            rows.append(tuple(verdict.event[name] for name in REQUIRED_FIELDS) + (None, None, None, extra, line))
    columns = dict(zip(PARSED_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {}
    frame = pd.DataFrame({name: columns.get(name, ()) for name in PARSED_COLUMNS}, dtype=object)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    for name, dtype in (("user_id", np.int64), ("track_id", np.int64), ("ms_played", np.int64), ("position", np.int32)):
        frame[name] = _nullable_ints(columns.get(name, ()), dtype)
    frame["saved"] = frame["saved"].astype("boolean")
    return frame


def _nullable_ints(values, dtype) -> pd.arrays.IntegerArray:
    """Python ints and Nones as a nullable integer column, exactly: pandas' own conversion of such an object
    column goes through float64 and so rounds ids above 2^53 (or refuses them) whenever a batch holds a
    reject (a null)."""
    missing = np.fromiter((v is None for v in values), bool, len(values))
    exact = np.fromiter((0 if v is None else v for v in values), dtype, len(values))
    return pd.arrays.IntegerArray(exact, missing)


def parse_event_batches(batches: Iterator[pd.DataFrame], rules: EventRules) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` adapter: batches with a ``value`` column of raw lines."""
    for batch in batches:
        yield parse_event_lines(batch["value"], rules)


def _normalized(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _renamed_as(field: str, lines: int, extra_fields: dict[str, int]) -> list[str]:
    """Unknown keys that look like ``field`` renamed: the same name up to case and separators,
    or a key carried by about as many lines as miss the field."""
    same_name = [k for k in extra_fields if _normalized(k) == _normalized(field)]
    as_common = [k for k, n in extra_fields.items() if n >= 0.8 * lines and k not in same_name]
    return same_name + sorted(as_common, key=lambda k: (-extra_fields[k], k))[:3]


def schema_drift(profile: LandingProfile, rules: EventRules) -> str | None:
    """A message naming each field that fails in too many of the week's lines, or None.

    "Too many": at least ``rules.drift_share`` of ``profile.lines`` and at least
    ``rules.drift_min_lines`` lines. Lines that are not JSON objects at all count as the
    field ``<format>``. Biggest problem first.
    """
    total = profile.lines
    if total == 0:
        return None

    def systematic(count: int) -> bool:
        return count >= rules.drift_min_lines and count >= rules.drift_share * total

    problems: list[tuple[int, str]] = []
    not_json = profile.by_reason.get("bad_json", 0)
    if systematic(not_json):
        problems.append((not_json, f"{not_json} of {total} lines ({not_json / total:.0%}) are not JSON objects: "
                                   "did the landing format change?"))
    for (reason, field), (count, example) in profile.field_problems.items():
        if not systematic(count):
            continue
        share = f"{count} of {total} lines ({count / total:.0%})"
        if reason == "missing_field":
            text = f"required field {field!r} is missing from {share}"
            renamed = _renamed_as(field, count, profile.extra_fields)
            if renamed:
                text += "; they carry " + ", ".join(f"{k!r} ({profile.extra_fields[k]} lines)" for k in renamed)
                text += f" instead: was {field!r} renamed upstream?"
        elif reason == "wrong_type":
            text = f"field {field!r} has the wrong JSON type in {share}, e.g. {example!r}: was it retyped upstream?"
        elif reason == "ts_outside_week":
            text = (f"field 'ts' falls outside the week [{rules.week_start:%Y-%m-%d}, {rules.week_end:%Y-%m-%d}) "
                    f"in {share}, e.g. {example!r}: landed in the wrong week folder, or ts changed meaning?")
        else:
            text = f"field {field!r} fails {reason} in {share}, e.g. {example!r}"
        problems.append((count, text))
    if not problems:
        return None
    problems.sort(key=lambda p: -p[0])
    return "upstream schema change? " + "; ".join(text for _, text in problems)
