"""The Auth service end to end: real server process, real HTTP, real SQLite."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.server import ServerProcess, free_tcp_port

ERROR_KEYS = {"error", "message", "code"}


def assert_error(r: httpx.Response, status: int, message_part: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= ERROR_KEYS, body
    assert body["code"] == status
    if message_part:
        assert message_part.lower() in body["message"].lower(), body
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_admin(server: ServerProcess, name: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamplat",
            "create-admin",
            "--email",
            f"{name}@example.com",
            "--username",
            name,
            "--data-dir",
            str(server.data_dir),
        ],
        env={**server.env, "STREAMPLAT_ADMIN_PASSWORD": "password123"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "admin" in out.stdout
    return str(server.login(name)["access_token"])


# --- health, routing, CORS, OpenAPI ---------------------------------------------------------


def test_health_on_every_port(server: ServerProcess) -> None:
    expected = {"auth": "auth-service", "main": "main-app", "stream": "stream-app", "vod": "vod-service"}
    for name, service in expected.items():
        r = server.client(name).get("/health")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "healthy" and body["service"] == service
        assert body["timestamp"].endswith("Z")


def test_routes_only_on_their_own_port(server: ServerProcess) -> None:
    for name in ("main", "stream", "vod"):
        assert_error(server.client(name).post("/auth/login", json={"email": "a@b.c", "password": "x"}), 404)
    assert_error(server.auth.get("/no/such/route"), 404)
    assert_error(server.auth.get("/auth/login"), 405)


def test_localhost_over_ipv6_reaches_the_server(server: ServerProcess) -> None:
    r = httpx.get(f"http://[::1]:{server.ports['auth']}/health", timeout=5)
    assert r.status_code == 200 and r.json()["service"] == "auth-service"


def test_cors_preflight_allows_other_origins(server: ServerProcess) -> None:
    r = server.auth.options(
        "/auth/login",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")
    r = server.auth.get("/health", headers={"Origin": "http://localhost:3000"})
    assert r.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")


def test_openapi_schema_on_every_port_documents_errors(server: ServerProcess) -> None:
    for name in ("auth", "main", "stream", "vod"):
        r = server.client(name).get("/schema/openapi.json")
        assert r.status_code == 200, name
    main_paths = server.main.get("/schema/openapi.json").json()["paths"]
    assert "/api/streams" in main_paths and "/api/streams/{stream_id}/start" in main_paths
    assert "/hls/{stream_id}/stream.m3u8" in server.stream.get("/schema/openapi.json").json()["paths"]
    assert "/api/v1/recordings/{stream_id}" in server.vod.get("/schema/openapi.json").json()["paths"]
    paths = server.auth.get("/schema/openapi.json").json()["paths"]
    assert "/auth/register" in paths and "/auth/login" in paths
    register = paths["/auth/register"]["post"]
    assert {"201", "409", "422"} <= set(register["responses"])
    assert "requestBody" in register


# --- registration -----------------------------------------------------------------------


def test_register_returns_the_spec_body(server: ServerProcess) -> None:
    r = server.auth.post(
        "/auth/register",
        json={
            "username": "testuser",
            "email": "Test@Example.com",
            "password": "password123",
            "role": "streamer",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["message"] == "User registered successfully"
    user = body["user"]
    assert set(user) == {"id", "username", "email", "role", "is_active", "created_at"}
    assert user["username"] == "testuser" and user["email"] == "test@example.com"
    assert user["role"] == "streamer" and user["is_active"] is True and isinstance(user["id"], int)
    assert "password" not in r.text


def test_register_default_role_is_viewer(server: ServerProcess) -> None:
    r = server.auth.post(
        "/auth/register", json={"username": "plainviewer", "email": "pv@example.com", "password": "secret1"}
    )
    assert r.status_code == 201 and r.json()["user"]["role"] == "viewer"


def test_register_validation_names_every_bad_field(server: ServerProcess) -> None:
    r = server.auth.post(
        "/auth/register", json={"username": "a!", "email": "not-an-email", "password": "123", "role": "king"}
    )
    body = assert_error(r, 422)
    assert body["error"] == "Validation Failed"
    details = body["details"]
    assert set(details) == {"username", "email", "password", "role"}
    assert details["email"] == ["must be a valid email"]
    assert details["password"] == ["minimum 6 characters required"]
    assert all(isinstance(m, list) and m for m in details.values())


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"username": "ab", "email": "x@example.com", "password": "secret1"}, "username"),
        ({"username": "a" * 33, "email": "x@example.com", "password": "secret1"}, "username"),
        ({"username": "bad name", "email": "x@example.com", "password": "secret1"}, "username"),
        ({"username": "okname", "email": "x@example.com", "password": "p" * 129}, "password"),
        ({"username": "okname", "email": "x@", "password": "secret1"}, "email"),
        ({"username": 123, "email": "x@example.com", "password": "secret1"}, "username"),
        ({"email": "x@example.com", "password": "secret1"}, "username"),
    ],
)
def test_register_each_rule(server: ServerProcess, payload: dict, field: str) -> None:
    body = assert_error(server.auth.post("/auth/register", json=payload), 422)
    assert list(body["details"]) == [field]


def test_missing_fields_are_all_named(server: ServerProcess) -> None:
    body = assert_error(server.auth.post("/auth/register", json={}), 422)
    assert set(body["details"]) == {"username", "email", "password"}


@pytest.mark.parametrize("raw", [b'{"username": ', b"[1, 2]", b"", b"\xff\xfe"])
def test_malformed_json_is_400(server: ServerProcess, raw: bytes) -> None:
    r = server.auth.post("/auth/register", content=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400)


def test_oversized_body_is_413(server: ServerProcess) -> None:
    big = json.dumps({"username": "big", "email": "big@example.com", "password": "x" * 2_000_000})
    r = server.auth.post("/auth/register", content=big, headers={"Content-Type": "application/json"})
    assert_error(r, 413)
    assert (
        server.auth.post("/auth/login", json={"email": "big@example.com", "password": "x"}).status_code == 401
    )


def test_duplicates_are_409(server: ServerProcess) -> None:
    server.register("dupuser")
    r = server.auth.post(
        "/auth/register", json={"username": "other1", "email": "DUPUSER@example.com", "password": "secret1"}
    )
    assert_error(r, 409, "email")
    r = server.auth.post(
        "/auth/register", json={"username": "DupUser", "email": "fresh@example.com", "password": "secret1"}
    )
    assert_error(r, 409, "username")


def test_register_admin_needs_an_admin_token(server: ServerProcess) -> None:
    payload = {"username": "wannabe", "email": "wannabe@example.com", "password": "secret1", "role": "admin"}
    assert_error(server.auth.post("/auth/register", json=payload), 403)
    streamer = server.user_token("notadmin1")
    assert_error(server.auth.post("/auth/register", json=payload, headers=bearer(streamer)), 403)
    admin = create_admin(server, "rootadmin1")
    r = server.auth.post("/auth/register", json=payload, headers=bearer(admin))
    assert r.status_code == 201 and r.json()["user"]["role"] == "admin"


# --- login and tokens -----------------------------------------------------------------------


def test_login_returns_the_spec_body(server: ServerProcess) -> None:
    user = server.register("loginuser")
    body = server.login("loginuser")
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["user"] == {
        "id": user["id"],
        "username": "loginuser",
        "email": "loginuser@example.com",
        "role": "streamer",
    }
    assert body["refresh_token"] and body["access_token"].count(".") == 2


def test_wrong_password_and_unknown_email_look_the_same(server: ServerProcess) -> None:
    server.register("victim")
    a = assert_error(
        server.auth.post("/auth/login", json={"email": "victim@example.com", "password": "wrongpass"}), 401
    )
    b = assert_error(
        server.auth.post("/auth/login", json={"email": "nobody@example.com", "password": "wrongpass"}), 401
    )
    assert a["message"] == b["message"]


def test_validate_accepts_a_good_token(server: ServerProcess) -> None:
    user = server.register("validuser")
    token = server.login("validuser")["access_token"]
    r = server.auth.get("/auth/validate", headers=bearer(token))
    assert r.status_code == 200
    assert r.json() == {
        "valid": True,
        "user": {"id": user["id"], "username": "validuser", "role": "streamer"},
    }


def _secret(server: ServerProcess) -> str:
    return (server.data_dir / "secrets" / "jwt_secret").read_text().strip()


def test_validate_refuses_every_kind_of_bad_token(server: ServerProcess) -> None:
    user = server.register("badtokens")
    good = server.login("badtokens")["access_token"]
    now = int(time.time())
    claims = {"sub": str(user["id"]), "role": "streamer", "username": "badtokens", "type": "access"}
    expired = jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, _secret(server), algorithm="HS256")
    header, _payload, sig = good.split(".")
    forged_payload = (
        base64.urlsafe_b64encode(
            json.dumps({**claims, "role": "admin", "iat": now, "exp": now + 3600}).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    tampered = f"{header}.{forged_payload}.{sig}"
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    alg_none = f"{none_header}.{forged_payload}."
    other_key = jwt.encode({**claims, "iat": now, "exp": now + 3600}, "x" * 40, algorithm="HS256")
    cases = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {good}"},
        "malformed": bearer("not.a.jwt"),
        "garbage": bearer("abc"),
        "expired": bearer(expired),
        "tampered": bearer(tampered),
        "alg none": bearer(alg_none),
        "wrong key": bearer(other_key),
    }
    for name, headers in cases.items():
        body = assert_error(server.auth.get("/auth/validate", headers=headers), 401)
        assert body["message"] == "Invalid or expired token", name


def test_deactivated_user_token_stops_working(server: ServerProcess) -> None:
    admin = create_admin(server, "rootadmin2")
    user = server.register("soontogone")
    pair = server.login("soontogone")
    r = server.auth.patch(f"/auth/users/{user['id']}", json={"is_active": False}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert_error(server.auth.get("/auth/validate", headers=bearer(pair["access_token"])), 401)
    assert_error(server.auth.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401)
    assert_error(
        server.auth.post("/auth/login", json={"email": "soontogone@example.com", "password": "password123"}),
        403,
    )


def test_role_change_and_deactivation_apply_to_the_next_request(server: ServerProcess) -> None:
    # The user's principal is cached after the first request; changes through the API drop it.
    admin = create_admin(server, "rootadmin4")
    user = server.register("cachedstreamer")
    headers = bearer(server.login("cachedstreamer")["access_token"])
    for _ in range(3):
        assert server.auth.get("/auth/validate", headers=headers).json()["user"]["role"] == "streamer"
    assert server.main.get("/api/streams", headers=headers).status_code == 200
    r = server.auth.patch(f"/auth/users/{user['id']}", json={"role": "viewer"}, headers=bearer(admin))
    assert r.status_code == 200
    assert server.auth.get("/auth/validate", headers=headers).json()["user"]["role"] == "viewer"
    assert_error(server.main.post("/api/streams", json={"name": "x"}, headers=headers), 403)
    r = server.auth.patch(f"/auth/users/{user['id']}", json={"is_active": False}, headers=bearer(admin))
    assert r.status_code == 200
    for client in (server.auth, server.main):
        path = "/auth/validate" if client is server.auth else "/api/streams"
        assert_error(client.get(path, headers=headers), 401)


def test_create_admin_from_another_process_applies_within_the_cache_ttl(server: ServerProcess) -> None:
    # The CLI runs in its own process, so the server learns of the promotion when the cached
    # principal expires (auth.principal_cache_seconds, 2 s by default), not through the event bus.
    server.register("promotedlater")
    headers = bearer(server.login("promotedlater")["access_token"])
    assert server.auth.get("/auth/validate", headers=headers).json()["user"]["role"] == "streamer"
    create_admin(server, "promotedlater")
    deadline = time.monotonic() + 30
    role = "streamer"
    while time.monotonic() < deadline:
        role = server.auth.get("/auth/validate", headers=headers).json()["user"]["role"]
        if role == "admin":
            break
        time.sleep(0.2)
    assert role == "admin"


def test_refresh_rotates_and_refuses_reuse(server: ServerProcess) -> None:
    server.register("refresher")
    first = server.login("refresher")
    r = server.auth.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert server.auth.get("/auth/validate", headers=bearer(second["access_token"])).status_code == 200
    # The spent token is refused, and replaying it also ends the login it was stolen from.
    assert_error(server.auth.post("/auth/refresh", json={"refresh_token": first["refresh_token"]}), 401)
    assert_error(server.auth.post("/auth/refresh", json={"refresh_token": second["refresh_token"]}), 401)
    assert_error(server.auth.post("/auth/refresh", json={"refresh_token": "nonsense"}), 401)
    assert_error(server.auth.post("/auth/refresh", json={}), 422)


def test_logout_revokes_the_refresh_token(server: ServerProcess) -> None:
    server.register("leaver")
    pair = server.login("leaver")
    r = server.auth.post("/auth/logout", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200
    assert_error(server.auth.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401)


# --- admin user management ------------------------------------------------------------------


def test_user_management_is_admin_only(server: ServerProcess) -> None:
    target = server.register("managed")
    for role in ("viewer", "streamer"):
        token = server.user_token(f"not_admin_{role}", role)
        assert_error(server.auth.get("/auth/users", headers=bearer(token)), 403)
        assert_error(
            server.auth.patch(f"/auth/users/{target['id']}", json={"role": "admin"}, headers=bearer(token)),
            403,
        )
    assert_error(server.auth.get("/auth/users"), 401)
    admin = create_admin(server, "rootadmin3")
    r = server.auth.get("/auth/users", params={"limit": 2, "offset": 1}, headers=bearer(admin))
    assert r.status_code == 200
    page = r.json()
    assert page["limit"] == 2 and page["offset"] == 1 and len(page["users"]) == 2 and page["total"] >= 3
    assert_error(server.auth.get("/auth/users", params={"limit": 0}, headers=bearer(admin)), 422)
    assert_error(server.auth.get("/auth/users", params={"limit": "lots"}, headers=bearer(admin)), 422)
    r = server.auth.patch(f"/auth/users/{target['id']}", json={"role": "viewer"}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    assert_error(
        server.auth.patch(f"/auth/users/{target['id']}", json={"role": "god"}, headers=bearer(admin)), 422
    )
    assert_error(server.auth.patch("/auth/users/999999", json={"role": "viewer"}, headers=bearer(admin)), 404)


def test_rate_limit_on_login(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory({"STREAMPLAT_RATE_LIMIT__LOGIN_PER_MINUTE": "3"})
    for _ in range(3):
        assert (
            srv.auth.post("/auth/login", json={"email": "x@example.com", "password": "whatever"}).status_code
            == 401
        )
    r = srv.auth.post("/auth/login", json={"email": "x@example.com", "password": "whatever"})
    assert_error(r, 429)
    assert int(r.headers["Retry-After"]) >= 1
    # Other endpoints are not limited by the login limit.
    assert (
        srv.auth.post(
            "/auth/register",
            json={"username": "after429", "email": "a429@example.com", "password": "secret1"},
        ).status_code
        == 201
    )


def test_login_burst_beyond_the_hash_queue_gets_503_while_health_answers(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # One hashing thread and one waiting slot: of a burst of logins and registrations, at most two
    # are hashing or queued at a time; the rest are refused at once, and other requests never wait.
    srv = server_factory(
        {"STREAMPLAT_AUTH__PASSWORD_HASH_THREADS": "1", "STREAMPLAT_AUTH__PASSWORD_HASH_QUEUE": "1"}
    )
    srv.register("burster")
    login = {"email": "burster@example.com", "password": "password123"}

    def call(i: int) -> httpx.Response:
        with httpx.Client(base_url=srv.url("auth"), timeout=30) as c:
            if i % 2:
                return c.post("/auth/login", json=login)
            user = {"username": f"burst{i}", "email": f"burst{i}@example.com", "password": "password123"}
            return c.post("/auth/register", json=user)

    health: list[tuple[int, float]] = []
    with ThreadPoolExecutor(max_workers=17) as pool:
        burst = [pool.submit(call, i) for i in range(16)]
        with httpx.Client(base_url=srv.url("main"), timeout=30) as main:
            while not all(f.done() for f in burst):
                started = time.perf_counter()
                health.append((main.get("/health").status_code, time.perf_counter() - started))
        answers = [f.result() for f in burst]
    refused = [r for r in answers if r.status_code == 503]
    assert refused and any(r.status_code in (200, 201) for r in answers), [r.status_code for r in answers]
    assert {r.status_code for r in answers} <= {200, 201, 503}
    for r in refused:
        assert_error(r, 503, "try again")
        assert int(r.headers["Retry-After"]) >= 1
    assert health and all(code == 200 for code, _ in health), health


# --- process lifecycle -----------------------------------------------------------------------


def test_sigterm_exits_zero_and_secret_survives_restart(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory()
    srv.register("persist")
    token = srv.login("persist")["access_token"]
    secret_file = srv.data_dir / "secrets" / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert srv.stop() == 0
    assert "streamplat stopped" in srv.logs()
    srv.start()
    assert srv.auth.get("/auth/validate", headers=bearer(token)).status_code == 200


def test_port_in_use_fails_fast_naming_the_port(server: ServerProcess, tmp_path: Path) -> None:
    env = {k: v for k, v in server.env.items()}
    env["STREAMPLAT_SERVER__AUTH_PORT"] = str(free_tcp_port())
    env["STREAMPLAT_SERVER__STREAM_PORT"] = str(free_tcp_port())
    env["STREAMPLAT_SERVER__VOD_PORT"] = str(free_tcp_port())
    # main_port stays the shared server's, which is in use.
    out = subprocess.run(
        [sys.executable, "-m", "streamplat", "serve", "--data-dir", str(tmp_path / "d")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert str(server.ports["main"]) in out.stderr and "in use" in out.stderr
    assert not (tmp_path / "d" / "streamplat.db").exists()


def test_bad_config_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[server]\nmain_prot = 8080\n")
    out = subprocess.run(
        [sys.executable, "-m", "streamplat", "config", "--config", str(cfg)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "server.main_prot: unknown key" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "streamplat", "config"],
        env={**os.environ, "STREAMPLAT_SERVER__MAIN_PORT": "eighty"},
        capture_output=True,
        text=True,
        cwd=tmp_path.parent,
    )
    assert out.returncode == 2 and "server.main_port" in out.stderr


def test_health_503_when_data_directory_unwritable(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory()
    recordings = srv.data_dir / "recordings"
    recordings.rename(srv.data_dir / "recordings.moved")
    recordings.write_text("not a directory")  # root ignores permission bits, so use a file instead
    # The probe result is reused for a second (app.HEALTH_CACHE_SECONDS), so wait for it to turn.
    assert wait_for_health(srv, 503)
    for name in ("auth", "main", "stream", "vod"):
        r = srv.client(name).get("/health")
        assert r.status_code == 503
        assert r.json()["status"] == "unhealthy" and "not writable" in r.json()["reason"]
    recordings.unlink()
    (srv.data_dir / "recordings.moved").rename(recordings)
    assert wait_for_health(srv, 200)


def wait_for_health(srv: ServerProcess, status: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if srv.auth.get("/health").status_code == status:
            return True
        time.sleep(0.1)
    return False


def test_cli_help_describes_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "streamplat", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("serve", "create-admin", "migrate", "config"):
        assert command in out.stdout
        sub = subprocess.run(
            [sys.executable, "-m", "streamplat", command, "--help"], capture_output=True, text=True
        )
        assert sub.returncode == 0 and "--data-dir" in sub.stdout


def test_spec_javascript_client_logs_in(
    server_factory: Callable[..., ServerProcess], run_spec_client
) -> None:
    # The spec's class hard-codes the ports, so this server listens on them on a private loopback address.
    srv = server_factory(spec_ports=True)
    srv.register("jsuser")
    results = run_spec_client(
        f"http://{srv.host}",
        [["login", "jsuser@example.com", "password123"], ["login", "jsuser@example.com", "wrong-password"]],
    )
    ok, bad = results
    assert ok["ok"] and ok["result"]["token_type"] == "Bearer"
    assert ok["result"]["user"]["username"] == "jsuser" and ok["result"]["access_token"]
    assert not bad["ok"] and bad["error"] == "Invalid email or password"
