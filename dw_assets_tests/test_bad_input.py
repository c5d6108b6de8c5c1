"""The bad-input catalogue (#8): every kind of bad landed data is either quarantined with its
reason and a detail, counted, while every valid line around it arrives, or it stops the run
with an error that names the problem. One landed week holds every line-level kind at once."""

from __future__ import annotations

import datetime as dt
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from dw_assets.calendar import week_bounds
from dw_assets.embeddings.audio import AudioConfig
from dw_assets.embeddings.audio_io import AUDIO_PROBLEMS, load_clips, read_clip
from dw_assets.ingest import schemas
from dw_assets.ingest.bronze import (
    EmptyWeekError,
    LandingError,
    SchemaDriftError,
    build_bronze,
    landed_event_files,
)
from dw_assets.ingest.events import QUARANTINE_REASONS, EventRules, LandingProfile, schema_drift
from dw_assets.ingest.interactions import InteractionRules, build_interactions
from dw_assets.ingest.profiles import ProfileRules, build_track_stats, build_user_profiles
from dw_assets.lake.quality import as_checked, validate_frame

WEEK = "2026-01-05"
START, END = week_bounds(WEEK)
USERS = list(range(1, 21))  # the directory; users 1-8 listen, 9 sends only bad lines, 10-20 are silent
TRACKS = list(range(100, 140))
ONLY_BAD_USER = 9
UNKNOWN_USER, UNKNOWN_TRACK = 999, 9999
REASONS_END = ("trackdone", "fwdbtn", "backbtn", "endplay", "logout")


