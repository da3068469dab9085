"""streamplat.cluster against a real Redis: relayed events, shared rate limits and viewer counts.

Each "process" here is its own RedisLink (own connections, own node id) in one event loop, which
is what two streamplat processes look like to Redis. Every test uses a key prefix of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.support.redis import REDIS_URL, closed_port, private_redis

from streamplat.auth.ratelimit import RateLimiter
from streamplat.cli import main
from streamplat.cluster import EventRelay, RedisLink, SharedRateLimiter, SharedViewerTracker, mask_url
from streamplat.events import (
    EventBus,
    RecordingReady,
    StreamChanged,
    StreamEnded,
    StreamStatusChanged,
    UserChanged,
    ViewerCountChanged,
)


class Node:
    """One process's side: its link, local bus, remote bus and what each bus delivered."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.local = EventBus()
        self.remote = EventBus()
        self.local_seen: list[Any] = []
        self.remote_seen: list[Any] = []
        self.arrived = asyncio.Event()
        for cls in (StreamStatusChanged, RecordingReady, UserChanged, StreamChanged, StreamEnded):
            self.local.subscribe(cls, self.local_seen.append)
            self.remote.subscribe(cls, self._on_remote)
        self.local.subscribe(ViewerCountChanged, self.local_seen.append)
        self.remote.subscribe(ViewerCountChanged, self._on_remote)

    def _on_remote(self, event: Any) -> None:
        self.remote_seen.append(event)
        self.arrived.set()

    async def remote_until(self, done: Callable[[Any], bool], within: float = 20) -> list[Any]:
        async with asyncio.timeout(within):
            while not any(done(e) for e in self.remote_seen):
                self.arrived.clear()
                await self.arrived.wait()
        return self.remote_seen


@asynccontextmanager
async def node(url: str, prefix: str) -> AsyncIterator[Node]:
    async with AsyncExitStack() as stack:
        link = RedisLink(url, prefix, connect_timeout_seconds=0.5, command_timeout_seconds=1.0)
        stack.push_async_callback(link.close)
        n = Node(link)
        n.relay = await stack.enter_async_context(EventRelay(link, n.local, n.remote))  # type: ignore[attr-defined]
        yield n


