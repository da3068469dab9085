"""The machine's Redis for tests: a key prefix of their own per test, and private redis-servers.

Other test runs (and other projects) share the machine's Redis: every test works under a fresh
prefix and deletes only its own keys afterwards, never FLUSHALL/FLUSHDB. Tests that take Redis
away start a private `redis-server` on a free port instead of touching the shared one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_reachable(url: str = REDIS_URL) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def require_redis() -> None:
    """Skip (or, with TEST_REQUIRE_REDIS=1 as in CI, fail) when Redis is not there."""
    if redis_reachable():
        return
    message = f"Redis is not reachable at {REDIS_URL} (set TEST_REDIS_URL)"
    if os.environ.get("TEST_REQUIRE_REDIS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def fresh_prefix() -> str:
    return f"streamplat-test-{uuid.uuid4().hex[:12]}:"


def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key under `prefix` (only those)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def closed_port() -> int:
    """A TCP port nothing listens on right now (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A `redis-server` of our own on a free port, without persistence, that a test may stop."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or closed_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is required (make system-deps installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not redis_reachable(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextmanager
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(workdir).start()
    try:
        yield server
    finally:
        server.stop()
