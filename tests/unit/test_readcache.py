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
