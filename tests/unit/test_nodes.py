"""The node registry against real databases (SQLite file and PostgreSQL): joining, refusals,
stream owners from memory, and lost nodes claimed exactly once by racing survivors."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from tests.support.nodes import stream_row
from tests.unit.streams.test_service import RecordingIngest

from streamplat.auth import Principal, User
from streamplat.db import SchemaNewer, create_engine, migrate, session_factory, utcnow
from streamplat.events import Event, EventBus, StreamEnded, StreamStatusChanged
from streamplat.nodes import (
    ClusterMismatch,
    MigrationBlocked,
    Node,
    NodeInfo,
    NodeRegistry,
    NodesCollector,
    load_or_create_node_id,
    refuse_migration_beside_nodes,
    secret_fingerprint,
    stream_url_of,
)
from streamplat.streams import PortPool, StreamService, ViewerTracker
from streamplat.streams.models import ACTIVE, STOPPED, Stream
from streamplat.streams.schemas import StreamCreate
from streamplat.vod import RecordingService
from streamplat.vod.models import Recording

SECRET = "s" * 48


@pytest.fixture(name="db_url")
def fixture_db_url(tmp_path: Path, db: str) -> Iterator[str]:
    """A fresh, empty database of the `db` kind (conftest runs each test on both)."""
    if db == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'nodes.db'}"
        return
    from tests.support import pg

    name, url = pg.create_database()
    try:
        yield url
    finally:
        pg.drop_database(name)


@pytest_asyncio.fixture(name="engines")
async def fixture_engines(db_url: str) -> AsyncIterator[list[AsyncEngine]]:
    """Two engines on the one database: two nodes' connection pools."""
    engines = [create_engine(db_url), create_engine(db_url)]
    await migrate(engines[0])
    yield engines
    for engine in engines:
        await engine.dispose()


def registry(
    engine: AsyncEngine,
    node_id: str,
    *,
    instance: str | None = None,
    secret: str = SECRET,
    bus: EventBus | None = None,
    **kw: Any,
) -> NodeRegistry:
    return NodeRegistry(
        session_factory(engine),
        node_id=node_id,
        public_host=f"{node_id}.example.net",
        stream_url=f"http://{node_id}.internal:9090",
        instance=instance or f"host-{node_id}:/data",
        secret_fingerprint=secret_fingerprint(secret),
        schema_revision="0006_nodes",
        **{"heartbeat_seconds": 0.5, "node_timeout_seconds": 30.0, **kw},
        buses=(bus,) if bus is not None else (),
    )


async def add_stream(sessions: async_sessionmaker[AsyncSession], node_id: str | None, status: str) -> str:
    async with sessions() as session:
        user = await session.scalar(select(User).where(User.username == "owner"))
        if user is None:
            user = User(username="owner", email="o@example.com", password_hash="x", role="streamer")
            session.add(user)
            await session.flush()
        stream = stream_row(user.id, node_id, status)
        session.add(stream)
        await session.commit()
    return stream.id


async def age_heartbeat(sessions: async_sessionmaker[AsyncSession], node_id: str, seconds: float) -> None:
    """What a SIGKILL leaves behind: a row whose heartbeat stops advancing (here, set back)."""
    async with sessions() as session:
        await session.execute(
            update(Node)
            .where(Node.node_id == node_id)
            .values(heartbeat_at=utcnow() - dt.timedelta(seconds=seconds))
        )
        await session.commit()


def stream_service(engine: AsyncEngine, bus: EventBus, tmp_path: Path, name: str) -> StreamService:
    """A real StreamService (not entered: only its lost-node rule runs) with real recording staging."""
    sessions = session_factory(engine)
    recordings = RecordingService(sessions, bus, "ffmpeg", tmp_path / name / "recordings")
    return StreamService(
        sessions,
        bus,
        ingest=None,  # type: ignore[arg-type]  # never asked: the lost node's FFmpeg is not ours
        ports=PortPool(40000, 40003, probe=False),
        viewers=ViewerTracker(6.0),
        hls_root=tmp_path / name / "hls",
        public_host=f"{name}.example.net",
        finalise_playlist=lambda _: None,
        stage_recording=recordings.stage_recording,
    )


