"""Pandera contract of the candidates table (it feeds the ranker, so its check blocks)."""

from __future__ import annotations

import pandera.pandas as pa
from pandera.pandas import Check, Column

_RANK = Check.ge(0)  # 1-based rank within a source, 0 = not from that source

CANDIDATES = pa.DataFrameSchema(
    {
        "user_id": Column("int64", Check.ge(0)),
        "track_id": Column("int64", Check.ge(0)),
        "sources": Column(str, Check.str_matches(r"^(audio|item2vec|two_tower)(\|(audio|item2vec|two_tower))*$")),
        "two_tower_rank": Column("int32", _RANK),
        "item2vec_rank": Column("int32", _RANK),
        "audio_rank": Column("int32", _RANK),
        "two_tower_score": Column("float32", nullable=True),
        "item2vec_score": Column("float32", nullable=True),
        "audio_score": Column("float32", nullable=True),
        "model_version": Column(str),  # the embeddings' version: later assets refuse another one
    },
    strict=True,
    unique=["user_id", "track_id"],
    checks=[Check(lambda f: (f[["two_tower_rank", "item2vec_rank", "audio_rank"]] > 0).any(axis=1),
                  error="a candidate without any source rank")],
    name="candidates",
)
