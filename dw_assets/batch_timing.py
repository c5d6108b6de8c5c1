"""How long a week's batch inference took, stored as data: one row per step (``candidates``, ``ranked_playlists``)
written beside its table, read by ``model_monitoring``'s batch-window check through the IO manager.

Size: one row per step and week.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.pandas import Check, Column

BATCH_TIMING = pa.DataFrameSchema(
    {
        "week": Column(str),
        "asset": Column(str),
        "users": Column("int64", Check.ge(0)),
        "elapsed_s": Column(float, Check.ge(0.0)),
        "spark_cores": Column("int64", Check.gt(0)),
    },
    strict=True, unique=["asset"], name="batch_timing",
)


def timing_table(week: str, asset: str, users: int, elapsed_s: float, spark_cores: int) -> pd.DataFrame:
    """The one-row table of ``asset``'s batch step in ``week``: ``users`` served in ``elapsed_s`` on ``spark_cores``."""
    return pd.DataFrame({"week": [week], "asset": [asset], "users": [int(users)], "elapsed_s": [float(elapsed_s)],
                         "spark_cores": [int(spark_cores)]}).astype({"users": "int64", "spark_cores": "int64"})


def throughput(*tables: pd.DataFrame) -> tuple[float, int]:
    """(users/s, Spark cores) of a week's batch inference from its steps' timing tables (an empty one: a step
    whose timing was not written): the users of the widest step over the steps' summed seconds, on the
    most cores any step had."""
    rows = pd.concat([t for t in tables if not t.empty] or [timing_table("", "", 0, 0.0, 1)], ignore_index=True)
    seconds = float(rows["elapsed_s"].astype(float).sum())
    users = int(rows["users"].max())
    return (users / seconds if seconds > 0 else 0.0), int(rows["spark_cores"].max())
