"""StreamService rules against a real SQLite database.

The ingest supervisor is replaced by a small recorder of start/stop calls: the races and
failures below (a publisher connecting while the listener is still starting, a listener that
cannot start, a commit that fails) cannot be produced on demand with a real FFmpeg.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from streamplat.auth import Principal, User
from streamplat.db import create_engine, migrate, session_factory
from streamplat.errors import NotFound, ServiceUnavailable
from streamplat.events import EventBus, PublisherConnected
from streamplat.streams import PortPool, StreamService, ViewerTracker
from streamplat.streams.schemas import StreamCreate


@dataclass
class RecordingIngest:
    """Records what the service asks of the supervisor; can misbehave on request."""

    bus: EventBus
    running: set[str] = field(default_factory=set)
    connect_during_start: bool = False
    fail_start: Exception | None = None
    stop_seconds: float = 0.0
    stopping: int = 0
    max_stopping: int = 0

    async def start(self, stream_id: str, port: int, passphrase: str, hls_dir: Path) -> None:
        if self.fail_start is not None:
            raise self.fail_start
        self.running.add(stream_id)
        if self.connect_during_start:
            # An eager publisher: media arrives before start() has returned to the service.
            await self.bus.publish(PublisherConnected(stream_id))

    async def stop(self, stream_id: str) -> None:
        self.stopping += 1
        self.max_stopping = max(self.max_stopping, self.stopping)
        try:
            await asyncio.sleep(self.stop_seconds)
        finally:
            self.stopping -= 1
        self.running.discard(stream_id)

    def status(self, stream_id: str) -> None:
        return None


@dataclass
class Rig:
    service: StreamService
    ingest: RecordingIngest
    sessions: async_sessionmaker[AsyncSession]
    owner: Principal
    ports: PortPool

    async def new_stream(self) -> str:
        return (await self.service.create_stream(StreamCreate(name="s"), self.owner)).stream_id

    async def status(self, stream_id: str) -> str:
        return (await self.service.get_stream(stream_id, self.owner)).status


@pytest_asyncio.fixture(name="rig")
async def fixture_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(engine)
    sessions = session_factory(engine)
    async with sessions() as session:
        user = User(username="owner", email="o@example.com", password_hash="x", role="streamer")
        session.add(user)
        await session.commit()
    bus = EventBus()
    ingest = RecordingIngest(bus)
    ports = PortPool(40000, 40003, probe=False)
    service = StreamService(
        sessions, bus, ingest, ports, ViewerTracker(6.0), tmp_path / "hls", "localhost", lambda _: None
    )
    try:
        async with service:
            yield Rig(
                service, ingest, sessions, Principal(id=user.id, username="owner", role="streamer"), ports
            )
    finally:
        await engine.dispose()


def free_ports(ports: PortPool) -> int:
    taken = []
    while True:
        try:
            taken.append(ports.acquire())
        except Exception:
            break
    for port in taken:
        ports.release(port)
    return len(taken)


async def test_publisher_connecting_while_the_listener_starts_makes_the_stream_active(rig: Rig) -> None:
    sid = await rig.new_stream()
    rig.ingest.connect_during_start = True
    await rig.service.start_stream(sid, rig.owner)
    assert await rig.status(sid) == "active"


async def test_listener_that_cannot_start_hides_its_cause_and_undoes_the_start(rig: Rig) -> None:
    sid = await rig.new_stream()
    rig.ingest.fail_start = RuntimeError("cannot exec /opt/secret/ffmpeg-build-7")
    with pytest.raises(ServiceUnavailable) as refused:
        await rig.service.start_stream(sid, rig.owner)
    assert "/opt/secret" not in refused.value.message and "server log" in refused.value.message
    assert await rig.status(sid) == "created"
    assert free_ports(rig.ports) == 4
    rig.ingest.fail_start = None
    await rig.service.start_stream(sid, rig.owner)  # and it can be started again
    assert await rig.status(sid) == "waiting"


async def test_failing_commit_leaves_no_listener_and_no_port_taken(rig: Rig) -> None:
    sid = await rig.new_stream()

    def fail_once(session: object) -> None:
        event.remove(rig.sessions.class_.sync_session_class, "before_commit", fail_once)
        raise RuntimeError("disk I/O error")

    event.listen(rig.sessions.class_.sync_session_class, "before_commit", fail_once)
    with pytest.raises(RuntimeError, match="disk I/O"):
        await rig.service.start_stream(sid, rig.owner)
    assert rig.ingest.running == set()  # no FFmpeg left running for a stream the DB calls "created"
    assert free_ports(rig.ports) == 4
    assert await rig.status(sid) == "created"


async def test_made_up_ids_leave_no_lock_behind(rig: Rig) -> None:
    for n in range(200):
        junk = str(uuid.uuid4()) if n % 2 else f"junk-{n}"
        for call in (rig.service.start_stream, rig.service.stop_stream, rig.service.rotate_key):
            with pytest.raises(NotFound):
                await call(junk, rig.owner)
    sid = await rig.new_stream()
    await rig.service.start_stream(sid, rig.owner)
    await rig.service.stop_stream(sid, rig.owner)
    assert rig.service._locks == {} and not rig.service._lock_users


async def test_shutdown_stops_live_streams_in_parallel(tmp_path: Path, rig: Rig) -> None:
    sids = [await rig.new_stream() for _ in range(3)]
    for sid in sids:
        await rig.service.start_stream(sid, rig.owner)
    rig.ingest.stop_seconds = 0.2
    await rig.service.__aexit__(None, None, None)
    assert rig.ingest.max_stopping == 3  # all three were stopping at the same time
    async with rig.sessions() as session:
        statuses = (await session.execute(text("SELECT status FROM streams"))).scalars().all()
    assert statuses == ["stopped"] * 3
    await rig.service.__aenter__()  # so the fixture's exit has something to close


async def test_cached_list_pages_show_live_viewer_counts_and_changes_at_once(
    tmp_path: Path, rig: Rig
) -> None:
    # Caching on (the rig's service has it off): pages keep their summaries for a minute.
    service = StreamService(
        rig.sessions,
        EventBus(),
        rig.ingest,
        PortPool(40010, 40013, probe=False),
        ViewerTracker(6.0),
        tmp_path / "hls-cached",
        "localhost",
        lambda _: None,
        read_cache_seconds=60.0,
    )
    async with service:
        live = (await service.create_stream(StreamCreate(name="live"), rig.owner)).stream_id
        idle = (await service.create_stream(StreamCreate(name="idle"), rig.owner)).stream_id
        await service.start_stream(live, rig.owner)

        async def counts() -> dict[str, tuple[str, int]]:
            page = await service.list_streams(rig.owner, status=None, user_id=None, limit=20, offset=0)
            return {s.stream_id: (s.status, s.viewer_count) for s in page.streams}

        assert await counts() == {live: ("waiting", 0), idle: ("created", 0)}
        # Viewers arrive while the page is cached: the live stream's count is read per answer.
        for client in ("a", "b", "c"):
            service.touch_viewer(live, client)
        service.touch_viewer(idle, "a")  # not live: never counted
        assert await counts() == {live: ("waiting", 3), idle: ("created", 0)}
        # A change forgets the cached pages before its reply.
        await service.stop_stream(live, rig.owner)
        assert await counts() == {live: ("stopped", 0), idle: ("created", 0)}
