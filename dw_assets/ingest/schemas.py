"""Pandera contracts for every lake table of the ingest domain.

Checked as Dagster asset checks on each materialized partition (see
``dw_assets/lake/quality.py``); the ones that guard downstream assets block. A Spark table is
checked on every row in Spark: each custom check below is registered with its Spark equivalent.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.pandas import Check, Column
from pyspark.sql import functions as F

from dw_assets.ingest.events import MAX_MS_PLAYED, QUARANTINE_REASONS, REASON_END_VALUES
from dw_assets.lake.spark_checks import register_spark_check

_ID = Check.ge(0)
_TS = "datetime64[ns, UTC]"
_IS_COLD = "is_cold iff no plays"
_RECENT_TRACKS = "at most 50 recent tracks"
_SAVED_TRACKS = "at most 50 saved tracks"
_SKIPPED_TRACKS = "at most 50 early-skipped tracks"

RAW_PLAY_EVENTS = pa.DataFrameSchema(
    {
        "event_id": Column(str, unique=True),
        "user_id": Column("int64", _ID),
        "track_id": Column("int64", _ID),
        "ts": Column(_TS),
        "ms_played": Column("int64", Check.in_range(0, MAX_MS_PLAYED)),
        "reason_end": Column(str, Check.isin(sorted(REASON_END_VALUES))),
        "saved": Column(bool),
        "context": Column(str),
        "position": Column("Int32", Check.ge(0), nullable=True, coerce=True),
        "platform": Column(str),
    },
    strict=True,
    name="raw_play_events",
)

QUARANTINED_EVENTS = pa.DataFrameSchema(
    {
        "reason": Column(str, Check.isin(list(QUARANTINE_REASONS))),
        "detail": Column(str, nullable=True),
        "event_id": Column(str, nullable=True),
        "raw": Column(str),
    },
    strict=True,
    name="quarantined_events",
)

TRACK_CATALOG = pa.DataFrameSchema(
    {
        "track_id": Column("int64", _ID, unique=True),
        "artist_id": Column("int64", _ID),
        "album_id": Column("int64", _ID),
        "genre": Column(str),
        "release_date": Column(object),
        "duration_ms": Column("int64", Check.gt(0)),
        "age_days": Column("int32", Check.ge(0)),
        "is_new_release": Column(bool),
    },
    strict=True,
    name="track_catalog",
)

USER_DIRECTORY = pa.DataFrameSchema(
    {
        "user_id": Column("int64", _ID, unique=True),
        "country": Column(str, Check.str_length(2, 2)),
        "signup_date": Column(object),
        "birth_year": Column(float, Check.in_range(1900, 2030), nullable=True, coerce=True),
        "is_new_user": Column(bool),
    },
    strict=True,
    name="user_directory",
)

USER_PLAYLISTS = pa.DataFrameSchema(
    {
        "playlist_id": Column("int64", _ID),
        "user_id": Column("int64", _ID),
        "track_id": Column("int64", _ID),
        "pos": Column("int32", Check.ge(0)),
    },
    strict=True,
    unique=["playlist_id", "pos"],
    name="user_playlists",
)

INTERACTIONS = pa.DataFrameSchema(
    {
        "event_id": Column(str, unique=True),
        "user_id": Column("int64", _ID),
        "track_id": Column("int64", _ID),
        "artist_id": Column("int64", _ID),
        "genre": Column(str),
        "ts": Column(_TS),
        "session_id": Column(str),
        "ms_played": Column("int64", Check.ge(0)),
        "completion": Column(float, Check.in_range(0.0, 1.0)),
        "reason_end": Column(str),
        "saved": Column(bool),
        "context": Column(str),
        "position": Column("Int32", nullable=True, coerce=True),
        "platform": Column(str),
        "is_positive": Column(bool),
        "is_early_skip": Column(bool),
        "is_skip": Column(bool),
        "weight": Column(float, Check.in_range(-1.0, 5.0)),
    },
    strict=True,
    name="interactions",
)

FLAGGED_ACTIVITY = pa.DataFrameSchema(
    {
        "user_id": Column("int64", _ID),
        "session_id": Column(str, nullable=True),
        "kind": Column(str, Check.isin(["bot", "hijacked_session"])),
        "events": Column("int64", Check.gt(0)),
        "detail": Column(str),
    },
    strict=True,
    name="flagged_activity",
)

TRACK_STATS = pa.DataFrameSchema(
    {
        "track_id": Column("int64", _ID, unique=True),
        "artist_id": Column("int64", _ID),
        "genre": Column(str),
        "release_date": Column(object),
        "age_days": Column("int32", Check.ge(0)),
        "is_new_release": Column(bool),
        "plays": Column("int64", Check.ge(0)),
        "listeners": Column("int64", Check.ge(0)),
        "positives": Column("int64", Check.ge(0)),
        "saves": Column("int64", Check.ge(0)),
        "plays_last_week": Column("int64", Check.ge(0)),
        "early_skip_rate": Column(float, Check.in_range(0.0, 1.0), nullable=True),
        "skip_rate": Column(float, Check.in_range(0.0, 1.0), nullable=True),
        "save_rate": Column(float, Check.in_range(0.0, 1.0), nullable=True),
        "popularity_percentile": Column(float, Check.in_range(0.0, 1.0)),
        "is_cold": Column(bool),
    },
    strict=True,
    checks=[Check(lambda f: (f["is_cold"] == (f["plays"] == 0)).all(), error=_IS_COLD)],
    name="track_stats",
)

USER_PROFILES = pa.DataFrameSchema(
    {
        "user_id": Column("int64", _ID, unique=True),
        "country": Column(str),
        "signup_date": Column(object),
        "birth_year": Column(float, nullable=True, coerce=True),
        "is_new_user": Column(bool),
        "events": Column("int64", Check.ge(0)),
        "positives": Column("int64", Check.ge(0)),
        "weeks_active": Column("int64", Check.ge(0)),
        "last_active": Column(_TS, nullable=True),
        "history_level": Column(str, Check.isin(["none", "light", "medium", "heavy"])),
        "recent_tracks": Column(object, Check(lambda s: s.map(len) <= 50, error=_RECENT_TRACKS)),
        "recent_age_days": Column(object),
        "genre_share": Column(object),
        "top_artists": Column(object),
        "mean_popularity_percentile": Column(float, Check.in_range(0.0, 1.0), nullable=True),
        # Outcome history (features.UserInputs). Partitions written before these columns existed lack
        # them; the ranker then refuses naming the columns, and rebuilding the week's profiles fixes it.
        "saved_tracks": Column(object, Check(lambda s: s.map(len) <= 50, error=_SAVED_TRACKS)),
        "early_skipped_tracks": Column(object, Check(lambda s: s.map(len) <= 50, error=_SKIPPED_TRACKS)),
        # null only when nobody played anything in the window (no catalog rate to fall back on)
        **{name: Column(float, Check.in_range(0.0, 1.0), nullable=True)
           for name in ("user_save_rate", "user_skip_rate", "user_early_skip_rate")},
        "genre_outcomes": Column(object),
    },
    strict=True,
    name="user_profiles",
)

# The custom checks above as Spark row predicates (true where a row fails), run on every row.
register_spark_check("track_stats", _IS_COLD,
                     lambda f: ~F.coalesce(F.col("is_cold") == (F.col("plays") == 0), F.lit(False)))
register_spark_check("user_profiles", _RECENT_TRACKS, lambda f: F.size("recent_tracks") > 50, column="recent_tracks")
register_spark_check("user_profiles", _SAVED_TRACKS, lambda f: F.size("saved_tracks") > 50, column="saved_tracks")
register_spark_check("user_profiles", _SKIPPED_TRACKS, lambda f: F.size("early_skipped_tracks") > 50,
                     column="early_skipped_tracks")
