"""PasswordHashing: argon2 on its own threads behind a bounded queue."""

from __future__ import annotations

import asyncio

import pytest
from argon2 import PasswordHasher

from streamplat.auth.passwords import HashQueueFull, PasswordHashing

# Real argon2id, with parameters heavy enough that a burst overlaps (about 0.1 s a hash here).
HASHER = PasswordHasher(time_cost=2, memory_cost=32 * 1024, parallelism=1)


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    hashing = PasswordHashing(threads=1, queue_size=2, hasher=HASHER)
    try:
        results = await asyncio.gather(*(hashing.hash(f"pw{i}") for i in range(6)), return_exceptions=True)
        hashes = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, HashQueueFull)]
        # One running, two waiting: the other three are refused without waiting for a thread.
        assert len(hashes) == 3 and len(refused) == 3, results
        assert all(e.status_code == 503 and e.retry_after is not None and e.retry_after >= 1 for e in refused)
        assert "try again" in refused[0].message
        assert await hashing.verify(hashes[0], "pw0")
        assert hashing.pending == 0
    finally:
        hashing.close()


async def test_a_cancelled_caller_keeps_its_slot_until_the_hash_finishes() -> None:
    hashing = PasswordHashing(threads=1, queue_size=0, hasher=HASHER)
    try:
        task = asyncio.create_task(hashing.hash("pw"))
        await asyncio.sleep(0.01)
        task.cancel()
        # The thread is still hashing for the client that went away: nothing else may start.
        with pytest.raises(HashQueueFull):
            await hashing.hash("other")
        for _ in range(200):
            if hashing.pending == 0:
                break
            await asyncio.sleep(0.05)
        assert hashing.pending == 0
        assert await hashing.verify(await hashing.hash("again"), "again")
    finally:
        hashing.close()


async def test_unknown_user_is_checked_against_a_dummy_hash() -> None:
    hashing = PasswordHashing(threads=1, queue_size=4, hasher=HASHER)
    try:
        assert await hashing.verify(None, "anything") is False
        good = await hashing.hash("right")
        assert await hashing.verify(good, "right") is True
        assert await hashing.verify(good, "wrong") is False
        assert await hashing.verify("not-a-hash", "right") is False
    finally:
        hashing.close()
