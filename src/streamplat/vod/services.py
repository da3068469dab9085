"""Recordings: every ended stream becomes a seekable MP4 + thumbnail, and none is lost.

The row exists, status "processing", as soon as the stream stops: StreamService adds it through
`stage_recording` in the transaction that marks the stream stopped, so no crash and no failing
event handler can leave a stopped stream without its recording. A fixed number of workers run packaging jobs
from a queue; a job interrupted by a crash or shutdown is still "processing" in the database
and is queued again at start-up. A failed job keeps its source so it can be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from types import TracebackType

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from streamplat.auth import Principal, User
from streamplat.db import isoformat
from streamplat.errors import Conflict, Forbidden, NotFound
from streamplat.events import EventBus, RecordingFailed, RecordingReady, StreamEnded
from streamplat.logs import stream_context
from streamplat.vod.models import FAILED, PROCESSING, READY, Recording
from streamplat.vod.packaging import PackagingError, package_recording
from streamplat.vod.schemas import Pagination, RecordingDeleted, RecordingList, RecordingOut, RetryStarted

log = logging.getLogger(__name__)

_STOP = ""  # queue sentinel: a worker that takes it exits


def web_path(stream_id: str, name: str) -> str:
    """The URL path under which the VOD port serves a recording's file."""
    return f"/recordings/vod/{stream_id}/{name}"


