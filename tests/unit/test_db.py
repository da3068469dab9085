"""Database engine settings that matter under load."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from streamplat.db import SQLITE_BUSY_TIMEOUT_SECONDS, create_engine


async def test_sqlite_waits_the_full_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            waited_ms = (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one()
    finally:
        await engine.dispose()
    # Not 5000: a pragma once silently cut the 30 s connect timeout to 5 s.
    assert waited_ms == SQLITE_BUSY_TIMEOUT_SECONDS * 1000 == 30_000
