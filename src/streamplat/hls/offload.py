"""Live media off the node: each live stream's files go to object storage as soon as they are durable.

With object storage on (`object_storage.live_upload`, default with a bucket), every init and
complete segment the `DiskWriter` renames into place is uploaded under
`<live_prefix><stream_id>/<name as on disk>`, and the index (`stream.m3u8`, with ENDLIST) once the
stream stops. If the node dies, a surviving node restores the files from there
(`streamplat.vod.objectstore.restore_live_media`) and packages the recording; once the recording
is ready (or deleted), the stream's live objects are deleted (`RecordingService`).

Nothing here may slow the stream down:

- the disk writer's thread only hands the name to the event loop (`call_soon_threadsafe`);
- each stream has a bounded queue of names and one task uploading them in order, on this
  module's own thread pool (boto3 blocks), so an outage never takes the default executor's
  threads from the rest of the server;
- a failed upload is retried with a doubling backoff (object_storage.retry_base_seconds, up to
  LIVE_RETRY_MAX_SECONDS) for as long as the stream's uploads are wanted; meanwhile the queue
  fills, and a name that finds it full is dropped, logged and counted. The stream goes on from
  disk whatever happens, and once the queue is empty again the uploader "catches up": it lists
  the stream's objects and queues the local files the store lacks (also done when a stream's
  uploads start, for files a stream's directory already holds), so a dropped name costs the
  store nothing in the end.

Counters for /metrics (`LiveOffload.collect`):

    streamplat_live_uploads_total{outcome="uploaded"|"failed"|"dropped"}  files put, failed attempts,
                                                                         names dropped (queue full)
    streamplat_live_upload_bytes_total                                   bytes put
    streamplat_live_upload_queue                                         files waiting (all streams)
    streamplat_live_upload_lag_seconds                                   histogram: durable on disk ->
                                                                         confirmed in the store
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streamplat.hls.disk import INDEX_NAME
from streamplat.vod.objectstore import ObjectStorageError, ObjectStore, backoff_seconds, live_file

__all__ = ["LIVE_RETRY_MAX_SECONDS", "LiveOffload", "content_type"]

log = logging.getLogger(__name__)

T = TypeVar("T")

LIVE_RETRY_MAX_SECONDS = 10.0  # a live upload waits at most this long between two attempts
SHUTDOWN_DRAIN_SECONDS = 2.0  # at shutdown, how long stopped streams may finish their uploads
LAG_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
LAG_SAMPLES = 10_000  # recent lags kept for benches and tests
SENT_KEPT = 256  # names a stream remembers as put (a writer's notice is never that far behind)

_CONTENT_TYPES = {".mp4": "video/mp4", ".m4s": "video/iso.segment", ".m3u8": "application/vnd.apple.mpegurl"}


def content_type(name: str) -> str:
    """The Content-Type a live file is stored with."""
    return _CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")


class _StreamUploads:
    """One stream's queue of names and the state of its uploading task."""

    def __init__(self, stream_id: str, directory: Path, limit: int) -> None:
        self.stream_id = stream_id
        self.directory = directory
        self.limit = limit
        self.pending: deque[str] = deque()  # names in upload order
        # Queued or uploading name -> monotonic time it was durable (None: found by a catch-up).
        self.durable_at: dict[str, float | None] = {}
        # The last SENT_KEPT names put in the store -> monotonic time it confirmed them. A catch-up
        # may list a file the moment it is renamed into place, before the writer's notice of it
        # reaches the loop: the name then comes twice, and the second is not uploaded again.
        self.sent: OrderedDict[str, float] = OrderedDict()
        self.wake = asyncio.Event()
        self.catch_up = True  # list the store and queue what it lacks, once the queue is empty
        self.ending = False  # the stream stopped: upload the index after the queue, then end
        self.failures = 0  # failed attempts in a row (an outage)
        self.dropped = 0  # names dropped since the last catch-up
        self.task: asyncio.Task[None] | None = None

    def offer(self, name: str, at: float | None) -> bool:
        """Queue `name` unless it is queued already; False if the queue is full. (Names already
        sent never come here: the writer's notice checks `sent` first, a catch-up clears it.)"""
        if name in self.durable_at:
            if self.durable_at[name] is None:
                self.durable_at[name] = at  # a catch-up queued it first: the lag is still measured
            return True
        if len(self.pending) >= self.limit:
            return False
        self.pending.append(name)
        self.durable_at[name] = at
        self.wake.set()
        return True


