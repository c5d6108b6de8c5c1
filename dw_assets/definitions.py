"""The code location: every asset, job and resource of dw_assets (``dagster dev -w workspace.yaml``)."""

from __future__ import annotations

from pathlib import Path

from dagster import Definitions, in_process_executor
from dagster_pyspark import LazyPySparkResource

from dw_assets import settings
from dw_assets.automation.schedules import jobs, schedules
from dw_assets.automation.sensors import audio_upload_sensor
from dw_assets.embeddings.assets import embedding_assets
from dw_assets.embeddings.incremental_assets import incremental_assets
from dw_assets.evaluation.assets import evaluation_assets
from dw_assets.ingest.assets import ingest_assets
from dw_assets.ingest.spark import settings_from_env, use_this_interpreter
from dw_assets.lake.resources import LakeIOManager, LakeResource
from dw_assets.ranking.assets import ranking_assets
from dw_assets.retrieval.assets import retrieval_assets
from dw_assets.serving.assets import PlaylistStoreResource, serving_assets

use_this_interpreter()

# The upload sensor's asset (partitioned by upload date, outside the weekly jobs) is here too: the weekly
# candidates read its partitions as an input.
ALL_ASSETS = [*ingest_assets, *embedding_assets, *retrieval_assets, *ranking_assets, *serving_assets,
              *evaluation_assets, *incremental_assets]

def default_store_url(lake_root: str) -> str:
    """``DW_STORE_URL``, else an embedded SQLite file beside a local lake."""
    if settings.is_set("DW_STORE_URL"):
        return settings.get("DW_STORE_URL")
    if lake_root.startswith("s3://"):
        return ""  # no embedded default beside an S3 lake; publishing says to set DW_STORE_URL
    return "sqlite:///" + str(Path(lake_root).resolve() / "serving" / "playlists.db")


def build_resources(lake_root: str | None = None, store_url: str | None = None) -> dict:
    """Resources for one deployment; ``lake_root`` overrides ``DW_LAKE``, ``store_url`` ``DW_STORE_URL``."""
    lake = LakeResource(root=lake_root) if lake_root else LakeResource()
    pyspark = LazyPySparkResource(spark_config=settings_from_env().as_conf())
    return {
        "lake": lake,
        "pyspark": pyspark,
        "io_manager": LakeIOManager(lake=lake, pyspark=pyspark),
        "playlist_store": PlaylistStoreResource(url=store_url or default_store_url(lake.root)),
    }


def location_resources() -> dict:
    """The code location's resources: ``build_resources()`` (the current values checked: a URL carrying
    credentials is refused now), with the lake root, S3 endpoint and store URL given as
    ``dagster.EnvVar`` where the variable is set, so the UI shows which variable each field reads and
    a run resolves it when it starts."""
    resources = build_resources()
    lake = resources["lake"]
    if any(settings.is_set(name) for name in ("DW_LAKE", "DW_S3_ENDPOINT_URL")):
        lake = LakeResource(root=settings.env_var("DW_LAKE") if settings.is_set("DW_LAKE") else lake.root,
                            s3_endpoint_url=settings.env_var("DW_S3_ENDPOINT_URL")
                            if settings.is_set("DW_S3_ENDPOINT_URL") else None)
    store = resources["playlist_store"]
    if settings.is_set("DW_STORE_URL"):
        store = PlaylistStoreResource(url=settings.env_var("DW_STORE_URL"))
    return {**resources, "lake": lake, "io_manager": LakeIOManager(lake=lake, pyspark=resources["pyspark"]),
            "playlist_store": store}


# In-process for every run, the UI's "Materialize" button included: one Spark session (JVM) per run.
defs = Definitions(assets=ALL_ASSETS, jobs=jobs, schedules=schedules,
                   sensors=[audio_upload_sensor], resources=location_resources(), executor=in_process_executor)
