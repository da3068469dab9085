"""`streamplat` command line: serve, create-admin, migrate, config."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from streamplat import __version__
from streamplat.config import ConfigError, Settings, load

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def _settings(args: argparse.Namespace) -> Settings:
    config = args.config or os.environ.get("STREAMPLAT_CONFIG")
    if config is None and Path("config.toml").is_file():
        config = "config.toml"
    overrides: dict[str, dict[str, object]] = {}
    data_dir = args.data_dir or os.environ.get("STREAMPLAT_DATA_DIR")
    if data_dir:
        overrides["storage"] = {"data_dir": data_dir}
    return load(config, overrides=overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    from streamplat import logs
    from streamplat.server import StartupError, run

    settings = _settings(args)
    logs.configure(settings.logging.level, settings.logging.format)
    try:
        run(settings)
    except StartupError as exc:
        print(f"streamplat: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


class _SchemaBehind(Exception):
    """A server runs on the data directory and the schema is not the one this code expects."""


async def _schema_ready(engine: AsyncEngine, alone: bool, settings: Settings) -> bool:
    """Bring the schema up to date when no server runs; beside a server, only check it.

    Migrating under a running server of the same version is a no-op, and under a server of
    another version it would change the tables that server is using: so beside a server we
    never migrate, we only read the revision. True if a migration was applied.
    """
    from streamplat import datadir
    from streamplat.db import migrate, schema_revisions
    from streamplat.nodes import known_node_id, refuse_migration_beside_nodes

    data_dir = settings.data_path
    current, head = await schema_revisions(engine)
    if current == head:
        return False
    if not alone:
        raise _SchemaBehind(
            f"the database schema is at revision {current or 'none'} but this streamplat needs "
            f"{head}, and a server runs on {data_dir} ({datadir.holder(data_dir)}): stop it, run "
            "`streamplat migrate`, then start it again"
        )
    await refuse_migration_beside_nodes(
        engine,
        own_node_id=known_node_id(settings.cluster.node_id, data_dir),
        timeout_seconds=settings.cluster.node_timeout_seconds,
    )
    await migrate(engine)
    return True


async def _create_admin(settings: Settings, email: str, username: str, password: str | None) -> str:
    # Only the users table is touched: no Platform (it would reconcile streams, start VOD
    # workers and FFmpeg supervision), no JWT secret file, nothing under hls/ or recordings/.
    import secrets

    from streamplat import datadir
    from streamplat.auth import AuthService
    from streamplat.auth.passwords import PasswordHashing
    from streamplat.auth.schemas import RegisterIn
    from streamplat.auth.tokens import TokenIssuer
    from streamplat.db import create_engine, ensure_reachable, session_factory
    from streamplat.validation import validate

    if password is not None:
        validate(RegisterIn, {"email": email, "username": username, "password": password, "role": "admin"})
    with datadir.try_lock(settings.data_path, "create-admin") as alone:
        engine = create_engine(settings.database_url)
        passwords = PasswordHashing.from_settings(settings.auth)
        try:
            await ensure_reachable(engine)
            await _schema_ready(engine, alone, settings)
            # create_admin issues no token: a throwaway key keeps the server's secret file out of it.
            tokens = TokenIssuer(secrets.token_urlsafe(48), settings.auth.access_token_ttl_seconds)
            auth = AuthService(
                session_factory(engine), passwords, tokens, settings.auth.refresh_token_ttl_seconds
            )
            user, created = await auth.create_admin(email, username, password)
        finally:
            passwords.close()
            await engine.dispose()
    if settings.redis.url and not created:
        # Servers sharing this Redis drop the user's cached role at once, not after
        # auth.principal_cache_seconds (a new user is in no cache).
        from streamplat.cluster import announce
        from streamplat.events import UserChanged

        problem = await announce(settings.redis.url, settings.redis.key_prefix, [UserChanged(user.id)])
        if problem is not None:
            print(
                f"streamplat: warning: {problem}; running servers apply the change within "
                f"auth.principal_cache_seconds ({settings.auth.principal_cache_seconds:g} s)",
                file=sys.stderr,
            )
    verb = "created" if created else "promoted"
    return f"{verb} admin id={user.id} username={user.username} email={user.email}"


def _cmd_create_admin(args: argparse.Namespace) -> int:
    from streamplat.db import DatabaseUnreachable, SchemaNewer
    from streamplat.errors import DomainError, ValidationFailed
    from streamplat.nodes import MigrationBlocked

    settings = _settings(args)
    password = args.password or os.environ.get("STREAMPLAT_ADMIN_PASSWORD")
    if password is None and sys.stdin.isatty():
        password = getpass.getpass("Password for the new admin (6-128 characters): ")
    try:
        print(asyncio.run(_create_admin(settings, args.email, args.username, password or None)))
    except ValidationFailed as exc:
        for field, messages in exc.details.items():
            print(f"streamplat: {field}: {', '.join(messages)}", file=sys.stderr)
        return 2
    except (
        DomainError,
        ValueError,
        _SchemaBehind,
        SchemaNewer,
        DatabaseUnreachable,
        MigrationBlocked,
    ) as exc:
        print(f"streamplat: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from streamplat import datadir
    from streamplat.db import DatabaseUnreachable, SchemaNewer, create_engine, display_url, ensure_reachable
    from streamplat.nodes import MigrationBlocked

    settings = _settings(args)

    async def run() -> bool:
        with datadir.try_lock(settings.data_path, "migrate") as alone:
            engine = create_engine(settings.database_url)
            try:
                await ensure_reachable(engine)
                return await _schema_ready(engine, alone, settings)
            finally:
                await engine.dispose()

    try:
        migrated = asyncio.run(run())
    except (_SchemaBehind, SchemaNewer, DatabaseUnreachable, MigrationBlocked) as exc:
        print(f"streamplat: {exc}", file=sys.stderr)
        return 1
    verb = "migrated; it is now up to date" if migrated else "is up to date"
    print(f"database at {display_url(settings.database_url)} {verb}")
    return 0


def _cmd_nodes(args: argparse.Namespace) -> int:
    from streamplat.db import (
        DatabaseUnreachable,
        create_engine,
        ensure_reachable,
        schema_revisions,
        session_factory,
    )
    from streamplat.nodes import has_nodes_table, list_nodes

    settings = _settings(args)

    async def run() -> list[str]:
        engine = create_engine(settings.database_url)
        try:
            await ensure_reachable(engine)
            current, _ = await schema_revisions(engine)
            if not has_nodes_table(current):
                raise _SchemaBehind(
                    f"the database has no nodes table yet (schema at {current or 'none'}): "
                    "start a server or run `streamplat migrate`"
                )
            nodes = await list_nodes(session_factory(engine), settings.cluster.node_timeout_seconds)
        finally:
            await engine.dispose()
        lines = [
            f"{'node_id':<24} {'state':<28} {'heartbeat':>10} {'live':>5}  public_host  stream_url  version"
        ]
        lines += [
            f"{n.node_id:<24} {n.state:<28} {n.heartbeat_age_seconds:>9.1f}s {n.live_streams:>5}  "
            f"{n.public_host}  {n.stream_url}  {n.version}"
            for n in nodes
        ]
        return lines

    try:
        print("\n".join(asyncio.run(run())))
    except (_SchemaBehind, DatabaseUnreachable) as exc:
        print(f"streamplat: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    import msgspec

    settings = _settings(args)
    data = msgspec.to_builtins(settings)
    if data.get("auth", {}).get("jwt_secret"):
        data["auth"]["jwt_secret"] = "***"
    if data.get("redis", {}).get("url"):
        from streamplat.cluster import mask_url

        data["redis"]["url"] = mask_url(data["redis"]["url"])
    if data.get("storage", {}).get("database_url"):
        from streamplat.db import display_url

        data["storage"]["database_url"] = display_url(data["storage"]["database_url"])
    print(msgspec.json.format(msgspec.json.encode(data)).decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `streamplat` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: ./config.toml if present, or $STREAMPLAT_CONFIG)",
    )
    common.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory: database, HLS, recordings, secrets (overrides storage.data_dir)",
    )

    parser = argparse.ArgumentParser(
        prog="streamplat",
        description="Self-hostable live streaming: SRT in, HLS out, every stream recorded as a VOD.",
    )
    parser.add_argument("--version", action="version", version=f"streamplat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the platform: auth, main, stream (HLS) and VOD listeners in one process",
        description="Start the four listeners (auth 8082, main 8080, stream 9090, vod 8081 by default) "
        "and run until SIGINT or SIGTERM.",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "create-admin",
        parents=[common],
        help="create an admin account, or promote an existing user to admin",
        description="Create an admin (or promote the user with this email). The password comes from "
        "--password, else $STREAMPLAT_ADMIN_PASSWORD, else a prompt. Safe beside a running server: "
        "it writes only the users table.",
    )
    p.add_argument("--email", required=True, help="the admin's email (an existing user with it is promoted)")
    p.add_argument(
        "--username", required=True, help="username for a new admin (3-32 of letters, digits, _ . -)"
    )
    p.add_argument(
        "--password", help="password (6-128 characters); prefer the prompt or the environment variable"
    )
    p.set_defaults(func=_cmd_create_admin)

    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="apply database migrations and exit (serve does this on start too)",
        description="Bring the database schema up to date. Beside a running server it changes "
        "nothing: it reports the schema up to date, or asks you to stop the server first.",
    )
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser(
        "nodes",
        parents=[common],
        help="list the nodes sharing the database: alive, left, or lost and claimed",
        description="Print every node registered in the database ([cluster]) with its state, the "
        "age of its last heartbeat and its live streams. Reads only: safe beside running servers.",
    )
    p.set_defaults(func=_cmd_nodes)

    p = sub.add_parser(
        "config",
        parents=[common],
        help="print the effective configuration (file + environment) as JSON",
        description="Load and validate the configuration and print it; the JWT secret and the "
        "database password are masked.",
    )
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streamplat` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"streamplat: configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
