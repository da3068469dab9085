"""Races that the database must decide, fired for real as parallel HTTP requests.

Runs on SQLite and on PostgreSQL (the `db` fixture): two admins demoting each other at once,
two starts of one stream at once, and many starts racing for the SRT port pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.integration.test_auth import assert_error, bearer, create_admin
from tests.support.media import ffmpeg_children_listening
from tests.support.server import ServerProcess, running_server

ROUNDS = 6


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[ServerProcess]:
    # Its own server: the last-admin race needs a database with exactly two admins.
    with running_server(tmp_path_factory.mktemp("race"), db=db) as srv:
        yield srv


def at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Run every call in its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def patch_user(
    server: ServerProcess, token: str, user_id: int, change: dict[str, Any]
) -> Callable[[], httpx.Response]:
    def call() -> httpx.Response:
        # A client per thread: one connection each, so the requests really overlap.
        with httpx.Client(base_url=server.url("auth"), timeout=30) as client:
            return client.patch(f"/auth/users/{user_id}", json=change, headers=bearer(token))

    return call


def active_admins(server: ServerProcess) -> list[int]:
    return sorted(
        row[0] for row in server.sql("SELECT id FROM users WHERE role = 'admin' AND is_active = ?", True)
    )


def test_two_admins_demoting_each_other_at_once_leave_one(server: ServerProcess) -> None:
    token_a = create_admin(server, "raceadmina")
    a = server.auth.get("/auth/validate", headers=bearer(token_a)).json()["user"]["id"]
    r = server.auth.post(
        "/auth/register",
        json={
            "username": "raceadminb",
            "email": "raceadminb@example.com",
            "password": "password123",
            "role": "admin",
        },
        headers=bearer(token_a),
    )
    assert r.status_code == 201, r.text
    b = r.json()["user"]["id"]
    token_b = str(server.login("raceadminb")["access_token"])
    tokens = {a: token_a, b: token_b}
    assert active_admins(server) == sorted([a, b])
    for round_no in range(ROUNDS):
        # Even rounds demote, odd rounds deactivate: both count as losing an admin.
        change = {"role": "viewer"} if round_no % 2 == 0 else {"is_active": False}
        replies = at_once(
            patch_user(server, token_a, b, change),
            patch_user(server, token_b, a, change),
        )
        codes = sorted(r.status_code for r in replies)
        # One wins; the other is refused, as the last admin (409) or as no longer an admin (403/401).
        assert codes[0] == 200 and codes[1] in (401, 403, 409), [r.text for r in replies]
        for reply in replies:
            if reply.status_code != 200:
                assert_error(reply, reply.status_code)
        survivors = active_admins(server)
        assert len(survivors) == 1, (round_no, survivors)
        # The survivor brings the other one back for the next round.
        (survivor,) = survivors
        other = b if survivor == a else a
        restore = server.auth.patch(
            f"/auth/users/{other}",
            json={"role": "admin", "is_active": True},
            headers=bearer(tokens[survivor]),
        )
        assert restore.status_code == 200, restore.text
        if change == {"is_active": False}:  # deactivation revoked the loser's logins: log in again
            tokens[other] = str(server.login("raceadminb" if other == b else "raceadmina")["access_token"])
        assert active_admins(server) == sorted([a, b])


def start_call(server: ServerProcess, token: str, stream_id: str) -> Callable[[], httpx.Response]:
    def call() -> httpx.Response:
        with httpx.Client(base_url=server.url("main"), timeout=60) as client:
            return client.post(f"/api/streams/{stream_id}/start", headers=bearer(token))

    return call


def create_stream(server: ServerProcess, token: str, name: str) -> str:
    r = server.main.post("/api/streams", json={"name": name}, headers=bearer(token))
    assert r.status_code == 201, r.text
    return str(r.json()["stream_id"])


def stop_stream(server: ServerProcess, token: str, stream_id: str) -> None:
    r = server.main.post(f"/api/streams/{stream_id}/stop", headers=bearer(token))
    assert r.status_code == 200, r.text


def test_two_starts_of_one_stream_at_once_give_one_listener_and_one_409(server: ServerProcess) -> None:
    token = server.user_token("racestarter")
    for i in range(3):
        sid = create_stream(server, token, f"double start {i}")
        replies = at_once(start_call(server, token, sid), start_call(server, token, sid))
        assert sorted(r.status_code for r in replies) == [200, 409], [r.text for r in replies]
        won = next(r for r in replies if r.status_code == 200).json()
        assert_error(next(r for r in replies if r.status_code == 409), 409, "already started")
        assert len(ffmpeg_children_listening(won["port"])) == 1
        assert server.sql("SELECT status, port FROM streams WHERE id = ?", sid) == [("waiting", won["port"])]
        stop_stream(server, token, sid)
        assert ffmpeg_children_listening(won["port"]) == []


def test_parallel_starts_never_hand_one_port_to_two_streams(server: ServerProcess) -> None:
    first, last = (
        int(server.env["STREAMPLAT_INGEST__PORT_MIN"]),
        int(server.env["STREAMPLAT_INGEST__PORT_MAX"]),
    )
    pool_size = last - first + 1
    tokens = [server.user_token(f"portracer{i}") for i in range(2)]
    streams = [
        (tokens[i % 2], create_stream(server, tokens[i % 2], f"port race {i}")) for i in range(pool_size + 3)
    ]
    replies = at_once(*(start_call(server, token, sid) for token, sid in streams))
    ok = [r.json() for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    ports = [body["port"] for body in ok]
    # The pool may lose a port to another process on this machine, never to a second stream.
    assert len(ports) == len(set(ports)) and len(ports) >= pool_size - 2, ports
    assert all(first <= p <= last for p in ports)
    for r in refused:
        assert_error(r, 503, "port")
    assert len(ok) + len(refused) == len(streams)
    rows = server.sql("SELECT port FROM streams WHERE port IS NOT NULL")
    assert sorted(row[0] for row in rows) == sorted(ports)
    assert all(len(ffmpeg_children_listening(p)) == 1 for p in ports)
    for token, sid in streams:
        r = server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
        assert r.status_code in (200, 409), r.text
    assert all(ffmpeg_children_listening(p) == [] for p in ports)


def test_one_email_registered_twice_at_once_gives_one_user(server: ServerProcess) -> None:
    def register(username: str) -> Callable[[], httpx.Response]:
        def call() -> httpx.Response:
            with httpx.Client(base_url=server.url("auth"), timeout=60) as client:
                body = {"username": username, "email": "twins@example.com", "password": "password123"}
                return client.post("/auth/register", json=body)

        return call

    replies = at_once(register("twinone"), register("twintwo"))
    assert sorted(r.status_code for r in replies) == [201, 409], [r.text for r in replies]
    assert_error(next(r for r in replies if r.status_code == 409), 409, "email")
    assert server.sql("SELECT count(*) FROM users WHERE email = ?", "twins@example.com") == [(1,)]
