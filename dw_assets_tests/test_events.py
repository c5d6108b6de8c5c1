"""Bronze line validation: each malformed kind gets its reason; valid lines keep every field."""

from __future__ import annotations

import orjson
import pandas as pd
import pytest

from dw_assets.calendar import week_bounds
from dw_assets.ingest.events import EventRules, classify_line, parse_event_lines

WEEK = "2026-01-05"
RULES = EventRules(*week_bounds(WEEK))
VALID = {
    "event_id": "ev-1", "user_id": 7, "track_id": 42, "ts": "2026-01-06T10:00:00.000Z", "ms_played": 185_000,
    "reason_end": "trackdone", "saved": False, "context": "album", "position": None, "platform": "ios",
}


def line(**changes) -> str:
    event = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in event.items() if v is not _DROP}).decode()


_DROP = object()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"event_id": "ev-1", "user_id": 7,', "bad_json"),
        ("[1, 2, 3]", "bad_json"),
        (line(ts=_DROP), "missing_field"),
        (line(position=_DROP), "missing_field"),
        (line(user_id="7"), "wrong_type"),
        (line(ms_played="abc"), "wrong_type"),
        (line(saved="yes"), "wrong_type"),
        (line(user_id=True), "wrong_type"),
        (line(ms_played=12.5), "wrong_type"),
        (line(reason_end="paused"), "invalid_value"),
        (line(ts="yesterday"), "invalid_value"),
        (line(ms_played=-5), "negative_ms_played"),
        (line(ms_played=5 * 3600 * 1000), "absurd_ms_played"),
        (line(ts="2026-01-04T23:59:59Z"), "ts_outside_week"),
        (line(ts="2026-01-12T00:00:00Z"), "ts_outside_week"),
    ],
)
def test_each_malformed_kind_gets_its_reason(raw, reason):
    event, got, detail = classify_line(raw, RULES)
    assert event is None
    assert got == reason
    assert detail


def test_valid_line_keeps_every_field_typed():
    frame = parse_event_lines(pd.Series([line(), line(event_id="ev-2", position=3, saved=True)]), RULES)
    assert frame["reject_reason"].isna().all()
    assert frame.loc[0, "ts"] == pd.Timestamp("2026-01-06T10:00:00Z")
    assert frame.loc[0, "user_id"] == 7 and frame.loc[0, "ms_played"] == 185_000
    assert pd.isna(frame.loc[0, "position"]) and frame.loc[1, "position"] == 3
    assert bool(frame.loc[1, "saved"]) is True


def test_boundaries_of_the_week_and_duration_are_inclusive_where_they_should_be():
    start_ok, _, _ = classify_line(line(ts="2026-01-05T00:00:00Z"), RULES)
    zero_ok, _, _ = classify_line(line(ms_played=0), RULES)
    cap_ok, _, _ = classify_line(line(ms_played=4 * 3600 * 1000), RULES)
    assert start_ok and zero_ok and cap_ok


def test_mixed_batch_keeps_raw_text_of_rejects():
    raw = [line(), "not json", line(ms_played=-1)]
    frame = parse_event_lines(pd.Series(raw), RULES)
    assert frame["reject_reason"].tolist() == [None, "bad_json", "negative_ms_played"]
    assert frame.loc[1, "raw"] == "not json"


EDGE_LINES = [
    line(), line(position=0), line(position=2**31 - 1), line(position=2**31), line(position=-1), line(position=True),
    line(user_id=0), line(user_id=2**63 - 1), line(user_id=-1), line(track_id=1.0), line(event_id="  "),
    line(event_id=""), line(event_id=5), line(ms_played=0), line(ms_played=4 * 3600 * 1000),
    line(ms_played=4 * 3600 * 1000 + 1), line(ms_played=-1), line(saved=0), line(saved=None), line(context=None),
    line(platform=["ios"]), line(reason_end="logout"), line(reason_end="Trackdone"), line(ts="2026-01-06T10:00:00"),
    line(ts="2026-01-06T10:00:00+01:00"), line(ts="2026-01-05T00:00:00Z"), line(ts="2026-01-11T23:59:59.999Z"),
    line(ts="2026-01-12T00:00:00Z"), line(ts=20260106), line(ts="2026-13-06T10:00:00Z"),
    orjson.dumps({**VALID, "extra": 1}).decode(), orjson.dumps({**VALID, "event_id": "ev-9", "a,b": [1]}).decode(),
    line(user_id=_DROP), '{"event_id": "ev-1", "user_id": 7,', "[1, 2, 3]", "null", '"text"', "{}",
    '{"event_id":"ev-1","user_id":7,"user_id":8,"track_id":42,"ts":"2026-01-06T10:00:00Z","ms_played":1,'
    '"reason_end":"fwdbtn","saved":true,"context":"radio","position":null,"platform":"web"}',
]


def _reference_row(raw: str) -> tuple:
    """What ``inspect_line`` alone makes of a line (the rule; the parser's fast path must agree)."""
    from dw_assets.ingest.events import REQUIRED_FIELDS, inspect_line

    verdict = inspect_line(raw, RULES)
    extra = ",".join(verdict.extra_fields) or None
    if verdict.event is None:
        return (None,) * 10 + (verdict.reason, verdict.detail, ",".join(verdict.fields) or None, extra, raw)
    return tuple(verdict.event[n] for n in REQUIRED_FIELDS) + (None, None, None, extra, raw)


def test_the_parsers_fast_path_gives_every_line_the_verdict_of_the_full_checks():
    from dw_assets.ingest.events import PARSED_COLUMNS

    got = parse_event_lines(pd.Series(EDGE_LINES), RULES)
    assert got["reject_reason"].notna().sum() > 20 and got["reject_reason"].isna().sum() > 8  # both paths ran

    def plain(value):
        return None if value is None or value is pd.NA or value is pd.NaT else value

    for index, raw in enumerate(EDGE_LINES):
        row = tuple(plain(got.at[index, column]) for column in PARSED_COLUMNS)
        assert row == _reference_row(raw), raw


def test_ids_above_2_to_the_53_survive_a_batch_that_holds_rejects():
    # pandas' object -> Int64 conversion goes through float64: 2^53 + 1 came back as 2^53, 2^63 - 1 failed the batch
    frame = parse_event_lines(pd.Series([line(user_id=2**53 + 1, track_id=2**63 - 1), "not json"]), RULES)
    assert frame.loc[0, "user_id"] == 2**53 + 1 and frame.loc[0, "track_id"] == 2**63 - 1
    assert frame["reject_reason"].tolist() == [None, "bad_json"]
