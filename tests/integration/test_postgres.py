"""PostgreSQL-only behaviour: the schema's integer sizes, an unreachable server at start, and
a server restart while streamplat serves (simulated the way clients see it: every connection
of ours terminated by pg_terminate_backend, on our own test database only)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_auth import assert_error, bearer, create_admin
from tests.integration.test_concurrency import at_once, start_call
from tests.support import pg
from tests.support.media import wait_for
from tests.support.server import SERVICES, ServerProcess, free_tcp_port, make_server, running_server

BIG = 2**40  # past PostgreSQL's 32-bit INTEGER, well inside the API's 64-bit ids


@pytest.fixture(name="db", scope="module")
def fixture_db() -> str:
    pg.require()
    return "postgresql"


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("pg"), db=db) as srv:
        yield srv


def our_backends(server: ServerProcess) -> list[int]:
    """PIDs of the server's connections (application_name streamplat) to its own database."""
    rows = server.sql(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'streamplat' AND pid <> pg_backend_pid()"
    )
    return [row[0] for row in rows]


def terminate_our_backends(server: ServerProcess) -> int:
    """What a PostgreSQL restart does to streamplat: every connection of ours is closed."""
    pids = our_backends(server)
    for pid in pids:
        server.sql("SELECT pg_terminate_backend(?)", pid)
    return len(pids)


