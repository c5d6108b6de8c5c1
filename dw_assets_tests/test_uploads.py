"""New audio uploads: the cursor never rescans history, and dropped clips become searchable before Sunday."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dagster import (
    AssetCheckSeverity,
    AssetSelection,
    DagsterInstance,
    SensorResult,
    build_sensor_context,
    materialize,
)

from dw_assets.automation.runner import QUIET
from dw_assets.automation.sensors import AUDIO_UPLOADS, NEW_TRACK_VECTORS, audio_upload_sensor
from dw_assets.automation.uploads import UploadCursor, list_upload_folder, scan_uploads
from dw_assets.embeddings.two_tower_data import TwoTowerConfig
from dw_assets.embeddings.user_tower import read_user_embeddings
from dw_assets.lake.resources import LakeResource
from dw_assets.retrieval.ann import AnnConfig, build_index, clustered_vectors, exact_search
from dw_assets.retrieval.delta import DeltaIndex, search_with_delta

WAV = b"RIFF....WAVE"  # the listing never opens a clip; bytes only matter where clips are embedded


def _land(landing: Path, day: str, names: list[str]) -> None:
    folder = landing / "audio" / day
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(WAV)


def _ids(scan) -> list[tuple[str, int]]:
    return [(u.upload_date, u.track_id) for u in scan.uploads]


# ---------------------------------------------------------------- cursor and listing


def test_ticks_list_only_the_cursor_folder_and_newer_ones(tmp_path):
    landing = tmp_path / "landing"
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        _land(landing, day, [f"{day[-1]}1.wav", f"{day[-1]}2.wav"])
    (landing / "audio" / "not-a-date").mkdir()

    first = scan_uploads(str(landing), UploadCursor())
    # history (older folders) is the weekly audio_embeddings' job: the first tick starts at the newest folder
    assert first.listed_folders == ["2026-01-03"] and _ids(first) == [("2026-01-03", 31), ("2026-01-03", 32)]
    cursor = UploadCursor.from_json(first.cursor.to_json())
    assert cursor == UploadCursor("2026-01-03", (31, 32))

    idle = scan_uploads(str(landing), cursor)
    assert idle.uploads == [] and idle.listed_folders == ["2026-01-03"] and idle.cursor == cursor

    _land(landing, "2026-01-01", ["19.wav"])  # late clip in a closed folder: not looked for
    _land(landing, "2026-01-03", ["33.wav", ".34.wav.tmp"])  # more today, plus a writer's temp file
    _land(landing, "2026-01-04", ["41.wav"])
    grown = scan_uploads(str(landing), cursor)
    assert grown.listed_folders == ["2026-01-03", "2026-01-04"]
    assert _ids(grown) == [("2026-01-03", 33), ("2026-01-04", 41)]
    assert grown.ignored == ["2026-01-03/.34.wav.tmp"] and grown.upload_dates == ["2026-01-03", "2026-01-04"]
    assert grown.cursor == UploadCursor("2026-01-04", (41,))

    after = scan_uploads(str(landing), grown.cursor)
    assert after.uploads == [] and after.listed_folders == ["2026-01-04"]
    assert [u.track_id for u in list_upload_folder(str(landing), "2026-01-03")] == [31, 32, 33]


def test_s3_listing_starts_after_the_cursor_folder(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    lake = LakeResource(root="s3://dw-uploads/prod", s3_endpoint_url=s3_endpoint).open()
    client = lake.s3_client
    client.create_bucket(Bucket="dw-uploads")

    def put(day: str, name: str) -> None:
        client.put_object(Bucket="dw-uploads", Key=f"prod/landing/audio/{day}/{name}", Body=WAV + name.encode())

    for day in ("2026-01-01", "2026-01-02"):
        put(day, f"{day[-1]}1.wav")
    first = scan_uploads(lake.landing, UploadCursor(), client)
    assert _ids(first) == [("2026-01-02", 21)] and first.listed_folders == ["2026-01-02"]

    put("2026-01-01", "18.wav")  # closed folder: StartAfter skips it on the server side
    put("2026-01-02", "22.wav")
    put("2026-01-03", "31.wav")
    put("2026-01-03", "notes.txt")
    grown = scan_uploads(lake.landing, first.cursor, client)
    assert _ids(grown) == [("2026-01-02", 22), ("2026-01-03", 31)]
    assert grown.listed_folders == ["2026-01-02", "2026-01-03"] and grown.ignored == ["2026-01-03/notes.txt"]
    assert scan_uploads(lake.landing, grown.cursor, client).uploads == []

    clip = next(u for u in grown.uploads if u.track_id == 31)
    assert clip.location == "s3://dw-uploads/prod/landing/audio/2026-01-03/31.wav"
    assert lake.landing_fs().read_location(clip.location) == WAV + b"31.wav"
    with pytest.raises(FileNotFoundError):
        lake.landing_fs().read_location("s3://dw-uploads/prod/landing/audio/2026-01-03/99.wav")


def test_the_sensor_adds_a_partition_and_requests_a_run_per_upload_day(tmp_path):
    landing = tmp_path / "landing"
    _land(landing, "2026-01-01", ["11.wav"])
    instance = DagsterInstance.ephemeral()
    resources = {"lake": LakeResource(root=str(tmp_path))}

    first = audio_upload_sensor(build_sensor_context(instance=instance, resources=resources))
    assert isinstance(first, SensorResult)
    assert [r.partition_key for r in first.run_requests] == ["2026-01-01"]
    assert first.dynamic_partitions_requests[0].partition_keys == ["2026-01-01"]
    instance.add_dynamic_partitions(AUDIO_UPLOADS, ["2026-01-01"])

    idle = audio_upload_sensor(build_sensor_context(instance=instance, cursor=first.cursor, resources=resources))
    assert not idle.run_requests and idle.skip_reason and idle.cursor == first.cursor

    _land(landing, "2026-01-01", ["12.wav"])  # same day, more clips: the same partition runs again
    again = audio_upload_sensor(build_sensor_context(instance=instance, cursor=first.cursor, resources=resources))
    assert [r.partition_key for r in again.run_requests] == ["2026-01-01"] and not again.dynamic_partitions_requests
    assert again.run_requests[0].run_key != first.run_requests[0].run_key
    assert again.run_requests[0].asset_selection == [NEW_TRACK_VECTORS]


# ---------------------------------------------------------------- delta index


def test_main_plus_delta_search_equals_exact_search_over_both():
    vectors = clustered_vectors(1_200, 16, 8, seed=3)
    ids = np.arange(1, 1_201, dtype=np.int64) * 7
    main = build_index(ids[:1_000], vectors[:1_000], AnnConfig(kind="ivf_flat", nlist=8, nprobe=8))
    # the delta: 200 new tracks plus 5 re-uploads whose newer vectors replace the main index's
    replaced = ids[[3, 50, 400, 700, 999]]
    fresh = clustered_vectors(5, 16, 2, seed=4)
    delta = DeltaIndex(np.r_[ids[1_000:], replaced], np.r_[vectors[1_000:], fresh], "v1")
    queries = clustered_vectors(40, 16, 8, seed=5)

    scores, found = search_with_delta(main, delta, queries, 50)

    union = vectors.copy()
    union[[3, 50, 400, 700, 999]] = fresh
    truth_scores, truth = exact_search(union, ids, queries, 50)
    assert all(len(set(row)) == 50 for row in found)
    np.testing.assert_array_equal(np.sort(found, axis=1), np.sort(truth, axis=1))
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-5, atol=1e-5)
    assert np.isin(ids[1_000:], found).any()  # new tracks are found beside the weekly ones


def test_delta_pads_when_both_indexes_hold_fewer_than_k_and_later_uploads_win():
    main = build_index(np.array([1, 2]), np.eye(3, dtype=np.float32)[:2], AnnConfig(kind="flat"))
    older = DeltaIndex(np.array([5]), np.array([[0.0, 0.0, 1.0]], np.float32), "v1")
    newer = DeltaIndex(np.array([5, 6]), np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 0.5]], np.float32), "v1")
    delta = DeltaIndex.combine([older, newer])
    scores, found = search_with_delta(main, delta, np.array([[0.1, 0.2, 1.0]], np.float32), 6)
    assert found.tolist() == [[5, 6, 2, 1, -1, -1]] and scores[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="model versions"):
        DeltaIndex.combine([older, DeltaIndex(np.array([7]), np.ones((1, 3), np.float32), "v2")])
    assert search_with_delta(main, None, np.array([[0.1, 0.2, 1.0]], np.float32), 2)[1].tolist() == [[2, 1]]


# ---------------------------------------------------------------- end to end on a tiny world

MODELS_WEEK = "2026-01-12"  # the second week: the two-tower validates on its last 7 days, trains on the first
UPLOAD_DAY = "2026-01-28"  # after every folder the simulator landed


@pytest.fixture(scope="module")
def weekly_models(tmp_path_factory, spark):
    """A two-week tiny world with week 2's weekly models (CNN, two-tower, vectors, FAISS) materialized; the
    two-tower trained with warm starts of ``TRAINED_NEIGHBOURS`` anchors (not the default)."""
    from dw_assets.automation.runner import PER_WEEK_ASSETS
    from dw_assets.definitions import ALL_ASSETS, build_resources
    from dw_assets.simulate import config_for, simulate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("uploads_world")
    config = config_for("tiny", weeks=2)
    simulate(config, root)
    instance = DagsterInstance.ephemeral()
    quick = {"audio_embeddings": {"config": {"epochs": 8}},
             "two_tower_model": {"config": {"epochs": 3, "cold_neighbours": TRAINED_NEIGHBOURS}},
             "faiss_index": {"config": {"recall_sample_users": 200}}}
    models = ("track_stats", "user_profiles", "item2vec_embeddings", "audio_embeddings", "audio_vectors",
              "audio_features", "two_tower_model", "track_embeddings", "user_embeddings", "faiss_index")
    for week, selection in (("2026-01-05", PER_WEEK_ASSETS), (MODELS_WEEK, (*PER_WEEK_ASSETS, *models))):
        result = materialize(ALL_ASSETS, selection=AssetSelection.assets(*selection), partition_key=week,
                             resources=build_resources(str(root)), instance=instance,
                             run_config={**QUIET, "ops": quick if week == MODELS_WEEK else {}})
        assert result.success, week
    return root, config, instance


TRAINED_NEIGHBOURS = 6  # the weekly models' warm start: serving must take the model's own


def _trained(root: Path):
    from dw_assets.embeddings.two_tower import TrainedTwoTower
    from dw_assets.lake.storage import Lake

    lake = Lake(str(root))
    return lake, TrainedTwoTower.from_bytes(
        lake.read_artifact(lake.uri("models", "two_tower_model", MODELS_WEEK)).files["two_tower.bin"])


def test_a_new_track_gets_the_vector_the_weekly_run_gives_a_cold_release(weekly_models):
    """The weekly cold tracks, warm-started by the incremental rule from their audio alone, match track_embeddings:
    both with the anchors the model trained with (``cold_neighbours`` is the two-tower's training setting)."""
    from dw_assets.embeddings.audio_table import audio_vectors_of
    from dw_assets.embeddings.incremental import warm_start_from_audio
    from dw_assets.embeddings.vector_table import track_vectors_of

    root, _, _ = weekly_models
    lake, trained = _trained(root)
    audio_ids, audio_vectors = audio_vectors_of(lake.read_frame(lake.uri("models", "audio_vectors", MODELS_WEEK)))
    track_ids, track_vectors = track_vectors_of(lake.read_frame(lake.uri("models", "track_embeddings", MODELS_WEEK)),
                                                "track_embeddings")
    features = trained.features
    cold = features.track_ids[features.track_is_cold & ~features.track_audio_missing]
    assert len(cold) > 20
    audio = audio_vectors[np.searchsorted(audio_ids, cold)]
    weekly = track_vectors[np.searchsorted(track_ids, cold)]
    assert trained.config.cold_neighbours == TRAINED_NEIGHBOURS != TwoTowerConfig.cold_neighbours
    same = warm_start_from_audio(trained, cold, audio, trained.config.cold_neighbours)
    np.testing.assert_allclose(np.einsum("ij,ij->i", same.vectors, weekly), 1.0, atol=1e-4)
    default = warm_start_from_audio(trained, cold, audio, TwoTowerConfig.cold_neighbours)
    # the default's anchors give other vectors: the weekly ones are the model's own warm start, not a near miss
    off, exact = np.abs(default.vectors - weekly).max(), np.abs(same.vectors - weekly).max()
    assert off > 20 * max(exact, 1e-6), (off, exact)
    # as brand-new ids (no catalog row, no genre, no artist) the vectors stay close to the weekly ones
    unknown = warm_start_from_audio(trained, cold + 10**7, audio, trained.config.cold_neighbours)
    assert np.einsum("ij,ij->i", unknown.vectors, weekly).mean() > 0.9
    # with the catalog's artist and genre (a new track whose catalog row landed first) neighbours share its genre
    rows = features.track_rows(cold)
    named = warm_start_from_audio(trained, cold + 10**7, audio, trained.config.cold_neighbours,
                                  artist_ids=features.artist_ids[features.track_artist[rows]],
                                  genres=[features.genres[g] for g in features.track_genre[rows]])
    assert named.same_genre.all() and np.einsum("ij,ij->i", named.vectors, weekly).mean() > 0.9
    again = warm_start_from_audio(trained, cold + 10**7, audio, trained.config.cold_neighbours)
    np.testing.assert_array_equal(unknown.vectors, again.vectors)


def _drop_clips(root: Path, config, sources: np.ndarray, new_ids: np.ndarray) -> int:
    """Clips for new track ids that sound like ``sources`` (their audible attributes, a new rendering)."""
    from dw_assets.simulate.audio import ClipBatch, write_batch
    from dw_assets.simulate.catalog import make_catalog, make_genres

    catalog = make_catalog(config, make_genres(config))
    at = sources - 1  # track_id = catalog index + 1
    write_batch(ClipBatch(
        track_id=new_ids, upload_date=[UPLOAD_DAY] * len(new_ids),
        pitch_hz=catalog.pitch_hz[at].astype(np.float64), timbre=catalog.timbre[at].astype(np.float64),
        brightness=catalog.brightness[at], tempo_bpm=catalog.tempo_bpm[at].astype(np.float64),
        articulation=catalog.articulation[at].astype(np.float64), noisiness=catalog.noisiness[at],
        bad_kind=[""] * len(new_ids), sample_rate=config.sample_rate,
        samples=int(round(config.audio_seconds * config.sample_rate)), seed=config.seed + 1, chunk=0,
    ), str(root / "landing" / "audio"))
    corrupt = int(new_ids.max()) + 1
    (root / "landing" / "audio" / UPLOAD_DAY / f"{corrupt}.wav").write_bytes(b"JUNK" + bytes(range(256)) * 8)
    return corrupt


def test_dropped_clips_become_searchable_through_sensor_run_and_delta(weekly_models):
    from dw_assets.definitions import ALL_ASSETS, build_resources
    from dw_assets.embeddings.item2vec import Item2VecConfig
    from dw_assets.embeddings.new_tracks import delta_index, new_audio_vectors, new_tracks_extending
    from dw_assets.lake.storage import Artifact
    from dw_assets.retrieval.ann import AnnIndex
    from dw_assets.simulate import load_truth
    from dw_assets_tests.test_pipeline import taste_hit_rates

    root, config, instance = weekly_models
    lake, trained = _trained(root)
    resources = {"lake": LakeResource(root=str(root))}
    baseline = audio_upload_sensor(build_sensor_context(instance=instance, resources=resources))

    # New tracks that sound like played tracks of the week; one upload is corrupt.
    features = trained.features
    anchors = features.track_ids[trained.trained_tracks & ~features.track_audio_missing]
    sources = np.random.default_rng(0).choice(anchors, size=8, replace=False)
    new_ids = np.arange(1, 9, dtype=np.int64) + int(load_truth(root).track_ids.max()) + 1_000
    corrupt = _drop_clips(root, config, sources, new_ids)

    tick = audio_upload_sensor(build_sensor_context(instance=instance, cursor=baseline.cursor, resources=resources))
    assert [r.partition_key for r in tick.run_requests] == [UPLOAD_DAY]
    assert tick.dynamic_partitions_requests[0].partition_keys == [UPLOAD_DAY]
    assert json.loads(tick.cursor)["seen"] == sorted([*new_ids.tolist(), corrupt])
    idle = audio_upload_sensor(build_sensor_context(instance=instance, cursor=tick.cursor, resources=resources))
    assert not idle.run_requests and UPLOAD_DAY in idle.skip_reason.skip_message

    instance.add_dynamic_partitions(AUDIO_UPLOADS, tick.dynamic_partitions_requests[0].partition_keys)
    # The weekly models are its inputs (every week, through the IO manager): the newest complete week's are read.
    run = materialize(ALL_ASSETS, selection=[NEW_TRACK_VECTORS], partition_key=UPLOAD_DAY,
                      resources=build_resources(str(root)), instance=instance, tags=tick.run_requests[0].tags,
                      raise_on_error=False)
    assert run.success  # the corrupt clip is reported, not fatal
    check = run.get_asset_check_evaluations()[0]
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert check.metadata["skipped_by_problem"].value == {"corrupt": 1}

    index_artifact = lake.read_artifact(lake.uri("models", "faiss_index", MODELS_WEEK))
    assert run.asset_materializations_for_node("new_track_vectors")[0].metadata["models_week"].value == MODELS_WEEK
    uploads = {day: lake.read_artifact(lake.uri("models", "new_track_vectors", day))
               for day in instance.get_dynamic_partitions(AUDIO_UPLOADS)}
    parts = new_tracks_extending(uploads, index_artifact.model_version)
    assert len(parts) == 1 and [p["track_id"] for p in parts[0].meta["problems"]] == [corrupt]
    main = AnnIndex.from_bytes(index_artifact.files["index.bin"])
    delta = delta_index(parts, main.dim)
    assert sorted(delta.ids.tolist()) == new_ids.tolist()
    audio_ids, audio_vectors = new_audio_vectors(parts, dim=Item2VecConfig.dim)
    assert audio_ids.tolist() == new_ids.tolist() and np.allclose(np.linalg.norm(audio_vectors, axis=1), 1, atol=1e-5)
    # a re-run of the partition (e.g. the sensor's next request for that day) replaces it with the same vectors
    assert materialize(ALL_ASSETS, selection=[NEW_TRACK_VECTORS], partition_key=UPLOAD_DAY,
                       resources=build_resources(str(root)), instance=instance).success
    rerun = lake.read_artifact(lake.uri("models", "new_track_vectors", UPLOAD_DAY))
    assert rerun.files["vectors.npy"] == parts[0].files["vectors.npy"]
    # Serving settings other than the index's (tower_embeddings') fail the run naming them; the day's
    # vectors in the lake stay those the index can be searched with.
    other = materialize(ALL_ASSETS, selection=[NEW_TRACK_VECTORS], partition_key=UPLOAD_DAY,
                        resources=build_resources(str(root)), instance=instance, raise_on_error=False,
                        run_config={**QUIET, "ops": {"new_track_vectors": {"config": {"popularity_weight": 0.5}}}})
    assert not other.success
    failure = next(e for e in other.all_events if e.is_step_failure).step_failure_data.error
    assert "popularity_weight=0.5" in str(failure) and "tower_embeddings" in str(failure), failure
    assert lake.read_artifact(lake.uri("models", "new_track_vectors", UPLOAD_DAY)).files == rerun.files
    # An upload day built on other models (another two-tower space) is never merged.
    assert new_tracks_extending({**uploads, "2026-01-29": Artifact({}, {"model_version": "other"})},
                                index_artifact.model_version) == parts

    # The week's candidates read every upload day as an input and search those extending its models.
    weekly = materialize(ALL_ASSETS, selection=["candidates"], partition_key=MODELS_WEEK,
                         resources=build_resources(str(root)), instance=instance, run_config=QUIET)
    assert weekly.asset_materializations_for_node("candidates")[0].metadata[
        "uploaded_tracks_searched"].value == len(new_ids)
    found = lake.read_frame(lake.uri("gold", "candidates", MODELS_WEEK), columns=["track_id"])
    assert found["track_id"].isin(new_ids).any()

    # Users whose hidden taste matches a new track's sound get it in their ANN top-k; random users rarely do.
    truth = load_truth(root)
    user_ids, user_vectors, _ = read_user_embeddings(lake, MODELS_WEEK)
    k = len(main) // 10  # a tenth of the tiny catalog (as the weekly cold-start test)
    _, top = search_with_delta(main, delta, user_vectors, k)
    assert not np.isin(new_ids, main.search(user_vectors, k)[1]).any()  # the weekly index alone never has them
    # each new track's sound is its source's
    matched_rate, random_rate = taste_hit_rates(truth, user_ids, top, new_ids, sources, seed=1)
    assert matched_rate > 0.2 and matched_rate >= 3 * random_rate, (matched_rate, random_rate)

    # A day above the cap embeds the lowest new ids up to it; the others wait for the weekly run.
    from dw_assets.embeddings import incremental
    from dw_assets.embeddings.audio import AudioModel

    audio_model = AudioModel.from_bytes(lake.read_artifact(lake.uri("models", "audio_embeddings", MODELS_WEEK))
                                        .files["model.pt"])
    clips = {u.track_id: u.location for u in list_upload_folder(root / "landing", UPLOAD_DAY)}
    capped = incremental.new_track_vectors(clips, audio_model, trained, trained.config.cold_neighbours, max_uploads=3)
    assert capped.track_ids.tolist() == new_ids[:3].tolist() and capped.stats["deferred"] == len(clips) - 3
