"""The code location: every asset, job and resource of dw_assets (``dagster dev -w workspace.yaml``)."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor
from dagster_pyspark import LazyPySparkResource

from dw_assets.embeddings.assets import embedding_assets
from dw_assets.evaluation.assets import evaluation_assets
from dw_assets.ingest.assets import ingest_assets
from dw_assets.ingest.spark import settings_from_env, use_this_interpreter
from dw_assets.lake.resources import LakeIOManager, LakeResource
from dw_assets.partitions import weekly_partitions
from dw_assets.retrieval.assets import retrieval_assets

use_this_interpreter()

ALL_ASSETS = [*ingest_assets, *embedding_assets, *retrieval_assets, *evaluation_assets]

# One process per run: every Spark asset shares one local Spark session (JVM).
weekly_job = define_asset_job(
    "weekly_discover_job",
    selection=AssetSelection.all(),
    partitions_def=weekly_partitions,
    executor_def=in_process_executor,
    description="Everything the week needs, from landed logs to published playlists.",
)


def build_resources(lake_root: str | None = None) -> dict:
    """Resources for one deployment; ``lake_root`` overrides ``DW_LAKE``."""
    lake = LakeResource(root=lake_root) if lake_root else LakeResource()
    pyspark = LazyPySparkResource(spark_config=settings_from_env().as_conf())
    return {
        "lake": lake,
        "pyspark": pyspark,
        "io_manager": LakeIOManager(lake=lake, pyspark=pyspark),
    }


defs = Definitions(assets=ALL_ASSETS, jobs=[weekly_job], resources=build_resources())
