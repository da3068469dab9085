"""Database engine settings that matter under load."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event, text

from streamplat.db import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    create_engine,
    display_url,
    fetch_page,
    is_transient,
    session_factory,
)


async def test_sqlite_waits_the_full_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            waited_ms = (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one()
    finally:
        await engine.dispose()
    # Not 5000: a pragma once silently cut the 30 s connect timeout to 5 s.
    assert waited_ms == SQLITE_BUSY_TIMEOUT_SECONDS * 1000 == 30_000


def test_lost_or_refused_connections_are_transient_and_other_errors_are_not() -> None:
    import errno

    from sqlalchemy.exc import DBAPIError, IntegrityError

    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5432)")
    assert is_transient(refused)
    assert is_transient(OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432)"))
    assert is_transient(TimeoutError())
    for sqlstate in ("57P01", "08006", "40P01", "53300"):  # admin shutdown, lost link, deadlock, full
        assert is_transient(DBAPIError("SELECT 1", {}, PgError(sqlstate))), sqlstate
    invalidated = DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_transient(invalidated)
    # A full disk, a broken constraint, a bug in a query: not the database being away.
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(IntegrityError("INSERT", {}, PgError("23505")))
    assert not is_transient(DBAPIError("SELEC 1", {}, PgError("42601")))
    assert not is_transient(ValueError("x"))


def test_database_urls_are_shown_without_their_password() -> None:
    shown = display_url("postgresql+asyncpg://streamplat:hunter2@db.example.com:6432/sp")
    assert "hunter2" not in shown and "db.example.com:6432" in shown and "***" in shown
    assert display_url("sqlite+aiosqlite:///data/streamplat.db") == "sqlite+aiosqlite:///data/streamplat.db"


def test_isoformat_is_utc_to_the_second() -> None:
    import datetime as dt

    from streamplat.db import isoformat

    paris = dt.timezone(dt.timedelta(hours=2))
    assert isoformat(None) is None
    assert isoformat(dt.datetime(2025, 9, 26, 1, 0, 0, 999_999, tzinfo=dt.UTC)) == "2025-09-26T01:00:00Z"
    assert isoformat(dt.datetime(2025, 1, 1, 1, 2, 3, tzinfo=paris)) == "2024-12-31T23:02:03Z"
    assert isoformat(dt.datetime(999, 3, 4, 5, 6, 7, tzinfo=dt.UTC)) == "0999-03-04T05:06:07Z"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_fetch_page_gives_rows_and_total_in_one_query_and_a_total_past_the_end(
    tmp_path: Path, database: str
) -> None:
    from sqlalchemy import Integer, String, column, func, insert, select, table

    dropped = None
    if database == "postgresql":
        from tests.support import pg

        pg.require()
        dropped, url = pg.create_database()
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    engine = create_engine(url)
    items = table("items", column("id", Integer), column("kind", String))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, kind VARCHAR(8))"))
            await conn.execute(
                insert(items), [{"id": n, "kind": "odd" if n % 2 else "even"} for n in range(1, 8)]
            )
        statements: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        sessions = session_factory(engine)

        async def page(kind: str, limit: int, offset: int) -> tuple[list[int], int]:
            query = select(items.c.id).where(items.c.kind == kind).order_by(items.c.id)
            count = select(func.count()).select_from(items).where(items.c.kind == kind)
            async with sessions() as session:
                rows, total = await fetch_page(session, query, count, limit, offset)
            return [row[0] for row in rows], total

        assert await page("odd", 2, 0) == ([1, 3], 4)
        assert await page("odd", 2, 2) == ([5, 7], 4)
        assert len(statements) == 2  # one query per page
        assert await page("odd", 2, 4) == ([], 4)  # past the end: a second query counts them
        assert len(statements) == 4
        assert await page("none", 2, 0) == ([], 0)  # nothing at all: no count needed
        assert len(statements) == 5
    finally:
        await engine.dispose()
        if dropped is not None:
            pg.drop_database(dropped)