class RecordingService:
    """Recording rows, the packaging queue and its workers. Enter it (async with) to run workers."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: EventBus,
        ffmpeg: str,
        recordings_root: Path,
        workers: int = 2,
        job_timeout_seconds: float = 3600.0,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self._ffmpeg = ffmpeg
        self._vod_root = recordings_root / "vod"
        self._workers = workers
        self._job_timeout = job_timeout_seconds
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._draining = False

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> RecordingService:
        self._vod_root.mkdir(parents=True, exist_ok=True)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        for n in range(self._workers):
            self._tasks.create_task(self._worker(n), name=f"vod-worker-{n}")
        self._bus.subscribe(StreamEnded, self._on_stream_ended)
        await self._resume()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bus.unsubscribe(StreamEnded, self._on_stream_ended)
        # Jobs in progress are cancelled (their FFmpeg is killed and temp files removed); their
        # rows stay "processing" and are resumed at the next start, so nothing is lost.
        self._draining = True
        for _ in range(self._workers):
            self._queue.put_nowait(_STOP)
        for job in list(self._running.values()):
            job.cancel()
        assert self._tasks is not None
        await self._tasks.__aexit__(None, None, None)

    async def _resume(self) -> None:
        async with self._sessions() as session:
            pending = (
                await session.scalars(select(Recording.stream_id).where(Recording.status == PROCESSING))
            ).all()
        for stream_id in pending:
            log.info("stream=%s recording resumes after a restart", stream_id, extra={"stream_id": stream_id})
            self._enqueue(stream_id)

    def _enqueue(self, stream_id: str) -> None:
        if stream_id not in self._queued:
            self._queued.add(stream_id)
            self._queue.put_nowait(stream_id)

    # --- the pipeline ---------------------------------------------------------------------------

    async def stage_recording(
        self, session: AsyncSession, *, stream_id: str, user_id: int, title: str, media_dir: Path
    ) -> bool:
        """Add the "processing" row of an ended stream to the caller's transaction (not committed).

        The composition root hands this to StreamService, which calls it in the very
        transaction that marks the stream stopped: the stream cannot be "stopped" without its
        recording row, whatever crashes in between. False if the stream already has a recording.
        """
        existing = await session.scalar(select(Recording.id).where(Recording.stream_id == stream_id))
        if existing is not None:
            return False
        session.add(
            Recording(
                stream_id=stream_id,
                user_id=user_id,
                title=title,
                status=PROCESSING,
                media_dir=str(media_dir),
                attempts=0,
            )
        )
        return True

    def _on_stream_ended(self, event: StreamEnded) -> None:
        # The row was committed with the stop; this only wakes a worker (the row alone would
        # be found at the next start-up anyway).
        log.info("stream=%s recording queued", event.stream_id, extra={"stream_id": event.stream_id})
        self._enqueue(event.stream_id)

    async def _worker(self, n: int) -> None:
        while True:
            stream_id = await self._queue.get()
            if stream_id == _STOP:
                return
            self._queued.discard(stream_id)
            # The job runs as its own task so deleting the recording can cancel just the job; it
            # belongs to the task group, so shutdown awaits it like everything else we start.
            assert self._tasks is not None
            job = self._tasks.create_task(self._process(stream_id), name=f"vod-job-{stream_id}")
            self._running[stream_id] = job
            try:
                await job
            except asyncio.CancelledError:
                if self._draining:
                    return
            finally:
                self._running.pop(stream_id, None)

    async def _process(self, stream_id: str) -> None:
        # packaging.py names the stream only in its message text; the context adds the field.
        with stream_context(stream_id):
            try:
                await self._package(stream_id)
            except Exception as exc:
                # Not a packaging failure but a bug or an environment problem (a file where the
                # output folder belongs, the database gone): the row must not stay "processing"
                # for ever, and an exception here would tear down the whole task group.
                log.exception("stream=%s recording job crashed", stream_id, extra={"stream_id": stream_id})
                with contextlib.suppress(Exception):
                    await self._fail(
                        stream_id, f"internal error while packaging ({type(exc).__name__})", None
                    )

    async def _package(self, stream_id: str) -> None:
        async with self._sessions() as session:
            rec = await session.scalar(select(Recording).where(Recording.stream_id == stream_id))
            if rec is None or rec.status != PROCESSING:
                return
            rec.attempts += 1
            await session.commit()
            media_dir, user_id = Path(rec.media_dir), rec.user_id
        out_dir = self._vod_root / stream_id
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "stream=%s packaging recording from %s", stream_id, media_dir, extra={"stream_id": stream_id}
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await package_recording(
                self._ffmpeg, media_dir, out_dir, timeout_seconds=self._job_timeout, stream_id=stream_id
            )
        except PackagingError as exc:
            await self._fail(stream_id, exc.reason, loop.time() - started)
            return
        async with self._sessions() as session:
            rec = await session.scalar(select(Recording).where(Recording.stream_id == stream_id))
            if rec is None:  # deleted while it was being processed
                await asyncio.to_thread(_remove_trees, out_dir, media_dir)
                return
            rec.status = READY
            rec.duration_seconds = result.duration_seconds
            rec.file_size_bytes = result.file_size_bytes
            rec.width = result.width
            rec.height = result.height
            rec.error = None
            await session.commit()
        # The MP4 now holds every segment: the live copy is no longer needed.
        await asyncio.to_thread(_remove_trees, media_dir)
        elapsed = loop.time() - started
        log.info(
            "stream=%s recording ready: %.1f s, %d bytes, packaged in %.2f s",
            stream_id,
            result.duration_seconds,
            result.file_size_bytes,
            elapsed,
            extra={"stream_id": stream_id},
        )
        await self._bus.publish(
            RecordingReady(
                stream_id,
                user_id,
                result.duration_seconds,
                web_path(stream_id, "video.mp4"),
                web_path(stream_id, "thumbnail.jpg"),
                processing_seconds=elapsed,
            )
        )

    async def _fail(self, stream_id: str, reason: str, processing_seconds: float | None) -> None:
        async with self._sessions() as session:
            rec = await session.scalar(select(Recording).where(Recording.stream_id == stream_id))
            if rec is None or rec.status != PROCESSING:  # deleted, or a crash after it was ready
                return
            rec.status = FAILED
            rec.error = reason
            user_id = rec.user_id
            await session.commit()
        log.error("stream=%s recording failed: %s", stream_id, reason, extra={"stream_id": stream_id})
        await self._bus.publish(RecordingFailed(stream_id, user_id, reason, processing_seconds))

    # --- queries and commands --------------------------------------------------------------------

    async def _get(self, session: AsyncSession, stream_id: str) -> tuple[Recording, str]:
        row = (
            await session.execute(
                select(Recording, User.username)
                .join(User, User.id == Recording.user_id)
                .where(Recording.stream_id == stream_id)
            )
        ).first()
        if row is None:
            raise NotFound("Recording not found")
        return row[0], row[1]

    @staticmethod
    def _out(rec: Recording, username: str) -> RecordingOut:
        return RecordingOut(
            id=rec.id,
            stream_id=rec.stream_id,
            user_id=rec.user_id,
            username=username,
            title=rec.title,
            duration_seconds=round(rec.duration_seconds) if rec.duration_seconds is not None else None,
            file_path=web_path(rec.stream_id, "video.mp4"),
            thumbnail_path=web_path(rec.stream_id, "thumbnail.jpg"),
            file_size_bytes=rec.file_size_bytes,
            status=rec.status,
            created_at=isoformat(rec.created_at) or "",
            updated_at=isoformat(rec.updated_at) or "",
            width=rec.width,
            height=rec.height,
            error=rec.error,
        )

    async def get_recording(self, stream_id: str) -> RecordingOut:
        """One recording by its stream id."""
        async with self._sessions() as session:
            rec, username = await self._get(session, stream_id)
        return self._out(rec, username)

    async def list_recordings(
        self, *, user_id: int | None, status: str | None, limit: int, offset: int
    ) -> RecordingList:
        """A page of recordings, newest first."""
        query = select(Recording, User.username).join(User, User.id == Recording.user_id)
        count = select(func.count(Recording.id))
        if user_id is not None:
            query, count = (
                query.where(Recording.user_id == user_id),
                count.where(Recording.user_id == user_id),
            )
        if status is not None:
            query, count = query.where(Recording.status == status), count.where(Recording.status == status)
        async with self._sessions() as session:
            total = await session.scalar(count) or 0
            rows = (
                await session.execute(
                    query.order_by(Recording.created_at.desc(), Recording.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
        return RecordingList(
            recordings=[self._out(rec, username) for rec, username in rows],
            total=total,
            pagination=Pagination(limit=limit, offset=offset, has_more=offset + len(rows) < total),
        )

    async def media_file(self, stream_id: str, name: str) -> Path:
        """The path of a ready recording's video.mp4 or thumbnail.jpg (409 while not ready)."""
        async with self._sessions() as session:
            rec, _ = await self._get(session, stream_id)
        if rec.status == PROCESSING:
            raise Conflict("Recording is still processing; try again shortly")
        if rec.status == FAILED:
            raise Conflict(f"Recording failed: {rec.error}")
        path = self._vod_root / stream_id / name
        if not path.is_file():
            raise NotFound("Recording file not found")
        return path

    async def delete_recording(self, stream_id: str, actor: Principal) -> RecordingDeleted:
        """Delete a recording and its files (owner or admin)."""
        async with self._sessions() as session:
            rec, _ = await self._get(session, stream_id)
            if rec.user_id != actor.id and not actor.is_admin:
                raise Forbidden("Only the recording's owner or an admin can delete it")
            media_dir = Path(rec.media_dir)
            await session.delete(rec)
            await session.commit()
        job = self._running.get(stream_id)
        if job is not None:
            job.cancel()
        await asyncio.to_thread(_remove_trees, self._vod_root / stream_id, media_dir)
        log.info(
            "stream=%s recording deleted by user_id=%s", stream_id, actor.id, extra={"stream_id": stream_id}
        )
        return RecordingDeleted(message="Recording deleted successfully", stream_id=stream_id)

    async def retry(self, stream_id: str, actor: Principal) -> RetryStarted:
        """Run a failed (or stuck processing) recording's packaging again (owner or admin)."""
        async with self._sessions() as session:
            rec, _ = await self._get(session, stream_id)
            if rec.user_id != actor.id and not actor.is_admin:
                raise Forbidden("Only the recording's owner or an admin can retry it")
            # A "processing" row that no worker holds or waits for is stuck (whatever left it so):
            # retrying it is the way out, not a 409.
            busy = stream_id in self._running or stream_id in self._queued
            if rec.status == READY or (rec.status == PROCESSING and busy):
                raise Conflict(f"Only failed recordings can be retried (status {rec.status})")
            rec.status = PROCESSING
            rec.error = None
            await session.commit()
        self._enqueue(stream_id)
        log.info("stream=%s recording retry queued", stream_id, extra={"stream_id": stream_id})
        return RetryStarted(message="Recording processing restarted", stream_id=stream_id, status=PROCESSING)


def _remove_trees(*paths: Path) -> None:
    """Delete folders and everything in them, missing ones included (blocking: run on a thread)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
