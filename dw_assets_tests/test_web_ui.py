"""The Dagster UI of the code location, in a real headless browser (Debian's chromium via Playwright).

Starts ``dagster dev -w workspace.yaml`` (what ``make ui`` runs) on a free loopback port with an
empty lake and a throwaway ``DAGSTER_HOME``, then checks what a developer sees: every asset of the
graph inside its group, and on an asset's page its Pandera check, its weekly partitions and its
metadata. Screenshots of the graph and of the asset's partitions are kept under ``data/ui/`` for review.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dw_assets.definitions import defs
from dw_assets.partitions import weekly_partitions
from dw_assets_tests.redis_server import free_port

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REVIEW_DIR = REPO / "data" / "ui"  # git-ignored: the screenshots a developer looks at
START_TIMEOUT_S = 60
RENDER_TIMEOUT_MS = 45_000


def asset_groups() -> dict[str, str]:
    """Every asset of the code location -> its group."""
    graph = defs.resolve_asset_graph()
    return {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}


def shown_as(name: str, label: str) -> bool:
    """``label`` is ``name``, or the UI's middle truncation of it (``publish…_playlists``)."""
    if label == name:
        return True
    head, sep, tail = label.partition("…")
    return bool(sep) and name.startswith(head) and name.endswith(tail) and len(head) + len(tail) < len(name)


def keep_screenshot(page, tmp_path: Path, name: str) -> None:
    """Screenshot into the test's tmp dir and a copy under ``data/ui/`` (pytest prunes old tmp dirs)."""
    page.screenshot(path=tmp_path / name)
    REVIEW_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / name, REVIEW_DIR / name)


@contextlib.contextmanager
def dagster_ui(tmp_path: Path) -> Iterator[str]:
    """``dagster dev -w workspace.yaml`` on 127.0.0.1:<free port>; yields the base URL, stops it after."""
    home, lake = tmp_path / "dagster_home", tmp_path / "lake"
    (home / ".nux").mkdir(parents=True)
    lake.mkdir()
    # No telemetry from a test; the "join the community" dialog counts as seen (it would cover the graph).
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DW_LAKE": str(lake)}
    port = free_port()
    log = tmp_path / "dagster_dev.log"
    dagster = Path(sys.executable).parent / "dagster"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"dagster dev exited with {server.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/server_info", timeout=2) as reply:
                if reply.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not serve {base} within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base
    except BaseException:
        print(f"--- dagster dev output ---\n{log.read_text()[-4000:]}")
        raise
    finally:
        # dagster dev runs the webserver, the daemon and a code server: stop the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is missing ({CHROMIUM}): scripts/setup.sh installs it (apt-get install "
                    "chromium); the UI test never lets Playwright download a browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: scripts/setup.sh installs the dev extra (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def test_asset_graph_checks_partitions_and_metadata_render_in_chromium(tmp_path, browser):
    groups = asset_groups()
    weeks = weekly_partitions.get_partition_keys()
    with dagster_ui(tmp_path) as base:
        # A vertical layout fits the whole graph in one screen with readable names.
        context = browser.new_context(viewport={"width": 2400, "height": 1600})
        context.add_init_script("localStorage.setItem('asset-graph-direction', JSON.stringify('vertical'))")
        page = context.new_page()
        expanded = ",".join(f"global@global:{group}" for group in sorted(set(groups.values())))
        page.goto(f"{base}/asset-groups?expanded={expanded}")  # the global lineage, every group open

        # The code location loads in its own process: wait until every asset has its node.
        graph = page.locator("[data-svg-viewport]").first
        graph.get_by_text("raw_play_events", exact=True).wait_for(timeout=RENDER_TIMEOUT_MS)
        deadline = time.monotonic() + 15
        while True:
            labels = graph.locator("foreignObject").evaluate_all(
                "nodes => nodes.flatMap(n => Array.from(n.querySelectorAll('*')))"
                ".filter(e => e.childElementCount === 0 && e.textContent.trim())"
                ".map(e => e.textContent.trim())"
            )
            missing = [name for name in groups if not any(shown_as(name, label) for label in labels)]
            if not missing or time.monotonic() > deadline:
                break
            page.wait_for_timeout(250)
        page.wait_for_timeout(500)  # let the viewport settle before the picture
        keep_screenshot(page, tmp_path, "asset_graph.png")

        assert not missing, f"assets without a node in the graph: {missing}; labels shown: {labels}"
        for key_asset in ("raw_play_events", "two_tower_model", "candidates", "ranked_playlists",
                          "offline_evaluation", "model_monitoring"):
            assert key_asset in labels, key_asset  # short enough to be shown in full
        assert {"ingest", "embeddings", "retrieval", "ranking", "serving", "evaluation",
                "monitoring"} <= set(groups.values())  # the groups the README lists
        assert set(groups.values()) <= set(labels), f"group boxes missing from the graph: {labels}"

        # One asset's page: its blocking Pandera check, the weekly partitions, its metadata.
        page.goto(f"{base}/assets/ranked_playlists?view=checks")
        page.get_by_text("pandera_schema").first.wait_for(timeout=RENDER_TIMEOUT_MS)
        page.get_by_text("This is a blocking asset check.").wait_for(timeout=RENDER_TIMEOUT_MS)

        page.goto(f"{base}/assets/ranked_playlists?view=partitions")
        page.get_by_text(f"{len(weeks)} Partitions").first.wait_for(timeout=RENDER_TIMEOUT_MS)
        partitions = page.inner_text("body")
        assert weeks[0] == os.environ.get("DW_FIRST_WEEK", "2026-01-05")
        assert weeks[0] in partitions and weeks[-1] in partitions  # the range picker: first to latest week
        assert f"Missing ({len(weeks)})" in partitions  # an empty lake: nothing materialized yet
        keep_screenshot(page, tmp_path, "ranked_playlists_partitions.png")

        page.goto(f"{base}/assets/ranked_playlists")
        page.get_by_text("dw/layer").first.wait_for(timeout=RENDER_TIMEOUT_MS)
        overview = page.inner_text("body")
        assert "gold" in overview and "is_exploration" in overview  # layer metadata and the column schema
        assert "ranking" in overview  # the group in the definition panel
        context.close()
