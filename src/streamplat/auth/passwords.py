"""Password hashing with argon2id on a few threads, behind a bounded queue.

argon2 is deliberately slow and memory-hard (~0.12 s of CPU and 64 MiB per hash with the
defaults of `[auth]`; see `from_settings`). On the event loop that would stall every other
request, and in an unbounded pool a burst of logins would eat the machine's memory, so hashing
runs on a fixed number of threads.
Jobs beyond the threads wait in a queue of `queue_size`; when that is full too, `HashQueueFull`
says so at once (the API answers 503 with Retry-After) instead of letting the wait grow without
bound. Callers must not hold a database connection while they wait here.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from streamplat.errors import ServiceUnavailable

if TYPE_CHECKING:
    from streamplat.config import AuthSettings

T = TypeVar("T")


class HashQueueFull(ServiceUnavailable):
    """Every hashing thread is busy and the queue behind them is full; try again later."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many logins at once; try again in {retry_after} s", retry_after=retry_after)


class PasswordHashing:
    """argon2id hash/verify on `threads` worker threads, at most `queue_size` more waiting."""

    def __init__(self, threads: int = 2, queue_size: int = 32, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._threads = threads
        self._capacity = threads + queue_size
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        # Jobs submitted and not yet finished (running or queued). Decremented by the job itself,
        # not by the awaiting request: a client that disconnects does not free its thread.
        self._pending = 0
        self._lock = threading.Lock()
        # Verified against for unknown emails, so "no such user" costs the same time as "wrong
        # password". Made on a hashing thread at first use, not on the event loop at start.
        self._dummy_hash: str | None = None
        self._seconds_per_hash = 0.1  # until the first hashes are timed

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> PasswordHashing:
        """Hashing with the `[auth]` section's threads, queue and argon2id cost.

        The default cost (2 passes over 64 MiB, one lane) asks an attacker for the same memory
        per guess as argon2-cffi's own default (RFC 9106's low-memory profile: 3 passes, 4 lanes)
        at about 0.7x its CPU, and is over three times OWASP's minimum (19 MiB x 2). One lane:
        hashing threads already keep the cores busy, and lanes only add thread start-ups.
        """
        hasher = PasswordHasher(
            time_cost=auth.password_hash_time_cost,
            memory_cost=auth.password_hash_memory_kib,
            parallelism=auth.password_hash_parallelism,
        )
        return cls(auth.password_hash_threads, auth.password_hash_queue, hasher)

    @property
    def pending(self) -> int:
        """Hash jobs running or waiting right now."""
        return self._pending

    async def hash(self, password: str) -> str:
        """Hash a password (HashQueueFull when the queue is full)."""
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if `password` matches; a None hash still spends the time of a real check."""

        def check(password: str) -> bool:
            try:
                return (
                    self._hasher.verify(password_hash or self._dummy(), password)
                    and password_hash is not None
                )
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await self._run(check, password)

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash("streamplat-timing-equaliser")
        return self._dummy_hash

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones (either way:
        a cost lowered on purpose applies to old hashes too, at their next login)."""
        return self._hasher.check_needs_rehash(password_hash)

    def close(self) -> None:
        """Let running hashes finish and stop the threads."""
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[[str], T], password: str) -> T:
        with self._lock:
            if self._pending >= self._capacity:
                raise HashQueueFull(self._retry_after())
            self._pending += 1

        def job() -> T:
            started = time.perf_counter()
            try:
                return fn(password)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self._pending -= 1
                    # A moving average, for Retry-After: how long the queue takes to drain.
                    self._seconds_per_hash = 0.8 * self._seconds_per_hash + 0.2 * elapsed

        try:
            future: Future[T] = self._pool.submit(job)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        return await asyncio.wrap_future(future)

    def _retry_after(self) -> int:
        """Seconds until the queue has drained at the current hashing speed (at least 1)."""
        return max(1, math.ceil(self._pending * self._seconds_per_hash / self._threads))
