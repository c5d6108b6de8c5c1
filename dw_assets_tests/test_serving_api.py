"""The read-only playlist API over real stores (SQLite, a real redis-server), through FastAPI's TestClient,
and the fixed-rate load generator against a real uvicorn process. Hardening: test_serving_security.py."""

from __future__ import annotations

import gc
import uuid

import pytest
from fastapi.testclient import TestClient

from dw_assets.calendar import week_range
from dw_assets.serving import open_store, publish_week
from dw_assets.serving.api import create_app
from dw_assets.serving.loadtest import run_load, synthetic_playlists
from dw_assets_tests.redis_server import RedisServer, delete_prefix, redis_for_tests, with_options

W = week_range("2026-01-05", 3)
LAST_WEEK, THIS_WEEK = synthetic_playlists(12, seed=0), synthetic_playlists(12, seed=1)
TRACK_KEYS = {"position", "track_id", "score", "source", "is_exploration", "artist_id", "genre"}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_for_tests(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store_url(request, tmp_path_factory):
    """A store with two published weeks; W[1] is live."""
    prefix = f"dwapi-{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/playlists.db"
    else:
        url = with_options(request.getfixturevalue("redis_url"), prefix=prefix)
    with open_store(url) as store:
        publish_week(store, W[0], LAST_WEEK)
        publish_week(store, W[1], THIS_WEEK)
    yield url
    if request.param == "redis":
        delete_prefix(url, prefix)


@pytest.fixture(scope="module")
def client(store_url):
    with TestClient(create_app(store_url)) as test_client:
        yield test_client


def test_playlist_of_the_live_week(client):
    response = client.get("/v1/users/3/discover-weekly")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["user_id"], body["week"]) == (3, W[1])
    assert [t["position"] for t in body["tracks"]] == list(range(1, 31))
    assert all(set(t) == TRACK_KEYS for t in body["tracks"])
    expected = THIS_WEEK[THIS_WEEK["user_id"] == 3].sort_values("position")
    assert [t["track_id"] for t in body["tracks"]] == expected["track_id"].tolist()
    assert [t["score"] for t in body["tracks"]] == pytest.approx(expected["score"].tolist())
    assert client.get("/v1/weeks/current").json() == {"week": W[1]}
    assert client.get("/healthz").status_code == 200


def test_an_earlier_week_by_query(client):
    body = client.get(f"/v1/users/3/discover-weekly?week={W[0]}").json()
    expected = LAST_WEEK[LAST_WEEK["user_id"] == 3].sort_values("position")
    assert body["week"] == W[0]
    assert [t["track_id"] for t in body["tracks"]] == expected["track_id"].tolist()


def test_the_fast_path_answers_exactly_what_the_full_route_answers(client):
    # Without ?week= the playlist skips FastAPI's routing (RequestGuard's fast path); with the live
    # week spelled out it takes the full route. Both must give the same bytes and headers, for a
    # known user, an unknown one, and HEAD.
    for user in (3, 999999):
        fast, routed = client.get(f"/v1/users/{user}/discover-weekly"), client.get(f"/v1/users/{user}/discover-weekly?week={W[1]}")
        assert (fast.status_code, fast.content) == (routed.status_code, routed.content)
        assert {k: v for k, v in fast.headers.items() if k != "date"} == {k: v for k, v in routed.headers.items() if k != "date"}
    head = client.head("/v1/users/3/discover-weekly")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(client.get("/v1/users/3/discover-weekly").content))
    # Not the fast path's form: still served (or refused) by the route's own rules.
    assert client.get("/v1/users/03/discover-weekly").status_code == 422
    assert client.get("/v1/users/3/discover-weekly/", follow_redirects=False).status_code in (307, 404)


def test_unknown_user_and_unpublished_week_are_404(client):
    response = client.get("/v1/users/999999/discover-weekly")
    assert response.status_code == 404
    assert response.json()["error"] == "user_not_found" and response.json()["week"] == W[1]
    response = client.get(f"/v1/users/3/discover-weekly?week={W[2]}")
    assert response.status_code == 404 and response.json()["error"] == "week_not_found"


