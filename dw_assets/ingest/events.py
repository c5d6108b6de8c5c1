"""Bronze: landed JSON-lines play events → typed events + quarantine with a reason.

Every landed line ends up in exactly one of the two outputs. Reasons, checked in
this order (the first that applies wins):

    bad_json            not a JSON object
    missing_field       a required key is absent (``position`` may be null, not absent)
    wrong_type          a value of the wrong JSON type (a string where an int belongs, ...)
    invalid_value       an unparseable timestamp or an unknown ``reason_end``
    negative_ms_played  ms_played < 0
    absurd_ms_played    ms_played > ``max_ms_played`` (4 h)
    ts_outside_week     ts not in [week start, next week start)
    unknown_user        user_id not in the user directory as of the week
    unknown_track       track_id not in the track catalog as of the week
    duplicate_event_id  a second copy of an event_id (the first copy is kept)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

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

PARSED_COLUMNS = [
    "event_id", "user_id", "track_id", "ts", "ms_played", "reason_end", "saved",
    "context", "position", "platform", "reject_reason", "reject_detail", "raw",
]
PARSED_SPARK_SCHEMA = (
    "event_id string, user_id long, track_id long, ts timestamp, ms_played long, reason_end string, "
    "saved boolean, context string, position int, platform string, reject_reason string, "
    "reject_detail string, raw string"
)


@dataclass(frozen=True)
class EventRules:
    week_start: dt.datetime
    week_end: dt.datetime
    max_ms_played: int = MAX_MS_PLAYED


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


def classify_line(line: str, rules: EventRules) -> tuple[dict | None, str | None, str | None]:
    """One landed line → (event, reason, detail). Reason None means valid so far.

    Only the checks that need nothing but the line itself are done here; id and
    duplicate checks need the directory and the whole week (see ``build_bronze``).
    """
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return None, "bad_json", str(exc)[:200]
    if not isinstance(event, dict):
        return None, "bad_json", f"expected an object, got {type(event).__name__}"
    missing = [name for name in REQUIRED_FIELDS if name not in event]
    if missing:
        return None, "missing_field", "missing: " + ",".join(missing)
    type_error = _type_error(event)
    if type_error:
        return None, "wrong_type", type_error
    if event["reason_end"] not in REASON_END_VALUES:
        return None, "invalid_value", f"reason_end: {event['reason_end'][:40]!r}"
    try:
        ts = dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    except ValueError:
        return None, "invalid_value", f"ts: {event['ts'][:40]!r} is not ISO-8601"
    if ts.tzinfo is None:
        return None, "invalid_value", f"ts: {event['ts'][:40]!r} has no time zone"
    ms = event["ms_played"]
    if ms < 0:
        return None, "negative_ms_played", f"ms_played={ms}"
    if ms > rules.max_ms_played:
        return None, "absurd_ms_played", f"ms_played={ms}"
    if not rules.week_start <= ts < rules.week_end:
        return None, "ts_outside_week", f"ts={event['ts']}"
    event["ts"] = ts
    return event, None, None


def parse_event_lines(lines: pd.Series, rules: EventRules) -> pd.DataFrame:
    """Landed lines → one row per line with typed fields and ``reject_reason``.

    ``lines``: str[n]. Returns ``PARSED_COLUMNS``; rows with a reject reason keep
    the raw line and nulls elsewhere. The Spark job runs this over each batch.
    """
    rows = []
    for line in lines:
        event, reason, detail = classify_line(line, rules)
        if event is None:
            rows.append((None,) * 10 + (reason, detail, line))
        else:
            rows.append(tuple(event[name] for name in REQUIRED_FIELDS) + (None, None, line))
    frame = pd.DataFrame.from_records(rows, columns=PARSED_COLUMNS)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    for name in ("user_id", "track_id", "ms_played", "position"):
        frame[name] = frame[name].astype("Int64")
    frame["position"] = frame["position"].astype("Int32")
    frame["saved"] = frame["saved"].astype("boolean")
    return frame


def parse_event_batches(batches: Iterator[pd.DataFrame], rules: EventRules) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` adapter: batches with a ``value`` column of raw lines."""
    for batch in batches:
        yield parse_event_lines(batch["value"], rules)
