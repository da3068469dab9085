"""Recordings: every ended stream becomes a seekable MP4 + thumbnail, and none is lost.

The row exists, status "processing", as soon as the stream stops: StreamService adds it through
`stage_recording` in the transaction that marks the stream stopped, so no crash and no failing
event handler can leave a stopped stream without its recording. A fixed number of workers run packaging jobs
from a queue; a job interrupted by a crash or shutdown is still "processing" in the database
and is queued again at start-up. A failed job keeps its source so it can be retried.

With an object store configured, a packaged recording is uploaded before it becomes "ready":
the local files go only once the store has confirmed both objects. While the store cannot be
reached the recording stays "processing" with the reason in `status_reason`, and the upload is
retried with a doubling backoff (object_storage.upload_attempts times, then "failed"; a retry
uploads the files already packaged, without packaging again). A restart resumes the upload too.

Live media (streamplat.hls.offload): with a store, a job first fetches from it the stream's live
files its media dir lacks, so a recording whose ingesting node died is packaged here from the
store. Once the recording is ready, and when it is deleted, the stream's live objects go (and
at start, those of every ready recording: a shutdown right after "ready" may have left some).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from types import TracebackType
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from streamplat.auth import Principal, User
from streamplat.db import fetch_page, isoformat
from streamplat.errors import Conflict, Forbidden, NotFound, ServiceUnavailable
from streamplat.events import EventBus, RecordingFailed, RecordingReady, StreamChanged, StreamEnded
from streamplat.logs import stream_context
from streamplat.readcache import ReadCache, cached_row
from streamplat.vod.models import FAILED, LOCAL, OBJECT_STORAGE, PROCESSING, READY, Recording
from streamplat.vod.objectstore import (
    ObjectStorageError,
    ObjectStore,
    StoredObject,
    backoff_seconds,
    restore_live_media,
)
from streamplat.vod.packaging import PackagedRecording, PackagingError, has_media, package_recording
from streamplat.vod.schemas import Pagination, RecordingDeleted, RecordingList, RecordingOut, RetryStarted

log = logging.getLogger(__name__)

_STOP = ""  # queue sentinel: a worker that takes it exits
# The files of a recording, with the content type they are stored and served with.
FILES = {"video.mp4": "video/mp4", "thumbnail.jpg": "image/jpeg"}


class LiveUploads(Protocol):
    """The live uploads of streams (streamplat.hls.offload.LiveOffload), as recordings use them."""

    async def discard(self, stream_id: str) -> None:
        """Stop the stream's uploads; none lands after this returns."""


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
        store: ObjectStore | None = None,
        live_uploads: LiveUploads | None = None,
        read_cache_seconds: float = 0.0,
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
        self._store = store
        self._live_uploads = live_uploads
        self._upload_problem: str | None = None
        self._backing_off: dict[str, asyncio.Event] = {}  # uploads waiting to try again; set = now
        # Rows and list pages (their answers) read per request (a recording, the library, each file request),
        # kept for a moment (readcache.py). Every change here goes through _commit; a stopped
        # stream's new row (written in the stream's transaction) and changes made elsewhere
        # arrive as events (forget).
        self._rows: ReadCache[str, tuple[Recording, str]] = ReadCache(read_cache_seconds)
        self._pages: ReadCache[tuple[object, ...], RecordingList] = ReadCache(
            read_cache_seconds, max_entries=1_000
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> RecordingService:
        self._vod_root.mkdir(parents=True, exist_ok=True)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        for n in range(self._workers):
            self._tasks.create_task(self._worker(n), name=f"vod-worker-{n}")
        self._bus.subscribe(StreamEnded, self._on_stream_ended)
        self._bus.subscribe(StreamChanged, self._on_stream_changed)
        await self._resume()
        if self._store is not None:
            self._tasks.create_task(self._sweep_live(), name="vod-live-sweep")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bus.unsubscribe(StreamEnded, self._on_stream_ended)
        self._bus.unsubscribe(StreamChanged, self._on_stream_changed)
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

    async def _sweep_live(self) -> None:
        """Delete the live objects of recordings already ready (a shutdown or a store outage
        right after "ready" left them); one listing at start, in the background.

        Only ready recordings' objects go: a stream live on another node has live objects and
        no ready recording, and a processing or failed recording still needs its own.
        """
        assert self._store is not None
        prefix = self._store.settings.live_prefix
        try:
            listed = await asyncio.to_thread(self._store.list_sync, prefix)
        except ObjectStorageError as exc:
            log.warning("left-over live objects not checked: %s", exc.reason)
            return
        stream_ids = sorted({key[len(prefix) :].split("/", 1)[0] for key in listed})
        ready: list[str] = []
        async with self._sessions() as session:
            for start in range(0, len(stream_ids), 500):  # bounded IN lists
                batch = stream_ids[start : start + 500]
                ready += await session.scalars(
                    select(Recording.stream_id).where(
                        Recording.stream_id.in_(batch), Recording.status == READY
                    )
                )
        for stream_id in ready:
            if stream_id not in self._running:
                await self._drop_live(stream_id, required=False)

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

    def _on_stream_changed(self, event: StreamChanged) -> None:
        # A stop commits the recording's row with the stream's: published after that commit.
        self.forget(event.stream_id)

    def forget(self, stream_id: str) -> None:
        """The stream's recording changed, appeared or went: forget it, and every list page."""
        self._rows.invalidate(stream_id)
        self._pages.clear()

    async def _commit(self, session: AsyncSession, stream_id: str) -> None:
        try:
            await session.commit()
        finally:
            self.forget(stream_id)

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
            await self._commit(session, stream_id)
            media_dir, user_id = Path(rec.media_dir), rec.user_id
            out_dir = self._vod_root / stream_id
            packaged = _already_packaged(rec, out_dir) if self._store is not None else None
        out_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        if packaged is not None:
            # Packaged before a restart, an upload failure or a retry: only the upload is left.
            result = packaged
            log.info("stream=%s recording already packaged", stream_id, extra={"stream_id": stream_id})
        else:
            if self._store is not None and not await self._restore(stream_id, media_dir):
                return
            log.info(
                "stream=%s packaging recording from %s", stream_id, media_dir, extra={"stream_id": stream_id}
            )
            try:
                result = await package_recording(
                    self._ffmpeg, media_dir, out_dir, timeout_seconds=self._job_timeout, stream_id=stream_id
                )
            except PackagingError as exc:
                await self._fail(stream_id, exc.reason, loop.time() - started)
                return
        if self._store is not None:
            if packaged is None and not await self._update(
                stream_id, result, status_reason="uploading to object storage"
            ):
                await asyncio.to_thread(_remove_trees, out_dir, media_dir)  # deleted meanwhile
                return
            if not await self._upload(stream_id, out_dir, loop.time() - started):
                return
        if not await self._update(stream_id, result, status=READY):
            # Deleted while it was being processed.
            await asyncio.to_thread(_remove_trees, out_dir, media_dir)
            if self._store is not None:
                with contextlib.suppress(ObjectStorageError):
                    await self._store.delete([self._store.key(stream_id, name) for name in FILES])
                await self._drop_live(stream_id, required=False)
            return
        # The MP4 now holds every segment (and, with a store, both objects are confirmed there):
        # the live copies (on disk and in the store), and the local one, are no longer needed.
        await asyncio.to_thread(_remove_trees, media_dir, *([out_dir] if self._store is not None else []))
        elapsed = loop.time() - started
        log.info(
            "stream=%s recording ready: %.1f s, %d bytes, %s in %.2f s",
            stream_id,
            result.duration_seconds,
            result.file_size_bytes,
            "packaged and stored" if self._store is not None else "packaged",
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
        if self._store is not None:
            # After the event: a slow or vanished store must not delay "ready" for anyone.
            await self._drop_live(stream_id, required=False)

    async def _restore(self, stream_id: str, media_dir: Path) -> bool:
        """Fetch the stream's live files the media dir lacks from the store (its node may have
        died); False if the recording failed or was deleted meanwhile.

        With media on disk, a store that cannot be listed costs only a warning (this node
        recorded the stream: what it has is what there is). Without any, the job waits for the
        store like an upload does, then fails as "no media" if the store has none either.
        """
        assert self._store is not None
        store, s = self._store, self._store.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                restored = await restore_live_media(store, stream_id, media_dir)
            except ObjectStorageError as exc:
                if await asyncio.to_thread(has_media, media_dir):
                    log.warning(
                        "stream=%s cannot look for live files in object storage (%s): packaging the disk's",
                        stream_id,
                        exc.reason,
                        extra={"stream_id": stream_id},
                    )
                    return True
                if attempt >= s.upload_attempts:
                    await self._fail(
                        stream_id,
                        f"no media on disk, and object storage could not be read after {attempt} "
                        f"attempts: {exc.reason}",
                        None,
                    )
                    return False
                if not await self._back_off(stream_id, attempt, exc):
                    return False
                continue
            if restored:
                await self._set_reason(
                    stream_id, f"packaging ({restored} live files restored from object storage)"
                )
            return True

    async def _drop_live(self, stream_id: str, *, required: bool) -> None:
        """Stop the stream's live uploads and delete its live objects (ServiceUnavailable if
        `required` and the store refuses; else a warning, and the recording's delete retries it)."""
        assert self._store is not None
        if self._live_uploads is not None:
            await self._live_uploads.discard(stream_id)
        try:
            count = await self._store.delete_prefix(self._store.live_prefix(stream_id))
        except ObjectStorageError as exc:
            if required:
                raise ServiceUnavailable(
                    f"Recording not deleted: {exc.reason}; try again later", retry_after=30
                ) from None
            log.warning(
                "stream=%s live objects not deleted: %s",
                stream_id,
                exc.reason,
                extra={"stream_id": stream_id},
            )
            return
        if count:
            log.info("stream=%s deleted %d live objects", stream_id, count, extra={"stream_id": stream_id})

    async def _update(
        self,
        stream_id: str,
        result: PackagedRecording,
        *,
        status: str = PROCESSING,
        status_reason: str | None = None,
    ) -> bool:
        """Save a packaged recording's facts (and the new status); False if the row is gone."""
        async with self._sessions() as session:
            rec = await session.scalar(select(Recording).where(Recording.stream_id == stream_id))
            if rec is None:
                return False
            rec.status = status
            rec.duration_seconds = result.duration_seconds
            rec.file_size_bytes = result.file_size_bytes
            rec.width = result.width
            rec.height = result.height
            rec.error = None
            rec.status_reason = status_reason
            if status == READY:
                rec.storage = OBJECT_STORAGE if self._store is not None else LOCAL
            await self._commit(session, stream_id)
        return True

    async def _upload(self, stream_id: str, out_dir: Path, processing_seconds: float) -> bool:
        """Upload both files, retrying with backoff; False if it gave up (recording failed) or was deleted."""
        assert self._store is not None
        store, s = self._store, self._store.settings
        attempt = 0
        while True:
            attempt += 1
            # Both files at once: the thumbnail's round trips hide behind the video's upload.
            results = await asyncio.gather(
                *(
                    store.upload(out_dir / name, store.key(stream_id, name), ctype)
                    for name, ctype in FILES.items()
                ),
                return_exceptions=True,
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                self._upload_problem = None
                for stored in results:
                    assert isinstance(stored, StoredObject)
                    log.info(
                        "stream=%s stored %s (%d bytes, ETag %s) in %s",
                        stream_id,
                        stored.key,
                        stored.size,
                        stored.etag,
                        store.where,
                        extra={"stream_id": stream_id},
                    )
                return True
            exc = failures[0]
            if not isinstance(exc, ObjectStorageError):
                raise exc  # not the store's doing (the local file unreadable): the job crashed
            self._upload_problem = f"recordings wait for object storage: {exc.reason}"
            if attempt >= s.upload_attempts:
                await self._fail(
                    stream_id,
                    f"upload to object storage failed after {attempt} attempts: {exc.reason}; "
                    "the packaged files are kept for a retry",
                    processing_seconds,
                )
                return False
            if not await self._back_off(stream_id, attempt, exc):
                return False

    async def _back_off(self, stream_id: str, attempt: int, exc: ObjectStorageError) -> bool:
        """Say why the job waits for the store, and wait (doubling); False if the row is gone."""
        assert self._store is not None
        s = self._store.settings
        delay = backoff_seconds(attempt, s.retry_base_seconds, s.retry_max_seconds)
        reason = (
            f"waiting for object storage: {exc.reason} "
            f"(attempt {attempt} of {s.upload_attempts}; next in {delay:.0f} s)"
        )
        log.warning("stream=%s %s", stream_id, reason, extra={"stream_id": stream_id})
        if not await self._set_reason(stream_id, reason):
            return False
        wake = self._backing_off[stream_id] = asyncio.Event()
        try:
            # POST .../retry sets it: "the store is back, try now".
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
        finally:
            del self._backing_off[stream_id]
        return True

    async def _set_reason(self, stream_id: str, reason: str) -> bool:
        async with self._sessions() as session:
            rec = await session.scalar(select(Recording).where(Recording.stream_id == stream_id))
            if rec is None or rec.status != PROCESSING:
                return False
            rec.status_reason = reason
            await self._commit(session, stream_id)
        return True

    async def _fail(self, stream_id: str, reason: str, processing_seconds: float | None) -> None:
        async with self._sessions() as session:
            rec = await session.scalar(select(Recording).where(Recording.stream_id == stream_id))
            if rec is None or rec.status != PROCESSING:  # deleted, or a crash after it was ready
                return
            rec.status = FAILED
            rec.error = reason
            rec.status_reason = None
            user_id = rec.user_id
            await self._commit(session, stream_id)
        log.error("stream=%s recording failed: %s", stream_id, reason, extra={"stream_id": stream_id})
        await self._bus.publish(RecordingFailed(stream_id, user_id, reason, processing_seconds))

    @property
    def upload_problem(self) -> str | None:
        """Why the last upload to object storage failed, until one succeeds (for /health); else None."""
        return self._upload_problem

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
            status_reason=rec.status_reason,
            storage="object_storage" if rec.storage == OBJECT_STORAGE else "local",
        )

    async def _read(self, stream_id: str) -> tuple[Recording, str]:
        """The recording's row and owner's name for reading (never written to), cached briefly."""
        return await cached_row(self._rows, self._sessions, self._get, stream_id)

    async def get_recording(self, stream_id: str) -> RecordingOut:
        """One recording by its stream id."""
        rec, username = await self._read(stream_id)
        return self._out(rec, username)

    async def list_recordings(
        self, *, user_id: int | None, status: str | None, limit: int, offset: int
    ) -> RecordingList:
        """A page of recordings, newest first."""

        async def load() -> RecordingList:
            conditions = [] if user_id is None else [Recording.user_id == user_id]
            if status is not None:
                conditions.append(Recording.status == status)
            query = (
                select(Recording, User.username)
                .join(User, User.id == Recording.user_id)
                .where(*conditions)
                .order_by(Recording.created_at.desc(), Recording.id.desc())
            )
            count = select(func.count(Recording.id)).where(*conditions)
            async with self._sessions() as session:
                rows, total = await fetch_page(session, query, count, limit, offset)
            return RecordingList(
                recordings=[self._out(rec, username) for rec, username in rows],
                total=total,
                pagination=Pagination(limit=limit, offset=offset, has_more=offset + len(rows) < total),
            )

        return await self._pages.get_or_read((user_id, status, limit, offset), load)

    async def media_file(self, stream_id: str, name: str, *, head: bool = False) -> Path | str:
        """Where a ready recording's video.mp4 or thumbnail.jpg is (409 while not ready).

        A path on the local disk, or a presigned URL of the object (for HEAD when `head`: the
        signature covers the method) for recordings kept in object storage.
        """
        rec, _ = await self._read(stream_id)
        if rec.status == PROCESSING:
            raise Conflict("Recording is still processing; try again shortly")
        if rec.status == FAILED:
            raise Conflict(f"Recording failed: {rec.error}")
        if rec.storage == OBJECT_STORAGE:
            if self._store is None:
                raise ServiceUnavailable(
                    "Recording is kept in object storage, which is not configured on this server"
                )
            return await self._store.presigned_url(self._store.key(stream_id, name), head=head)
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
        job = self._running.get(stream_id)
        if job is not None:
            # Its upload threads finish before the job ends: no object lands after the delete.
            job.cancel()
            await asyncio.wait({job})
        async with self._sessions() as session:
            rec, _ = await self._get(session, stream_id)
            media_dir = Path(rec.media_dir)
            if self._store is not None:
                await self._delete_objects(stream_id, required=rec.storage == OBJECT_STORAGE)
            elif rec.storage == OBJECT_STORAGE:
                raise ServiceUnavailable(
                    "Recording is kept in object storage, which is not configured on this server"
                )
            await session.delete(rec)
            await self._commit(session, stream_id)
        await asyncio.to_thread(_remove_trees, self._vod_root / stream_id, media_dir)
        log.info(
            "stream=%s recording deleted by user_id=%s", stream_id, actor.id, extra={"stream_id": stream_id}
        )
        return RecordingDeleted(message="Recording deleted successfully", stream_id=stream_id)

    async def _delete_objects(self, stream_id: str, *, required: bool) -> None:
        assert self._store is not None
        await self._drop_live(stream_id, required=required)  # left there if the store refused once
        try:
            await self._store.delete([self._store.key(stream_id, name) for name in FILES])
        except ObjectStorageError as exc:
            if required:
                # The row stays, so the objects are not orphaned: the delete can be repeated.
                raise ServiceUnavailable(
                    f"Recording not deleted: {exc.reason}; try again later", retry_after=30
                ) from None
            # A recording never confirmed in the store may have left a partial upload; nothing
            # else refers to it.
            log.warning("stream=%s %s", stream_id, exc.reason, extra={"stream_id": stream_id})

    async def retry(self, stream_id: str, actor: Principal) -> RetryStarted:
        """Run a failed (or stuck processing) recording's packaging again (owner or admin)."""
        async with self._sessions() as session:
            rec, _ = await self._get(session, stream_id)
            if rec.user_id != actor.id and not actor.is_admin:
                raise Forbidden("Only the recording's owner or an admin can retry it")
            # A "processing" row that no worker holds or waits for is stuck (whatever left it so):
            # retrying it is the way out, not a 409.
            busy = stream_id in self._running or stream_id in self._queued
            waiting = self._backing_off.get(stream_id)
            if rec.status == PROCESSING and waiting is not None:
                # An upload waiting for the store to come back: try again now, not after the backoff.
                waiting.set()
                log.info("stream=%s upload retried now", stream_id, extra={"stream_id": stream_id})
                return RetryStarted(
                    message="Recording upload retried now", stream_id=stream_id, status=PROCESSING
                )
            if rec.status == READY or (rec.status == PROCESSING and busy):
                raise Conflict(f"Only failed recordings can be retried (status {rec.status})")
            rec.status = PROCESSING
            rec.error = None
            rec.status_reason = None
            await self._commit(session, stream_id)
        self._enqueue(stream_id)
        log.info("stream=%s recording retry queued", stream_id, extra={"stream_id": stream_id})
        return RetryStarted(message="Recording processing restarted", stream_id=stream_id, status=PROCESSING)


def _already_packaged(rec: Recording, out_dir: Path) -> PackagedRecording | None:
    """The row's packaging result when both files are on disk as it recorded them, else None."""
    video, thumbnail = out_dir / "video.mp4", out_dir / "thumbnail.jpg"
    if rec.file_size_bytes is None or rec.duration_seconds is None:
        return None
    try:
        if video.stat().st_size != rec.file_size_bytes or not thumbnail.is_file():
            return None
    except OSError:
        return None
    return PackagedRecording(
        video_path=video,
        thumbnail_path=thumbnail,
        duration_seconds=rec.duration_seconds,
        file_size_bytes=rec.file_size_bytes,
        width=rec.width,
        height=rec.height,
        has_audio=True,  # not recorded in the row; nothing after packaging reads it
    )


def _remove_trees(*paths: Path) -> None:
    """Delete folders and everything in them, missing ones included (blocking: run on a thread)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