@pytest.mark.parametrize("path", [
    "/v1/users/abc/discover-weekly", "/v1/users/-1/discover-weekly", "/v1/users/1.5/discover-weekly",
    f"/v1/users/{2**63}/discover-weekly", f"/v1/users/{'9' * 40}/discover-weekly",
    "/v1/users/3/discover-weekly?week=2026-01-06",  # a Tuesday
    "/v1/users/3/discover-weekly?week=2026-13-05", "/v1/users/3/discover-weekly?week=last",
    "/v1/users/3/discover-weekly?week=2026-01-05'--",
])
def test_malformed_requests_are_422(client, path):
    response = client.get(path)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request" and response.json()["detail"]


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_only_get_is_served(client, method):
    assert getattr(client, method)("/v1/users/3/discover-weekly").status_code == 405
    assert client.get("/v1/users/3/discover-weekly").status_code == 200  # nothing changed


def test_no_live_week_yet_is_a_clear_404(tmp_path):
    with TestClient(create_app(f"sqlite:///{tmp_path}/empty.db")) as empty:
        response = empty.get("/v1/users/3/discover-weekly")
        assert response.status_code == 404 and response.json()["error"] == "no_live_week"
        assert empty.get("/v1/weeks/current").status_code == 404
        assert empty.get("/healthz").status_code == 200


def test_unreadable_sqlite_store_is_503(tmp_path):
    with TestClient(create_app(f"sqlite:///{tmp_path}")) as broken:  # a directory, not a database
        response = broken.get("/v1/users/3/discover-weekly")
        assert response.status_code == 503 and "Retry-After" in response.headers


def test_redis_outage_is_503_and_the_api_recovers_when_redis_is_back(tmp_path):
    server = RedisServer(tmp_path).start()  # our own server: this test stops it
    try:
        with open_store(server.url) as store:
            publish_week(store, W[0], LAST_WEEK)
        with TestClient(create_app(server.url, retry_after_s=2)) as api:
            before = api.get("/v1/users/5/discover-weekly")
            assert before.status_code == 200

            server.stop()
            down = api.get("/v1/users/5/discover-weekly")
            assert down.status_code == 503
            assert down.headers["Retry-After"] == "2"
            assert down.json()["error"] == "store_unavailable"
            assert "127.0.0.1" not in down.text  # no internal addresses in public errors
            assert api.get("/healthz").status_code == 503
            assert api.get("/v1/weeks/current").status_code == 503

            server.start()  # same port, same data (saved at shutdown)
            assert api.get("/healthz").status_code == 200
            after = api.get("/v1/users/5/discover-weekly")
            assert after.status_code == 200 and after.json() == before.json()
    finally:
        server.stop()


def test_fixed_rate_load_against_a_real_server_has_no_errors(tmp_path):
    url = f"sqlite:///{tmp_path}/playlists.db"
    playlists = synthetic_playlists(200, seed=3)
    with open_store(url) as store:
        publish_week(store, W[0], playlists)
    # A few seconds at a low rate: the benchmark's machinery end to end (60 s at 1000/s is `dw bench serving`).
    load = run_load(url, playlists["user_id"].unique(), rate=100, seconds=2, connections=4, warmup_s=0.5,
                    unknown_fraction=0.1)
    assert load["errors"] == 0
    assert load["requests"] == 200 and sum(load["status_counts"].values()) == 200
    assert set(load["status_counts"]) == {"200", "404"} and load["status_counts"]["404"] > 0  # the unknown ids
    assert load["achieved_rps"] > 0 and load["rate_limit_rps"] >= 2 * 100
    assert 0 < load["latency_ms"]["p50"] <= load["latency_ms"]["p99"] <= load["latency_ms"]["max"]
    assert load["service_ms"]["p50"] <= load["latency_ms"]["p50"] + 1e-9  # latency counts from the schedule


def test_a_server_process_freezes_what_lives_at_startup_and_still_starts_without_its_store(tmp_path):
    # A full collection walks every tracked object with the event loop stopped; the driver's and
    # app's startup objects made that 40-200 ms every few seconds over Cassandra (the p99 tail).
    assert gc.get_freeze_count() == 0
    try:
        with TestClient(create_app(f"sqlite:///{tmp_path}", freeze_gc=True)) as broken:  # store down at start
            assert gc.get_freeze_count() > 1000
            assert broken.get("/v1/users/1/discover-weekly").status_code == 503
    finally:
        gc.unfreeze()
    with TestClient(create_app(f"sqlite:///{tmp_path}/empty.db")):
        assert gc.get_freeze_count() == 0  # off unless asked: a test process must not pin its garbage
