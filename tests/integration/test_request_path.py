"""The request path of a real server: kept-alive small requests are answered without delay."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support.server import ServerProcess


def test_kept_alive_small_requests_are_not_delayed_by_nagle(server: ServerProcess) -> None:
    # With Nagle on, each small reply on a kept-alive connection waits for the client's delayed
    # ACK (~40 ms on Linux), so the median sits at ~40 ms however idle the machine is. Without it a
    # /health answer takes about a millisecond; 20 ms leaves room for a busy shared machine.
    with httpx.Client(base_url=server.url("main"), timeout=10) as client:
        assert client.get("/health").status_code == 200  # connect, warm up
        took = []
        for _ in range(50):
            started = time.perf_counter()
            r = client.get("/health")
            took.append(time.perf_counter() - started)
            assert r.status_code == 200
    median_ms = statistics.median(took) * 1000
    assert median_ms < 20, f"median {median_ms:.1f} ms over 50 kept-alive requests: {sorted(took)}"


def test_default_stack_is_asyncio_and_httptools(server: ServerProcess) -> None:
    assert "http stack asyncio + httptools" in server.logs()


def test_startup_objects_are_frozen_out_of_full_collections(server: ServerProcess) -> None:
    found = re.search(r"gc: (\d+) objects from start-up frozen", server.logs())
    assert found is not None and int(found[1]) > 10_000, server.logs()[-2000:]


def test_uvloop_on_request_serves_the_api(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory({"STREAMPLAT_SERVER__LOOP": "uvloop"})
    assert "http stack uvloop + httptools" in srv.logs()
    token = srv.user_token("onuvloop")
    r = srv.main.post("/api/streams", json={"name": "uv"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    sid = r.json()["stream_id"]
    assert (
        srv.main.post(f"/api/streams/{sid}/start", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    assert srv.stream.get(f"/stream/{sid}/status").json()["ffmpeg_running"] is True
    assert srv.stop() == 0
    assert "streamplat stopped" in srv.logs()


def test_pure_python_fallback_serves_the_api(server_factory: Callable[..., ServerProcess]) -> None:
    # asyncio + h11: what runs where uvloop or httptools cannot be installed.
    srv = server_factory({"STREAMPLAT_SERVER__LOOP": "asyncio", "STREAMPLAT_SERVER__HTTP": "h11"})
    assert "http stack asyncio + h11" in srv.logs()
    token = srv.user_token("fallback")
    r = srv.main.post("/api/streams", json={"name": "fb"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    sid = r.json()["stream_id"]
    r = srv.main.get(f"/api/streams/{sid}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["name"] == "fb"
    assert srv.stream.get(f"/stream/{sid}/status").status_code == 200
    assert srv.stop() == 0
    assert "streamplat stopped" in srv.logs()


def test_no_slow_callbacks_on_the_event_loop_during_a_representative_workload(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # asyncio's debug mode logs every callback that holds the loop for more than 100 ms
    # ("Executing <Handle ...> took 0.123 seconds"): a blocking file, process or hashing call.
    srv = server_factory({"PYTHONASYNCIODEBUG": "1"})
    start_offset = len(srv.logs())
    admin_name, token = "slowadmin", srv.user_token("slowcheck")
    headers = {"Authorization": f"Bearer {token}"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        # A burst of logins (argon2 on its threads) while the other ports are used.
        logins = [pool.submit(srv.login, "slowcheck") for _ in range(8)]
        sid = srv.main.post("/api/streams", json={"name": "slow"}, headers=headers).json()["stream_id"]
        for _ in range(5):
            assert srv.main.get(f"/api/streams/{sid}", headers=headers).status_code == 200
            assert srv.main.get("/api/streams", headers=headers).status_code == 200
            assert srv.stream.get(f"/stream/{sid}/status").status_code == 200
            for name in ("auth", "main", "stream", "vod"):
                assert srv.client(name).get("/health").status_code == 200
        assert all(f.result()["access_token"] for f in logins)
    assert srv.main.post(f"/api/streams/{sid}/start", headers=headers).status_code == 200
    assert srv.stream.get(f"/stream/{sid}/status").json()["ffmpeg_running"] is True
    assert srv.stream.get(f"/hls/{sid}/stream.m3u8").status_code == 404  # no publisher yet
    assert srv.main.post(f"/api/streams/{sid}/stop", headers=headers).status_code == 200
    assert srv.main.get("/").status_code == 200 and srv.main.get("/app-config.json").status_code == 200
    assert srv.vod.get("/api/v1/recordings", headers=headers).status_code == 200
    assert srv.main.delete(f"/api/streams/{sid}", headers=headers).status_code in (200, 204)
    srv.register(admin_name)
    assert srv.stop() == 0
    workload_log = srv.logs()[start_offset:]
    slow = [
        line for line in workload_log.splitlines() if re.search(r"Executing .* took [\d.]+ seconds", line)
    ]
    assert not slow, "\n".join(slow)
