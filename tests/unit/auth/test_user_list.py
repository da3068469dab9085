"""GET /auth/users pages are cached like principals, and every change to a user shows at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from argon2 import PasswordHasher
from sqlalchemy import update

from streamplat.auth import AuthService, Principal, User
from streamplat.auth.passwords import PasswordHashing
from streamplat.auth.principals import PrincipalCache
from streamplat.auth.schemas import RegisterIn, UserUpdateIn
from streamplat.auth.tokens import TokenIssuer
from streamplat.db import create_engine, migrate, session_factory
from streamplat.events import EventBus, UserChanged


@pytest_asyncio.fixture(name="auth")
async def fixture_auth(tmp_path: Path) -> AsyncIterator[AuthService]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    await migrate(engine)
    bus = EventBus()
    principals = PrincipalCache(ttl_seconds=60)  # long: only invalidation can show a change
    principals.attach(bus)
    passwords = PasswordHashing(1, hasher=PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    try:
        yield AuthService(
            session_factory(engine), passwords, TokenIssuer("k" * 48, 60), 3600, bus, principals
        )
    finally:
        passwords.close()
        await engine.dispose()


async def names(auth: AuthService) -> dict[str, tuple[str, bool]]:
    page = await auth.list_users(50, 0)
    return {user.username: (user.role, user.is_active) for user in page.users}


async def test_user_pages_are_cached_and_every_change_shows_at_once(auth: AuthService) -> None:
    admin, _ = await auth.create_admin("root@example.com", "root", "password123")
    actor = Principal(admin.id, admin.username, "admin")
    ann = await auth.register(
        RegisterIn(username="ann", email="ann@example.com", password="password123"), None
    )
    assert await names(auth) == {"root": ("admin", True), "ann": ("viewer", True)}
    # Behind the service's back: not seen while the page is cached ...
    async with auth._sessions() as session:
        await session.execute(update(User).where(User.id == ann.id).values(role="streamer"))
        await session.commit()
    assert (await names(auth))["ann"] == ("viewer", True)
    # ... while a registration, a change through the service, or a relayed change shows at once.
    await auth.register(RegisterIn(username="bob", email="bob@example.com", password="password123"), None)
    assert await names(auth) == {"root": ("admin", True), "ann": ("streamer", True), "bob": ("viewer", True)}
    await auth.update_user(ann.id, UserUpdateIn(is_active=False), actor)
    assert (await names(auth))["ann"] == ("streamer", False)
    async with auth._sessions() as session:
        await session.execute(update(User).where(User.id == ann.id).values(role="admin"))
        await session.commit()
    auth.forget_user_pages(UserChanged(ann.id))  # what another node's change arrives as
    assert (await names(auth))["ann"] == ("admin", False)
    admins = await auth.list_users(50, 0, role="admin")
    assert [u.username for u in admins.users] == ["root", "ann"] and admins.total == 2
