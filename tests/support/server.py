"""A real `streamplat serve` process on free ports, for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SERVICES = ("auth", "main", "stream", "vod")


def free_tcp_port() -> int:
    """A TCP port free on both 127.0.0.1 and ::1 right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                s6.bind(("::1", port))
        except OSError:
            continue
        return int(port)


def free_udp_range(size: int) -> tuple[int, int]:
    """`size` consecutive UDP ports free right now (for the SRT port pool)."""
    import random

    for _ in range(200):
        first = random.randint(20000, 60000 - size)
        socks = []
        try:
            for port in range(first, first + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("0.0.0.0", port))
            return first, first + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range")


@dataclass
class ServerProcess:
    """A running server with its URLs; `stop()` sends SIGTERM and returns the exit code."""

    data_dir: Path
    env: dict[str, str]
    ports: dict[str, int]
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    db: str = "sqlite"
    database: str | None = None  # the PostgreSQL database made for this server (dropped by `drop_database`)

    def url(self, service: str, path: str = "") -> str:
        return f"http://{self.host}:{self.ports[service]}{path}"

    def client(self, service: str) -> httpx.Client:
        if service not in self.clients:
            self.clients[service] = httpx.Client(base_url=self.url(service), timeout=30)
        return self.clients[service]

    @property
    def auth(self) -> httpx.Client:
        return self.client("auth")

    @property
    def main(self) -> httpx.Client:
        return self.client("main")

    @property
    def stream(self) -> httpx.Client:
        return self.client("stream")

    @property
    def vod(self) -> httpx.Client:
        return self.client("vod")

    def start(self, timeout: float = 30.0) -> ServerProcess:
        assert self.log_path is not None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamplat", "serve", "--data-dir", str(self.data_dir)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir.parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if all(
                    httpx.get(self.url(s, "/health"), timeout=1).status_code in (200, 503) for s in SERVICES
                ):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not start in {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def close_clients(self) -> None:
        for c in self.clients.values():
            c.close()
        self.clients.clear()

    def stop(self, timeout: float = 30.0) -> int:
        self.close_clients()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        self.close_clients()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one SQL statement on this server's database behind its back ("?" placeholders)."""
        if self.db == "sqlite":
            import sqlite3

            with contextlib.closing(sqlite3.connect(self.data_dir / "streamplat.db")) as conn, conn:
                return [tuple(row) for row in conn.execute(statement, params).fetchall()]
        from tests.support import pg

        assert self.database is not None
        parts = statement.split("?")
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))
        return [tuple(row) for row in pg.query(self.database, numbered, *params)]

    def drop_database(self) -> None:
        """Drop this server's PostgreSQL database (after it stopped); nothing on SQLite."""
        if self.database is not None:
            from tests.support import pg

            pg.drop_database(self.database)
            self.database = None

    # --- API helpers ---------------------------------------------------------------------

    def register(
        self, username: str, role: str = "streamer", password: str = "password123", **kw: Any
    ) -> dict[str, Any]:
        r = self.auth.post(
            "/auth/register",
            json={
                "username": username,
                "email": f"{username}@example.com",
                "password": password,
                "role": role,
            },
            **kw,
        )
        assert r.status_code == 201, r.text
        return dict(r.json()["user"])

    def login(self, username: str, password: str = "password123") -> dict[str, Any]:
        r = self.auth.post("/auth/login", json={"email": f"{username}@example.com", "password": password})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def user_token(self, username: str, role: str = "streamer") -> str:
        self.register(username, role)
        return str(self.login(username)["access_token"])


SPEC_PORTS = {"auth": 8082, "main": 8080, "stream": 9090, "vod": 8081}


def free_loopback_host() -> str:
    """A 127.x.y.z address on which the spec's fixed ports (8082, 8080, 9090, 8081) are free.

    The spec's JavaScript client hard-codes those ports; a private loopback address lets it run
    unmodified beside a live server on localhost.
    """
    import random

    for _ in range(100):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"
        try:
            for port in SPEC_PORTS.values():
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return host
    raise RuntimeError("no loopback address with the spec's ports free")


def make_server(
    tmp_path: Path,
    extra_env: dict[str, str] | None = None,
    name: str = "server",
    *,
    spec_ports: bool = False,
    db: str = "sqlite",
) -> ServerProcess:
    """A configured (not yet started) server with its own data dir and free ports.

    With `spec_ports`, it listens on the spec's fixed ports on a private loopback address instead.
    With `db="postgresql"`, it gets a fresh PostgreSQL database (drop it with `drop_database`).
    """
    data_dir = tmp_path / name / "data"
    data_dir.mkdir(parents=True)
    host = free_loopback_host() if spec_ports else "127.0.0.1"
    ports = dict(SPEC_PORTS) if spec_ports else {s: free_tcp_port() for s in SERVICES}
    while len(set(ports.values())) < len(ports):  # the kernel may hand out the same free port twice
        ports = {s: free_tcp_port() for s in SERVICES}
    first, last = free_udp_range(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPLAT_")}
    env.update(
        {
            "STREAMPLAT_SERVER__AUTH_PORT": str(ports["auth"]),
            "STREAMPLAT_SERVER__MAIN_PORT": str(ports["main"]),
            "STREAMPLAT_SERVER__STREAM_PORT": str(ports["stream"]),
            "STREAMPLAT_SERVER__VOD_PORT": str(ports["vod"]),
            "STREAMPLAT_SERVER__PUBLIC_HOST": host,
            "STREAMPLAT_INGEST__PORT_MIN": str(first),
            "STREAMPLAT_INGEST__PORT_MAX": str(last),
            "STREAMPLAT_INGEST__SRT_BIND_HOST": "127.0.0.1",
            "STREAMPLAT_RATE_LIMIT__LOGIN_PER_MINUTE": "0",
            "STREAMPLAT_RATE_LIMIT__REGISTER_PER_MINUTE": "0",
            "STREAMPLAT_LOGGING__LEVEL": "debug",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if spec_ports:
        env["STREAMPLAT_SERVER__HOST"] = host
    database = None
    if db == "postgresql":
        from tests.support import pg

        database, env["STREAMPLAT_STORAGE__DATABASE_URL"] = pg.create_database()
    elif db != "sqlite":
        raise ValueError(f"unknown db {db!r}")
    env.update(extra_env or {})
    return ServerProcess(
        data_dir=data_dir,
        env=env,
        ports=ports,
        host=host,
        log_path=tmp_path / name / "server.log",
        db=db,
        database=database,
    )


@contextlib.contextmanager
def running_server(
    tmp_path: Path, extra_env: dict[str, str] | None = None, db: str = "sqlite"
) -> Iterator[ServerProcess]:
    """A started server that must stop cleanly (SIGTERM -> exit 0) when the block ends."""
    srv = make_server(tmp_path, extra_env, db=db)
    try:
        srv.start()
        yield srv
        code = srv.stop()
        assert code == 0, srv.logs()[-3000:]
    finally:
        srv.kill()
        srv.drop_database()
