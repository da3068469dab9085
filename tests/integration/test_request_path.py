"""The request path of a real server: kept-alive small requests are answered without delay."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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


def test_default_stack_is_uvloop_and_httptools(server: ServerProcess) -> None:
    assert "http stack uvloop + httptools" in server.logs()


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