def test_ids_and_sizes_are_64_bit_and_huge_ids_are_404(server: ServerProcess) -> None:
    rows = server.sql(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND (column_name IN ('id', 'user_id', 'file_size_bytes'))"
    )
    types = {(t, c): d for t, c, d in rows}
    for key in [("users", "id"), ("refresh_tokens", "user_id"), ("streams", "user_id"), ("recordings", "id")]:
        assert types[key] == "bigint", types
    assert types[("recordings", "file_size_bytes")] == "bigint"
    assert types[("streams", "id")] == "character varying"  # a UUID string
    admin = create_admin(server, "pgbigadmin")
    r = server.auth.patch(f"/auth/users/{BIG}", json={"role": "viewer"}, headers=bearer(admin))
    assert_error(r, 404, "user not found")
    r = server.vod.get("/api/v1/recordings", params={"user_id": BIG, "offset": BIG})
    assert r.status_code == 200 and r.json()["recordings"] == [], r.text
    r = server.main.get("/api/streams", params={"user_id": BIG}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["streams"] == [], r.text


def test_ids_past_32_bits_are_handed_out_and_work(server: ServerProcess) -> None:
    # As if two billion users had registered: the next id no longer fits a 32-bit INTEGER.
    server.sql(f"SELECT setval('users_id_seq', {BIG})")
    user = server.register("pgbiguser")
    assert user["id"] > 2**31
    token = str(server.login("pgbiguser")["access_token"])
    r = server.auth.get("/auth/validate", headers=bearer(token))
    assert r.status_code == 200 and r.json()["user"]["id"] == user["id"], r.text
    admin = create_admin(server, "pgbigadmin2")
    r = server.auth.patch(f"/auth/users/{user['id']}", json={"role": "viewer"}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["role"] == "viewer", r.text


def test_unreachable_postgresql_stops_the_start_naming_host_and_port(tmp_path: Path) -> None:
    port = free_tcp_port()  # nothing listens there
    url = f"postgresql+asyncpg://streamer:s3cret-pw@127.0.0.1:{port}/streamplat"
    srv = make_server(tmp_path, {"STREAMPLAT_STORAGE__DATABASE_URL": url})
    for command in (
        ["serve"],
        ["migrate"],
        ["create-admin", "--email", "a@example.com", "--username", "adm"],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "streamplat", *command, "--data-dir", str(srv.data_dir)],
            env={**srv.env, "STREAMPLAT_ADMIN_PASSWORD": "password123"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0, (command, out.stdout, out.stderr)
        assert f"127.0.0.1:{port}" in out.stderr and "cannot connect to the database" in out.stderr, (
            out.stderr
        )
        assert "s3cret-pw" not in out.stderr + out.stdout and "***" in out.stderr
        assert "Traceback" not in out.stderr, out.stderr
    # Nothing was served: the ports were let go again.
    for service in SERVICES:
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url(service, "/health"), timeout=2)


def test_connections_lost_while_idle_cost_no_request(server: ServerProcess) -> None:
    token = server.user_token("pgidle")
    assert server.main.get("/api/streams", headers=bearer(token)).status_code == 200
    assert terminate_our_backends(server) >= 1
    # The pool pings each connection before handing it out and replaces the dead ones.
    for _ in range(3):
        r = server.main.get("/api/streams", headers=bearer(token))
        assert r.status_code == 200, r.text
        r = server.main.post("/api/streams", json={"name": "after restart"}, headers=bearer(token))
        assert r.status_code == 201, r.text
    assert our_backends(server)


def test_requests_caught_by_a_restart_get_503_then_service_recovers(server: ServerProcess) -> None:
    token = server.user_token("pgrestart")
    headers = bearer(token)
    assert server.main.get("/api/streams", headers=headers).status_code == 200
    replies: list[httpx.Response] = []
    assert server.database is not None
    # The lock holds the server's next query on streams inside PostgreSQL, so the restart
    # below finds that request mid-query, as a real restart would find some. (A page not asked
    # for before: the one above is in the list cache for a moment.)
    with pg.holding(server.database, "LOCK TABLE streams IN ACCESS EXCLUSIVE MODE"):
        waiter = threading.Thread(
            target=lambda: replies.append(
                httpx.get(server.url("main", "/api/streams?limit=7"), headers=headers, timeout=60)
            )
        )
        waiter.start()
        # Only the request's list query (its count or its page): the node heartbeat's read of
        # the streams table may wait on the lock too, so "exactly one waiter" could never hold.
        wait_for(
            lambda: (
                server.sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'streamplat' AND wait_event_type = 'Lock' "
                    "AND (query ILIKE '%count(streams.id)%' OR query ILIKE '%JOIN users%')"
                )
                == [(1,)]
            ),
            30,
            message="the request to wait on the lock",
        )
        assert terminate_our_backends(server) >= 1
        waiter.join(60)
    (reply,) = replies
    body = assert_error(reply, 503, "database")
    assert reply.headers["Retry-After"].isdigit()
    assert set(body) == {"error", "message", "code"}
    # Same process, no restart: the next requests on every port are served again.
    assert server.proc is not None and server.proc.poll() is None
    deadline = time.monotonic() + 30
    while server.main.get("/api/streams?limit=8", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "no recovery"
        time.sleep(0.2)
    assert server.main.post("/api/streams", json={"name": "recovered"}, headers=headers).status_code == 201
    assert server.auth.get("/auth/validate", headers=headers).status_code == 200
    assert server.vod.get("/api/v1/recordings").status_code == 200
    health = server.auth.get("/health")
    assert health.status_code == 200, health.text
    assert "unhandled error" not in server.logs()


def test_two_servers_on_one_database_cannot_both_start_a_stream(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # Not a supported deployment (README: one server per database), but the database, not
    # process memory, must have the last word on a stream's state.
    secret = {"STREAMPLAT_AUTH__JWT_SECRET": "x" * 48}
    one = server_factory(secret)
    two = server_factory(
        {**secret, "STREAMPLAT_STORAGE__DATABASE_URL": one.env["STREAMPLAT_STORAGE__DATABASE_URL"]}
    )
    token = one.user_token("twoservers")
    for i in range(4):
        r = one.main.post("/api/streams", json={"name": f"shared {i}"}, headers=bearer(token))
        assert r.status_code == 201, r.text
        sid = r.json()["stream_id"]
        replies = at_once(*(start_call(srv, token, sid) for srv in (one, two)))
        assert sorted(r.status_code for r in replies) == [200, 409], [r.text for r in replies]
        port = next(r for r in replies if r.status_code == 200).json()["port"]
        assert one.sql("SELECT status, port FROM streams WHERE id = ?", sid) == [("waiting", port)]
