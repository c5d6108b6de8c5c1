"""Spark session settings that suit this project (local mode by default)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


def use_this_interpreter() -> None:
    """Spark's Python workers must run the interpreter that has our packages."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"
    shuffle_partitions: int = 8  # small worlds on 2 cores: Spark's 200 default is mostly overhead
    driver_memory: str = "6g"
    arrow_batch_rows: int = 20_000

    def as_conf(self) -> dict[str, str]:
        return {
            "spark.master": self.master,
            "spark.app.name": "dw_assets",
            "spark.driver.memory": self.driver_memory,
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(self.arrow_batch_rows),
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.log.level": "ERROR",
            # Deterministic output file names and counts across re-runs.
            "spark.sql.adaptive.coalescePartitions.enabled": "false",
        }


def settings_from_env() -> SparkSettings:
    """``DW_SPARK_MASTER`` points the same code at a cluster."""
    return SparkSettings(
        master=os.environ.get("DW_SPARK_MASTER", SparkSettings.master),
        shuffle_partitions=int(os.environ.get("DW_SPARK_SHUFFLE_PARTITIONS", SparkSettings.shuffle_partitions)),
        driver_memory=os.environ.get("DW_SPARK_DRIVER_MEMORY", SparkSettings.driver_memory),
    )
