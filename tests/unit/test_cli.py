"""`streamplat create-admin` and `migrate`: alone they set up the database; beside a server
they write the users table only, and never change the schema under it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streamplat import datadir
from streamplat.cli import main


@pytest.fixture(name="data_dir")
def fixture_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no ./config.toml
    for key in ("STREAMPLAT_CONFIG", "STREAMPLAT_DATA_DIR", "STREAMPLAT_ADMIN_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "data"


def admin(data_dir: Path, name: str, password: str | None, monkeypatch: pytest.MonkeyPatch) -> int:
    if password is None:
        monkeypatch.delenv("STREAMPLAT_ADMIN_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("STREAMPLAT_ADMIN_PASSWORD", password)
    return main(
        ["create-admin", "--email", f"{name}@example.com", "--username", name, "--data-dir", str(data_dir)]
    )


def revision(data_dir: Path) -> str:
    with sqlite3.connect(data_dir / "streamplat.db") as db:
        return str(db.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def test_create_admin_on_a_new_data_dir_migrates_and_touches_nothing_else(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(data_dir, "root", None, monkeypatch) == 2  # refused: nothing to create it with
    assert "password is required" in capsys.readouterr().err
    assert admin(data_dir, "root", "password123", monkeypatch) == 0
    assert "created admin" in capsys.readouterr().out
    with sqlite3.connect(data_dir / "streamplat.db") as db:
        assert db.execute("SELECT username, role FROM users").fetchall() == [("root", "admin")]
    # No secret, no hls/ or recordings/: those belong to the server.
    names = {p.name for p in data_dir.iterdir()}
    assert names <= {"streamplat.db", "streamplat.db-wal", "streamplat.db-shm", datadir.LOCK_NAME}, names
    assert main(["migrate", "--data-dir", str(data_dir)]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_beside_a_server_the_schema_is_never_changed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--data-dir", str(data_dir)]) == 0
    head = revision(data_dir)
    with datadir.exclusive(data_dir, "serve"):  # a server runs on the data directory
        assert main(["migrate", "--data-dir", str(data_dir)]) == 0
        assert "is up to date" in capsys.readouterr().out
        assert admin(data_dir, "boss", "password123", monkeypatch) == 0
        # A server of an older version: its schema must stay as it is.
        with sqlite3.connect(data_dir / "streamplat.db") as db:
            db.execute("UPDATE alembic_version SET version_num = '0002_streams'")
        assert main(["migrate", "--data-dir", str(data_dir)]) == 1
        err = capsys.readouterr().err
        assert "0002_streams" in err and head in err and "stop it" in err and "command=serve" in err
        assert admin(data_dir, "boss2", "password123", monkeypatch) == 2
        assert "streamplat migrate" in capsys.readouterr().err
        assert revision(data_dir) == "0002_streams"
    with sqlite3.connect(data_dir / "streamplat.db") as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (head,))
    assert admin(data_dir, "boss2", "password123", monkeypatch) == 0  # no server: fine again


def test_config_masks_the_redis_password(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMPLAT_REDIS__URL", "redis://:hunter2secret@10.0.0.5:6379/0")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2secret" not in out
    assert '"url": "redis://:***@10.0.0.5:6379/0"' in out


def test_migrate_refuses_a_schema_newer_than_this_code(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--data-dir", str(data_dir)]) == 0
    with sqlite3.connect(data_dir / "streamplat.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    capsys.readouterr()
    assert main(["migrate", "--data-dir", str(data_dir)]) == 1
    assert "'0099_from_the_future', newer than this code" in capsys.readouterr().err
    assert revision(data_dir) == "0099_from_the_future"


def test_nodes_lists_every_node_and_its_state(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from streamplat.db import create_engine, session_factory
    from streamplat.nodes import NodeRegistry

    assert main(["nodes", "--data-dir", str(data_dir)]) == 1
    assert "no nodes table yet" in capsys.readouterr().err
    assert main(["migrate", "--data-dir", str(data_dir)]) == 0

    async def join(node_id: str, leave: bool) -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{data_dir / 'streamplat.db'}")
        registry = NodeRegistry(
            session_factory(engine),
            node_id=node_id,
            public_host=f"{node_id}.example.net",
            stream_url=f"http://{node_id}:9090",
            instance=f"test:{node_id}",
            secret_fingerprint="f" * 32,
            schema_revision="test",
        )
        if leave:
            async with registry:
                pass
        else:
            await registry.join()
        await engine.dispose()

    asyncio.run(join("node-up", leave=False))
    asyncio.run(join("node-gone", leave=True))
    capsys.readouterr()
    assert main(["nodes", "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["node_id", "state", "heartbeat"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["node-up"][1] == "alive" and "http://node-up:9090" in rows["node-up"]
    assert rows["node-gone"][1] == "left"