def _dumps(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"))  # json, not orjson: it writes ints past 64 bits too


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def valid_event(i: int) -> dict:
    return {
        "event_id": f"v{i:03d}", "user_id": 1 + i % 8, "track_id": TRACKS[i % len(TRACKS)],
        "ts": _iso(START + dt.timedelta(minutes=(97 * i) % (7 * 24 * 60))), "ms_played": 5_000 + 4_321 * i,
        "reason_end": REASONS_END[i % 5], "saved": i % 7 == 0, "context": "album",
        "position": i % 5 or None, "platform": "ios",
    }  # fmt: skip


def bad(i: int, drop: tuple[str, ...] = (), **changes) -> str:
    """A line built from a template event of the user who only sends bad lines."""
    event = {**valid_event(i), "event_id": f"bad{i:03d}", "user_id": ONLY_BAD_USER, **changes}
    return _dumps({k: v for k, v in event.items() if k not in drop})


# (reason, raw line, a piece of the detail a data engineer reads to find the problem)
CATALOGUE: list[tuple[str, str, str]] = [
    ("bad_json", '{"event_id":"bad000","user_id":9,', "unexpected end"),
    ("bad_json", "[1, 2, 3]", "got list"),
    ("bad_json", "null", "got NoneType"),
    ("bad_json", "   ", "input"),
    ("bad_json", "\x00\x01 not json at all", "unexpected character"),
    ("missing_field", bad(1, drop=("ms_played",)), "missing: ms_played"),
    ("missing_field", bad(2, drop=("position",)), "missing: position"),
    ("missing_field", bad(3, drop=("user_id", "ts")), "missing: user_id,ts"),
    ("wrong_type", bad(4, user_id="9"), "user_id: expected int, got str"),
    ("wrong_type", bad(5, ms_played=12.5), "ms_played: expected int, got float"),
    ("wrong_type", bad(6, saved="yes"), "saved: expected bool, got str"),
    ("wrong_type", bad(7, user_id=None), "user_id: expected int, got NoneType"),
    ("wrong_type", bad(8, ts=1_767_600_000_000), "ts: expected str, got int"),
    ("wrong_type", bad(9, position="3"), "position: expected int, got str"),
    ("wrong_type", bad(10, user_id=2**64 + 5), "user_id: expected int, got float"),
    ("invalid_value", bad(11, reason_end="paused"), "reason_end: 'paused'"),
    ("invalid_value", bad(12, ts="yesterday"), "not ISO-8601"),
    ("invalid_value", bad(13, ts="2026-01-06T10:00:00"), "has no time zone"),
    ("invalid_value", bad(14, user_id=2**63 + 5), "user_id=9223372036854775813 outside"),
    ("invalid_value", bad(15, user_id=-5), "user_id=-5 outside"),
    ("invalid_value", bad(16, position=2**40 + 7), "position=1099511627783 outside"),
    ("invalid_value", bad(17, position=-1), "position=-1 outside"),
    ("invalid_value", bad(18, event_id=" "), "event_id: empty"),
    ("negative_ms_played", bad(19, ms_played=-1), "ms_played=-1"),
    ("negative_ms_played", bad(20, ms_played=-100_000), "ms_played=-100000"),
    ("absurd_ms_played", bad(21, ms_played=4 * 3600 * 1000 + 1), "ms_played=14400001"),
    ("absurd_ms_played", bad(22, ms_played=2**63 + 1), "ms_played=9223372036854775809"),
    ("ts_outside_week", bad(23, ts=_iso(START - dt.timedelta(seconds=1))), "ts=2026-01-04T23:59:59Z"),
    ("ts_outside_week", bad(24, ts=_iso(END)), "ts=2026-01-12T00:00:00Z"),
    ("unknown_user", bad(25, user_id=UNKNOWN_USER), f"user_id={UNKNOWN_USER}"),
    ("unknown_track", bad(26, track_id=UNKNOWN_TRACK), f"track_id={UNKNOWN_TRACK}"),
    ("duplicate_event_id", _dumps(valid_event(3)), "event_id=v003"),  # a client replay, byte for byte
    # The same id with another payload: one copy is kept, the one whose raw line sorts first (so re-runs agree).
    ("duplicate_event_id", _dumps({**valid_event(5), "ms_played": 99_999}), "event_id=v005"),
    ("negative_ms_played", _dumps({**valid_event(7), "ms_played": -5}), "ms_played=-5"),  # a bad copy of a valid id
]
N_VALID = 40
# Valid lines that carry keys beyond the contract: kept, the keys counted.
EXTRA = [
    _dumps({**valid_event(100), "event_id": "x1", "client_version": "8.9.1"}),
    _dumps({**valid_event(101), "event_id": "x2", "client_version": "8.9.2", "geo": {"lat": 1.5}}),
]
VALID_IDS = {f"v{i:03d}" for i in range(N_VALID)} | {"x1", "x2"}


def _catalog(spark):
    return spark.createDataFrame(
        [(t, 1000 + t % 13, f"genre{t % 4}", 200_000) for t in TRACKS],
        "track_id long, artist_id long, genre string, duration_ms long",
    )


def _directory(spark):
    return spark.createDataFrame(
        [(u, "SE", dt.date(2025, 1, 1), 1990.0, False) for u in USERS],
        "user_id long, country string, signup_date date, birth_year double, is_new_user boolean",
    )


def _land(root: Path, files: dict[str, str]) -> list[str]:
    folder = root / "events" / f"week={WEEK}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("utf-8"))
    return landed_event_files(str(root), WEEK)


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """Two files: valid and bad lines interleaved (each bad line between two valid ones), the
    second with Windows line endings, blank lines and no final newline."""
    valid = [_dumps(valid_event(i)) for i in range(N_VALID)]
    first = []
    for i, (_, raw, _) in enumerate(CATALOGUE[:20]):
        first += [valid[i], raw]
    first += [valid[20], ""]
    second = []
    for i, (_, raw, _) in enumerate(CATALOGUE[20:]):
        second += [valid[21 + i], raw]
    second += valid[21 + len(CATALOGUE) - 20 :] + EXTRA
    files = _land(tmp_path_factory.mktemp("landing"), {
        "part-0.jsonl": "\n".join(first) + "\n",
        "part-1.jsonl": "\r\n".join(second) + "\r\n\r\n",
    })  # fmt: skip
    lines = [line for line in first + second if line]  # what a reader counts: every non-empty line
    return files, lines


@pytest.fixture(scope="module")
def bronze(spark, landed):
    files, _ = landed
    tables = build_bronze(spark, files, WEEK, _directory(spark).select("user_id"), _catalog(spark).select("track_id"))
    events, quarantined = as_checked(tables.events.toPandas()), tables.quarantined.toPandas()
    yield tables, events, quarantined
    assert tables._parsed.is_cached and tables._ranked.is_cached  # parsed once, split once
    tables.release()
    assert not tables._parsed.is_cached and not tables._ranked.is_cached


# ---------------------------------------------------------------- line-level kinds, one week


@pytest.mark.parametrize("reason", QUARANTINE_REASONS)
def test_each_kind_of_bad_line_is_quarantined_with_its_reason_and_detail(bronze, reason):
    _, _, quarantined = bronze
    expected = sorted((raw, detail) for r, raw, detail in CATALOGUE if r == reason)
    assert expected, f"the catalogue has no {reason} line"
    got = quarantined[quarantined.reason == reason].sort_values("raw")
    assert got["raw"].tolist() == [raw for raw, _ in expected]
    for (_, piece), detail in zip(expected, got["detail"], strict=True):
        assert piece in detail, (reason, piece, detail)


def test_every_valid_line_arrives_and_every_line_is_counted_exactly_once(bronze, landed):
    tables, events, quarantined = bronze
    _, lines = landed
    assert set(events["event_id"]) == VALID_IDS and events["event_id"].is_unique
    assert len(events) + len(quarantined) == len(lines)
    expected = pd.Series([r for r, _, _ in CATALOGUE]).value_counts().to_dict()
    assert quarantined["reason"].value_counts().to_dict() == expected
    # The valid copies of ids that also had a replayed, altered or broken copy are the ones kept.
    by_id = events.set_index("event_id")
    assert by_id.loc["v005", "ms_played"] == valid_event(5)["ms_played"]
    assert by_id.loc["v007", "ms_played"] == valid_event(7)["ms_played"]
    # The line-level profile counted the same lines (ids and duplicates are decided later).
    line_level = {r: n for r, n in expected.items() if r not in ("unknown_user", "unknown_track", "duplicate_event_id")}
    assert tables.landing.lines == len(lines) and tables.landing.by_reason == line_level


def test_valid_lines_keep_every_field_and_both_tables_pass_their_blocking_schemas(bronze):
    _, events, quarantined = bronze
    row = events.set_index("event_id").loc["v014"]
    expected = valid_event(14)
    assert row["user_id"] == expected["user_id"] and row["track_id"] == expected["track_id"]
    assert row["ts"] == pd.Timestamp(expected["ts"]) and row["position"] == expected["position"]
    assert pd.isna(events.set_index("event_id").loc["v010", "position"])
    passed, failures = validate_frame(events, schemas.RAW_PLAY_EVENTS)
    assert passed, failures.head()
    passed, failures = validate_frame(quarantined, schemas.QUARANTINED_EVENTS)
    assert passed, failures.head()


def test_extra_fields_are_kept_as_events_and_counted_not_quarantined(bronze):
    tables, events, quarantined = bronze
    assert {"x1", "x2"} <= set(events["event_id"])
    assert not quarantined["raw"].isin(EXTRA).any()
    assert list(events.columns) == list(schemas.RAW_PLAY_EVENTS.columns)  # the extra keys do not leak in
    assert tables.landing.extra_fields == {"client_version": 2, "geo": 1}


# ---------------------------------------------------------------- whole-week problems


def _renamed_week(n: int, renamed: int) -> str:
    """``n`` valid lines of which ``renamed`` carry ``msPlayed`` instead of ``ms_played``."""
    out = []
    for i in range(n):
        event = valid_event(i)
        if i < renamed:
            event["msPlayed"] = event.pop("ms_played")
        out.append(_dumps(event))
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(("lines", "renamed"), [(60, 60), (100, 25)], ids=["every_line", "from_mid_week"])
def test_a_column_renamed_upstream_fails_loudly_naming_the_column(spark, tmp_path, lines, renamed):
    files = _land(tmp_path, {"part-0.jsonl": _renamed_week(lines, renamed)})
    with pytest.raises(SchemaDriftError, match="'ms_played' is missing") as error:
        build_bronze(spark, files, WEEK, _directory(spark).select("user_id"), _catalog(spark).select("track_id"))
    message = str(error.value)
    assert f"{renamed} of {lines} lines" in message and "'msPlayed'" in message and WEEK in message


def test_a_few_lines_missing_the_same_field_are_quarantined_not_a_drift(spark, tmp_path):
    files = _land(tmp_path, {"part-0.jsonl": _renamed_week(200, 5)})
    tables = build_bronze(spark, files, WEEK, _directory(spark).select("user_id"), _catalog(spark).select("track_id"))
    quarantined = tables.quarantined.toPandas()
    tables.release()
    assert quarantined["reason"].tolist() == ["missing_field"] * 5
    assert tables.landing.field_problems == {("missing_field", "ms_played"): (5, "missing: ms_played")}


def _profile(lines: int, by_reason: dict, field_problems: dict, extra: dict | None = None) -> LandingProfile:
    return LandingProfile(lines, by_reason, field_problems, extra or {})


@pytest.mark.parametrize(
    ("profile", "names"),
    [
        (_profile(1000, {"wrong_type": 990}, {("wrong_type", "user_id"): (990, "user_id: expected int, got str")}),
         ["'user_id' has the wrong JSON type", "990 of 1000"]),
        (_profile(500, {"bad_json": 500}, {}), ["500 of 500 lines (100%) are not JSON objects"]),
        (_profile(800, {"absurd_ms_played": 700}, {("absurd_ms_played", "ms_played"): (700, "ms_played=180000000")}),
         ["'ms_played' fails absurd_ms_played"]),
        (_profile(300, {"ts_outside_week": 300}, {("ts_outside_week", "ts"): (300, "ts=2026-01-13T10:00:00Z")}),
         ["'ts' falls outside the week [2026-01-05, 2026-01-12)", "wrong week folder"]),
        (_profile(100, {"missing_field": 100}, {("missing_field", "platform"): (100, "missing: platform")},
                  {"Platform": 100, "os": 100}),
         ["'platform' is missing", "'Platform' (100 lines)", "'os' (100 lines)"]),
    ],
    ids=["retyped", "new_format", "new_unit", "wrong_week_folder", "renamed_case"],
)
def test_systematic_failures_of_one_field_are_named_as_upstream_changes(profile, names):
    message = schema_drift(profile, EventRules(START, END))
    assert message is not None
    for name in names:
        assert name in message, (name, message)


def test_noise_below_the_drift_threshold_is_not_a_drift():
    rules = EventRules(START, END)
    tiny_week = _profile(10, {"missing_field": 10}, {("missing_field", "ts"): (10, "missing: ts")})
    noisy_week = _profile(10_000, {"bad_json": 600}, {("wrong_type", "user_id"): (60, "user_id: expected int")})
    assert schema_drift(tiny_week, rules) is None  # under drift_min_lines: ten lines are just ten bad lines
    assert schema_drift(noisy_week, rules) is None
    assert schema_drift(_profile(0, {}, {}), rules) is None


def test_a_week_folder_that_never_landed_is_a_landing_error(tmp_path):
    with pytest.raises(LandingError, match=f"no landed events for week {WEEK}"):
        landed_event_files(str(tmp_path), WEEK)


def test_an_empty_week_is_refused_with_a_clear_error(spark, tmp_path):
    users, tracks = _directory(spark).select("user_id"), _catalog(spark).select("track_id")
    with pytest.raises(EmptyWeekError, match=f"week {WEEK} landed no event files"):
        build_bronze(spark, [], WEEK, users, tracks)
    files = _land(tmp_path, {"part-0.jsonl": "", "part-1.jsonl": "\n\n"})
    with pytest.raises(EmptyWeekError, match=f"week {WEEK} landed 2 event file\\(s\\) holding no event lines"):
        build_bronze(spark, files, WEEK, users, tracks)


def test_an_expected_empty_week_gives_empty_tables_and_profiles_for_everyone(spark, tmp_path):
    files = _land(tmp_path, {"part-0.jsonl": ""})
    directory = _directory(spark)
    tables = build_bronze(spark, files, WEEK, directory.select("user_id"), _catalog(spark).select("track_id"),
                          allow_empty_week=True)
    assert tables.events.count() == 0 and tables.quarantined.count() == 0 and tables.landing.lines == 0
    silver = build_interactions(tables.events, _catalog(spark), WEEK, InteractionRules())
    stats = spark.createDataFrame([(t, 0.5) for t in TRACKS], "track_id long, popularity_percentile double")
    profiles = build_user_profiles(silver.interactions, directory, stats, WEEK, ProfileRules()).toPandas()
    tables.release()
    assert sorted(profiles.user_id) == USERS
    assert (profiles.history_level == "none").all() and (profiles.events == 0).all()
    assert profiles.recent_tracks.map(len).eq(0).all()


# ---------------------------------------------------------------- silver and gold downstream of bad lines


@pytest.fixture(scope="module")
def gold(spark, bronze):
    tables, _, _ = bronze
    catalog = _catalog(spark)
    silver = build_interactions(tables.events, catalog, WEEK, InteractionRules())
    full_catalog = catalog.select(
        "track_id", "artist_id", "genre", F.lit(dt.date(2025, 6, 1)).alias("release_date"),
        F.lit(200).cast("int").alias("age_days"), F.lit(False).alias("is_new_release"),
    )  # fmt: skip
    stats = build_track_stats(silver.interactions, full_catalog, WEEK).persist()
    profiles = build_user_profiles(silver.interactions, _directory(spark), stats, WEEK, ProfileRules())
    result = silver.interactions.toPandas(), stats.toPandas(), profiles.toPandas()
    stats.unpersist()
    return result


def test_users_with_zero_valid_events_get_an_empty_profile_and_no_one_else_gets_one(gold):
    interactions, stats, profiles = gold
    assert set(interactions.event_id) == VALID_IDS  # nothing valid lost on the way to silver
    # One profile per directory user, never one for an id seen only in quarantined lines.
    assert sorted(profiles.user_id) == USERS and UNKNOWN_USER not in set(profiles.user_id)
    empty = profiles.set_index("user_id").loc[[ONLY_BAD_USER, 15]]
    assert (empty.events == 0).all() and (empty.history_level == "none").all()
    assert empty.recent_tracks.map(len).eq(0).all() and empty.last_active.isna().all()
    active = profiles[profiles.user_id <= 8]
    assert (active.events > 0).all()
    assert sorted(stats.track_id) == TRACKS  # an unknown track id never becomes a track
    passed, failures = validate_frame(profiles, schemas.USER_PROFILES)
    assert passed, failures.head()


def test_a_user_with_an_enormous_history_is_profiled_with_the_last_50_tracks(spark):
    """200k interactions of one user over the 12-week window, plus a light user."""
    n, heavy, light = 200_000, 1, 2
    window_start = START - dt.timedelta(weeks=11)
    rows = spark.range(n).select(
        F.lit(heavy).cast("long").alias("user_id"),
        (F.lit(1000) + (F.col("id") * 7919) % 5000).alias("track_id"),
        F.timestamp_seconds(F.lit(int(window_start.timestamp())) + F.col("id") * 30).alias("ts"),
        (F.col("id") % 4 != 0).alias("is_positive"),
        (F.col("id") % 10 == 1).alias("saved"), (F.col("id") % 4 == 0).alias("is_skip"),
        (F.col("id") % 8 == 0).alias("is_early_skip"),
    )
    rows = rows.withColumn("artist_id", F.col("track_id") % 300).withColumn(
        "genre", F.concat(F.lit("g"), (F.col("track_id") % 7).cast("string"))
    )
    light_rows = spark.createDataFrame(
        [(light, 1001, START + dt.timedelta(hours=1), True, False, False, False, 1001 % 300, "g0")],
        "user_id long, track_id long, ts timestamp, is_positive boolean, saved boolean, is_skip boolean, "
        "is_early_skip boolean, artist_id long, genre string",
    )
    interactions = rows.unionByName(light_rows)
    directory = _directory(spark).where(F.col("user_id") <= 3)
    stats = spark.range(1000, 6000).select(F.col("id").alias("track_id"), F.lit(0.5).alias("popularity_percentile"))
    frame = build_user_profiles(interactions, directory, stats, WEEK, ProfileRules())
    profiles = frame.toPandas()
    # Memory per user stays bounded: only the newest 50 of a user's tracks (and top 10 artists) ever
    # reach the window that ranks them; Spark keeps them with a per-user group limit.
    plan = frame._jdf.queryExecution().optimizedPlan().toString()
    assert "row_number(), 50" in plan and "row_number(), 10" in plan, plan

    ids = np.arange(n)
    tracks = 1000 + (ids * 7919) % 5000
    positive = ids % 4 != 0
    newest_first = tracks[positive][::-1]  # ts grows with id
    _, first = np.unique(newest_first, return_index=True)
    expected_recent = newest_first[np.sort(first)][:50].tolist()

    by_user = profiles.set_index("user_id")
    assert sorted(by_user.index) == [1, 2, 3]
    big = by_user.loc[heavy]
    assert big.events == n and big.positives == int(positive.sum()) and big.history_level == "heavy"
    assert list(big.recent_tracks) == expected_recent
    assert len(big.recent_age_days) == 50 and np.all(np.diff(big.recent_age_days) >= 0)
    assert len(big.top_artists) == 10 and len(big.genre_share) == 7
    assert abs(sum(g["share"] for g in big.genre_share) - 1.0) < 1e-9
    assert list(by_user.loc[light].recent_tracks) == [1001] and by_user.loc[3].events == 0
    assert len(big.saved_tracks) == 50 and len(big.early_skipped_tracks) <= 50
    assert [g["genre"] for g in big.genre_outcomes] == [f"g{i}" for i in range(7)]
    assert sum(g["plays"] for g in big.genre_outcomes) == n


def _outcome_rows(spark, rows):
    """Silver-like plays: (user, track, genre, hour, saved, skip, early_skip); positive = not skipped."""
    data = [(u, t, t % 7, g, START + dt.timedelta(hours=h), not (sk or es), sv, sk or es, es)
            for u, t, g, h, sv, sk, es in rows]
    return spark.createDataFrame(data, "user_id long, track_id long, artist_id long, genre string, ts timestamp, "
                                       "is_positive boolean, saved boolean, is_skip boolean, is_early_skip boolean")


def test_outcome_history_keeps_saves_and_rejections_and_shrinks_genre_rates_in_two_levels(spark):
    """Saved tracks newest first; early skips of tracks the user never liked; rates per user shrunk
    toward the catalog's and per (user, genre) toward the user's, with strengths from the data."""
    rows = [(1, 100 + k, "a", k, k % 2 == 0, False, False) for k in range(10)]  # 10 plays of a, 5 saves
    rows += [(1, 120, "b", 20, False, True, True), (1, 121, "b", 21, False, True, True),
             (1, 121, "b", 22, False, False, False)]  # 121 was liked later: not a rejection
    rows += [(2, 130 + k % 5, "a", k, k == 0, k % 3 == 0, k % 6 == 0) for k in range(20)]
    rows += [(u, 110 + k, "c", k, k % 9 == 0, k % 2 == 0, k % 4 == 0) for u in range(4, 9) for k in range(12)]
    interactions = _outcome_rows(spark, rows)
    stats = spark.createDataFrame([(t, 0.5) for t in range(100, 140)], "track_id long, popularity_percentile double")
    profiles = build_user_profiles(interactions, _directory(spark), stats, WEEK, ProfileRules()).toPandas()
    passed, failures = validate_frame(profiles, schemas.USER_PROFILES)
    assert passed, failures.head()
    by_user = profiles.set_index("user_id")
    one = by_user.loc[1]
    assert list(one.saved_tracks) == [108, 106, 104, 102, 100] and list(one.early_skipped_tracks) == [120]
    plays = pd.DataFrame(rows, columns=["user", "track", "genre", "hour", "saved", "skip", "early"])
    for flag, rate in (("saved", "save_rate"), ("skip", "skip_rate"), ("early", "early_skip_rate")):
        catalog = plays[flag].mean()
        for user, mine in plays.groupby("user"):
            shrunk = by_user.loc[user, f"user_{rate}"]
            raw = mine[flag].mean()
            assert min(raw, catalog) - 1e-12 <= shrunk <= max(raw, catalog) + 1e-12, (user, rate)
            cells = {g["genre"]: g for g in by_user.loc[user, "genre_outcomes"]}
            assert list(cells) == sorted(mine["genre"].unique())
            for genre, cell in mine.groupby("genre"):
                got = cells[genre]
                assert got["plays"] == len(cell) and got["saves"] == int(cell["saved"].sum())
                assert min(cell[flag].mean(), shrunk) - 1e-12 <= got[rate] <= max(cell[flag].mean(), shrunk) + 1e-12
        # Silent users get the catalog's rate and no genres.
        assert by_user.loc[15, f"user_{rate}"] == pytest.approx(catalog)
    assert len(by_user.loc[15, "genre_outcomes"]) == 0 and len(by_user.loc[15, "saved_tracks"]) == 0


# ---------------------------------------------------------------- audio files


def _wav(path: Path, samples: np.ndarray, announced: int | None = None, rate: int = 8000) -> Path:
    """A mono 16-bit PCM WAV; ``announced`` overrides the frame count the header claims."""
    data = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    frames = len(samples) if announced is None else announced
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + 2 * frames, b"WAVE", b"fmt ", 16, 1, 1, rate,
                         2 * rate, 2, 16, b"data", 2 * frames)  # fmt: skip
    path.write_bytes(header + data)
    return path


