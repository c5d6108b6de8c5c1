"""Per-user Spark batches: every user's rows reach one pandas call, and calls stay small."""

import numpy as np
import pandas as pd

from dw_assets.ingest.spark import key_chunks, load_once, map_user_batches


def test_key_chunks_cut_near_the_limit_without_splitting_a_key():
    frame = pd.DataFrame({"user_id": np.repeat([1, 2, 3, 4, 5], [3, 1, 4, 2, 1]), "row": range(11)})
    chunks = list(key_chunks(frame, "user_id", max_rows=3))
    assert [c["user_id"].tolist() for c in chunks] == [[1, 1, 1], [2, 3, 3, 3, 3], [4, 4, 5]]
    assert pd.concat(chunks)["row"].tolist() == list(range(11))
    assert [len(c) for c in key_chunks(frame.iloc[:0], "user_id", 3)] == []


def test_user_batches_keep_each_users_rows_together_in_small_calls(spark):
    rng = np.random.default_rng(3)
    rows = pd.DataFrame({"user_id": rng.integers(0, 400, 5_000), "value": rng.random(5_000)})
    frame = spark.createDataFrame(rows, "user_id long, value double")

    def per_call(batch: pd.DataFrame) -> pd.DataFrame:
        # One output row per user in the call, with the call's size: a user split across calls shows twice.
        sums = batch.groupby("user_id", as_index=False)["value"].sum()
        return sums.assign(call_rows=len(batch), call_users=batch["user_id"].nunique())

    out = map_user_batches(frame, per_call, "user_id long, value double, call_rows long, call_users long",
                           partitions=3, max_rows=40).toPandas()
    assert out["user_id"].is_unique and set(out["user_id"]) == set(rows["user_id"])
    expected = rows.groupby("user_id")["value"].sum()
    assert np.allclose(out.set_index("user_id")["value"].sort_index(), expected.sort_index())
    # A call stops at the first user boundary past 40 rows (users here have ~12 rows).
    assert out["call_rows"].max() < 40 + rows["user_id"].value_counts().max()
    assert out["call_users"].max() < 40


def test_a_worker_keeps_only_the_last_shipped_model():
    loads = []
    for key in ("a", "a", "b", "a"):
        load_once(key, lambda key=key: loads.append(key) or key)
    assert loads == ["a", "b", "a"]