async def test_a_node_sees_which_other_node_ingests_a_stream_from_memory(engines: list[AsyncEngine]) -> None:
    sessions = session_factory(engines[0])
    bus_b = EventBus()
    async with registry(engines[0], "node-a") as a, registry(engines[1], "node-b", bus=bus_b) as b:
        on_a = await add_stream(sessions, "node-a", ACTIVE)
        on_b = await add_stream(sessions, "node-b", ACTIVE)
        ended = await add_stream(sessions, "node-a", STOPPED)
        await b.refresh()
        await a.refresh()
        assert b.stream_owner(on_a) == NodeInfo("node-a", "http://node-a.internal:9090", "node-a.example.net")
        assert b.stream_owner(on_b) is None  # its own
        assert b.stream_owner(ended) is None  # nobody ingests it
        assert b.stream_owner(str(uuid.uuid4())) is None
        assert a.stream_owner(on_b) == NodeInfo("node-b", "http://node-b.internal:9090", "node-b.example.net")
        assert b.public_host_of("node-a") == "node-a.example.net" and not b.alone()
        # A stop (committed, then announced on the bus) applies at once, not at the next heartbeat.
        async with sessions() as session:
            await session.execute(update(Stream).where(Stream.id == on_a).values(status=STOPPED))
            await session.commit()
        await bus_b.publish(StreamStatusChanged(on_a, STOPPED, 1))
        assert b.stream_owner(on_a) is None
    # Both left cleanly: their rows say so, and nobody may claim them.
    async with sessions() as session:
        rows = (await session.scalars(select(Node).order_by(Node.node_id))).all()
    assert [(r.node_id, r.left_at is not None, r.claimed_by) for r in rows] == [
        ("node-a", True, None),
        ("node-b", True, None),
    ]


async def test_two_survivors_racing_claim_a_lost_node_once(
    engines: list[AsyncEngine], tmp_path: Path
) -> None:
    sessions = session_factory(engines[0])
    lost = registry(engines[0], "node-lost")
    await lost.join()  # then "SIGKILLed": no heartbeat, no leaving
    streams = [await add_stream(sessions, "node-lost", ACTIVE) for _ in range(2)]
    other = await add_stream(sessions, "node-a", ACTIVE)
    published: list[Event] = []
    buses = [EventBus(), EventBus()]
    for bus in buses:
        bus.subscribe(StreamEnded, published.append)
        bus.subscribe(StreamStatusChanged, published.append)
    # Heartbeat loops that never come round: the claims below are the test's, not the loops'.
    quiet = {"heartbeat_seconds": 3600.0}
    async with registry(engines[0], "node-a", **quiet) as a, registry(engines[1], "node-b", **quiet) as b:
        a.recover = stream_service(engines[0], buses[0], tmp_path, "a").stop_lost_node_streams
        b.recover = stream_service(engines[1], buses[1], tmp_path, "b").stop_lost_node_streams
        assert not await a.claim("node-lost")  # its heartbeat is fresh: not lost yet
        await age_heartbeat(sessions, "node-lost", 100)
        won = await asyncio.gather(a.claim("node-lost"), b.claim("node-lost"))
        assert sorted(won) == [False, True]
        assert not await a.claim("node-lost") and not await b.claim("node-lost")
    async with sessions() as session:
        rows = {s.id: s for s in (await session.scalars(select(Stream))).all()}
        recordings = (await session.scalars(select(Recording))).all()
        claimed_by = await session.scalar(select(Node.claimed_by).where(Node.node_id == "node-lost"))
    winner = "node-a" if won[0] else "node-b"
    assert claimed_by == winner
    for sid in streams:
        assert rows[sid].status == STOPPED and rows[sid].port is None
        assert (rows[sid].status_reason or "").startswith("node lost: node-lost")
    assert rows[other].status == ACTIVE  # another node's stream is left alone
    assert sorted(r.stream_id for r in recordings) == sorted(streams)  # one recording each
    assert all(Path(r.media_dir) == tmp_path / winner[-1] / "hls" / r.stream_id for r in recordings)
    assert sorted(e.stream_id for e in published if isinstance(e, StreamEnded)) == sorted(streams)
    stopped = [e for e in published if isinstance(e, StreamStatusChanged)]
    assert sorted(e.stream_id for e in stopped) == sorted(streams) and all(
        e.status == STOPPED for e in stopped
    )


