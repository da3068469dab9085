"""Bad input on every port gets a clear 4xx with the spec's error body, never a 500.

A real server process over real HTTP: huge integers, tokens naming impossible users, JSON that
is too deep or not UTF-8, bodies that are not declared as JSON, invisible characters, nulls,
trailing newlines, oversized and unfinished headers, and /metrics without its token.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.integration.test_auth import assert_error, bearer, create_admin
from tests.support.server import SERVICES, ServerProcess, running_server

TOO_BIG = 2**63  # one past what SQLite's 64-bit signed integers hold
HEADER_TIMEOUT = 2.0
ENV = {"STREAMPLAT_SERVER__HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)}


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("badinput"), ENV, db=db) as srv:
        yield srv


@pytest.fixture(name="admin", scope="module")
def fixture_admin(server: ServerProcess) -> str:
    return create_admin(server, "inputadmin")


@pytest.fixture(name="streamer", scope="module")
def fixture_streamer(server: ServerProcess) -> str:
    return server.user_token("inputstreamer")


def assert_422(r: httpx.Response, field: str) -> None:
    body = assert_error(r, 422)
    assert body["error"] == "Validation Failed" and field in body["details"], body


# --- integers the database cannot hold ---------------------------------------------------------


@pytest.mark.parametrize("value", [TOO_BIG, 10**30, -(2**63) - 1])
def test_integers_beyond_64_bits_are_422_on_every_endpoint(
    server: ServerProcess, admin: str, streamer: str, value: int
) -> None:
    cases = [
        (server.vod, "/api/v1/recordings", "offset", None),
        (server.vod, "/api/v1/recordings", "user_id", None),
        (server.vod, "/api/v1/recordings", "limit", None),
        (server.main, "/api/streams", "offset", streamer),
        (server.main, "/api/streams", "user_id", admin),
        (server.main, "/api/streams/live", "offset", streamer),
        (server.auth, "/auth/users", "offset", admin),
    ]
    for client, path, param, token in cases:
        r = client.get(path, params={param: str(value)}, headers=bearer(token) if token else None)
        assert_422(r, param)
    r = server.auth.patch(f"/auth/users/{value}", json={"role": "viewer"}, headers=bearer(admin))
    if value < 0:
        assert r.status_code in (404, 422), r.text  # "-9..." does not match the {user_id:int} route
    else:
        assert_422(r, "user_id")


def test_the_largest_64_bit_values_still_work(server: ServerProcess, admin: str, streamer: str) -> None:
    largest = str(TOO_BIG - 1)
    r = server.vod.get("/api/v1/recordings", params={"offset": largest, "user_id": largest})
    assert r.status_code == 200 and r.json()["recordings"] == []
    r = server.main.get("/api/streams", params={"offset": largest}, headers=bearer(streamer))
    assert r.status_code == 200 and r.json()["streams"] == []
    r = server.auth.patch(f"/auth/users/{largest}", json={"role": "viewer"}, headers=bearer(admin))
    assert_error(r, 404, "user not found")


def test_a_signed_token_with_an_impossible_subject_is_401_on_every_port(server: ServerProcess) -> None:
    secret = (server.data_dir / "secrets" / "jwt_secret").read_text().strip()
    now = int(time.time())
    for sub in (str(TOO_BIG), str(10**40), "0", "-5"):
        claims = {"sub": sub, "role": "admin", "username": "x", "type": "access", "iat": now, "exp": now + 60}
        token = jwt.encode(claims, secret, algorithm="HS256")
        assert_error(server.auth.get("/auth/validate", headers=bearer(token)), 401)
        assert_error(server.main.get("/api/streams", headers=bearer(token)), 401)
        assert_error(server.vod.get("/api/v1/recordings", headers=bearer(token)), 401)
        url = server.url("main", f"/ws?token={token}").replace("http", "ws", 1)
        with ws_connect(url) as ws, pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


# --- bodies ------------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


def body_endpoints(
    server: ServerProcess, admin: str, streamer: str
) -> list[tuple[httpx.Client, str, str, str]]:
    """(client, method, path, token) of every endpoint that reads a JSON body."""
    return [
        (server.auth, "POST", "/auth/register", ""),
        (server.auth, "POST", "/auth/login", ""),
        (server.auth, "POST", "/auth/refresh", ""),
        (server.auth, "POST", "/auth/logout", ""),
        (server.auth, "PATCH", "/auth/users/1", admin),
        (server.main, "POST", "/api/streams", streamer),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
        (b'{"email":"\xff@x.io","password":"xxxxxxx"}', "not valid utf-8"),
        (b'{"name":"\xed\xa0\x80"}', "not valid utf-8"),  # a lone surrogate, encoded
    ],
)
def test_deep_or_undecodable_json_is_400(
    server: ServerProcess, admin: str, streamer: str, raw: bytes, message: str
) -> None:
    for client, method, path, token in body_endpoints(server, admin, streamer):
        headers = {**JSON, **(bearer(token) if token else {})}
        r = client.request(method, path, content=raw, headers=headers)
        assert_error(r, 400, message)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_a_body_not_declared_as_json_is_415(
    server: ServerProcess, admin: str, streamer: str, content_type: str | None
) -> None:
    body = json.dumps({"email": "a@b.cc", "password": "password123", "name": "x"}).encode()
    for client, method, path, token in body_endpoints(server, admin, streamer):
        headers = {
            **({"Content-Type": content_type} if content_type else {}),
            **(bearer(token) if token else {}),
        }
        r = client.request(method, path, content=body, headers=headers)
        assert_error(r, 415, "application/json")
    # Nothing was created by any of them.
    r = server.main.get("/api/streams", headers=bearer(streamer))
    assert all(s["name"] != "x" for s in r.json()["streams"])


def test_json_with_parameters_or_a_json_suffix_is_accepted(server: ServerProcess, streamer: str) -> None:
    for content_type in (
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ):
        r = server.main.post(
            "/api/streams",
            content=json.dumps({"name": "Typed"}),
            headers={"Content-Type": content_type, **bearer(streamer)},
        )
        assert r.status_code == 201, (content_type, r.text)


def test_posts_without_a_body_need_no_content_type(server: ServerProcess, streamer: str) -> None:
    # As the spec's JavaScript client sends start and stop: a bearer token, no body, no Content-Type.
    sid = server.main.post("/api/streams", json={"name": "Bodiless"}, headers=bearer(streamer)).json()[
        "stream_id"
    ]
    r = server.main.post(f"/api/streams/{sid}/rotate-key", headers=bearer(streamer))
    assert r.status_code == 200, r.text
    r = server.main.post(
        f"/api/streams/{sid}/stop", headers={"Content-Type": "text/plain", **bearer(streamer)}
    )
    assert r.status_code in (200, 409), r.text  # a stream never started: the service's own answer
    # A body endpoint without a body and without a Content-Type: the body is missing (400), not mistyped.
    assert_error(server.auth.post("/auth/login"), 400, "body")


@pytest.mark.parametrize("email", ["\x7fx@y.zz", "x\x00@y.zz", "\u200bx@y.zz", "x@y.zz\u202e", "x\x1b@y.zz"])
def test_emails_with_invisible_characters_are_422(server: ServerProcess, email: str) -> None:
    name = "inv" + uuid.uuid4().hex[:8]
    r = server.auth.post("/auth/register", json={"username": name, "email": email, "password": "password123"})
    assert_422(r, "email")


def test_nul_characters_are_422_and_store_nothing(server: ServerProcess, streamer: str) -> None:
    # PostgreSQL text cannot hold U+0000: it once reached asyncpg and answered 500 there.
    for field in ("name", "title", "description"):
        body = {"name": "nul", field: "before\u0000after"}
        r = server.main.post("/api/streams", json=body, headers=bearer(streamer))
        assert_422(r, field)
    r = server.auth.post("/auth/login", json={"email": "a\u0000@example.com", "password": "password123"})
    assert_422(r, "email")
    r = server.auth.post(
        "/auth/register",
        json={"username": "nulname", "email": "nul@example.com", "password": "pass\u0000word123"},
    )
    assert_422(r, "password")
    assert server.sql("SELECT count(*) FROM streams WHERE name = ?", "nul") == [(0,)]
    assert server.sql("SELECT count(*) FROM users WHERE username = ?", "nulname") == [(0,)]


def test_null_is_refused_where_the_spec_shows_no_null(
    server: ServerProcess, admin: str, streamer: str
) -> None:
    user = server.register("nulltarget", "viewer")
    r = server.auth.post(
        "/auth/register",
        json={
            "username": "nullrole",
            "email": "nullrole@example.com",
            "password": "password123",
            "role": None,
        },
    )
    assert_422(r, "role")
    for body in ({"role": None}, {"is_active": None}, {"role": None, "is_active": True}):
        r = server.auth.patch(f"/auth/users/{user['id']}", json=body, headers=bearer(admin))
        assert_422(r, next(k for k, v in body.items() if v is None))
    for body in ({"name": "n", "description": None}, {"name": "n", "title": None}, {"name": None}):
        r = server.main.post("/api/streams", json=body, headers=bearer(streamer))
        assert_422(r, next(k for k, v in body.items() if v is None))
    # Left out is fine: nothing changes, and the target is still a viewer.
    r = server.auth.patch(f"/auth/users/{user['id']}", json={}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["role"] == "viewer" and r.json()["is_active"] is True
    r = server.auth.patch(f"/auth/users/{user['id']}", json={"is_active": False}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["role"] == "viewer" and r.json()["is_active"] is False


def test_a_trailing_newline_is_not_part_of_a_valid_name(server: ServerProcess, streamer: str) -> None:
    r = server.auth.post(
        "/auth/register", json={"username": "newline\n", "email": "nl@example.com", "password": "password123"}
    )
    assert_422(r, "username")
    sid = server.main.post("/api/streams", json={"name": "NL"}, headers=bearer(streamer)).json()["stream_id"]
    assert server.main.get(f"/api/streams/{sid}", headers=bearer(streamer)).status_code == 200
    assert_error(server.main.get(f"/api/streams/{sid}%0A", headers=bearer(streamer)), 404)
    assert_error(server.stream.get(f"/stream/{sid}%0A/status"), 404)
    assert_error(server.vod.get(f"/api/v1/recordings/{sid}%0A"), 404)
    assert_error(server.stream.get(f"/hls/{sid}/segment_00001.ts%0A"), 404, "segment")


# --- what the schema and OPTIONS say -----------------------------------------------------------


def test_openapi_documents_the_real_media_types(server: ServerProcess) -> None:
    vod = server.vod.get("/schema/openapi.json").json()["paths"]
    for path, media_type in [
        ("/api/v1/recordings/{stream_id}/video", "video/mp4"),
        ("/recordings/vod/{stream_id}/video.mp4", "video/mp4"),
        ("/api/v1/recordings/{stream_id}/thumbnail", "image/jpeg"),
        ("/recordings/vod/{stream_id}/thumbnail.jpg", "image/jpeg"),
    ]:
        for method in ("get", "head"):
            responses = vod[path][method]["responses"]
            assert list(responses["200"]["content"]) == [media_type], (path, responses["200"])
            assert list(responses["206"]["content"]) == [media_type]
            assert list(responses["404"]["content"]) == ["application/json"]
    stream = server.stream.get("/schema/openapi.json").json()["paths"]
    playlist = stream["/hls/{stream_id}/stream.m3u8"]["get"]["responses"]["200"]["content"]
    assert list(playlist) == ["application/vnd.apple.mpegurl"]
    segment = stream["/hls/{stream_id}/{segment}"]["get"]["responses"]["200"]["content"]
    assert list(segment) == ["video/mp4"]  # fMP4 segments, parts and inits (LL-HLS)


def test_options_lists_every_method_of_the_path(server: ServerProcess, streamer: str) -> None:
    sid = server.main.post("/api/streams", json={"name": "Opts"}, headers=bearer(streamer)).json()[
        "stream_id"
    ]
    expected = [
        (server.main, "/api/streams", "GET, OPTIONS, POST"),
        (server.main, f"/api/streams/{sid}", "DELETE, GET, OPTIONS"),
        (server.vod, f"/api/v1/recordings/{sid}", "DELETE, GET, OPTIONS"),
        (server.vod, f"/api/v1/recordings/{sid}/video", "GET, HEAD, OPTIONS"),
        (server.auth, "/auth/users/1", "OPTIONS, PATCH"),
    ]
    for client, path, allow in expected:
        r = client.options(path)
        assert r.status_code == 204 and r.headers["allow"] == allow, (path, r.headers)


# --- headers: size and time --------------------------------------------------------------------


def test_oversized_headers_are_431_on_every_port(server: ServerProcess) -> None:
    huge = {"Authorization": "Bearer " + "x" * (1 << 20)}
    for name in SERVICES:
        r = httpx.get(server.url(name, "/health"), headers=huge, timeout=30)
        assert_error(r, 431, "larger than 65536 bytes")
        # The port is fine afterwards.
        assert server.client(name).get("/health").status_code == 200


def test_unfinished_headers_are_dropped_after_the_header_timeout(server: ServerProcess) -> None:
    for name in SERVICES:
        with socket.create_connection((server.host, server.ports[name]), timeout=HEADER_TIMEOUT + 10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            elapsed = time.monotonic() - started
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert json.loads(data.partition(b"\r\n\r\n")[2])["code"] == 408
        assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 5, elapsed


# --- /metrics ----------------------------------------------------------------------------------


def test_metrics_token_is_required_when_configured(server_factory: Callable[..., ServerProcess]) -> None:
    token = "m3tr1cs-" + uuid.uuid4().hex
    srv = server_factory({"STREAMPLAT_METRICS__TOKEN": token})
    assert_error(srv.main.get("/metrics"), 401, "metrics.token")
    assert_error(srv.main.get("/metrics", headers=bearer("wrong-" + token)), 401)
    r = srv.main.get("/metrics", headers=bearer(token))
    assert r.status_code == 200 and "streamplat_http_requests_total" in r.text


def test_metrics_without_a_token_are_for_this_machine_only(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory({"STREAMPLAT_SERVER__HOST": "0.0.0.0"})
    r = srv.main.get("/metrics")  # 127.0.0.1: the operator's own scrape, as the README shows
    assert r.status_code == 200 and "streamplat_http_requests_total" in r.text
    # The address this machine reaches others from (no packet is sent by a UDP connect).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
        except OSError:
            pytest.fail("this machine has no non-loopback IPv4 address to scrape from")
        outside = probe.getsockname()[0]
    assert not outside.startswith("127."), outside
    r = httpx.get(f"http://{outside}:{srv.ports['main']}/metrics", timeout=10)
    assert_error(r, 403, "metrics.token")
