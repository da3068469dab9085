"""Several `streamplat serve` processes sharing one Redis ([redis] url), end to end.

Real servers on free ports, the machine's Redis under a key prefix of each test's own, real FFmpeg
publishing over SRT. The processes have their own data directories; where a test needs them to
see the same users and streams (viewer counts, cache invalidation) they share one SQLite file, as
they would share one PostgreSQL database in production.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_auth import bearer, create_admin
from tests.integration.test_realtime import (
    LIVE_ENV,
    create_and_start,
    open_ws,
    read_until,
    recv,
    status_message,
)
from tests.support.media import Publisher, wait_for
from tests.support.redis import REDIS_URL, closed_port
from tests.support.server import ServerProcess

Factory = Callable[..., ServerProcess]


def redis_env(prefix: str, url: str = REDIS_URL, **extra: str) -> dict[str, str]:
    return {"STREAMPLAT_REDIS__URL": url, "STREAMPLAT_REDIS__KEY_PREFIX": prefix, **LIVE_ENV, **extra}


def test_a_websocket_client_of_one_process_sees_events_raised_in_another(
    server_factory: Factory, redis_prefix: str
) -> None:
    a = server_factory(redis_env(redis_prefix), name="a")
    b = server_factory(redis_env(redis_prefix), name="b")
    token_a = a.user_token("streamer_a")
    token_b = b.user_token("watcher_b")
    with open_ws(b, token_b) as on_b, open_ws(a, token_a) as on_a:
        assert recv(on_b)["type"] == "welcome" and recv(on_a)["type"] == "welcome"
        sid, _ = create_and_start(a, token_a)
        read_until(on_b, status_message(sid, "waiting"), timeout=20)
        assert a.main.post(f"/api/streams/{sid}/stop", headers=bearer(token_a)).status_code == 200
        seen_b = read_until(on_b, status_message(sid, "stopped"), timeout=20)
        seen_a = read_until(on_a, status_message(sid, "stopped"), timeout=20)
    # The process that raised them delivers each event once (its own echo from Redis is skipped).
    statuses_a = [m["status"] for m in seen_a if m["type"] == "stream_status" and m["stream_id"] == sid]
    assert statuses_a == ["waiting", "stopped"]
    assert [m for m in seen_b if m["type"] == "stream_status"] == [
        {"type": "stream_status", "stream_id": sid, "status": "stopped"}
    ]
    # B has no such stream: it only forwarded the events, it did not act on them.
    assert b.main.get(f"/api/streams/{sid}", headers=bearer(token_b)).status_code == 404
    assert "redis reachable at" in b.logs()
    metrics = b.main.get("/metrics").text
    assert "streamplat_redis_up 1.0" in metrics
    assert 'streamplat_redis_events_total{outcome="received"}' in metrics


def test_login_rate_limit_is_shared_by_processes(server_factory: Factory, redis_prefix: str) -> None:
    env = redis_env(redis_prefix, STREAMPLAT_RATE_LIMIT__LOGIN_PER_MINUTE="3")
    a = server_factory(env, name="a")
    b = server_factory(env, name="b")
    a.register("limited")
    b.register("limited")
    wrong = {"email": "limited@example.com", "password": "wrong-password"}
    answers = [srv.auth.post("/auth/login", json=wrong).status_code for srv in (a, b, a)]
    assert answers == [401, 401, 401]
    for srv in (b, a):  # the fourth attempt in the minute, whichever process it reaches
        r = srv.auth.post("/auth/login", json=wrong)
        assert r.status_code == 429, r.text
        body = r.json()
        assert body["error"] and body["code"] == 429 and "try again" in body["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    # Registration has its own limit (10 a minute by default): not used up by the logins.
    assert a.register("another")["username"] == "another"


def test_viewer_counts_and_read_caches_are_shared(
    server_factory: Factory, redis_prefix: str, tmp_path: Path, publishers: list[Publisher]
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    # Caches kept for a minute: only the invalidations relayed through Redis can make B see A's
    # changes within this test.
    env = redis_env(
        redis_prefix,
        STREAMPLAT_STORAGE__DATABASE_URL=database,
        # Nodes of one database share the JWT secret (streamplat.nodes refuses another one).
        STREAMPLAT_AUTH__JWT_SECRET="r" * 48,
        STREAMPLAT_SERVER__READ_CACHE_SECONDS="60",
        STREAMPLAT_AUTH__PRINCIPAL_CACHE_SECONDS="60",
    )
    a = server_factory(env, name="a")
    b = server_factory(env, name="b")
    token_a = a.user_token("owner")
    token_b = str(b.login("owner")["access_token"])  # the same user, signed by B
    sid, started = create_and_start(a, token_a)
    try:
        publishers.append(Publisher(started["srt_url"], duration=60).start())
        status_url = f"/stream/{sid}/status"
        wait_for(lambda: a.stream.get(status_url).json()["hls_files_count"] >= 2, 30, message="segments")
        with open_ws(b, token_b) as on_b:
            recv(on_b)  # welcome
            on_b.send(json.dumps({"type": "subscribe", "stream_ids": [sid]}))
            recv(on_b)  # subscribed
            # Players fetch from A, where the stream's media is; B's clients hear the count.
            for agent in ("player-a/1.0", "player-b/1.0"):
                with httpx.Client(base_url=a.url("stream"), headers={"User-Agent": agent}, timeout=10) as p:
                    assert p.get(f"/hls/{sid}/stream.m3u8").status_code == 200
            read_until(on_b, lambda m: m["type"] == "viewer_count" and m["count"] == 2, timeout=20)
        assert b.stream.get(status_url).json()["viewer_count"] == 2
        assert b.main.get(f"/api/streams/{sid}", headers=bearer(token_b)).json()["viewer_count"] == 2

        # Read caches: B has the row, the list pages and the user cached; A's changes reach B at once.
        before = b.main.get(f"/api/streams/{sid}", headers=bearer(token_b)).json()
        assert before["status"] in ("waiting", "active")

        def live_on_b() -> list[str]:
            r = b.main.get("/api/streams/live", headers=bearer(token_b))
            return [item["stream_id"] for item in r.json()["streams"]]

        def recordings_on_b() -> list[str]:
            return [item["stream_id"] for item in b.vod.get("/api/v1/recordings").json()["recordings"]]

        assert sid in live_on_b() and sid not in recordings_on_b()
        assert a.main.post(f"/api/streams/{sid}/stop", headers=bearer(token_a)).status_code == 200
        wait_for(
            lambda: b.main.get(f"/api/streams/{sid}", headers=bearer(token_b)).json()["status"] == "stopped",
            10,
            message="B sees the stop",
        )
        wait_for(lambda: sid not in live_on_b(), 10, message="B's live list drops the stream")
        wait_for(lambda: sid in recordings_on_b(), 10, message="B lists the new recording")
        after = b.main.get(f"/api/streams/{sid}", headers=bearer(token_b)).json()
        assert after["viewer_count"] == 0
        rotated = a.main.post(f"/api/streams/{sid}/rotate-key", headers=bearer(token_a)).json()
        wait_for(
            lambda: (
                b.main.get(f"/api/streams/{sid}", headers=bearer(token_b)).json()["stream_key"]
                == rotated["stream_key"]
            ),
            10,
            message="B sees the new key",
        )
        admin = create_admin(a, "boss")
        user_id = before["user_id"]
        r = a.auth.patch(f"/auth/users/{user_id}", json={"is_active": False}, headers=bearer(admin))
        assert r.status_code == 200
        wait_for(
            lambda: b.auth.get("/auth/validate", headers=bearer(token_b)).status_code == 401,
            10,
            message="B refuses the deactivated user",
        )
    finally:
        # B must not be the one stopping A's stream at shutdown (separate FFmpeg supervisors).
        a.main.post(f"/api/streams/{sid}/stop", headers=bearer(token_a))


def test_unreachable_redis_leaves_the_server_working_single_node(server_factory: Factory) -> None:
    port = closed_port()
    env = redis_env(
        "streamplat-test-down:",
        url=f"redis://:hunter2secret@127.0.0.1:{port}/0",
        STREAMPLAT_RATE_LIMIT__REGISTER_PER_MINUTE="3",
    )
    srv = server_factory(env)
    health = srv.main.get("/health")
    assert health.status_code == 200  # it serves: degraded, not unhealthy
    assert health.json()["status"] == "degraded"
    reason = f"redis unreachable at redis://:***@127.0.0.1:{port}/0: working single-node"
    assert health.json()["reason"] == reason
    token = srv.user_token("solo")  # one registration
    with open_ws(srv, token) as ws:
        assert recv(ws)["type"] == "welcome"
        sid, _ = create_and_start(srv, token)
        read_until(ws, status_message(sid, "waiting"), timeout=20)
    # The rate limit falls back to this process's own window: 3 registrations a minute.
    srv.register("solo2")
    srv.register("solo3")
    body: dict[str, Any] = {"username": "solo4", "email": "solo4@example.com", "password": "password123"}
    r = srv.auth.post("/auth/register", json=body)
    assert r.status_code == 429 and "Retry-After" in r.headers, r.text
    assert srv.main.post(f"/api/streams/{sid}/stop", headers=bearer(token)).status_code == 200
    logs = srv.logs()
    assert "hunter2secret" not in logs
    assert f"redis unreachable at redis://:***@127.0.0.1:{port}/0" in logs
    assert logs.count("redis unreachable") == 1  # once, not per request or per retry
    assert "streamplat_redis_up 0.0" in srv.main.get("/metrics").text


def test_events_between_processes_resume_when_redis_returns(server_factory: Factory, tmp_path: Path) -> None:
    from tests.support.redis import PrivateRedis

    redis = PrivateRedis(tmp_path / "redis").start()  # ours to stop; the machine's Redis stays up
    try:
        env = redis_env("streamplat-test-outage:", url=redis.url)
        a = server_factory(env, name="a")
        b = server_factory(env, name="b")
        token_a = a.user_token("outage_a")
        token_b = b.user_token("outage_b")
        redis.stop()
        wait_for(lambda: b.main.get("/health").json()["status"] == "degraded", 30, message="B notices")
        # Single-node features keep working on both.
        with open_ws(a, token_a) as on_a:
            recv(on_a)
            sid, _ = create_and_start(a, token_a)
            read_until(on_a, status_message(sid, "waiting"), timeout=20)
        assert a.main.post(f"/api/streams/{sid}/stop", headers=bearer(token_a)).status_code == 200
        assert b.auth.get("/auth/validate", headers=bearer(token_b)).status_code == 200

        redis.start()  # same port
        for srv in (a, b):
            wait_for(lambda s=srv: s.main.get("/health").json()["status"] == "healthy", 40, message="back")
        with open_ws(b, token_b) as on_b:
            recv(on_b)
            sid2, _ = create_and_start(a, token_a)
            read_until(on_b, status_message(sid2, "waiting"), timeout=20)
        assert a.main.post(f"/api/streams/{sid2}/stop", headers=bearer(token_a)).status_code == 200
        for srv in (a, b):
            logs = srv.logs()
            assert logs.count("redis unreachable") == 1 and logs.count("redis reachable") == 2
    finally:
        redis.stop()