async def test_a_heartbeat_that_stops_gets_the_node_claimed_by_the_loop(
    engines: list[AsyncEngine], tmp_path: Path
) -> None:
    sessions = session_factory(engines[0])
    bus = EventBus()
    ended: asyncio.Queue[StreamEnded] = asyncio.Queue()
    bus.subscribe(StreamEnded, ended.put_nowait)
    # The one test of the real timeout (3 s): the others age heartbeats by hand, past a timeout
    # of 30 s, so a loaded machine stalling a heartbeat loop for seconds cannot lose a node.
    lost = registry(engines[1], "node-lost", node_timeout_seconds=3.0)
    await lost.join()
    sid = await add_stream(sessions, "node-lost", ACTIVE)
    async with registry(engines[0], "node-a", node_timeout_seconds=3.0) as a:
        a.recover = stream_service(engines[0], bus, tmp_path, "a").stop_lost_node_streams
        await a.refresh()
        assert a.stream_owner(sid) is not None and a.stream_owner(sid).node_id == "node-lost"  # type: ignore[union-attr]
        # No more beats from node-lost: a's own heartbeat loop finds it silent past the timeout.
        event = await asyncio.wait_for(ended.get(), 30)
        assert event.stream_id == sid and a.claims == 1
        assert a.stream_owner(sid) is None
        metrics = {m.name: m.samples[0].value for m in NodesCollector(a).collect()}
        assert metrics == {"streamplat_cluster_nodes_alive": 1, "streamplat_cluster_claims": 1}


async def test_a_node_restarted_with_its_id_takes_its_claimed_row_back(engines: list[AsyncEngine]) -> None:
    sessions = session_factory(engines[0])
    first = registry(engines[0], "node-a")
    await first.join()
    async with sessions() as session:
        await session.execute(update(Node).values(claimed_by="node-b", claimed_at=utcnow()))
        await session.commit()
    async with registry(engines[1], "node-a", instance="another-host:/data"):
        async with sessions() as session:
            row = await session.get(Node, "node-a")
        assert row is not None and row.claimed_by is None and row.left_at is None
        assert row.instance == "another-host:/data"


async def test_same_node_id_alive_elsewhere_is_refused_but_a_restart_in_place_is_not(
    engines: list[AsyncEngine],
) -> None:
    async with registry(engines[0], "node-a", instance="host1:/srv/a"):
        with pytest.raises(
            ClusterMismatch, match=r"another node with node_id 'node-a' is alive \(host1:/srv/a"
        ):
            await registry(engines[1], "node-a", instance="host2:/srv/a").join()
        # The same host and data directory: the data directory lock says the old process is gone.
        await registry(engines[1], "node-a", instance="host1:/srv/a").join()


async def test_another_jwt_secret_than_the_alive_nodes_is_refused(engines: list[AsyncEngine]) -> None:
    async with registry(engines[0], "node-a"):
        with pytest.raises(
            ClusterMismatch, match=r"auth\.jwt_secret differs from the one of the alive node 'node-a'"
        ):
            await registry(engines[1], "node-b", secret="t" * 48).join()
    async with session_factory(engines[0])() as session:
        stored = await session.scalar(select(Node.secret_fingerprint))
    assert stored is not None and SECRET not in stored and "ssss" not in stored
    # Once no node is alive, a node with a new secret may start (an operator rotating it).
    await registry(engines[1], "node-b", secret="t" * 48).join()


