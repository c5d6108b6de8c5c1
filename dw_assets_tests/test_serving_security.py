"""Hardening of the playlist API: strict input, injection-looking input against real stores,
read-only public routes, the bearer-token admin routes, request bounds and the rate limit."""

from __future__ import annotations

import http.client
import logging
import os
import sqlite3
import tempfile
import uuid

import pytest
import redis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from dw_assets.calendar import week_range
from dw_assets.serving import open_store, publish_week
from dw_assets.serving.api import RateLimiter, app_from_env, create_app
from dw_assets.serving.loadtest import free_port, start_api, synthetic_playlists, wait_ready
from dw_assets.serving.stores import RedisStore, ScyllaStore
from dw_assets_tests import cassandra_node
from dw_assets_tests.redis_server import delete_prefix, redis_for_tests, with_options

W = week_range("2026-01-05", 3)
LAST_WEEK, THIS_WEEK = synthetic_playlists(12, seed=0), synthetic_playlists(12, seed=1)
TOKEN = "s3cret-admin-token-" + "0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PUBLIC_PATHS = ["/v1/users/3/discover-weekly", "/v1/weeks/current", "/healthz"]


def published(url: str) -> str:
    with open_store(url) as store:
        publish_week(store, W[0], LAST_WEEK)
        publish_week(store, W[1], THIS_WEEK)
    return url


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory):
    return published(f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/playlists.db")


@pytest.fixture(scope="module")
def client(sqlite_url):
    with TestClient(create_app(sqlite_url, admin_token=TOKEN)) as test_client:
        yield test_client


# --------------------------------------------------------------------------- strict input


@pytest.mark.parametrize("user_id", [
    "-1", "-0", "+5", "%205", "5%20", "%095", "5%0A", "05", "00", "5_0", "5.0", "1e3", "0x10", "%D9%A3",  # Arabic 3
    "abc", str(2**63), str(2**64), "9" * 40,
])
def test_user_id_must_be_plain_digits_of_an_int64(client, user_id):
    response = client.get(f"/v1/users/{user_id}/discover-weekly")
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request" and body["detail"][0]["loc"] == ["path", "user_id"]


@pytest.mark.parametrize("user_id", [0, 2**63 - 1])
def test_int64_bounds_are_valid_ids(client, user_id):
    response = client.get(f"/v1/users/{user_id}/discover-weekly")
    assert response.status_code == 404 and response.json()["error"] == "user_not_found"


@pytest.mark.parametrize("week", [
    "2026-01-06", "20260105", "2026-W02-1", "2026-1-5", "%202026-01-05", "2026-01-05%0A", "2026-01-05T00:00",
    "", "%D9%A2%D9%A0%D9%A2%D9%A6-01-05",  # Arabic-Indic digits
])
def test_week_must_be_the_iso_date_of_a_monday(client, week):
    response = client.get(f"/v1/users/3/discover-weekly?week={week}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "week"]


@pytest.mark.parametrize("path, name", [
    ("/v1/users/3/discover-weekly?weeks=2026-01-12", "weeks"),
    (f"/v1/users/3/discover-weekly?week={W[1]}&debug=1", "debug"),
    (f"/v1/users/3/discover-weekly?week={W[0]}&week={W[1]}", "week"),  # repeated
    (f"/v1/weeks/current?week={W[0]}", "week"),
    ("/healthz?verbose", "verbose"),
])
def test_unknown_or_repeated_query_parameters_are_422(client, path, name):
    response = client.get(path)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert ["query", name] in [error["loc"] for error in body["detail"]]
    assert all(error["msg"] for error in body["detail"])


# --------------------------------------------------------------------------- injection


HOSTILE = ["1 OR 1=1", "1; DROP TABLE playlists", "'; DROP TABLE playlists;--", "*", "1*", "?", "[0-9]",
           "\r\nFLUSHALL\r\n", "1\r\nFLUSHALL", "1' OR '1'='1", "1/**/OR/**/1=1", "$(rm -rf /)", "%00", "dw:pl:*"]


@pytest.fixture(scope="module", params=["sqlite", "redis", "scylla"])
def hostile_target(request, tmp_path_factory):
    """(store URL, a way to snapshot the raw store) for a store with two published weeks."""
    if request.param == "sqlite":
        url = published(f"sqlite:///{tmp_path_factory.mktemp('hostile')}/playlists.db")
        path = url[len("sqlite:///"):]

        def snapshot() -> tuple:
            with sqlite3.connect(path) as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY 1")]
                return tuple((table, db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]) for table in tables)

        yield url, snapshot
        return
    if request.param == "scylla":
        url = published(f"scylla://{request.getfixturevalue('cassandra_hosts')}/{cassandra_node.fresh_keyspace('dwsec')}")
        store = ScyllaStore.from_url(url)
        keyspace = store.settings.keyspace

        def snapshot() -> tuple:
            session = store._connected()
            tables = sorted(row[0] for row in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,)))
            return tuple((table, sorted(tuple(row) for row in session.execute(f"SELECT * FROM {keyspace}.{table}")))
                         for table in tables)

        yield url, snapshot
        store.close()
        cassandra_node.drop_keyspace(url)
        return
    with redis_for_tests(tmp_path_factory.mktemp("redis")) as server_url:
        prefix = f"dwsec-{uuid.uuid4().hex[:8]}"
        url = published(with_options(server_url, prefix=prefix))
        settings = RedisStore.from_url(url)
        raw = redis.Redis(host=settings.host, port=settings.port, db=settings.db,
                          password=os.environ.get("DW_REDIS_PASSWORD"))

        def snapshot() -> tuple:
            keys = sorted(raw.scan_iter(f"{prefix}:*", count=1000))  # a FLUSHALL would empty this
            return tuple(keys), raw.get(f"{prefix}:current_week")

        yield url, snapshot
        raw.close()
        delete_prefix(url, prefix)


