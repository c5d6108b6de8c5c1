"""Pandera contracts of the week's playlists (it guards publishing, so its check blocks) and of the ranker's
own order."""

from __future__ import annotations

import pandera.pandas as pa
from pandera.pandas import Check, Column

from dw_assets.ranking.rerank import RerankConfig

_ID = Check.ge(0)


def _playlist_schema(name: str) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "week": Column(str),
            "user_id": Column("int64", _ID),
            "position": Column("int16", Check.in_range(1, RerankConfig.playlist_size)),
            "track_id": Column("int64", _ID),
            "score": Column("float32"),
            "source": Column(str),
            "is_exploration": Column(bool),
            "artist_id": Column("int64", _ID),
            "genre": Column(str),
            "ranker_score": Column("float32", nullable=True),
        },
        strict=True,
        unique=["user_id", "position"],
        checks=[
            # a track appears once per playlist, and each user has at most 2 tracks by one artist
            Check(lambda f: ~f.duplicated(["user_id", "track_id"]), error="a track repeats within a playlist"),
            Check(lambda f: f.groupby(["user_id", "artist_id"])["track_id"].transform("size") <= RerankConfig.max_per_artist,
                  error="more than max_per_artist tracks by one artist"),
        ],
        name=name,
    )


RANKED_PLAYLISTS = _playlist_schema("ranked_playlists")
# The ranker's own order has a playlist's rows and hygiene (the evaluation's re-rank baseline).
RANKER_ORDER = _playlist_schema("ranker_order")
