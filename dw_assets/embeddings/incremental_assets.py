"""``new_track_vectors``: the tracks of one upload day, embedded and warm-started between weekly runs.

Partitioned by ``audio_uploads`` (one dynamic partition per upload-date folder, added by
``audio_upload_sensor``). It extends the newest weekly model set in the lake — the week whose
``audio_embeddings``, ``two_tower_model`` and ``faiss_index`` all exist. They are inputs over every week
(``AllPartitionMapping``), read week by week: an upload day has no weekly partition of its own, and the
live index is the newest week's, whatever the upload date; only the newest complete week is read.

Artifact (layer ``models``, ``models/new_track_vectors/week=<upload_date>/``): ``ids.npy`` int64[m],
``vectors.npy`` float32[m, dim] two-tower item vectors (the faiss_index space), ``audio_vectors.npy``
float32[m, d_audio] audio CNN vectors (the item2vec space, for the audio candidate source);
``meta.json`` carries the extended week's index's ``model_version`` (the two-tower's under the serving
settings, ``two_tower_data.serving_version``: so it only ever merges with that week's index),
``models_week``, the two-tower's and the audio model's versions, the unusable clips and counts.
An unusable clip (corrupt, truncated, empty, silent, ...) is reported in metadata and by the
``upload_clips_readable`` check (warn); it never fails the run.

Sizes, bounded by one day's uploads (~100 k tracks a day at the target), all on the driver: the day's
listing (one path per clip, ~10 MB), at most ``UploadDayConfig.max_uploads`` clips read and embedded
(100 k: ~2.6 GB of audio and spectrograms; a busier day's other clips are counted in ``deferred`` and
embedded by the week's ``audio_embeddings``), and m x (64 + 32) float32 of vectors (~40 MB). The weekly
models read from the lake are the two-tower (per track) and the audio CNN.
"""


import io
import time
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    BackfillPolicy,
    MetadataValue,
    Output,
    multi_asset,
)

from dw_assets.automation.sensors import audio_uploads
from dw_assets.automation.uploads import list_upload_folder
from dw_assets.config_fields import config_fields
from dw_assets.embeddings import incremental
from dw_assets.embeddings.audio import AudioModel
from dw_assets.embeddings.incremental import UploadDayConfig
from dw_assets.embeddings.new_tracks import ASSET, AUDIO_VECTORS_FILE
from dw_assets.embeddings.two_tower import TrainedTwoTower, TwoTowerConfig
from dw_assets.embeddings.two_tower_data import require_served
from dw_assets.lake.landing_fs import LandingFS
from dw_assets.lake.resources import LAYER_KEY, PER_PARTITION_KEY, LakeResource, PartitionInputs
from dw_assets.lake.storage import Artifact, LakeError, array_bytes, vectors_artifact

CHECK = "upload_clips_readable"
# What a week must have in the lake to be extended: the CNN, the two-tower, and the live index.
WEEKLY_MODELS = ("audio_embeddings", "two_tower_model", "faiss_index")
CATALOG_FILE = "catalog/tracks.parquet"


class NewTrackVectorsConfig(config_fields(UploadDayConfig)):
    # The serving settings (``SERVING_SETTINGS``) tower_embeddings had for the extended week: the uploads'
    # vectors carry the index's version only when they are the same (else the run fails, naming them).
    popularity_weight: float = TwoTowerConfig.popularity_weight  # the popularity term's weight in the vectors
    query_centroid: float = TwoTowerConfig.query_centroid  # the user vectors' (only in the version here)
    clip_seconds: float | None = None  # None: the weekly model's setting, else the day's median clip length


def latest_model_week(*models: Mapping[str, Artifact]) -> str:
    """The newest week that every one of ``models`` ({week: artifact}, the weekly ``WEEKLY_MODELS`` as the IO
    manager's ``PartitionInputs``: only the weeks the lake holds, nothing read) has."""
    weeks = set.intersection(*(set(m) for m in models))
    if not weeks:
        raise LakeError(f"no week has all of {', '.join(WEEKLY_MODELS)}: run the weekly models first")
    return max(weeks)


