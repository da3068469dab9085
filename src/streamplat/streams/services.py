"""Stream rules: create, start, stop, rotate, delete; status from ingest events.

The service owns the DB rows of streams and the port pool; the IngestSupervisor owns the
FFmpeg children. Ingest events (publisher connected, dropped, gave up) come in on the bus
and become status changes here. A stream that ends with media gets its recording row in the
same transaction that marks it stopped (through the `stage_recording` callable the composition
root hands in, so this package never imports vod), then `StreamEnded` wakes the VOD workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import msgspec
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from streamplat.auth import Principal, User
from streamplat.db import fetch_page, isoformat, utcnow
from streamplat.errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from streamplat.events import (
    EventBus,
    IngestGaveUp,
    PublisherConnected,
    PublisherDisconnected,
    StreamChanged,
    StreamEnded,
    StreamStatusChanged,
    ViewerCountChanged,
)
from streamplat.logs import detached_from_request
from streamplat.readcache import ReadCache, cached_row
from streamplat.streams.models import ACTIVE, CREATED, LIVE_STATUSES, STOPPED, WAITING, Stream
from streamplat.streams.portpool import PortPool, PortPoolExhausted
from streamplat.streams.schemas import (
    IngestStatusOut,
    KeyRotated,
    StreamCreate,
    StreamCreated,
    StreamDeleted,
    StreamDetail,
    StreamList,
    StreamStarted,
    StreamStopped,
    StreamSummary,
)
from streamplat.streams.viewers import ViewerCounter

log = logging.getLogger(__name__)

# How long a stream's segment count on disk is reused before it is asked for again.
FILE_COUNT_SECONDS = 0.5
STREAM_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class IngestStatusLike(Protocol):
    # Read-only members, so the supervisor's frozen snapshot dataclass matches.
    @property
    def ffmpeg_running(self) -> bool: ...
    @property
    def publisher_connected(self) -> bool: ...
    @property
    def started_at(self) -> float: ...
    @property
    def connected_at(self) -> float | None: ...
    @property
    def restarts(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def bitrate_kbps(self) -> float | None: ...
    @property
    def fps(self) -> float | None: ...


class Ingest(Protocol):
    """What the service needs of the ingest supervisor (streamplat.ingest.IngestSupervisor)."""

    async def start(self, stream_id: str, port: int, passphrase: str, hls_dir: Path) -> None: ...
    async def stop(self, stream_id: str) -> None: ...
    def status(self, stream_id: str) -> IngestStatusLike | None: ...


class Nodes(Protocol):
    """What the service needs of the node registry (streamplat.nodes.NodeRegistry)."""

    node_id: str

    def public_host_of(self, node_id: str | None) -> str: ...
    def alone(self) -> bool: ...
    async def forward_stop(
        self, node_id: str, stream_id: str, reason: str | None
    ) -> tuple[int, dict[str, Any]]: ...
    def check_internal_token(self, token: str | None) -> bool: ...
    async def owner_ingest_status(self, stream_id: str) -> dict[str, Any] | None: ...


class PlaylistFinaliser(Protocol):
    def __call__(self, hls_dir: Path) -> None: ...


class RecordingStager(Protocol):
    """Adds an ended stream's recording row to `session`'s transaction; False if it has one.

    (streamplat.vod.RecordingService.stage_recording, wired by the composition root.)
    """

    async def __call__(
        self, session: AsyncSession, *, stream_id: str, user_id: int, title: str, media_dir: Path
    ) -> bool: ...


@dataclass(frozen=True, slots=True)
class StreamLinks:
    public_host: str
    nodes: Nodes | None = None

    def srt_url(self, stream: Stream) -> str | None:
        """The URL for OBS, naming the node that listens for it (its own port pool)."""
        if stream.port is None:
            return None
        host = self.public_host if self.nodes is None else self.nodes.public_host_of(stream.node_id)
        return f"srt://{host}:{stream.port}?streamid={stream.id}&passphrase={stream.stream_key}"

    @staticmethod
    def hls_url(stream_id: str) -> str:
        return f"/hls/{stream_id}/stream.m3u8"


def new_stream_key() -> str:
    """A fresh SRT passphrase: 32 URL-safe characters (SRT accepts 10-79)."""
    return secrets.token_urlsafe(24)


def is_stream_id(value: str) -> bool:
    """True if `value` has the shape of a stream id (so it is safe in a path)."""
    return bool(STREAM_ID.fullmatch(value))


@dataclass(frozen=True, slots=True)
class _Page:
    """One cached list page: each summary with whether its stream is live (its viewer count is
    read at answer time), and the total."""

    summaries: list[tuple[StreamSummary, bool]]
    total: int


class StreamService:
    """Streams and their lifecycle. Enter it (async with) to run its background tasks."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: EventBus,
        ingest: Ingest,
        ports: PortPool,
        viewers: ViewerCounter,
        hls_root: Path,
        public_host: str,
        finalise_playlist: PlaylistFinaliser,
        viewer_push_interval: float = 2.0,
        storage_problem: Callable[[], str | None] = lambda: None,
        stage_recording: RecordingStager | None = None,
        read_cache_seconds: float = 0.0,
        nodes: Nodes | None = None,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self._ingest = ingest
        self._ports = ports
        self.viewers = viewers
        self._hls_root = hls_root
        self._links = StreamLinks(public_host, nodes)
        # Without a registry (unit tests, tools) the service is a node of its own with no id.
        self._nodes = nodes
        self.node_id = nodes.node_id if nodes is not None else None
        self._finalise_playlist = finalise_playlist
        self._viewer_push_interval = viewer_push_interval
        self._storage_problem = storage_problem
        self._stage_recording = stage_recording
        # Stream rows read per request (GET /api/streams/{id}, /stream/{id}/status), kept for a
        # moment; every change below goes through _commit, which forgets the row (readcache.py).
        self._rows: ReadCache[str, tuple[Stream, str]] = ReadCache(read_cache_seconds)
        # List pages (the summaries and the total), for as long; any stream's change forgets
        # them all (forget). A live stream's viewer count is filled in at answer time.
        self._pages: ReadCache[tuple[object, ...], _Page] = ReadCache(read_cache_seconds, max_entries=1_000)
        self._segment_counter = SegmentCounter()
        self._file_counts: ReadCache[str, int] = ReadCache(FILE_COUNT_SECONDS)
        # Streams this process has live; only their HLS fetches count as viewers (a stopped
        # stream's final playlist stays readable, but nobody watches it live any more).
        # (stream id -> its SRT port from this node's pool.)
        self._live: dict[str, int] = {}
        # One lock per stream id, kept only while someone holds or waits for it.
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: Counter[str] = Counter()
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = False
        self._last_counts: dict[str, int] = {}
        self._viewer_task: asyncio.Task[None]

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> StreamService:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._bus.subscribe(PublisherConnected, self._on_connected)
        self._bus.subscribe(PublisherDisconnected, self._on_disconnected)
        self._bus.subscribe(IngestGaveUp, self._on_gave_up)
        await self.reconcile()
        self._viewer_task = self._tasks.create_task(self._push_viewer_counts(), name="viewer-counts")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Stop every live stream like its owner would, so its recording is queued and the next
        # start finds nothing to reconcile; FFmpeg children finalise their playlists meanwhile.
        # All at once: each stop waits up to ingest.stop_timeout_seconds for its FFmpeg, and the
        # supervisor stops children in parallel, so shutdown takes one timeout, not one per stream.
        self._closing = True
        live = await self._live_ids()
        results = await asyncio.gather(
            *(self.stop_stream(stream_id, reason="server shut down") for stream_id in live),
            return_exceptions=True,
        )
        for stream_id, result in zip(live, results, strict=True):
            if isinstance(result, Exception):
                log.error(
                    "stopping stream=%s at shutdown failed",
                    stream_id,
                    exc_info=result,
                    extra={"stream_id": stream_id},
                )
        self._bus.unsubscribe(PublisherConnected, self._on_connected)
        self._bus.unsubscribe(PublisherDisconnected, self._on_disconnected)
        self._bus.unsubscribe(IngestGaveUp, self._on_gave_up)
        assert self._tasks is not None
        # The viewer loop runs forever; auto-stops still running are short and awaited.
        self._viewer_task.cancel()
        await self._tasks.__aexit__(None, None, None)

    async def _live_ids(self) -> list[str]:
        """This node's live streams (shutdown and start-up touch no other node's)."""
        query = select(Stream.id).where(Stream.status.in_(LIVE_STATUSES))
        if self.node_id is not None:
            mine: ColumnElement[bool] = Stream.node_id == self.node_id
            if self._nodes is None or self._nodes.alone():
                # Streams started before nodes existed have no node_id: on a lone node they were
                # its own; beside other nodes, nobody can tell, so none of them touches them.
                mine = or_(mine, Stream.node_id.is_(None))
            query = query.where(mine)
        async with self._sessions() as session:
            return list((await session.scalars(query)).all())

    async def reconcile(self) -> None:
        """Streams left live by a crash: finalise their playlists, stop them, hand media to VOD."""
        for stream_id in await self._live_ids():
            log.warning(
                "stream=%s was live when the server stopped; stopping it",
                stream_id,
                extra={"stream_id": stream_id},
            )
            hls_dir = self.hls_dir(stream_id)
            if await asyncio.to_thread(hls_dir.exists):
                await asyncio.to_thread(self._finalise_playlist, hls_dir)
            await self._mark_stopped(stream_id, reason="server restarted while the stream was live")
        await self._record_unrecorded()

    async def _record_unrecorded(self) -> None:
        """Stopped streams with media on disk and no recording get one (a crash or failure
        between "stopped" and "recorded" before both shared one transaction left such streams)."""
        if self._stage_recording is None:
            return

        def with_media() -> list[str]:
            return [p.name for p in self._hls_root.iterdir() if is_stream_id(p.name) and _has_segments(p)]

        try:
            candidates = await asyncio.to_thread(with_media)
        except OSError:
            return
        if not candidates:
            return
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Stream, User.username)
                    .join(User, User.id == Stream.user_id)
                    .where(Stream.id.in_(candidates), Stream.status == STOPPED)
                )
            ).all()
            staged = [
                (stream, username)
                for stream, username in rows
                if await self._stage_recording(
                    session,
                    stream_id=stream.id,
                    user_id=stream.user_id,
                    title=stream.title,
                    media_dir=self.hls_dir(stream.id),
                )
            ]
            await session.commit()
        for stream, username in staged:
            log.warning(
                "stream=%s had stopped with media but no recording; recording it now",
                stream.id,
                extra={"stream_id": stream.id},
            )
            await self._bus.publish(
                StreamEnded(stream.id, stream.user_id, username, stream.title, self.hls_dir(stream.id))
            )

    # --- queries --------------------------------------------------------------------------------

    def hls_dir(self, stream_id: str) -> Path:
        """Where the stream's playlist and segments are written."""
        return self._hls_root / stream_id

    @contextlib.asynccontextmanager
    async def _locked(self, stream_id: str) -> AsyncIterator[None]:
        # Ids are checked before a lock exists, and a lock is dropped when its last user leaves:
        # requests with made-up ids cannot grow the table.
        if not is_stream_id(stream_id):
            raise NotFound("Stream not found")
        lock = self._locks.setdefault(stream_id, asyncio.Lock())
        self._lock_users[stream_id] += 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[stream_id] -= 1
            if not self._lock_users[stream_id]:
                del self._lock_users[stream_id]
                del self._locks[stream_id]

    async def _commit(self, session: AsyncSession, stream_id: str) -> None:
        """Commit a change to the stream's row; the read cache forgets the row before anyone reads."""
        try:
            await session.commit()
        finally:
            self.forget(stream_id)
            await self._bus.publish(StreamChanged(stream_id))

    def forget(self, stream_id: str) -> None:
        """The stream's row changed, appeared or went (here, or in another process: see
        streamplat.cluster): forget it, and every cached list page."""
        self._rows.invalidate(stream_id)
        self._pages.clear()

    async def _read(self, stream_id: str) -> tuple[Stream, str]:
        """The stream's row and owner's name for reading, from the cache when it is fresh.

        The cached Stream is detached and never written to: every change loads its own row.
        """
        return await cached_row(self._rows, self._sessions, self._get, stream_id)

    async def _get(
        self, session: AsyncSession, stream_id: str, *, for_update: bool = False
    ) -> tuple[Stream, str]:
        if not is_stream_id(stream_id):
            raise NotFound("Stream not found")
        query = (
            select(Stream, User.username).join(User, User.id == Stream.user_id).where(Stream.id == stream_id)
        )
        if for_update:
            # PostgreSQL: the stream's row stays locked until this transaction ends, so another
            # process deciding on the same stream waits and then reads the row as committed.
            # SQLite ignores it (one process per database file; the per-stream lock decides).
            query = query.with_for_update(of=Stream)
        row = (await session.execute(query)).first()
        if row is None:
            raise NotFound("Stream not found")
        return row[0], row[1]

    @staticmethod
    def _require_owner(stream: Stream, actor: Principal) -> None:
        if stream.user_id != actor.id and not actor.is_admin:
            raise Forbidden("Only the stream's owner or an admin can do this")

    def _duration(self, stream: Stream) -> int:
        if stream.started_at is None:
            return 0
        end = stream.stopped_at or utcnow()
        return max(0, int((end - stream.started_at).total_seconds()))

    def _viewer_count(self, stream: Stream) -> int:
        return self.viewers.count(stream.id) if stream.status in LIVE_STATUSES else 0

    def _detail(self, stream: Stream, username: str, actor: Principal) -> StreamDetail:
        private = stream.user_id == actor.id or actor.is_admin
        return StreamDetail(
            stream_id=stream.id,
            name=stream.name,
            title=stream.title,
            description=stream.description,
            status=stream.status,
            user_id=stream.user_id,
            username=username,
            port=stream.port,
            start_time=isoformat(stream.started_at),
            stop_time=isoformat(stream.stopped_at),
            viewer_count=self._viewer_count(stream),
            duration_seconds=self._duration(stream),
            hls_url=self._links.hls_url(stream.id),
            created_at=isoformat(stream.created_at) or "",
            status_reason=stream.status_reason,
            srt_url=self._links.srt_url(stream) if private else None,
            stream_key=stream.stream_key if private else None,
        )

    def _summary(self, stream: Stream, username: str) -> StreamSummary:
        return StreamSummary(
            stream_id=stream.id,
            name=stream.name,
            title=stream.title,
            status=stream.status,
            created_at=isoformat(stream.created_at) or "",
            viewer_count=self._viewer_count(stream),
            user_id=stream.user_id,
            username=username,
            start_time=isoformat(stream.started_at),
            hls_url=self._links.hls_url(stream.id),
        )

    async def get_stream(self, stream_id: str, actor: Principal) -> StreamDetail:
        """One stream; everyone signed in may see it, only the owner and admins its SRT URL and key."""
        stream, username = await self._read(stream_id)
        return self._detail(stream, username, actor)

    async def list_streams(
        self,
        actor: Principal,
        *,
        status: str | None,
        user_id: int | None,
        limit: int,
        offset: int,
        live_only: bool = False,
    ) -> StreamList:
        """A page of streams, newest first: the caller's own, everyone's for admins or live_only."""
        owner: int | None  # whose streams; None: everyone's
        if live_only:
            owner = None
        elif actor.is_admin:
            owner = user_id
        else:
            if user_id is not None and user_id != actor.id:
                raise Forbidden("Only admins can list other users' streams")
            owner = actor.id

        async def load() -> _Page:
            rows, total = await self._page(live_only, owner, status, limit, offset)
            # Built once per cached page: per request, building 20 summaries from ORM rows was
            # 27 % of a list read's CPU (py-spy: attribute access, isoformat).
            return _Page(
                [
                    (self._summary(stream, username), stream.status in LIVE_STATUSES)
                    for stream, username in rows
                ],
                total,
            )

        page = await self._pages.get_or_read((live_only, owner, status, limit, offset), load)
        count = self.viewers.count
        return StreamList(
            streams=[
                msgspec.structs.replace(summary, viewer_count=count(summary.stream_id)) if live else summary
                for summary, live in page.summaries
            ],
            total=page.total,
            limit=limit,
            offset=offset,
        )

    async def _page(
        self, live_only: bool, owner: int | None, status: str | None, limit: int, offset: int
    ) -> tuple[list[tuple[Stream, str]], int]:
        conditions: list[ColumnElement[bool]] = []
        if live_only:
            conditions.append(Stream.status.in_(LIVE_STATUSES))
        if owner is not None:
            conditions.append(Stream.user_id == owner)
        if status is not None:
            conditions.append(Stream.status == status)
        query = select(Stream, User.username).join(User, User.id == Stream.user_id).where(*conditions)
        count = select(func.count(Stream.id)).where(*conditions)
        async with self._sessions() as session:
            rows, total = await fetch_page(
                session, query.order_by(Stream.created_at.desc(), Stream.id), count, limit, offset
            )
        return rows, total

    # --- commands -------------------------------------------------------------------------------

    async def create_stream(self, data: StreamCreate, actor: Principal) -> StreamCreated:
        """Create a stream owned by the caller (status "created"); title defaults to the name."""
        name = data.name.strip()
        if not name:
            from streamplat.errors import ValidationFailed

            raise ValidationFailed({"name": ["is required"]})
        stream = Stream(
            id=str(uuid.uuid4()),
            user_id=actor.id,
            name=name,
            title=(data.title or "").strip() or name,
            description=data.description or "",
            status=CREATED,
            stream_key=new_stream_key(),
        )
        async with self._sessions() as session:
            session.add(stream)
            await self._commit(session, stream.id)
        log.info("stream=%s created by user_id=%s", stream.id, actor.id, extra={"stream_id": stream.id})
        return StreamCreated(
            stream_id=stream.id,
            name=stream.name,
            title=stream.title,
            description=stream.description,
            user_id=stream.user_id,
            username=actor.username,
            status=stream.status,
            created_at=isoformat(stream.created_at) or "",
        )

    async def start_stream(self, stream_id: str, actor: Principal) -> StreamStarted:
        """Open an SRT listener for the stream (status "waiting") and return the URL for OBS."""
        async with self._locked(stream_id), self._sessions() as session:
            # Locked in the database too: two servers on one PostgreSQL database cannot both start it.
            stream, _ = await self._get(session, stream_id, for_update=True)
            self._require_owner(stream, actor)
            if stream.status in LIVE_STATUSES:
                raise Conflict("Stream is already started")
            if stream.status == STOPPED:
                raise Conflict("Stream has ended; create a new stream to go live again")
            # Checked last, so a caller who may not start this stream learns nothing of the disk.
            # Live streams are left alone: cutting a broadcast off is worse than a fuller disk.
            if problem := await asyncio.to_thread(self._storage_problem):
                raise InsufficientStorage(f"Not enough free disk space to start a stream: {problem}")
            try:
                port = self._ports.acquire()
            except PortPoolExhausted as exc:
                raise ServiceUnavailable(
                    f"No SRT port is free: {exc}. Try again when a stream ends."
                ) from None
            # "waiting" is committed before FFmpeg starts: a publisher that connects at once
            # finds a waiting stream to make active (its event used to find "created" and be
            # dropped), and a failing commit leaves no FFmpeg running and no port taken.
            stream.status = WAITING
            stream.port = port
            stream.node_id = self.node_id
            stream.started_at = utcnow()
            stream.status_reason = None
            try:
                await self._commit(session, stream.id)
            except BaseException:
                self._ports.release(port)
                raise
            self._live[stream.id] = port
            log.info("stream=%s waiting on port %s", stream.id, port, extra={"stream_id": stream.id})
            await self._bus.publish(StreamStatusChanged(stream.id, WAITING, stream.user_id))
            hls_dir = self.hls_dir(stream.id)
            try:
                await asyncio.to_thread(hls_dir.mkdir, parents=True, exist_ok=True)
                # The listener's task outlives this request: its log lines are not the request's.
                with detached_from_request():
                    await self._ingest.start(stream.id, port, stream.stream_key, hls_dir)
            except Exception:
                log.exception(
                    "stream=%s could not start its listener", stream.id, extra={"stream_id": stream.id}
                )
                await self._undo_start(session, stream)
                # The cause (paths, FFmpeg's words) is in the log, not in the reply.
                raise ServiceUnavailable(
                    "Could not start the SRT listener; the server log says why"
                ) from None
        return StreamStarted(
            stream_id=stream.id,
            status=WAITING,
            port=port,
            srt_url=self._links.srt_url(stream) or "",
            hls_url=self._links.hls_url(stream.id),
            message="Stream started, waiting for connection",
            stream_key=stream.stream_key,
        )

    async def _undo_start(self, session: AsyncSession, stream: Stream) -> None:
        port = stream.port
        with contextlib.suppress(Exception):
            await self._ingest.stop(stream.id)  # whatever part of it did start
        self._live.pop(stream.id, None)
        stream.status = CREATED
        stream.port = None
        stream.started_at = None
        stream.status_reason = "the SRT listener could not start"
        await self._commit(session, stream.id)
        if port is not None:
            self._ports.release(port)
        await self._bus.publish(StreamStatusChanged(stream.id, CREATED, stream.user_id, stream.status_reason))

    async def stop_stream(
        self,
        stream_id: str,
        actor: Principal | None = None,
        reason: str | None = None,
        *,
        forwarded: bool = False,
    ) -> StreamStopped:
        """Stop a live stream: end FFmpeg gracefully, free the port, queue the recording.

        A stream ingested by another node is stopped by that node (the one with its FFmpeg and
        media, so its recording is made there, once): the command is forwarded to it.
        """
        async with self._locked(stream_id):
            async with self._sessions() as session:
                stream, username = await self._get(session, stream_id)
                if actor is not None:
                    self._require_owner(stream, actor)
                if stream.status not in LIVE_STATUSES:
                    raise Conflict(f"Stream is not live (status {stream.status})")
            owner = stream.node_id
            if owner is not None and self._nodes is not None and owner != self.node_id:
                if forwarded:  # the sender's view of the owner is stale: never bounce it on
                    raise Conflict(f"Stream is ingested by node {owner}, not by this node")
                return await self._stop_on(owner, stream_id, reason)
            await self._ingest.stop(stream_id)
            recorded = await self._mark_stopped(stream_id, reason=reason)
        message = (
            "Stream stopped, VOD processing started"
            if recorded
            else "Stream stopped; no media was received, so there is no recording"
        )
        return StreamStopped(
            stream_id=stream_id,
            status=STOPPED,
            user_id=stream.user_id,
            username=username,
            message=message,
            recording=recorded,
        )

    async def _stop_on(self, node_id: str, stream_id: str, reason: str | None) -> StreamStopped:
        """Have `node_id` stop the stream it ingests; its answer, or the error it gave."""
        assert self._nodes is not None
        try:
            status, reply = await self._nodes.forward_stop(node_id, stream_id, reason)
        except Exception as exc:  # OwnerUnreachable, with the node and the cause in its message
            log.warning("stream=%s stop on node %s failed: %s", stream_id, node_id, exc)
            raise ServiceUnavailable(f"Could not stop the stream: {exc}") from None
        finally:
            # The owner changed the row: without Redis nothing else tells this node's read cache.
            self.forget(stream_id)
        if status == 200:
            try:
                return msgspec.convert(reply, StreamStopped)
            except msgspec.ValidationError:
                pass
        message = str(reply.get("message") or f"node {node_id} answered HTTP {status}")
        log.warning("stream=%s stop on node %s answered %s: %s", stream_id, node_id, status, message)
        if status == 409:
            raise Conflict(message)
        if status == 404:
            raise NotFound(message)
        raise ServiceUnavailable(f"Could not stop the stream on node {node_id}: {message}")

    async def stop_forwarded(self, stream_id: str, token: str | None, reason: str | None) -> StreamStopped:
        """Stop a stream this node ingests, for another node that authorised the caller."""
        if self._nodes is None or not self._nodes.check_internal_token(token):
            raise Unauthorized("Internal calls need the cluster's internal token")
        return await self.stop_stream(stream_id, reason=reason, forwarded=True)

    async def stop_lost_node_streams(
        self, session: AsyncSession, node_id: str, reason: str
    ) -> Callable[[], Awaitable[None]]:
        """Mark the lost node's live streams stopped and stage their recordings in `session` (the
        registry's claim, committed by it); returns what to announce after that commit."""
        rows = (
            await session.execute(
                select(Stream, User.username)
                .join(User, User.id == Stream.user_id)
                .where(Stream.node_id == node_id, Stream.status.in_(LIVE_STATUSES))
                .with_for_update(of=Stream)
            )
        ).all()
        ended: list[tuple[Stream, str, bool]] = []
        for stream, username in rows:
            stream.status = STOPPED
            stream.stopped_at = utcnow()
            stream.port = None  # the port was the lost node's, not ours: nothing to release here
            stream.status_reason = reason
            staged = False
            if self._stage_recording is not None:
                # Its media is on the lost node's disk (or, with object storage, in the store):
                # the VOD worker restores what it finds into this node's directory.
                staged = await self._stage_recording(
                    session,
                    stream_id=stream.id,
                    user_id=stream.user_id,
                    title=stream.title,
                    media_dir=self.hls_dir(stream.id),
                )
            ended.append((stream, username, staged))

        async def announce() -> None:
            for stream, username, staged in ended:
                hls_dir = self.hls_dir(stream.id)
                self.forget(stream.id)
                log.warning("stream=%s stopped: %s", stream.id, reason, extra={"stream_id": stream.id})
                await self._bus.publish(StreamChanged(stream.id))
                await self._bus.publish(StreamStatusChanged(stream.id, STOPPED, stream.user_id, reason))
                if staged:
                    ended_event = StreamEnded(stream.id, stream.user_id, username, stream.title, hls_dir)
                    await self._bus.publish(ended_event)

        return announce

    async def drop_orphaned_ingests(self) -> None:
        """Stop the listeners this node still runs for streams the database no longer has live
        here: another node found this one lost (no heartbeat reached the database) and stopped them."""
        async with self._sessions() as session:
            live_here = set(
                (
                    await session.scalars(
                        select(Stream.id).where(
                            Stream.status.in_(LIVE_STATUSES), Stream.node_id == self.node_id
                        )
                    )
                ).all()
            )
        for stream_id, port in list(self._live.items()):
            if stream_id in live_here:
                continue
            log.warning(
                "stream=%s was stopped by another node while this one was cut off; ending its listener",
                stream_id,
                extra={"stream_id": stream_id},
            )
            try:
                await self._ingest.stop(stream_id)
            except Exception:
                log.exception(
                    "stream=%s orphaned listener did not stop", stream_id, extra={"stream_id": stream_id}
                )
            self._live.pop(stream_id, None)
            self._ports.release(port)
            self.viewers.forget(stream_id)

    async def _mark_stopped(self, stream_id: str, reason: str | None) -> bool:
        """Write the stopped state (with its recording row) and announce it; True if there is media."""
        hls_dir = self.hls_dir(stream_id)
        # Directory work on a thread: a long stream leaves thousands of segments.
        recorded = await asyncio.to_thread(_has_segments, hls_dir)
        async with self._sessions() as session:
            stream, username = await self._get(session, stream_id)
            port = stream.port
            stream.status = STOPPED
            stream.stopped_at = utcnow()
            stream.port = None
            stream.status_reason = reason
            if recorded and self._stage_recording is not None:
                await self._stage_recording(
                    session,
                    stream_id=stream_id,
                    user_id=stream.user_id,
                    title=stream.title,
                    media_dir=hls_dir,
                )
            await self._commit(session, stream_id)
        if port is not None:
            self._ports.release(port)
        self._live.pop(stream_id, None)
        self.viewers.forget(stream_id)
        log.info(
            "stream=%s stopped%s", stream_id, f" ({reason})" if reason else "", extra={"stream_id": stream_id}
        )
        await self._bus.publish(StreamStatusChanged(stream_id, STOPPED, stream.user_id, reason))
        if recorded:
            await self._bus.publish(StreamEnded(stream_id, stream.user_id, username, stream.title, hls_dir))
        else:
            await asyncio.to_thread(shutil.rmtree, hls_dir, ignore_errors=True)
        return recorded

    async def rotate_key(self, stream_id: str, actor: Principal) -> KeyRotated:
        """Give the stream a new SRT passphrase (not while it is live)."""
        async with self._locked(stream_id), self._sessions() as session:
            stream, _ = await self._get(session, stream_id)
            self._require_owner(stream, actor)
            if stream.status in LIVE_STATUSES:
                raise Conflict("Stop the stream before rotating its key")
            stream.stream_key = new_stream_key()
            await self._commit(session, stream_id)
        log.info("stream=%s key rotated", stream_id, extra={"stream_id": stream_id})
        return KeyRotated(stream_id=stream_id, stream_key=stream.stream_key, message="Stream key rotated")

    async def delete_stream(self, stream_id: str, actor: Principal) -> StreamDeleted:
        """Delete a stream (stopping it first if live); its recording stays."""
        async with self._sessions() as session:
            stream, _ = await self._get(session, stream_id)
            self._require_owner(stream, actor)
            live = stream.status in LIVE_STATUSES
        if live:
            with contextlib.suppress(Conflict):  # it stopped on its own meanwhile
                await self.stop_stream(stream_id, actor, reason="stream deleted")
        async with self._locked(stream_id), self._sessions() as session:
            stream, _ = await self._get(session, stream_id)
            await session.delete(stream)
            await self._commit(session, stream_id)
        log.info("stream=%s deleted by user_id=%s", stream_id, actor.id, extra={"stream_id": stream_id})
        return StreamDeleted(message="Stream deleted successfully", stream_id=stream_id)

    # --- ingest events ------------------------------------------------------------------------

    async def _set_live_status(self, stream_id: str, status: str, reason: str | None) -> None:
        async with self._sessions() as session:
            stream = await session.get(Stream, stream_id)
            if stream is None or stream.status not in LIVE_STATUSES or stream.status == status:
                return
            stream.status = status
            stream.status_reason = reason
            await self._commit(session, stream_id)
            user_id = stream.user_id
        log.info(
            "stream=%s is %s%s",
            stream_id,
            status,
            f" ({reason})" if reason else "",
            extra={"stream_id": stream_id},
        )
        await self._bus.publish(StreamStatusChanged(stream_id, status, user_id, reason))

    async def _on_connected(self, event: PublisherConnected) -> None:
        await self._set_live_status(event.stream_id, ACTIVE, None)

    async def _on_disconnected(self, event: PublisherDisconnected) -> None:
        await self._set_live_status(event.stream_id, WAITING, f"publisher disconnected: {event.reason}")

    def _on_gave_up(self, event: IngestGaveUp) -> None:
        # The supervisor publishes this from the task that stop() waits for, so the stop runs
        # in a task of our own instead of inside the handler.
        if self._tasks is None or self._closing:
            return
        self._tasks.create_task(
            self._auto_stop(event.stream_id, event.reason), name=f"auto-stop-{event.stream_id}"
        )

    async def _auto_stop(self, stream_id: str, reason: str) -> None:
        try:
            await self.stop_stream(stream_id, reason=reason)
        except (Conflict, NotFound):
            pass
        except Exception:
            log.exception("stream=%s auto-stop failed", stream_id, extra={"stream_id": stream_id})

    # --- viewers -------------------------------------------------------------------------------

    def live_hls_info(self, stream_id: str) -> dict[str, Any] | None:
        """The live LL-HLS window of the stream for /stream/{id}/status (None if not live)."""
        store = getattr(self._ingest, "live_store", None)
        live = store.get(stream_id) if store is not None else None
        info: dict[str, Any] | None = live.info() if live is not None else None
        return info

    def touch_viewer(self, stream_id: str, client_key: str) -> None:
        """An HLS client fetched the playlist or a segment of the stream (counted while it is live)."""
        if stream_id in self._live:
            self.viewers.touch(stream_id, client_key)

    async def _push_viewer_counts(self) -> None:
        # Viewer counts change with every fetch; announcing them on a fixed beat keeps the
        # event rate per stream at one per interval however many viewers there are.
        while True:
            await asyncio.sleep(self._viewer_push_interval)
            counts = self.viewers.counts()
            for stream_id in set(counts) | set(self._last_counts):
                count = counts.get(stream_id, 0)
                if self._last_counts.get(stream_id, 0) != count:
                    await self._bus.publish(ViewerCountChanged(stream_id, count))
            self._last_counts = {k: v for k, v in counts.items() if v}

    async def owner_ingest_status(self, stream_id: str) -> IngestStatusOut | None:
        """/stream/{id}/status as the other node ingesting the stream answers it (it alone knows
        its FFmpeg); None when this node ingests it, nobody does, or the owner does not answer."""
        if self._nodes is None:
            return None
        reply = await self._nodes.owner_ingest_status(stream_id)
        if reply is None:
            return None
        try:
            return msgspec.convert(reply, IngestStatusOut)
        except msgspec.ValidationError:
            return None

    def ingest_status(self, stream_id: str) -> IngestStatusLike | None:
        """What the supervisor knows of the stream's FFmpeg child (None when not supervised)."""
        return self._ingest.status(stream_id)

    async def hls_files_count(self, stream_id: str) -> int:
        """Segment files of the stream on disk (counted on a thread, recounted only on change).

        Asked on a thread at most every FILE_COUNT_SECONDS per stream: one thread hop per status
        poll was most of the poll's CPU and its p99 under load (bench/api.py).
        """

        async def count() -> int:
            return await asyncio.to_thread(self._segment_counter.count, self.hls_dir(stream_id))

        return await self._file_counts.get_or_load(stream_id, count) or 0


