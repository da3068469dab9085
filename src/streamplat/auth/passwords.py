"""Password hashing with argon2id in a small bounded thread pool.

argon2 is deliberately slow and memory-hard (~50 ms, 64 MiB per hash with the library
defaults). On the event loop that would stall every other request, and in an unbounded pool
a burst of logins would eat the machine's memory, so hashing runs on a fixed number of threads.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class PasswordHashing:
    """argon2id hash/verify on `threads` worker threads."""

    def __init__(self, threads: int = 2, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        # Verified against for unknown emails, so "no such user" costs the same time as "wrong password".
        self._dummy_hash = self._hasher.hash("streamplat-timing-equaliser")

    async def hash(self, password: str) -> str:
        """Hash a password."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if `password` matches; a None hash still spends the time of a real check."""
        loop = asyncio.get_running_loop()

        def check() -> bool:
            try:
                return (
                    self._hasher.verify(password_hash or self._dummy_hash, password)
                    and password_hash is not None
                )
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await loop.run_in_executor(self._pool, check)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(password_hash)

    def close(self) -> None:
        """Let running hashes finish and stop the threads."""
        self._pool.shutdown(wait=True)