def landing_catalog(landing: LandingFS, track_ids: Iterable[int]) -> pd.DataFrame | None:
    """track_id, artist_id, genre rows of ``track_ids`` in the landed catalog (``catalog/tracks.parquet``);
    None when no catalog has landed. Uploads often precede their catalog row: the warm start then uses audio alone.
    """
    wanted = [("track_id", "in", sorted(int(t) for t in track_ids))]
    try:
        # Locally pyarrow reads only the row groups that can hold the wanted ids (the catalog is ~GBs at
        # 100 M tracks); on S3 the object is fetched whole, as before.
        source = io.BytesIO(landing.read_bytes(CATALOG_FILE)) if landing.is_s3 else landing.location(CATALOG_FILE)
        return pd.read_parquet(source, columns=["track_id", "artist_id", "genre"], filters=wanted)
    except FileNotFoundError:
        return None


@multi_asset(
    # The live index is the newest week's, whatever the upload date: every week is an input, read only for
    # the newest week that has all three (an upload day has no weekly partition of its own).
    # Of the index only its version is read (meta.json): the delta is searched beside it by the candidates.
    ins={name: AssetIn(partition_mapping=AllPartitionMapping(),
                       metadata={PER_PARTITION_KEY: "artifact_meta" if name == "faiss_index" else "artifact"})
         for name in WEEKLY_MODELS},
    outs={ASSET: AssetOut(group_name="uploads", metadata={LAYER_KEY: "models"}, dagster_type=Artifact,
                          description="One upload day's new tracks: audio CNN vectors and two-tower vectors "
                                      "warm-started from audio neighbours, searched beside the weekly index.")},
    partitions_def=audio_uploads,
    backfill_policy=BackfillPolicy.multi_run(1),  # one upload day per run: the asset reads its partition key
    check_specs=[AssetCheckSpec(CHECK, asset=ASSET,
                                description="Corrupt, truncated, empty or silent uploads are reported and skipped.")],
)
def new_track_vectors(context: AssetExecutionContext, config: NewTrackVectorsConfig, lake: LakeResource,
                      audio_embeddings: PartitionInputs, two_tower_model: PartitionInputs,
                      faiss_index: PartitionInputs):
    started = time.perf_counter()
    upload_date = context.partition_key
    week = latest_model_week(audio_embeddings, two_tower_model, faiss_index)
    audio, tower = audio_embeddings[week], two_tower_model[week]
    # Vectors the week's index can be searched beside: the same model under the same serving settings.
    trained = TrainedTwoTower.from_bytes(tower.files["two_tower.bin"])
    version = require_served(tower.model_version, config, ASSET, {"faiss_index": faiss_index[week].model_version},
                             cold_neighbours=trained.config.cold_neighbours)
    trained.model.popularity_weight = float(config.popularity_weight)  # a serving knob, as tower_embeddings'
    landing = lake.landing()
    uploads = list_upload_folder(landing, upload_date)
    clips = {u.track_id: u.location for u in uploads}  # one folder: one clip per track
    result = incremental.new_track_vectors(
        clips, AudioModel.from_bytes(audio.files["model.pt"]), trained, trained.config.cold_neighbours,
        landing_catalog(landing, clips), config.clip_seconds, read=landing.read_location,
        max_uploads=config.max_uploads)
    problems = result.problems
    meta = {"model_version": version, "two_tower_version": tower.model_version, "models_week": week,
            "audio_model_version": audio.model_version,
            "upload_date": upload_date, "problems": problems.to_dict("records"),
            "already_indexed": result.already_indexed.tolist(), **result.stats}
    yield Output(
        vectors_artifact(result.track_ids, result.item_vectors, meta,
                         **{AUDIO_VECTORS_FILE: array_bytes(result.audio_vectors)}),
        output_name=ASSET,
        metadata={"model_version": version, "models_week": week, "upload_date": upload_date,
                  **{k: v for k, v in result.stats.items() if np.isscalar(v) and np.isfinite(v)},
                  "elapsed_s": round(time.perf_counter() - started, 1)},
    )
    by_problem = problems["problem"].value_counts().to_dict()
    yield AssetCheckResult(
        asset_key=ASSET, check_name=CHECK, passed=not by_problem, severity=AssetCheckSeverity.WARN,
        metadata={"skipped_by_problem": MetadataValue.json(by_problem), "uploads": len(uploads),
                  "deferred_to_weekly": result.stats["deferred"],
                  "skipped": MetadataValue.md(problems.head(50).to_markdown(index=False)) if by_problem else "none"},
    )


incremental_assets = [new_track_vectors]