def test_corrupt_truncated_empty_and_silent_clips_are_reported_and_skipped(tmp_path):
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)).astype(np.float32)
    good = {tid: _wav(tmp_path / f"{tid}.wav", tone * (0.5 + tid / 20)) for tid in (1, 3, 5, 7)}
    broken = {
        2: (tmp_path / "corrupt.wav", "corrupt"),
        4: (_wav(tmp_path / "truncated.wav", tone[:1000], announced=4000), "truncated"),
        6: (tmp_path / "empty.wav", "empty"),
        8: (_wav(tmp_path / "silent.wav", np.zeros(4000, np.float32)), "silent"),
        9: (_wav(tmp_path / "flat.wav", np.full(4000, 0.25, np.float32)), "silent"),  # a DC level, inaudible
    }
    broken[2][0].write_bytes(b"JUNK" + np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    broken[6][0].write_bytes(b"")
    paths = {**good, **{tid: path for tid, (path, _) in broken.items()}}

    batch = load_clips(paths, AudioConfig())
    assert batch.track_ids.tolist() == [1, 3, 5, 7] and batch.waves.shape == (4, 4000)
    reported = batch.problems.set_index("track_id")
    assert reported.problem.to_dict() == {tid: kind for tid, (_, kind) in broken.items()}
    assert set(reported.problem) <= set(AUDIO_PROBLEMS) and reported.detail.str.len().gt(0).all()
    assert "announces 4000 frames, 1000 present" in reported.loc[4, "detail"]
    assert read_clip(good[1], 8000)[1] is None
