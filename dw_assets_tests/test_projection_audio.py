"""dw bench project's audio rows: the CNN trains on a capped sample (fixed work) and embeds every track's
clip on the executors (linear in tracks); the day's uploads are outside the weekly window."""

import pytest

from dw_assets.bench.projection import DEFAULT_VOLUMES, project


def test_audio_training_is_fixed_by_its_cap_and_embedding_grows_with_tracks():
    document = {"stages": [{"stage": "audio", "throughput": 2000.0, "cores": 2}]}
    small = project(document, users=1e6, tracks=1e7, window_hours=24, volumes=DEFAULT_VOLUMES)
    large = project(document, users=4e6, tracks=1e8, window_hours=24, volumes=DEFAULT_VOLUMES)
    rows = [{r["stage"].split(" (")[0].split(",")[0]: r for r in result["rows"]} for result in (small, large)]
    training, embedding = "audio CNN training", "audio CNN embedding"
    assert rows[0][training]["core_hours"] == rows[1][training]["core_hours"] == pytest.approx(
        DEFAULT_VOLUMES["audio_training_clips"] * DEFAULT_VOLUMES["audio_epochs"] / 1000.0 / 3600)
    assert rows[0][embedding]["work"] == 1e7 and rows[1][embedding]["core_hours"] == pytest.approx(1e8 / 1000 / 3600)
    uploads = rows[1]["audio CNN"]
    assert "not in the window" in uploads["note"]
    in_window = sum(r["core_hours"] for r in large["rows"] if r is not uploads)
    assert large["total_core_hours_in_window"] == pytest.approx(in_window)