def test_injection_looking_input_is_rejected_and_the_store_is_intact(hostile_target):
    url, snapshot = hostile_target
    before = snapshot()
    with TestClient(create_app(url)) as api:
        playlist = api.get("/v1/users/3/discover-weekly").json()
        for text in HOSTILE:
            for path, params in [(f"/v1/users/{text}/discover-weekly", None),
                                 ("/v1/users/3/discover-weekly", {"week": text}),
                                 ("/v1/users/3/discover-weekly", {"week": f"{W[1]}{text}"}),
                                 ("/v1/weeks/current", {"week": text})]:
                response = api.get(path.replace("\r", "%0D").replace("\n", "%0A").replace("?", "%3F"), params=params)
                assert 400 <= response.status_code < 500, (path, params, response.status_code)
                assert response.json()["error"] in ("invalid_request", "not_found")
        # Past the API's validation too, the stores take hostile text as data (bound parameter or
        # one key argument), never as query text: nothing matches, nothing changes.
        with open_store(url) as store:
            for text in HOSTILE:
                assert store.get_playlist_json(3, text) is None
            assert store.weeks() == [W[0], W[1]] and store.current_week() == W[1]
            assert [store.count_users(week) for week in W[:2]] == [12, 12]
        assert api.get("/v1/users/3/discover-weekly").json() == playlist
    assert snapshot() == before


# --------------------------------------------------------------------------- read-only


def test_public_routes_are_get_or_head_only(client):
    public = [route for route in client.app.routes if not route.path.startswith("/admin/")]
    assert {route.path for route in public if isinstance(route, APIRoute)} == {
        "/v1/users/{user_id}/discover-weekly", "/v1/weeks/current", "/healthz"}
    assert all(route.methods <= {"GET", "HEAD"} for route in public)
    for path in PUBLIC_PATHS:
        get = client.get(path)
        head = client.head(path)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == get.headers["content-length"]
        for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            response = client.request(method, path)
            assert response.status_code == 405, (method, path)
            assert response.headers["Allow"] == "GET, HEAD"
            assert response.json()["error"] == "method_not_allowed"
    assert client.get("/v1/users/3/discover-weekly").json()["week"] == W[1]  # nothing changed


# --------------------------------------------------------------------------- request bounds


def test_overlong_request_target_is_414(client):
    response = client.get(f"/v1/users/3/discover-weekly?week={'2' * 600}")
    assert response.status_code == 414 and response.json()["error"] == "uri_too_long"
    assert client.get(f"/v1/users/{'1' * 600}/discover-weekly").status_code == 414


