"""Database engine and sessions (SQLAlchemy 2 async).

SQLite through aiosqlite is the embedded default: WAL so readers never wait for the one
writer, foreign keys on, and a busy timeout so a short write burst queues instead of
failing. PostgreSQL through asyncpg (`postgresql+asyncpg://...`) runs the same migrations and
code: its pool pings a connection before handing it out, so a restarted server costs only the
requests that were in flight (answered 503, see `is_transient`), never a restart of ours.
Schema changes are Alembic migrations (streamplat/migrations), applied by `migrate()` at start.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, TypeVarTuple, cast

from sqlalchemy import BigInteger, DateTime, Integer, Select, event, func, text
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

Ts = TypeVarTuple("Ts")


class Base(DeclarativeBase):
    """Base of every table."""


def utcnow() -> dt.datetime:
    """The current time in UTC, timezone-aware."""
    return dt.datetime.now(dt.UTC)


def isoformat(value: dt.datetime | None) -> str | None:
    """Format a timestamp as the spec does: `2025-09-26T01:00:00Z`."""
    if value is None:
        return None
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    # %-formatting of the fields: a fifth of astimezone + replace + strftime's cost, and every
    # stream in an API answer has up to three of these (py-spy: 4 % of a cached GET /api/streams/{id}).
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
    )


# Ids, foreign keys and byte counts: 64-bit everywhere, as the API's parameters allow (params.py).
# SQLite's INTEGER already is 64-bit, and only "INTEGER PRIMARY KEY" is its auto-incrementing rowid,
# so SQLite keeps INTEGER; PostgreSQL's INTEGER is 32-bit, so there it is BIGINT.
BigInt = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores UTC (naive on SQLite) and always hands back timezone-aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# How long a writer waits for SQLite's one write lock before failing with "database is locked".
# One value for both knobs: sqlite3's `timeout` sets the busy handler at connect, and a later
# `PRAGMA busy_timeout` would silently replace it (it once cut 30 s down to 5 s).
SQLITE_BUSY_TIMEOUT_SECONDS = 30


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    """An async engine for `url`; SQLite gets its pragmas on every new connection."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # pool_pre_ping: a connection the server dropped (restart, failover, idle timeout) is
    # replaced on checkout instead of failing the request that drew it. A bounded connect
    # timeout: an unreachable host fails the start (and a request) in seconds, not asyncpg's 60.
    # application_name: our sessions are named in pg_stat_activity (and can be told apart there).
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql+asyncpg"):
        connect_args = {
            "timeout": CONNECT_TIMEOUT_SECONDS,
            "server_settings": {"application_name": APPLICATION_NAME},
        }
    # pool_size: SQLAlchemy's default of 5 (+10 overflow, closed again on return) made a burst of
    # requests open and close PostgreSQL connections all the time (py-spy: ~10 % of the process
    # in connect/close alone, each connect being a new backend process on the server's side).
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=PG_POOL_SIZE,
        max_overflow=PG_POOL_OVERFLOW,
        connect_args=connect_args,
    )


CONNECT_TIMEOUT_SECONDS = 10
PG_POOL_SIZE = 20  # connections kept open (PostgreSQL's default max_connections is 100)
PG_POOL_OVERFLOW = 10  # opened beyond that in a burst, closed when returned
APPLICATION_NAME = "streamplat"


def display_url(url: str) -> str:
    """`url` fit for logs and error messages: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


class DatabaseUnreachable(Exception):
    """The database named by storage.database_url cannot be reached (the message says which and why)."""


async def ensure_reachable(engine: AsyncEngine) -> None:
    """Open one connection, or raise DatabaseUnreachable naming host:port (password masked)."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        url = engine.url
        where = url.database if url.get_backend_name() == "sqlite" else f"{url.host}:{url.port or 5432}"
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        reason = (str(cause).strip().splitlines() or [""])[0]
        raise DatabaseUnreachable(
            f"cannot connect to the database at {where} ({url.render_as_string(hide_password=True)}): "
            f"{type(cause).__name__}{': ' + reason if reason else ''}"
        ) from exc


# SQLSTATEs after which the same request may well succeed a moment later: the connection was
# lost (class 08), the server is shutting down or starting up (57P01-57P03), too many
# connections (53300), or PostgreSQL picked this transaction to lose a deadlock or a
# serialization conflict (40P01, 40001).
_TRANSIENT_SQLSTATES = ("57P01", "57P02", "57P03", "53300", "40P01", "40001")


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` means "the database is (briefly) unavailable", worth a 503 and a retry."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        sqlstate = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
        if sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES:
            return True
        exc = orig if orig is not None else exc
    # Connecting a new pool connection to a stopped server fails below the DB-API layer, with
    # ConnectionRefusedError, or OSError("Multiple exceptions: ... Connect call failed ...") when
    # the host name has several addresses, or TimeoutError after CONNECT_TIMEOUT_SECONDS.
    return isinstance(exc, ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and "connect call failed" in str(exc).lower()
    )


async def fetch_page(
    session: AsyncSession, query: Select[*Ts], count: Select[Any], limit: int, offset: int
) -> tuple[list[tuple[*Ts]], int]:
    """A page of `query` (already ordered) and the total it pages through, in one round trip.

    The total rides on every row as `count(*) OVER ()`; only a page past the end (no rows to
    carry it) costs the separate `count` query. Each ORM query through aiosqlite is a few
    thread hops (~0.5 ms of event-loop CPU here), so two queries per list page were half of it.
    """
    paged = query.add_columns(func.count().over().label("_total")).limit(limit).offset(offset)
    rows = (await session.execute(paged)).all()
    if rows:
        return [cast("tuple[*Ts]", tuple(row)[:-1]) for row in rows], int(rows[0][-1])
    return [], 0 if offset == 0 else int(await session.scalar(count) or 0)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (no lazy reloads in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


class SchemaNewer(Exception):
    """The database's schema was migrated by newer code than this (the message names both)."""


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(connection)
    current = MigrationContext.configure(connection).get_current_revision()
    script = ScriptDirectory.from_config(cfg)
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        # Another node (or a newer install) migrated past us: running would misread its rows.
        raise SchemaNewer(
            f"the database schema is at revision {current!r}, newer than this code knows "
            f"(its newest is {script.get_current_head()!r}): upgrade streamplat on this node"
        )
    command.upgrade(cfg, "head")


def _revisions(connection: Connection) -> tuple[str | None, str | None]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
    return current, head


async def schema_revisions(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """(the database's schema revision, the newest this code knows); equal when up to date.

    Reads only: safe beside a running server.
    """
    async with engine.connect() as conn:
        return await conn.run_sync(_revisions)


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending schema migration (idempotent); SchemaNewer if the database is ahead."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
