"""The last active admin cannot be demoted, not even by two admins demoting each other at once
(on SQLite and on PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from streamplat.auth import AuthService, Principal, User
from streamplat.auth.passwords import PasswordHashing
from streamplat.auth.schemas import UserUpdateIn
from streamplat.auth.tokens import TokenIssuer
from streamplat.db import create_engine, migrate, session_factory
from streamplat.errors import Conflict


@pytest_asyncio.fixture(name="auth", params=["sqlite", "postgresql"])
async def fixture_auth(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[AuthService]:
    database = None
    if request.param == "postgresql":
        from tests.support import pg

        pg.require()
        database, url = pg.create_database()
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    engine = create_engine(url)
    await migrate(engine)
    passwords = PasswordHashing(1)
    try:
        yield AuthService(session_factory(engine), passwords, TokenIssuer("k" * 48, 60), 3600)
    finally:
        passwords.close()
        await engine.dispose()
        if database is not None:
            pg.drop_database(database)


async def active_admins(auth: AuthService) -> int:
    async with auth._sessions() as session:
        n = await session.scalar(
            select(func.count(User.id)).where(User.role == "admin", User.is_active.is_(True))
        )
    return int(n or 0)


@pytest.mark.parametrize("change", [UserUpdateIn(role="streamer"), UserUpdateIn(is_active=False)])
async def test_two_admins_demoting_each_other_leave_one(auth: AuthService, change: UserUpdateIn) -> None:
    for round_ in range(5):
        a, _ = await auth.create_admin(f"a{round_}@example.com", f"a{round_}", "password123")
        b, _ = await auth.create_admin(f"b{round_}@example.com", f"b{round_}", "password123")
        # Only these two are admins in this round.
        async with auth._sessions() as session:
            for user in (await session.scalars(select(User).where(User.id.not_in((a.id, b.id))))).all():
                user.role = "streamer"
            await session.commit()
        as_a = Principal(id=a.id, username=a.username, role="admin")
        as_b = Principal(id=b.id, username=b.username, role="admin")
        results = await asyncio.gather(
            auth.update_user(b.id, change, as_a), auth.update_user(a.id, change, as_b), return_exceptions=True
        )
        assert sum(isinstance(r, Conflict) for r in results) == 1, results
        assert await active_admins(auth) == 1


async def test_last_admin_alone_is_refused_and_others_still_change(auth: AuthService) -> None:
    a, _ = await auth.create_admin("solo@example.com", "solo", "password123")
    me = Principal(id=a.id, username=a.username, role="admin")
    with pytest.raises(Conflict, match="last active admin"):
        await auth.update_user(a.id, UserUpdateIn(role="viewer"), me)
    await auth.create_admin("two@example.com", "two", "password123")
    out = await auth.update_user(a.id, UserUpdateIn(role="viewer", is_active=False), me)
    assert out.role == "viewer" and out.is_active is False
    assert await active_admins(auth) == 1