async def test_a_clock_off_from_the_databases_is_refused(engines: list[AsyncEngine]) -> None:
    def late() -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=5)

    with pytest.raises(
        ClusterMismatch, match=r"clock differs from the database's by 5\.\d s .*max_clock_skew_seconds"
    ):
        await registry(engines[0], "node-a", clock=late).join()
    await registry(engines[0], "node-a", clock=late, max_clock_skew_seconds=10).join()


async def test_a_schema_newer_than_the_code_is_refused(engines: list[AsyncEngine]) -> None:
    from sqlalchemy import text

    async with engines[0].begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    with pytest.raises(SchemaNewer, match="'0099_from_the_future', newer than this code"):
        await migrate(engines[1])


async def test_a_migration_is_refused_while_other_nodes_run_on_the_older_schema(
    engines: list[AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # This code's head is 0006; a newer release's would be 0007: stand in for it.
    async def newer_code(engine: AsyncEngine) -> tuple[str, str]:
        return "0006_nodes", "0007_next"

    monkeypatch.setattr("streamplat.nodes.schema_revisions", newer_code)
    async with registry(engines[0], "node-a"):
        with pytest.raises(
            MigrationBlocked, match=r"needs 0007_next, and 1 other node\(s\) still run on it: node-a"
        ):
            await refuse_migration_beside_nodes(engines[1], own_node_id="node-b", timeout_seconds=10)
        # The node's own earlier row (a restart in place) does not block it.
        await refuse_migration_beside_nodes(engines[1], own_node_id="node-a", timeout_seconds=10)
    # node-a left: nothing runs on the old schema any more.
    await refuse_migration_beside_nodes(engines[1], own_node_id="node-b", timeout_seconds=10)


def test_node_id_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create_node_id("", tmp_path)
    assert first == load_or_create_node_id("", tmp_path)
    assert (tmp_path / "node_id").read_text().strip() == first
    assert load_or_create_node_id("edge-1", tmp_path) == "edge-1"
    assert stream_url_of("", "10.0.0.5", 9090) == "http://10.0.0.5:9090"
    assert stream_url_of("", "::1", 9090) == "http://[::1]:9090"
    assert stream_url_of("https://a.internal:9443/", "x", 9090) == "https://a.internal:9443"


async def test_a_node_found_lost_while_running_ends_the_listeners_of_its_stopped_streams(
    engines: list[AsyncEngine], tmp_path: Path
) -> None:
    sessions = session_factory(engines[0])
    await add_stream(sessions, None, STOPPED)  # creates the owner
    bus = EventBus()
    ingest = RecordingIngest(bus)
    ports = PortPool(40000, 40003, probe=False)
    # No heartbeat loop on node-a: the test says when it reaches the database again.
    async with registry(engines[0], "node-a", heartbeat_seconds=3600.0) as a:
        service = StreamService(
            sessions,
            bus,
            ingest,
            ports,
            ViewerTracker(6.0),
            tmp_path / "hls",
            "node-a.example.net",
            lambda _: None,
            nodes=a,
        )
        async with service:
            a.rejoined = service.drop_orphaned_ingests
            owner = Principal(id=1, username="owner", role="streamer")
            sid = (await service.create_stream(StreamCreate(name="cut off"), owner)).stream_id
            started = await service.start_stream(sid, owner)
            assert started.srt_url.startswith("srt://node-a.example.net:")
            assert ingest.running == {sid} and ports.in_use() == {started.port}
            # The database did not hear from node-a for longer than the timeout: node-b claims it.
            async with registry(engines[1], "node-b", heartbeat_seconds=3600.0) as b:
                b.recover = stream_service(engines[1], EventBus(), tmp_path, "b").stop_lost_node_streams
                await age_heartbeat(sessions, "node-a", 100)
                assert await b.claim("node-a")
            await a.beat()  # node-a reaches the database again
            assert ingest.running == set() and ports.in_use() == set()
            async with sessions() as session:
                row = await session.get(Node, "node-a")
                stream = await session.get(Stream, sid)
            assert row is not None and row.claimed_by is None
            assert stream is not None and stream.status == STOPPED


async def test_start_up_and_shutdown_touch_only_this_nodes_streams(
    engines: list[AsyncEngine], tmp_path: Path
) -> None:
    sessions = session_factory(engines[0])
    on_a = await add_stream(sessions, "node-a", ACTIVE)
    on_b = await add_stream(sessions, "node-b", ACTIVE)
    legacy = await add_stream(sessions, None, ACTIVE)  # started before nodes existed

    async def statuses() -> dict[str, str]:
        async with sessions() as session:
            return {s.id: s.status for s in (await session.scalars(select(Stream))).all()}

    def service_of(b: NodeRegistry) -> StreamService:
        return StreamService(
            sessions,
            EventBus(),
            RecordingIngest(EventBus()),
            PortPool(40000, 40003, probe=False),
            ViewerTracker(6.0),
            tmp_path / "hls",
            "node-b.example.net",
            lambda _: None,
            nodes=b,
        )

    async with registry(engines[0], "node-b") as b:
        async with registry(engines[1], "node-a"):
            await b.refresh()
            async with service_of(b):  # start-up reconcile, then shutdown
                pass
            assert await statuses() == {on_a: ACTIVE, on_b: STOPPED, legacy: ACTIVE}
        await b.refresh()  # node-a left: node-b is alone, and legacy rows are its own
        async with service_of(b):
            pass
    assert await statuses() == {on_a: ACTIVE, on_b: STOPPED, legacy: STOPPED}


async def test_a_second_process_joining_with_the_same_identity_is_reported_not_fought(
    engines: list[AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    # A cloned machine: same host name, same data directory path, so join() cannot tell it apart.
    first = registry(engines[0], "node-a", instance="clone:/data")
    await first.join()
    second = registry(engines[1], "node-a", instance="clone:/data")
    await second.join()
    sessions = session_factory(engines[0])
    async with sessions() as session:
        before = await session.scalar(select(Node.heartbeat_at))
    await first.beat()
    await first.beat()
    async with sessions() as session:
        row = await session.get(Node, "node-a")
    assert row is not None and row.heartbeat_at == before and row.claimed_by is None
    errors = [m for m in caplog.messages if "is now also used by another process" in m]
    assert len(errors) == 1 and "clone:/data" in errors[0]
    await second.beat()  # the process that joined last goes on
    async with sessions() as session:
        assert (await session.scalar(select(Node.heartbeat_at))) > before  # type: ignore[operator]


async def test_rows_of_nodes_gone_for_over_a_week_are_forgotten(engines: list[AsyncEngine]) -> None:
    sessions = session_factory(engines[0])
    for node_id in ("left-long-ago", "lost-long-ago", "left-yesterday"):
        await registry(engines[0], node_id).join()
    long_ago, yesterday = utcnow() - dt.timedelta(days=8), utcnow() - dt.timedelta(days=1)
    async with sessions() as session:
        await session.execute(update(Node).where(Node.node_id == "left-long-ago").values(left_at=long_ago))
        await session.execute(
            update(Node).where(Node.node_id == "lost-long-ago").values(claimed_by="x", claimed_at=long_ago)
        )
        await session.execute(update(Node).where(Node.node_id == "left-yesterday").values(left_at=yesterday))
        await session.commit()
    async with registry(engines[1], "node-a") as a:
        assert await a.prune() == 2
    async with sessions() as session:
        kept = (await session.scalars(select(Node.node_id).order_by(Node.node_id))).all()
    assert kept == ["left-yesterday", "node-a"]