def test_oversized_headers_are_431(client):
    response = client.get("/healthz", headers={"X-Padding": "a" * 9000})
    assert response.status_code == 431 and response.json()["error"] == "headers_too_large"
    many = {f"X-H{i}": "1" for i in range(80)}
    assert client.get("/healthz", headers=many).status_code == 431
    assert client.get("/healthz", headers={"X-Padding": "a" * 1000}).status_code == 200


def test_request_bodies_over_one_kib_are_413(client):
    for method in ("GET", "POST", "PUT"):
        response = client.request(method, "/v1/users/3/discover-weekly", content=b"x" * 2048)
        assert response.status_code == 413, method
        assert response.json()["error"] == "payload_too_large"
    # a body of unannounced length (chunked) is refused too
    assert client.request("POST", "/healthz", content=iter([b"x"])).status_code == 413
    # small bodies reach routing: a read-only route still refuses the method
    assert client.post("/v1/users/3/discover-weekly", content=b"{}").status_code == 405


# --------------------------------------------------------------------------- admin


def test_admin_routes_do_not_exist_without_a_token(sqlite_url):
    with TestClient(create_app(sqlite_url)) as api:
        assert api.get("/admin/v1/store", headers=ADMIN).status_code == 404
        assert api.post("/admin/v1/reconnect", headers=ADMIN).status_code == 404
    assert not [route for route in api.app.routes if route.path.startswith("/admin/")]


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                                           f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN.upper()}", "Bearer \u00e9"])
def test_admin_routes_need_the_bearer_token(client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization.encode()}
    for method, path in [("GET", "/admin/v1/store"), ("POST", "/admin/v1/reconnect")]:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
        assert response.json()["error"] == "unauthorized"
        assert TOKEN not in response.text


