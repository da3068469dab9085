"""The request path of a real server: kept-alive small requests are answered without delay."""

from __future__ import annotations

import statistics
import time

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