async def until(predicate: Callable[[], bool], within: float = 30) -> None:
    """Poll `predicate` (the link's state has no event to wait on)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


# --- events ----------------------------------------------------------------------------------


async def test_relayed_events_reach_the_other_process_remote_bus_only(redis_prefix: str) -> None:
    async with node(REDIS_URL, redis_prefix) as a, node(REDIS_URL, redis_prefix) as b:
        assert a.link.up and b.link.up
        status = StreamStatusChanged("s-1", "waiting", 7, None)
        ready = RecordingReady("s-1", 7, 12.5, "/recordings/vod/s-1/video.mp4", "/t.jpg", 0.8)
        # Local-only events first: if they were relayed they would arrive before the marker.
        await a.local.publish(StreamEnded("s-1", 7, "ann", "Title", Path("/tmp/s-1")))
        await a.local.publish(ViewerCountChanged("s-1", 3))
        for event in (status, ready, UserChanged(7), StreamChanged("s-1")):
            await a.local.publish(event)
        seen = await b.remote_until(lambda e: isinstance(e, StreamChanged))
        # In order, equal field for field, and nothing that drives local work or is derived locally.
        assert seen == [status, ready, UserChanged(7), StreamChanged("s-1")]
        # B's own handlers (recording staging, stream stop...) never ran for A's events,
        # and A does not get its own events back as remote ones.
        assert b.local_seen == []
        assert a.remote_seen == []
        assert len(a.local_seen) == 6
        assert a.relay.dropped == 0 and b.relay.received == 4  # type: ignore[attr-defined]


async def test_garbage_on_the_channel_is_ignored(redis_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    async with node(REDIS_URL, redis_prefix) as a, node(REDIS_URL, redis_prefix) as b:
        with caplog.at_level(logging.WARNING, logger="streamplat.cluster"):
            channel = b.relay.channel  # type: ignore[attr-defined]
            await a.link.client.publish(channel, b"not json")
            await a.link.client.publish(channel, b'{"node": "x", "type": "StreamStatusChanged", "event": {}}')
            await a.link.client.publish(channel, b'{"node": "x", "type": "Shutdown", "event": {}}')
            await a.local.publish(StreamChanged("after"))
            seen = await b.remote_until(lambda e: e == StreamChanged("after"))
        assert seen == [StreamChanged("after")]
        malformed = [r for r in caplog.records if "malformed" in r.getMessage()]
        # Two malformed messages, logged by B (and maybe already by A, which listens too); the
        # unknown type is skipped quietly (a newer version's event, during a rolling upgrade).
        assert 2 <= len(malformed) <= 4


async def test_redis_down_at_start_leaves_local_delivery_working(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:hunter2secret@127.0.0.1:{closed_port()}/0"
    with caplog.at_level(logging.INFO, logger="streamplat.cluster"):
        async with node(url, "streamplat-test-down:") as a:
            assert not a.link.up
            for _ in range(3):
                await a.local.publish(StreamStatusChanged("s-2", "waiting", 1, None))
            assert len(a.local_seen) == 3
            assert a.relay.dropped == 3  # type: ignore[attr-defined]
    text = caplog.text
    assert "hunter2secret" not in text
    assert f"redis unreachable at redis://:***@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/0" in text
    # One line for the state, one for the dropping: not one per event.
    assert text.count("redis unreachable") == 1
    assert text.count("being dropped") == 1


async def test_events_flow_again_when_redis_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = "streamplat-test-back:"
    with private_redis(tmp_path / "redis") as server, caplog.at_level(logging.INFO, "streamplat.cluster"):
        async with node(server.url, prefix) as a, node(server.url, prefix) as b:
            await a.local.publish(StreamChanged("before"))
            await b.remote_until(lambda e: e == StreamChanged("before"))
            server.stop()
            await until(lambda: not a.link.up and not b.link.up)
            await a.local.publish(StreamChanged("while-down"))
            assert a.local_seen[-1] == StreamChanged("while-down")  # local handlers still run
            server.start()  # same port
            await until(lambda: a.link.up and b.link.up)
            await a.local.publish(StreamChanged("after"))
            seen = await b.remote_until(lambda e: e == StreamChanged("after"))
            assert seen == [StreamChanged("before"), StreamChanged("after")]
    assert caplog.text.count("redis unreachable") == 2  # once per process, not per retry
    assert caplog.text.count("redis reachable") == 4  # at start and on return, per process


async def test_create_admin_beside_servers_drops_their_cached_user(
    redis_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.toml
    monkeypatch.setenv("STREAMPLAT_ADMIN_PASSWORD", "password123")
    monkeypatch.setenv("STREAMPLAT_REDIS__URL", REDIS_URL)
    monkeypatch.setenv("STREAMPLAT_REDIS__KEY_PREFIX", redis_prefix)
    argv = ["create-admin", "--email", "ops@example.com", "--username", "ops", "--data-dir", str(tmp_path)]
    async with node(REDIS_URL, redis_prefix) as server:
        assert await asyncio.to_thread(main, argv) == 0  # created: in no cache, nothing to say
        assert await asyncio.to_thread(main, argv) == 0  # promoted again: servers must forget it
        seen = await server.remote_until(lambda e: isinstance(e, UserChanged))
    assert seen == [UserChanged(1)]
    # Redis down: the command still succeeds, and says what that means.
    monkeypatch.setenv("STREAMPLAT_REDIS__URL", f"redis://:pw-secret@127.0.0.1:{closed_port()}/0")
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    err = capsys.readouterr().err
    assert "redis unreachable at redis://:***@127.0.0.1" in err and "pw-secret" not in err
    assert "auth.principal_cache_seconds (2 s)" in err


# --- rate limits ------------------------------------------------------------------------------


async def test_rate_limit_is_shared_by_processes(redis_prefix: str) -> None:
    async with node(REDIS_URL, redis_prefix) as a, node(REDIS_URL, redis_prefix) as b:
        la = SharedRateLimiter(a.link, "login", RateLimiter(3, 60.0))
        lb = SharedRateLimiter(b.link, "login", RateLimiter(3, 60.0))
        assert [await la.acquire("10.0.0.1"), await lb.acquire("10.0.0.1"), await la.acquire("10.0.0.1")] == [
            None,
            None,
            None,
        ]
        wait_b = await lb.acquire("10.0.0.1")
        wait_a = await la.acquire("10.0.0.1")
        assert wait_a is not None and wait_b is not None
        assert 0 < wait_b <= 60 and 0 < wait_a <= 60
        assert await lb.acquire("10.0.0.2") is None  # another client has its own window
        # The local fallbacks were not used while Redis answered.
        assert la.fallback.hit("10.0.0.1") is None


async def test_rate_limit_falls_back_to_local_when_redis_is_down() -> None:
    async with node(f"redis://127.0.0.1:{closed_port()}/0", "streamplat-test-down:") as a:
        limiter = SharedRateLimiter(a.link, "register", RateLimiter(2, 60.0))
        results = [await limiter.acquire("10.0.0.9") for _ in range(3)]
        assert results[:2] == [None, None]
        assert results[2] is not None and 0 < results[2] <= 60
        unlimited = SharedRateLimiter(a.link, "login", RateLimiter(0, 60.0))
        assert [await unlimited.acquire("x") for _ in range(20)] == [None] * 20


# --- viewers ----------------------------------------------------------------------------------


async def test_viewer_counts_are_distinct_across_processes(redis_prefix: str) -> None:
    async with node(REDIS_URL, redis_prefix) as a, node(REDIS_URL, redis_prefix) as b:
        va = SharedViewerTracker(a.link, window_seconds=30, flush_seconds=60)  # flushed by hand here
        vb = SharedViewerTracker(b.link, window_seconds=30, flush_seconds=60)
        va.touch("s-1", "client-a")
        va.touch("s-1", "client-shared")
        vb.touch("s-1", "client-shared")  # one viewer whose requests hit both processes
        vb.touch("s-1", "client-b")
        vb.touch("s-2", "client-c")
        # Touches cost no round trip: until the first flush, each process knows only its own.
        assert va.count("s-1") == 2 and vb.counts() == {"s-1": 2, "s-2": 1}
        await va.flush()
        await vb.flush()
        await va.flush()
        assert va.count("s-1") == vb.count("s-1") == 3
        assert va.counts() == vb.counts() == {"s-1": 3, "s-2": 1}
        # The local trackers (the fallback) only know their own process's viewers.
        assert va.local.count("s-1") == 2 and vb.local.count("s-1") == 2
        # A stopped stream counts 0 at once where it stopped, and everywhere after the next flush.
        va.forget("s-1")
        assert va.count("s-1") == 0 and "s-1" not in va.counts()
        await va.flush()
        await vb.flush()
        assert vb.count("s-1") == 0 and vb.counts() == {"s-2": 1}


async def test_viewer_counts_fall_back_to_local_when_redis_is_down() -> None:
    async with node(f"redis://127.0.0.1:{closed_port()}/0", "streamplat-test-down:") as a:
        tracker = SharedViewerTracker(a.link, window_seconds=30, flush_seconds=0.1)
        async with tracker:
            tracker.touch("s-1", "one")
            tracker.touch("s-1", "two")
            assert tracker.count("s-1") == 2
            assert tracker.counts() == {"s-1": 2}
            await asyncio.sleep(0.3)  # flush loop turns while Redis is down: nothing breaks
            assert tracker.count("s-1") == 2


# --- config ------------------------------------------------------------------------------------


def test_mask_url_hides_passwords_only() -> None:
    assert mask_url("redis://:s3cret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert mask_url("rediss://app:s3cret@cache.example.com/1") == "rediss://app:***@cache.example.com/1"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
