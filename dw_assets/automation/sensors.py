"""The sensor that turns new audio uploads into runs of ``new_track_vectors`` between weekly runs.

Each tick lists the landing zone's audio folder from the stored cursor on (``uploads.scan_uploads``:
no rescans of history), adds every upload date with new clips as a partition of ``audio_uploads``
(dynamic: one partition per upload-date folder), and requests one run of ``new_track_vectors`` for
each such date. A run embeds the whole folder of its date, so a later tick that finds more clips in
the same day's folder requests the same partition again (a new run key) and the run replaces the
partition with the larger batch: idempotent, never a duplicate vector.
"""


import hashlib

from dagster import (
    AssetKey,
    DynamicPartitionsDefinition,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from dw_assets.automation.uploads import UploadCursor, UploadScan, scan_uploads
from dw_assets.lake.resources import LakeResource

AUDIO_UPLOADS = "audio_uploads"
NEW_TRACK_VECTORS = AssetKey("new_track_vectors")
TICK_SECONDS = 300  # uploads become searchable within minutes; listing a day's folder is cheap

# Partition key = upload date (YYYY-MM-DD), the folder name under landing/audio/.
audio_uploads = DynamicPartitionsDefinition(name=AUDIO_UPLOADS)


def upload_run_requests(scan: UploadScan) -> list[RunRequest]:
    """One run of ``new_track_vectors`` per upload date with new clips.

    run_key = date + digest of the new clips' track ids: a retried tick (same cursor, same clips)
    dedups to the same run; more clips in that folder later give a new key.
    """
    requests = []
    for date in scan.upload_dates:
        ids = ",".join(str(u.track_id) for u in scan.uploads if u.upload_date == date)
        digest = hashlib.sha256(ids.encode()).hexdigest()[:12]
        count = ids.count(",") + 1
        requests.append(RunRequest(
            run_key=f"{AUDIO_UPLOADS}:{date}:{digest}",
            partition_key=date,
            asset_selection=[NEW_TRACK_VECTORS],
            tags={"dw/upload_date": date, "dw/new_clips": str(count)},
        ))
    return requests


@sensor(
    name="audio_upload_sensor",
    asset_selection=[NEW_TRACK_VECTORS],
    minimum_interval_seconds=TICK_SECONDS,
    description="New clips under landing/audio/<upload_date>/ → an audio_uploads partition and a "
                "new_track_vectors run, so new tracks are searchable before the weekly run.",
)
def audio_upload_sensor(context: SensorEvaluationContext, lake: LakeResource):
    cursor = UploadCursor.from_json(context.cursor)
    scan = scan_uploads(lake.landing(), cursor)
    if scan.ignored:
        context.log.info(f"ignored {len(scan.ignored)} non-clip names, e.g. {scan.ignored[:3]}")
    if not scan.uploads:
        return SensorResult(skip_reason=SkipReason(f"no new clips in {', '.join(scan.listed_folders) or 'landing'}"),
                            cursor=scan.cursor.to_json())
    new_keys = [d for d in scan.upload_dates if not context.instance.has_dynamic_partition(AUDIO_UPLOADS, d)]
    context.log.info(f"{len(scan.uploads)} new clips in {', '.join(scan.upload_dates)} "
                     f"(listed {', '.join(scan.listed_folders)})")
    return SensorResult(
        run_requests=upload_run_requests(scan),
        dynamic_partitions_requests=[audio_uploads.build_add_request(new_keys)] if new_keys else [],
        cursor=scan.cursor.to_json(),
    )
