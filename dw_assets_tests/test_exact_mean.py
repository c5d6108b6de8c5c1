"""Means that do not depend on the order a shuffle delivers rows and partial sums in (two executors merge
blocks in arrival order): ``profiles.exact_mean`` sums as decimal."""

from __future__ import annotations

import pyspark.sql.functions as F

from dw_assets.ingest.profiles import exact_mean


def test_the_mean_is_the_same_whatever_the_order_of_the_rows(spark):
    orders = ([1e16, -1e16, 1.0, 1.0], [1e16, 1.0, -1e16, 1.0])  # a double sum: 2.0 and 1.0
    frames = [spark.createDataFrame([(v,) for v in order], "x double").coalesce(1) for order in orders]
    plain = [frame.agg(F.avg("x")).first()[0] for frame in frames]
    assert plain[0] != plain[1]  # what the double sum does with these rows
    exact = [frame.agg(exact_mean("x")).first()[0] for frame in frames]
    assert exact == [0.5, 0.5]
    # Percentile-like values (the profiles' use): same as the double mean to the last few bits.
    values = [i / 7 for i in range(1, 50)]
    frame = spark.createDataFrame([(v,) for v in values], "x double")
    assert abs(frame.agg(exact_mean("x")).first()[0] - sum(values) / len(values)) < 1e-15
