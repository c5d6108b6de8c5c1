"""Silver on Spark with hand-made events: dedup, sessions, labels, weights, bots and hijacked sessions."""

from __future__ import annotations

import datetime as dt

import pytest

from dw_assets.ingest.interactions import InteractionRules, build_interactions

WEEK = "2026-01-05"
T0 = dt.datetime(2026, 1, 6, 8, 0, tzinfo=dt.UTC)
EVENT_SCHEMA = (
    "event_id string, user_id long, track_id long, ts timestamp, ms_played long, reason_end string, "
    "saved boolean, context string, position int, platform string"
)


def _event(eid, user, track, seconds, ms, reason="fwdbtn", saved=False):
    return (eid, user, track, T0 + dt.timedelta(seconds=seconds), ms, reason, saved, "album", None, "ios")


@pytest.fixture(scope="module")
def silver(spark):
    rows = [
        # user 1: five plays in one session, a 40-minute pause, one more; plus a client replay
        _event("a1", 1, 10, 0, 5_000),                           # early skip
        _event("a2", 1, 11, 10, 20_000),                         # short skip
        _event("a3", 1, 12, 40, 60_000),                         # late skip (60 s of 200 s)
        _event("a4", 1, 13, 110, 200_000, "trackdone"),          # full play
        _event("a5", 1, 14, 320, 50_000, "fwdbtn", True),        # saved
        _event("a6", 1, 10, 320 + 40 * 60, 200_000, "trackdone"),
        _event("a6-replay", 1, 10, 320 + 40 * 60, 200_000, "trackdone"),
    ]
    # user 2: a bot, 300 plays of 33 s every 34 s
    rows += [_event(f"b{i}", 2, 20 + i % 3, 34 * i, 33_000) for i in range(300)]
    # user 3: a normal session, then a hijacked burst of 25 plays at 31-34 s with 35 s gaps
    rows += [_event(f"c{i}", 3, 30 + i, 200 * i, 190_000, "trackdone") for i in range(4)]
    rows += [_event(f"h{i}", 3, 40, 5000 + 35 * i, 31_000 + (i % 4) * 1000) for i in range(25)]
    events = spark.createDataFrame(rows, EVENT_SCHEMA)
    catalog = spark.createDataFrame(
        [(t, 100 + t, "rock", 200_000) for t in range(10, 50)], "track_id long, artist_id long, genre string, duration_ms long"
    )
    tables = build_interactions(events, catalog, WEEK, InteractionRules())
    assert tables._sessions.is_cached  # read by both outputs: computed once
    frames = tables.interactions.toPandas(), tables.flagged.toPandas()
    tables.release()
    assert not tables._sessions.is_cached
    return frames


def test_client_replays_are_deduplicated(silver):
    interactions, _ = silver
    assert interactions["event_id"].is_unique
    assert {"a6", "a6-replay"} & set(interactions["event_id"]) == {"a6"}


def test_sessions_split_on_a_30_minute_gap(silver):
    interactions, _ = silver
    user1 = interactions[interactions.user_id == 1].sort_values("ts")
    assert user1["session_id"].nunique() == 2
    assert user1["session_id"].iloc[0].startswith(f"1:{WEEK}:")


def test_labels_and_graded_weights(silver):
    interactions, _ = silver
    by_id = interactions.set_index("event_id")
    assert by_id.loc["a1", "weight"] == -1.0 and by_id.loc["a1", "is_early_skip"] and not by_id.loc["a1", "is_positive"]
    assert by_id.loc["a2", "weight"] == -0.3 and not by_id.loc["a2", "is_positive"]
    assert by_id.loc["a3", "weight"] == 0.5 and by_id.loc["a3", "is_positive"] and by_id.loc["a3", "is_skip"]
    assert by_id.loc["a4", "weight"] == 1.0 and not by_id.loc["a4", "is_skip"]
    assert by_id.loc["a5", "weight"] == 5.0 and by_id.loc["a5", "is_positive"]
    assert by_id.loc["a4", "genre"] == "rock" and by_id.loc["a4", "artist_id"] == 113


def test_bot_account_is_removed_and_listed(silver):
    interactions, flagged = silver
    assert 2 not in set(interactions.user_id)
    bots = flagged[flagged.kind == "bot"]
    assert bots.user_id.tolist() == [2]
    assert bots.events.iloc[0] == 300 and "gap cv" in bots.detail.iloc[0]


def test_hijacked_session_is_removed_but_the_user_stays(silver):
    interactions, flagged = silver
    user3 = interactions[interactions.user_id == 3]
    assert sorted(user3.event_id) == ["c0", "c1", "c2", "c3"]
    hijacked = flagged[flagged.kind == "hijacked_session"]
    assert hijacked.user_id.tolist() == [3] and hijacked.events.iloc[0] == 25