def test_admin_store_stats(client):
    response = client.get("/admin/v1/store", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {"store": "sqlite", "current_week": W[1], "weeks": [W[0], W[1]],
                               "current_week_users": 12}
    assert response.headers["Cache-Control"] == "no-store"
    assert client.get("/admin/v1/store", headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200
    assert client.post("/admin/v1/store", headers=ADMIN).status_code == 405


def test_admin_reconnect_serves_a_swapped_in_sqlite_file(tmp_path):
    live = published(f"sqlite:///{tmp_path}/playlists.db")
    replacement = f"sqlite:///{tmp_path}/restored.db"
    with open_store(replacement) as store:
        publish_week(store, W[2], synthetic_playlists(4, seed=7))
    with TestClient(create_app(live, admin_token=TOKEN)) as api:
        assert api.get("/v1/weeks/current").json() == {"week": W[1]}  # connection open on the old file
        os.replace(tmp_path / "restored.db", tmp_path / "playlists.db")
        response = api.post("/admin/v1/reconnect", headers=ADMIN)
        assert response.status_code == 200 and response.json() == {"reconnected": True, "store": "sqlite"}
        assert api.get("/v1/weeks/current").json() == {"week": W[2]}
        assert api.get("/v1/users/3/discover-weekly").json()["week"] == W[2]
        assert api.get("/v1/users/5/discover-weekly").status_code == 404  # only 4 users in the new file


def test_admin_token_comes_from_the_environment_and_is_never_logged(sqlite_url, monkeypatch, caplog):
    monkeypatch.setenv("DW_STORE_URL", sqlite_url)
    monkeypatch.setenv("DW_ADMIN_TOKEN", f"{TOKEN}\n")  # as read from a secrets file
    caplog.set_level(logging.DEBUG)
    with TestClient(app_from_env()) as api:
        assert api.get("/admin/v1/store", headers=ADMIN).status_code == 200
        assert api.post("/admin/v1/reconnect", headers=ADMIN).status_code == 200
        assert api.get("/admin/v1/store", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert caplog.records  # the reconnect is logged ...
    assert TOKEN not in caplog.text  # ... without the token
    monkeypatch.delenv("DW_ADMIN_TOKEN")
    with TestClient(app_from_env()) as api:
        assert api.get("/admin/v1/store", headers=ADMIN).status_code == 404


def test_short_admin_tokens_are_refused_at_startup(sqlite_url, monkeypatch):
    with pytest.raises(ValueError, match="at least 16"):
        create_app(sqlite_url, admin_token="hunter2")
    monkeypatch.setenv("DW_STORE_URL", sqlite_url)
    monkeypatch.setenv("DW_ADMIN_TOKEN", "short")
    with pytest.raises(ValueError, match="at least 16"):
        app_from_env()


# --------------------------------------------------------------------------- rate limit


def test_a_client_over_its_rate_gets_429_with_retry_after(sqlite_url):
    app = create_app(sqlite_url, rate_limit_rps=0.5, rate_limit_burst=3)
    greedy, other = TestClient(app, client=("10.0.0.1", 4000)), TestClient(app, client=("10.0.0.2", 4000))
    assert [greedy.get("/v1/users/3/discover-weekly").status_code for _ in range(3)] == [200, 200, 200]
    limited = greedy.get("/v1/users/3/discover-weekly")
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) == limited.json()["retry_after_s"] >= 1
    assert greedy.get("/healthz").status_code == 429  # per client, not per route
    assert other.get("/v1/users/3/discover-weekly").status_code == 200  # other clients are unaffected


def test_token_bucket_refills_at_the_rate():
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.1)  # seconds until the next token
    now[0] += 0.1
    assert limiter.acquire("a") == 0.0
    now[0] += 60.0  # idle: the bucket holds at most `burst`
    assert [limiter.acquire("a") == 0.0 for _ in range(3)] == [True, True, False]
    assert limiter.acquire("b") == 0.0


def test_the_client_table_stays_bounded():
    now = [0.0]
    limiter = RateLimiter(rate=1, burst=5, max_clients=100, clock=lambda: now[0])
    for i in range(1000):
        now[0] += 0.001
        limiter.acquire(f"10.0.{i // 256}.{i % 256}")
        assert len(limiter._buckets) <= 100


def test_rate_limit_from_the_environment(sqlite_url, monkeypatch):
    monkeypatch.setenv("DW_STORE_URL", sqlite_url)
    monkeypatch.setenv("DW_RATE_LIMIT_RPS", "0.5")
    monkeypatch.setenv("DW_RATE_LIMIT_BURST", "2")
    api = TestClient(app_from_env())
    assert [api.get("/healthz").status_code for _ in range(3)] == [200, 200, 429]
    monkeypatch.setenv("DW_RATE_LIMIT_RPS", "0")  # off
    api = TestClient(app_from_env())
    assert {api.get("/healthz").status_code for _ in range(20)} == {200}
    monkeypatch.setenv("DW_RATE_LIMIT_RPS", "fast")
    with pytest.raises(ValueError, match="DW_RATE_LIMIT_RPS"):
        app_from_env()


# --------------------------------------------------------------------------- through a real uvicorn


def test_bounds_and_limits_hold_behind_a_real_uvicorn(sqlite_url):
    """What TestClient skips: uvicorn's own parsing, the client address it reports, HEAD on the wire."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        server = start_api(sqlite_url, port, log=log, env={"DW_RATE_LIMIT_RPS": "0.1", "DW_RATE_LIMIT_BURST": "8"})
        try:
            wait_ready(server, port, log=log)  # takes a token

            def request(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    connection.request(method, path, body=body, headers=headers or {})
                    response = connection.getresponse()
                    return response.status, dict(response.getheaders()), response.read()
                finally:
                    connection.close()

            status, headers, body = request("HEAD", "/v1/users/3/discover-weekly")
            assert (status, body) == (200, b"") and int(headers["content-length"]) > 1000
            assert "server" not in {name.lower() for name in headers}
            status, headers, _ = request("POST", "/healthz", body=b"x" * 4096)
            assert status == 413 and headers["connection"] == "close"
            assert request("GET", "/healthz", headers={"X-Padding": "a" * 9000})[0] == 431
            assert request("GET", "/v1/users/3/discover-weekly?week=" + "2" * 600)[0] == 414
            assert request("GET", "/v1/users/%2B3/discover-weekly")[0] == 422
            statuses = [request("GET", "/healthz")[0] for _ in range(6)]  # 8 tokens: 6 used above, then 2 more
            assert statuses[:2] == [200, 200] and statuses[-1] == 429
        finally:
            server.terminate()
            server.wait(10)
