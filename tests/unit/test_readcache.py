"""ReadCache.get_or_load: callers that miss together share one read; a change is never hidden."""

from __future__ import annotations

import asyncio

import pytest

from streamplat.readcache import ReadCache


class Rows:
    """A stand-in table: counts reads, and each read waits until the test lets it finish."""

    def __init__(self) -> None:
        self.value = "v1"
        self.reads = 0
        self.gate = asyncio.Event()
        self.looked = asyncio.Event()  # set once a read has taken the row's value

    async def load(self) -> str:
        self.reads += 1
        seen = self.value
        self.looked.set()
        await self.gate.wait()
        return seen


async def test_callers_that_miss_together_share_one_read() -> None:
    cache: ReadCache[str, str] = ReadCache(60)
    rows = Rows()
    callers = [asyncio.create_task(cache.get_or_load("k", rows.load)) for _ in range(50)]
    await asyncio.sleep(0)
    rows.gate.set()
    assert await asyncio.gather(*callers) == ["v1"] * 50
    assert rows.reads == 1
    assert await cache.get_or_load("k", rows.load) == "v1" and rows.reads == 1  # cached now


async def test_a_change_during_a_read_is_seen_by_every_later_caller() -> None:
    cache: ReadCache[str, str] = ReadCache(60)
    rows = Rows()
    early = asyncio.create_task(cache.get_or_load("k", rows.load))
    await rows.looked.wait()  # the first read has taken the old value
    rows.looked.clear()
    rows.value = "v2"  # committed while the first read is under way ...
    cache.invalidate("k")  # ... and announced
    late = asyncio.create_task(cache.get_or_load("k", rows.load))
    await rows.looked.wait()
    rows.gate.set()
    assert await early == "v1"  # it asked before the change
    assert await late == "v2"  # it asked after: a read of its own, not the one under way
    assert rows.reads == 2
    assert cache.get("k") == "v2"


async def test_a_failed_read_reaches_every_caller_and_is_not_cached() -> None:
    cache: ReadCache[str, str] = ReadCache(60)
    reads = 0

    async def missing() -> str:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)
        raise LookupError("no such row")

    results = await asyncio.gather(
        *(cache.get_or_load("k", missing) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, LookupError) for r in results) and reads == 1
    with pytest.raises(LookupError):
        await cache.get_or_load("k", missing)
    assert reads == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_others() -> None:
    cache: ReadCache[str, str] = ReadCache(60)
    rows = Rows()
    leaver = asyncio.create_task(cache.get_or_load("k", rows.load))
    stayer = asyncio.create_task(cache.get_or_load("k", rows.load))
    await asyncio.sleep(0)
    leaver.cancel()
    await asyncio.sleep(0)
    rows.gate.set()
    assert await stayer == "v1"
    assert leaver.cancelled() and rows.reads == 1


async def test_none_means_nothing_to_cache() -> None:
    cache: ReadCache[str, str] = ReadCache(60)
    reads = 0

    async def inactive() -> str | None:
        nonlocal reads
        reads += 1
        return None

    assert await cache.get_or_load("k", inactive) is None
    assert await cache.get_or_load("k", inactive) is None
    assert reads == 2


async def test_clear_forgets_every_key_and_a_read_under_way_is_not_kept() -> None:
    cache: ReadCache[str, str] = ReadCache(60)
    for key in ("page1", "page2"):
        assert await cache.get_or_load(key, lambda: asyncio.sleep(0, "old")) == "old"
    rows = Rows()
    rows.value = "old"
    during = asyncio.create_task(cache.get_or_load("page3", rows.load))
    await rows.looked.wait()  # this read took the value from before the change
    cache.clear()
    assert cache.get("page1") is None and cache.get("page2") is None
    rows.gate.set()
    assert await during == "old"  # its caller gets what it read ...
    assert cache.get("page3") is None  # ... but it is not kept for the next one


async def test_an_entry_in_use_is_read_again_before_it_expires_and_never_waited_for() -> None:
    now = [0.0]
    cache: ReadCache[str, str] = ReadCache(2.0, clock=lambda: now[0])
    rows = Rows()
    rows.gate.set()
    assert await cache.get_or_load("k", rows.load) == "v1" and rows.reads == 1
    now[0] = 1.0  # half its life left: served, no read
    assert await cache.get_or_load("k", rows.load) == "v1" and rows.reads == 1
    rows.gate.clear()
    rows.looked.clear()
    rows.value = "v2"
    now[0] = 1.8  # in its last quarter: served at once, and read again behind the caller's back
    assert await cache.get_or_load("k", rows.load) == "v1"
    await rows.looked.wait()
    assert rows.reads == 2
    assert await cache.get_or_load("k", rows.load) == "v1" and rows.reads == 2  # one refresh at a time
    rows.gate.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    now[0] = 3.0  # past the first read's expiry: the refresh's value, good until 1.8 + 2
    assert await cache.get_or_load("k", rows.load) == "v2" and rows.reads == 2


async def test_a_refresh_that_finds_nothing_or_fails_drops_the_entry() -> None:
    now = [0.0]
    cache: ReadCache[str, str] = ReadCache(2.0, clock=lambda: now[0])
    assert await cache.get_or_load("gone", lambda: asyncio.sleep(0, "v")) == "v"
    assert await cache.get_or_load("broken", lambda: asyncio.sleep(0, "v")) == "v"
    now[0] = 1.9

    async def fail() -> str:
        raise RuntimeError("database away")

    assert await cache.get_or_load("gone", lambda: asyncio.sleep(0, None)) == "v"
    assert await cache.get_or_load("broken", fail) == "v"
    for _ in range(3):
        await asyncio.sleep(0)
    assert cache.get("gone") is None and cache.get("broken") is None
    with pytest.raises(RuntimeError):
        await cache.get_or_load("broken", fail)
