"""Throwaway PostgreSQL databases for tests: one fresh database per server, dropped afterwards.

The server to use comes from TEST_PG_URL (default: the machine's PostgreSQL,
postgresql://postgres@127.0.0.1:5432/test, trust auth). With TEST_REQUIRE_PG=1
(CI) a missing PostgreSQL fails the PostgreSQL cases; without it they are skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")

ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRED = os.environ.get("TEST_REQUIRE_PG", "") not in ("", "0")
PREFIX = "sp_test_"


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    # A thread of its own: callers may be inside a running event loop (async tests).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()  # type: ignore[arg-type]


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(ADMIN_URL, timeout=5)


def _where() -> str:
    parts = urlsplit(ADMIN_URL)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


@functools.cache
def unavailable_reason() -> str | None:
    """None when PostgreSQL answers at ADMIN_URL, else why not (asked once per test process)."""

    async def probe() -> None:
        conn = await _admin()
        await conn.close()

    try:
        _run(probe)
    except Exception as exc:
        return (
            f"PostgreSQL is not reachable at {_where()} ({type(exc).__name__}: {exc}); "
            "set TEST_PG_URL to a server where CREATE DATABASE is allowed"
        )
    return None


def require() -> None:
    """Skip the calling test when PostgreSQL is unreachable; fail it under TEST_REQUIRE_PG=1."""
    import pytest

    reason = unavailable_reason()
    if reason is None:
        return
    if REQUIRED:
        pytest.fail(f"{reason} (TEST_REQUIRE_PG=1 requires it)")
    pytest.skip(reason)


def create_database() -> tuple[str, str]:
    """A new empty database: (its name, its SQLAlchemy URL for streamplat)."""
    name = PREFIX + uuid.uuid4().hex[:16]

    async def create() -> None:
        conn = await _admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run(create)
    return name, database_url(name)


def database_url(name: str, scheme: str = "postgresql+asyncpg") -> str:
    """ADMIN_URL pointed at the database `name`."""
    parts = urlsplit(ADMIN_URL)
    return urlunsplit((scheme, parts.netloc, f"/{name}", parts.query, ""))


def drop_database(name: str) -> None:
    """Drop a database made by create_database, closing whatever still uses it."""
    assert name.startswith(PREFIX), name

    async def drop() -> None:
        conn = await _admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run(drop)


def query(name: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on the database `name` as the admin user; its rows."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url(name, "postgresql"), timeout=5)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return _run(go)


@contextlib.contextmanager
def holding(name: str, *statements: str) -> Iterator[None]:
    """Run `statements` in an open transaction on the database `name`, held until the block ends.

    E.g. "LOCK TABLE streams IN ACCESS EXCLUSIVE MODE": the server's queries on that table wait.
    The transaction is rolled back at the end.
    """
    ready = threading.Event()
    release = threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(database_url(name, "postgresql"), timeout=5)
        try:
            tx = conn.transaction()
            await tx.start()
            for statement in statements:
                await conn.execute(statement)
            ready.set()
            await asyncio.to_thread(release.wait)
            await tx.rollback()
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        release.set()
        thread.join(30)
