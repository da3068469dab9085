"""Fixtures shared by every test: real servers on free ports."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, NginxProcess
from tests.support.media import Publisher
from tests.support.server import ServerProcess, make_server, running_server

# How much of each server's (and nginx's) log a failed test's report shows: the end, where the
# failure is (module-scoped servers have served earlier tests too).
LOG_TAIL_CHARS = 6000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the logs of the servers and nginx it used.

    A failure in CI happens on a machine nobody can look at afterwards, and the processes'
    logs are in temporary directories that later runs delete.
    """
    report: pytest.TestReport = yield
    if report.failed:
        for name, process in _processes(getattr(item, "funcargs", {})):
            if text := process.logs():
                title = f"log of {name} (last {LOG_TAIL_CHARS} characters)"
                report.sections.append((title, text[-LOG_TAIL_CHARS:]))
    return report


def _processes(funcargs: dict[str, Any]) -> Iterator[tuple[str, ServerProcess | NginxProcess]]:
    for name, value in funcargs.items():
        if isinstance(value, ServerProcess | NginxProcess):
            yield name, value
        elif isinstance(value, Cluster):
            yield f"{name}.a", value.a
            yield f"{name}.b", value.b
            yield f"{name}.nginx", value.nginx


@pytest.fixture(name="db", scope="module", params=["sqlite", "postgresql"])
def fixture_db(request: pytest.FixtureRequest) -> str:
    """The database every server of the test uses: each server test runs on SQLite and on PostgreSQL.

    A module that must stay on SQLite (e.g. it times media, not queries) overrides this fixture.
    PostgreSQL cases skip when no PostgreSQL is reachable, and fail instead under
    TEST_REQUIRE_PG=1 (CI), so a CI machine without it cannot pass by skipping.
    """
    db = str(request.param)
    if db == "postgresql":
        from tests.support import pg

        pg.require()
    return db


@pytest.fixture(name="server_factory")
def fixture_server_factory(tmp_path: Path, db: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with extra environment; every one is stopped (or killed) at the end."""
    started: list[ServerProcess] = []

    def start(
        extra_env: dict[str, str] | None = None, name: str = "server", spec_ports: bool = False
    ) -> ServerProcess:
        srv = make_server(tmp_path, extra_env, name=f"{name}{len(started)}", spec_ports=spec_ports, db=db)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        try:
            srv.stop()
        except Exception:
            srv.kill()
        srv.drop_database()


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[ServerProcess]:
    """One server shared by a test module (tests use distinct usernames)."""
    with running_server(tmp_path_factory.mktemp("srv"), db=db) as srv:
        yield srv


@pytest.fixture(name="run_spec_client")
def fixture_run_spec_client() -> Callable[..., list[dict[str, Any]]]:
    """Run the spec's StreamingAPI class under Node.js: steps are [method, *args] lists."""
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is required for the spec client tests (make test installs it)")

    def run(base_url: str, steps: list[list[Any]], token: str | None = None) -> list[dict[str, Any]]:
        script = Path(__file__).parent / "js" / "run_client.mjs"
        args = [node, str(script), base_url, json.dumps(steps)] + ([token] if token else [])
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    return run


@pytest.fixture(name="publishers")
def fixture_publishers() -> Iterator[list[Publisher]]:
    """Publishers started by a test; every one is killed at the end."""
    started: list[Publisher] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture(name="redis_prefix")
def fixture_redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the machine's Redis; its keys are deleted afterwards."""
    from tests.support.redis import delete_prefix, fresh_prefix, require_redis

    require_redis()
    prefix = fresh_prefix()
    yield prefix
    delete_prefix(prefix)
