"""argon2id cost from `[auth]`, and hashes made with another cost redone at the next login."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from argon2 import PasswordHasher, extract_parameters
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from streamplat.auth import AuthService, User
from streamplat.auth.passwords import PasswordHashing
from streamplat.auth.schemas import RegisterIn
from streamplat.auth.tokens import TokenIssuer
from streamplat.config import load
from streamplat.db import create_engine, migrate, session_factory
from streamplat.errors import Unauthorized

# Cheap costs keep the test quick; only their difference matters here.
OLD = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=2)
NEW = PasswordHasher(time_cost=2, memory_cost=16 * 1024, parallelism=1)


@pytest_asyncio.fixture(name="engine")
async def fixture_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(name="service")
async def fixture_service(engine: AsyncEngine) -> AsyncIterator[Callable[[PasswordHasher], AuthService]]:
    made: list[PasswordHashing] = []

    def service(hasher: PasswordHasher) -> AuthService:
        passwords = PasswordHashing(1, hasher=hasher)
        made.append(passwords)
        return AuthService(session_factory(engine), passwords, TokenIssuer("k" * 48, 60), 3600)

    yield service
    for passwords in made:
        passwords.close()


async def stored_hash(engine: AsyncEngine, email: str) -> str:
    async with session_factory(engine)() as session:
        return str(await session.scalar(select(User.password_hash).where(User.email == email)))


def cost(password_hash: str) -> tuple[int, int, int]:
    p = extract_parameters(password_hash)
    return p.time_cost, p.memory_cost, p.parallelism


async def test_a_login_redoes_a_hash_made_with_another_cost(
    engine: AsyncEngine, service: Callable[[PasswordHasher], AuthService]
) -> None:
    before = service(OLD)
    await before.register(RegisterIn(username="ann", email="ann@example.com", password="password123"), None)
    old_hash = await stored_hash(engine, "ann@example.com")
    assert cost(old_hash) == (1, 8192, 2)

    after = service(NEW)
    # A wrong password changes nothing.
    with pytest.raises(Unauthorized):
        await after.login("ann@example.com", "wrong-password")
    assert await stored_hash(engine, "ann@example.com") == old_hash

    pair = await after.login("ann@example.com", "password123")
    assert pair.user.email == "ann@example.com"
    new_hash = await stored_hash(engine, "ann@example.com")
    assert cost(new_hash) == (2, 16384, 1)
    # Still the same password, under the new cost; the next login leaves it as it is.
    assert NEW.verify(new_hash, "password123")
    await after.login("ann@example.com", "password123")
    assert await stored_hash(engine, "ann@example.com") == new_hash
    # Lowered or raised, the configured cost is the one applied: the old service redoes it back.
    await before.login("ann@example.com", "password123")
    assert cost(await stored_hash(engine, "ann@example.com")) == (1, 8192, 2)


async def test_hashing_takes_its_cost_threads_and_queue_from_the_auth_section() -> None:
    auth = load(
        None,
        environ={
            "STREAMPLAT_AUTH__PASSWORD_HASH_TIME_COST": "3",
            "STREAMPLAT_AUTH__PASSWORD_HASH_MEMORY_KIB": "12288",
            "STREAMPLAT_AUTH__PASSWORD_HASH_PARALLELISM": "2",
            "STREAMPLAT_AUTH__PASSWORD_HASH_QUEUE": "0",
        },
    ).auth
    hashing = PasswordHashing.from_settings(auth)
    try:
        password_hash = await hashing.hash("password123")
        assert password_hash.startswith("$argon2id$")
        assert cost(password_hash) == (3, 12288, 2)
        assert await hashing.verify(password_hash, "password123")
        assert not hashing.needs_rehash(password_hash)
    finally:
        hashing.close()