class SegmentCounter:
    """Counts `segment_*.ts` in HLS directories, listing one again only when it changed.

    A status poll must not list thousands of segments each time: the directory's mtime changes
    with every file FFmpeg adds, renames or removes, so an unchanged mtime means an unchanged
    count. Entries are also recounted after `max_age` seconds, for file systems whose
    timestamps are too coarse to tell two quick changes apart.
    """

    def __init__(self, max_age: float = 1.0, max_entries: int = 1024) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[int, float, int]] = {}  # dir -> (mtime_ns, counted at, count)

    def count(self, hls_dir: Path) -> int:
        """The number of segment files in `hls_dir` (0 if it does not exist). Blocking."""
        try:
            mtime = hls_dir.stat().st_mtime_ns
        except OSError:
            with self._lock:
                self._cache.pop(hls_dir, None)
            return 0
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(hls_dir)
        if cached is not None and cached[0] == mtime and now - cached[1] < self.max_age:
            return cached[2]
        try:
            with os.scandir(hls_dir) as entries:
                count = sum(1 for e in entries if _is_segment_file(e.name))
        except OSError:
            return 0
        with self._lock:
            if hls_dir not in self._cache and len(self._cache) >= self.max_entries:
                del self._cache[next(iter(self._cache))]
            self._cache[hls_dir] = (mtime, now, count)
        return count


def _is_segment_file(name: str) -> bool:
    """MPEG-TS segments of old recordings (segment_N.ts) and fMP4 segments (seg_R_N.m4s)."""
    return (name.startswith("segment_") and name.endswith(".ts")) or (
        name.startswith("seg_") and name.endswith(".m4s")
    )


def _has_segments(hls_dir: Path) -> bool:
    try:
        return any(p.stat().st_size > 0 for p in hls_dir.iterdir() if _is_segment_file(p.name))
    except OSError:
        return False