class LiveOffload:
    """Uploads of live streams' files (one per platform); `async with` it around the supervisor."""

    def __init__(
        self, store: ObjectStore, *, queue_size: int | None = None, threads: int | None = None
    ) -> None:
        self.store = store
        s = store.settings
        self._limit = queue_size or s.live_upload_queue
        self._retry_base = s.retry_base_seconds
        self._retry_max = min(s.retry_max_seconds, LIVE_RETRY_MAX_SECONDS)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            threads or min(8, s.max_concurrency), thread_name_prefix="live-upload"
        )
        self._streams: dict[str, _StreamUploads] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.uploaded = 0
        self.uploaded_bytes = 0
        self.failed = 0
        self.dropped = 0
        self.lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self._lag = Histogram(
            "streamplat_live_upload_lag_seconds",
            "Time from a live file durable on disk to its upload confirmed by the object store.",
            buckets=LAG_BUCKETS,
            registry=None,
        )

    async def __aenter__(self) -> LiveOffload:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shutdown: streams stopped by it get a moment to send their last files and index; what
        # is still queued after that stays on disk (the recording is made from there).
        ending = [u.task for u in self._streams.values() if u.ending and u.task is not None]
        if ending:
            await asyncio.wait(ending, timeout=SHUTDOWN_DRAIN_SECONDS)
        for stream_id in list(self._streams):
            await self.discard(stream_id)
        self._executor.shutdown(wait=True)

    # --- the supervisor's side ------------------------------------------------------------------

    def open(self, stream_id: str, directory: Path) -> Callable[[str], None]:
        """Start (or continue) the stream's uploads; returns the DiskWriter's `on_durable` hook.

        The hook may be called from any thread: it only passes the name to the event loop.
        """
        loop = self._loop
        assert loop is not None, "LiveOffload used outside `async with`"
        uploads = self._streams.get(stream_id)
        if uploads is None or uploads.task is None or uploads.task.done():
            uploads = _StreamUploads(stream_id, directory, self._limit)
            self._streams[stream_id] = uploads
            uploads.task = loop.create_task(self._run(uploads), name=f"live-upload:{stream_id}")
        else:
            uploads.ending = False  # a restarted listener of a stream whose uploads still drain
            uploads.catch_up = True

        def on_durable(name: str) -> None:
            at = time.monotonic()
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is exiting
                loop.call_soon_threadsafe(self._offer, uploads, name, at)

        return on_durable

    def _offer(self, uploads: _StreamUploads, name: str, at: float) -> None:
        confirmed = uploads.sent.get(name)
        if confirmed is not None:  # a catch-up uploaded it before this notice arrived
            self._observe_lag(max(0.0, confirmed - at))
            return
        if uploads.offer(name, at):
            return
        self.dropped += 1
        uploads.dropped += 1
        uploads.catch_up = True
        if uploads.dropped == 1:
            log.warning(
                "stream=%s live upload queue full (%d files waiting): %s stays on disk only for now; "
                "it is uploaded once the queue empties",
                uploads.stream_id,
                uploads.limit,
                name,
                extra={"stream_id": uploads.stream_id},
            )

    def end(self, stream_id: str) -> None:
        """The stream stopped (its index has ENDLIST): upload what is queued, then the index."""
        uploads = self._streams.get(stream_id)
        if uploads is not None:
            uploads.ending = True
            uploads.wake.set()

    async def discard(self, stream_id: str) -> None:
        """Stop the stream's uploads (the recording no longer needs them) and wait for the one in
        flight: no live object of the stream lands after this returns."""
        # Left in the map until its task ends (the task removes it): a second caller, whose
        # first one was cancelled while waiting here, still waits for the upload in flight.
        uploads = self._streams.get(stream_id)
        if uploads is not None and uploads.task is not None:
            uploads.task.cancel()
            await asyncio.wait({uploads.task})
            if self._streams.get(stream_id) is uploads:  # a task cancelled before it ever ran
                del self._streams[stream_id]

    def queued(self, stream_id: str | None = None) -> int:
        """Files waiting to upload: one stream's, or all."""
        streams = self._streams.values() if stream_id is None else [self._streams.get(stream_id)]
        return sum(len(u.pending) for u in streams if u is not None)

    # --- the stream's task ----------------------------------------------------------------------

    async def _run(self, uploads: _StreamUploads) -> None:
        try:
            while True:
                if uploads.pending:
                    await self._upload(uploads, uploads.pending.popleft())
                elif uploads.catch_up:
                    await self._catch_up(uploads)
                elif uploads.ending:
                    await self._upload(uploads, INDEX_NAME)
                    if not uploads.pending and not uploads.catch_up:
                        break
                else:
                    uploads.wake.clear()
                    await uploads.wake.wait()
        except Exception:  # a bug must not end the uploads silently
            log.exception("stream=%s live uploads crashed", uploads.stream_id)
        finally:
            if self._streams.get(uploads.stream_id) is uploads:
                del self._streams[uploads.stream_id]

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking store I/O on our pool; a cancelled caller still waits for it to finish."""
        assert self._loop is not None
        future = self._loop.run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait({future})
            raise

    async def _upload(self, uploads: _StreamUploads, name: str) -> None:
        """Put one file, retrying until it is stored (or gone from the disk, or we are cancelled)."""
        store = self.store
        key = store.live_key(uploads.stream_id, name)
        while True:
            try:
                size = await self._in_thread(
                    store.put_file_sync, uploads.directory / name, key, content_type(name)
                )
            except FileNotFoundError:
                uploads.durable_at.pop(name, None)
                return  # the recording was made and its media removed, or the index never written
            except (ObjectStorageError, OSError) as exc:
                self.failed += 1
                uploads.failures += 1
                delay = backoff_seconds(uploads.failures, self._retry_base, self._retry_max)
                reason = (
                    exc.reason
                    if isinstance(exc, ObjectStorageError)
                    else f"cannot read {name} to upload it: {exc}"
                )
                log.log(
                    logging.WARNING if uploads.failures == 1 else logging.DEBUG,
                    "stream=%s %s; the stream goes on from disk, retrying in %.1f s",
                    uploads.stream_id,
                    reason,
                    delay,
                    extra={"stream_id": uploads.stream_id},
                )
                await asyncio.sleep(delay)
                continue
            break
        if uploads.failures:
            log.info(
                "stream=%s live uploads resumed after %d failed attempts",
                uploads.stream_id,
                uploads.failures,
                extra={"stream_id": uploads.stream_id},
            )
            uploads.failures = 0
            uploads.catch_up = True  # what was dropped meanwhile
        self.uploaded += 1
        self.uploaded_bytes += size
        now = time.monotonic()
        at = uploads.durable_at.pop(name, None)  # (a notice may have come while it went up)
        if name != INDEX_NAME:
            uploads.sent[name] = now
            if len(uploads.sent) > SENT_KEPT:
                uploads.sent.popitem(last=False)
        if at is not None:
            self._observe_lag(now - at)

    def _observe_lag(self, lag: float) -> None:
        self.lags.append(lag)
        self._lag.observe(lag)

    async def _catch_up(self, uploads: _StreamUploads) -> None:
        """Queue (up to the limit) the local files the store lacks; retried while the store is down."""
        store = self.store
        prefix = store.live_prefix(uploads.stream_id)
        try:
            stored = await self._in_thread(store.list_sync, prefix)
            local = await self._in_thread(_local_files, uploads.directory)
        except (ObjectStorageError, OSError) as exc:
            self.failed += 1
            uploads.failures += 1
            delay = backoff_seconds(uploads.failures, self._retry_base, self._retry_max)
            log.log(
                logging.WARNING if uploads.failures == 1 else logging.DEBUG,
                "stream=%s cannot compare live files with the store: %s; retrying in %.1f s",
                uploads.stream_id,
                exc.reason if isinstance(exc, ObjectStorageError) else exc,
                delay,
                extra={"stream_id": uploads.stream_id},
            )
            await asyncio.sleep(delay)
            return
        uploads.failures = 0
        missing = [
            name
            for name, size in local
            if name != INDEX_NAME
            and name not in uploads.durable_at
            and (stored.get(prefix + name) is None or stored[prefix + name].size != size)
        ]
        taken = 0
        for name in missing:
            uploads.sent.pop(name, None)  # the store is the truth: one it lost is put again
            if not uploads.offer(name, None):
                break
            taken += 1
        uploads.catch_up = taken < len(missing)
        if missing:
            log.info(
                "stream=%s live upload catching up: %d files on disk not in the store (%d queued)",
                uploads.stream_id,
                len(missing),
                taken,
                extra={"stream_id": uploads.stream_id},
            )
        uploads.dropped = 0

    # --- /metrics -------------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        files = CounterMetricFamily(
            "streamplat_live_uploads",
            "Live files (inits, segments, indexes) put in object storage, failed upload attempts, "
            "and files left on disk only because a stream's upload queue was full (caught up later).",
            labels=["outcome"],
        )
        for outcome, value in (
            ("uploaded", self.uploaded),
            ("failed", self.failed),
            ("dropped", self.dropped),
        ):
            files.add_metric([outcome], value)
        yield files
        yield CounterMetricFamily(
            "streamplat_live_upload_bytes",
            "Bytes of live files put in object storage.",
            value=self.uploaded_bytes,
        )
        yield GaugeMetricFamily(
            "streamplat_live_upload_queue", "Live files waiting to upload, all streams.", value=self.queued()
        )
        yield from self._lag.collect()


def _local_files(directory: Path) -> list[tuple[str, int]]:
    """A stream's live files on disk, oldest first (inits before their segments), with sizes."""
    try:
        entries = [
            (e.name, e.stat().st_size) for e in os.scandir(directory) if e.is_file() and live_file(e.name)
        ]
    except FileNotFoundError:
        return []
    return sorted(entries, key=lambda item: _order(item[0]))


def _order(name: str) -> tuple[int, int, int]:
    """Sort key: by run, the init first, then segments by MSN."""
    stem = name.split(".", 1)[0].split("_")
    if stem[0] == "init":
        return (int(stem[1]), -1, 0)
    if stem[0] == "seg":
        return (int(stem[1]), int(stem[2]), 0)
    return (1 << 62, 0, 0)
