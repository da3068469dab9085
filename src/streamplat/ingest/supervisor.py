"""`IngestSupervisor`: one supervised FFmpeg SRT listener per live stream.

Life of a stream's task (all tasks live in the supervisor's TaskGroup):

    start() -> [salvage orphan segments] -> spawn FFmpeg -> ListenerStarted
      first -progress block  -> PublisherConnected, then IngestProgress per block
      FFmpeg exits after media  -> PublisherDisconnected, listener respawned at once on the same
                                   port; the reconnect window starts
      FFmpeg exits without media -> a failure: respawn after a backoff
      too many failures in a row, or the reconnect window ran out -> IngestGaveUp, task ends
    stop() -> SIGINT, bounded wait, SIGKILL -> playlist gets #EXT-X-ENDLIST

Only `stop()` ends a stream's playlist. Leaving the `async with` block stops every FFmpeg
gracefully but leaves the playlists open: a server restart is not the end of a stream, and
the next `start()` on the same directory continues the playlist.

This module owns processes and files under each stream's HLS directory; it never touches the
database. Events go out on the `EventBus`; see `stop()` for calling back in from a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import shlex
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from streamplat.events import (
    EventBus,
    IngestGaveUp,
    IngestProgress,
    ListenerStarted,
    PublisherConnected,
    PublisherDisconnected,
)
from streamplat.hls.cutter import Cutter
from streamplat.hls.disk import DiskWriter, finalise_index, scan
from streamplat.hls.offload import LiveOffload
from streamplat.hls.packager import DiskSink, PackagerStats, package
from streamplat.hls.store import LiveStore, LiveStream
from streamplat.ingest.ffmpeg import (
    AAC_BSF_UNSUPPORTED,
    RateWindow,
    build_fmp4_argv,
    clean_stderr_line,
    describe_exit,
    listener_input_list,
    mask_secret,
    validate_passphrase,
)
from streamplat.ingest.hls import finalise_playlist
from streamplat.procs import die_with_parent, signal_group

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 30
_STREAM_READER_LIMIT = 1 << 20  # a long FFmpeg line must not break line-based draining


@dataclass(frozen=True)
class IngestSettings:
    """How listeners are run. Times in seconds unless the name says otherwise."""

    ffmpeg_binary: str
    srt_bind_host: str = "0.0.0.0"
    segment_seconds: float = 1.0  # HLS segment target length (cut at the next keyframe)
    playlist_size: int = 6  # segments in the sliding live playlist
    part_seconds: float = 0.2  # LL-HLS part length (FFmpeg's -frag_duration)
    # A publisher session's first segment closes this early (0: after a full GOP), design §3.4.8.
    first_segment_seconds: float = 0.2
    memory_segments: int = 12  # segments kept in memory (playlist window + late fetches)
    low_latency: bool = True  # False: no part tags / blocking reload (a plain live playlist)
    reconnect_window_seconds: float = 300.0  # how long a dropped publisher may take to return
    # Restarts after consecutive failures (FFmpeg exiting without having received media);
    # failure number max_restarts + 1 gives up.
    max_restarts: int = 5
    restart_backoff_initial: float = 0.5
    restart_backoff_max: float = 10.0
    stop_timeout_seconds: float = 10.0  # SIGINT -> wait this long -> SIGKILL
    srt_latency_ms: int = 120
    # SRT read timeout: a publisher silent this long counts as gone (libsrt alone waits 5 s).
    # FFmpeg then needs about 1 s more to exit.
    publisher_timeout_seconds: float = 3.0
    # Where the listeners' input lists (which hold stream keys) live, mode 0700; emptied at start
    # and removed at exit, so a SIGKILLed server's lists go at the next start. None: a fresh
    # temporary directory.
    private_dir: pathlib.Path | None = None


@dataclass(frozen=True)
class IngestStatus:
    """A snapshot of one supervised stream, for status pages and the streams service."""

    stream_id: str
    port: int
    ffmpeg_running: bool
    publisher_connected: bool
    started_at: float  # time.time() when start() was called
    connected_at: float | None  # time.time() of the current publisher connection
    restarts: int  # listener restarts so far (after disconnects and failures alike)
    last_error: str | None  # last exit reason (code + last stderr lines), shown to users
    bitrate_kbps: float | None
    fps: float | None


class IngestError(Exception):
    """Base of the ingest supervisor's errors.

    IngestError
      ListenerAlreadyRunning  start() for a stream that is still supervised
      SupervisorClosed        start() outside `async with supervisor:`
    """


class ListenerAlreadyRunning(IngestError):
    """The stream already has a supervised listener."""


class SupervisorClosed(IngestError):
    """The supervisor is not running (not entered yet, or shutting down)."""


# --- per-stream state ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _MediaItem:
    """The packager cut parts: media flows (sent at most every _MEDIA_REPORT_SECONDS)."""

    bytes: int
    frames: int


@dataclass(frozen=True, slots=True)
class _Exited:
    returncode: int


@dataclass(frozen=True, slots=True)
class _StopRequested:
    pass


_Item = _MediaItem | _Exited | _StopRequested
_MEDIA_REPORT_SECONDS = 0.5


@dataclass(slots=True)
class _Outcome:
    """How one listener run ended."""

    received_media: bool
    reason: str
    reconnect_window_over: bool = False


_READY_TIMEOUT = 10.0
"""How long start() waits for a new listener to be spawned and bound before returning anyway."""


def udp_port_bound(port: int) -> bool:
    """True if some socket on this machine is bound to UDP `port` (True where /proc cannot tell)."""
    wanted = f":{port:04X}"
    readable = False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        # Each row: "sl local_address rem_address ..." with local_address as HEXIP:HEXPORT.
        for fields in map(str.split, lines):
            if len(fields) > 1 and fields[1].endswith(wanted):
                return True
    return not readable


def _fresh_private_dir(path: pathlib.Path) -> None:
    """An empty directory only this user can enter (what a killed predecessor left is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    path.chmod(0o700)  # mkdir's mode is filtered by the umask


class _StreamLog(logging.LoggerAdapter[logging.Logger]):
    """Puts `stream=<id>` in every message and `stream_id` in every record's extra."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        stream_id = str((self.extra or {})["stream_id"])
        kwargs["extra"] = {**kwargs.get("extra", {}), "stream_id": stream_id}
        return f"stream={stream_id.replace('%', '%%')} {msg}", kwargs


class _Stream:
    """Mutable state of one supervised stream; written only by its own task and stop()."""

    def __init__(self, stream_id: str, port: int, passphrase: str, hls_dir: pathlib.Path) -> None:
        self.stream_id = stream_id
        self.port = port
        self.passphrase = passphrase
        self.hls_dir = hls_dir
        self.started_at = time.time()
        self.log = _StreamLog(log, {"stream_id": stream_id})
        self.task: asyncio.Task[None] | None = None
        self.inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self.stop_requested = False
        self.terminate_lock = asyncio.Lock()
        self.process: asyncio.subprocess.Process | None = None
        self.publisher_connected = False
        self.connected_at: float | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.bitrate_kbps: float | None = None
        self.fps: float | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        # Set once the first FFmpeg of this stream was spawned, or its first attempt ended without
        # one: start() waits for it (then for the port), so the SRT URL it hands out works.
        self.first_spawn = asyncio.Event()
        # The in-memory LL-HLS window and the disk writer, for the stream's whole supervision.
        self.live: LiveStream | None = None
        self.writer: DiskWriter | None = None
        self.aac_bsf = True  # False once FFmpeg refused aac_adtstoasc (non-AAC audio)

    def request_stop(self) -> None:
        """Ask the stream's task to end its listener and return (no more events)."""
        if not self.stop_requested:
            self.stop_requested = True
            self.inbox.put_nowait(_StopRequested())

    def status(self) -> IngestStatus:
        process = self.process
        return IngestStatus(
            stream_id=self.stream_id,
            port=self.port,
            ffmpeg_running=process is not None and process.returncode is None,
            publisher_connected=self.publisher_connected,
            started_at=self.started_at,
            connected_at=self.connected_at,
            restarts=self.restarts,
            last_error=self.last_error,
            bitrate_kbps=self.bitrate_kbps,
            fps=self.fps,
        )


# --- the supervisor -----------------------------------------------------------------------


class IngestSupervisor:
    """Runs and watches one FFmpeg SRT listener per live stream; use as `async with`."""

    def __init__(
        self,
        settings: IngestSettings,
        bus: EventBus,
        live_store: LiveStore | None = None,
        offload: LiveOffload | None = None,
    ) -> None:
        """`offload`: upload each stream's durable files to object storage (hls.offload)."""
        self._settings = settings
        self._bus = bus
        self._offload = offload
        self.live_store = live_store if live_store is not None else LiveStore()
        self._streams: dict[str, _Stream] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = False
        self._private_dir = pathlib.Path()  # made by __aenter__

    async def __aenter__(self) -> IngestSupervisor:
        if self._tasks is not None:
            raise RuntimeError("IngestSupervisor is already running")
        # Private to this process's user (0700): the listeners' input lists hold stream keys.
        configured = self._settings.private_dir
        if configured is None:
            self._private_dir = pathlib.Path(tempfile.mkdtemp(prefix="streamplat-ingest-"))
        else:
            await asyncio.to_thread(_fresh_private_dir, configured)
            self._private_dir = configured
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._closing = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tasks = self._tasks
        if tasks is None:
            return None
        # No new listeners from here on; a start() racing with shutdown gets SupervisorClosed.
        self._closing = True
        try:
            # Ask every stream's task to SIGINT its FFmpeg, all at once, so shutdown takes at
            # most one stop_timeout and not one per stream. Wait here rather than relying on
            # the TaskGroup: if the `async with` body raised, the group would *cancel* the
            # tasks, and cancellation only SIGKILLs (leaving a segment unfinished).
            for stream in self._streams.values():
                stream.request_stop()
            pending = [s.task for s in self._streams.values() if s.task is not None]
            if pending:
                await asyncio.wait(pending)
        finally:
            self._streams.clear()
            self._tasks = None
            # Playlists are deliberately not ended: a shutdown is not the end of a stream.
            try:
                await tasks.__aexit__(exc_type, exc, tb)
            finally:
                shutil.rmtree(self._private_dir, ignore_errors=True)
        return None

    async def start(self, stream_id: str, port: int, passphrase: str, hls_dir: pathlib.Path) -> None:
        """Start supervising a listener for the stream; returns once its FFmpeg listens on `port`.

        An existing playlist in `hls_dir` is continued (same URL, numbering carries on).
        Raises ListenerAlreadyRunning if the stream is still supervised, ValueError for a
        passphrase SRT would refuse, SupervisorClosed outside `async with`.
        """
        if self._tasks is None or self._closing:
            raise SupervisorClosed("the ingest supervisor is not running")
        validate_passphrase(passphrase)
        existing = self._streams.get(stream_id)
        if existing is not None and existing.task is not None and not existing.task.done():
            raise ListenerAlreadyRunning(f"stream {stream_id} already has a listener")
        stream = _Stream(stream_id, port, passphrase, pathlib.Path(hls_dir))
        self._streams[stream_id] = stream
        stream.task = self._tasks.create_task(self._supervise(stream), name=f"ingest:{stream_id}")
        spawned = asyncio.ensure_future(stream.first_spawn.wait())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        try:
            await asyncio.wait(
                {spawned, stream.task}, timeout=_READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            spawned.cancel()
        # Then until FFmpeg has bound the SRT port: an encoder that connects the moment it has
        # the URL (and an SRT caller gives up after ~3 s) must find a listener, even on a busy
        # machine where FFmpeg takes a while to open it.
        while stream.process is not None and stream.process.returncode is None and not stream.task.done():
            if await asyncio.to_thread(udp_port_bound, port):
                return
            if loop.time() >= deadline:
                stream.log.warning("FFmpeg has not bound UDP port %d after %.0f s", port, _READY_TIMEOUT)
                return
            await asyncio.sleep(0.02)

    async def stop(self, stream_id: str) -> None:
        """Stop the stream's listener gracefully and end its playlist; unknown ids are a no-op.

        FFmpeg gets SIGINT (so the muxer finishes the current segment and playlist), then up to
        stop_timeout_seconds, then SIGKILL. Afterwards `hls_dir/stream.m3u8`, if it exists,
        ends with #EXT-X-ENDLIST and the stream is no longer supervised.

        Safe from event handlers: events are published from the stream's own task, and a
        handler that calls stop() for that stream runs inside that task. stop() notices this
        (the current task is the stream's task), terminates FFmpeg itself instead of awaiting
        the task (which would wait for itself forever), and the task ends as soon as the
        handler returns, publishing nothing more. From any other task, stop() asks the stream's
        task to terminate FFmpeg and awaits it.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.request_stop()
        task = stream.task
        if task is not None and task is asyncio.current_task():
            await self._terminate(stream)
        elif task is not None:
            # asyncio.wait rather than `await task`: never raises, and if our caller is
            # cancelled the stream's task still finishes stopping FFmpeg on its own.
            await asyncio.wait([task])
        await self._close_live(stream)
        await asyncio.to_thread(_finalise, stream.hls_dir, self._settings.segment_seconds)
        if self._offload is not None:
            self._offload.end(stream_id)  # the ended index goes up after the last segment
        if self._streams.get(stream_id) is stream:
            del self._streams[stream_id]
        stream.log.info("stopped; playlist ended")

    def status(self, stream_id: str) -> IngestStatus | None:
        """A snapshot of the stream's listener; None when the stream is not supervised.

        A stream whose supervisor gave up stays visible (ffmpeg_running False, last_error set)
        until stop() is called for it.
        """
        stream = self._streams.get(stream_id)
        return stream.status() if stream is not None else None

    def running_streams(self) -> list[str]:
        """Ids of the streams whose listener is supervised right now (given-up ones excluded)."""
        return [
            stream_id
            for stream_id, stream in self._streams.items()
            if stream.task is not None and not stream.task.done()
        ]

    # --- the stream's task ----------------------------------------------------------------

    async def _open_live(self, stream: _Stream) -> None:
        """Read the stream's folder back (runs and MSNs continue) and open its live window."""
        settings = self._settings
        state = await asyncio.to_thread(scan, stream.hls_dir, settings.segment_seconds)
        cutter = Cutter(
            segment_seconds=settings.segment_seconds,
            next_run=state.next_run,
            next_msn=state.next_msn,
            next_dsn=state.next_dsn,
            target_duration=state.target_duration,
            had_segments=state.has_media,
            first_segment_seconds=settings.first_segment_seconds,
            part_seconds=settings.part_seconds,
        )
        on_durable = None if self._offload is None else self._offload.open(stream.stream_id, stream.hls_dir)
        writer = DiskWriter(stream.hls_dir, state, on_durable)
        live = LiveStream(
            stream.stream_id,
            cutter,
            playlist_size=settings.playlist_size,
            memory_segments=settings.memory_segments,
            low_latency=settings.low_latency,
            sink=DiskSink(writer, lambda: stream.live),
        )
        stream.live, stream.writer = live, writer
        self.live_store.put(live)
        if state.has_media:
            stream.log.info("continuing the recording: run %d, segment %d", state.next_run, state.next_msn)

    async def _close_live(self, stream: _Stream) -> None:
        """End the live window (held requests are answered) and flush the disk writer."""
        live, writer = stream.live, stream.writer
        stream.live = stream.writer = None
        if live is not None:
            live.finish()
            if self.live_store.get(stream.stream_id) is live:
                self.live_store.remove(stream.stream_id)
        if writer is not None:
            await asyncio.to_thread(writer.close)

    async def _supervise(self, stream: _Stream) -> None:
        """Body of a stream's task: run listeners until stopped or given up."""
        try:
            try:
                await self._open_live(stream)
            except OSError as exc:
                reason: str | None = f"cannot prepare the HLS directory {stream.hls_dir}: {exc}"
                stream.log.error("%s", reason)
                stream.first_spawn.set()
            else:
                reason = await self._run_listeners(stream)
        except Exception as exc:
            # A bug here must not escape: the TaskGroup would cancel every other stream.
            stream.log.exception("ingest supervisor failed")
            reason = f"internal error in the ingest supervisor: {exc!r}"
            if stream.process is not None:
                signal_group(stream.process, signal.SIGKILL)
        finally:
            await self._close_live(stream)
        if reason is None or stream.stop_requested:
            return
        stream.last_error = reason
        stream.log.error("giving up: %s", reason)
        await self._bus.publish(IngestGaveUp(stream_id=stream.stream_id, reason=reason))

    async def _run_listeners(self, stream: _Stream) -> str | None:
        """Respawn listeners as the rules say; returns why it gave up, or None when stopped."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        window_over_reason = f"no publisher reconnected within {settings.reconnect_window_seconds:g} s"
        failures = 0
        # loop.time() by which a dropped publisher must be back; None while none has dropped.
        reconnect_deadline: float | None = None
        first = True
        while not stream.stop_requested:
            if not first:
                stream.restarts += 1
            first = False
            try:
                outcome = await self._run_listener(stream, reconnect_deadline)
            finally:
                # However the attempt ended (no spawn at all included), start() stops waiting.
                stream.first_spawn.set()
            if stream.stop_requested:
                return None
            if outcome.reconnect_window_over:
                return window_over_reason
            if outcome.received_media:
                failures = 0
                reconnect_deadline = loop.time() + settings.reconnect_window_seconds
                await self._bus.publish(
                    PublisherDisconnected(stream_id=stream.stream_id, reason=outcome.reason)
                )
                continue  # relisten at once: the publisher is probably reconnecting already
            failures += 1
            if failures > settings.max_restarts:
                return f"FFmpeg failed {failures} times in a row; last: {outcome.reason}"
            delay = min(settings.restart_backoff_initial * 2 ** (failures - 1), settings.restart_backoff_max)
            if reconnect_deadline is not None:
                delay = min(delay, max(0.0, reconnect_deadline - loop.time()))
            stream.log.info("restarting listener in %.2f s (failure %d)", delay, failures)
            with contextlib.suppress(TimeoutError):
                # Only a stop request can arrive between two listeners.
                await asyncio.wait_for(stream.inbox.get(), delay)
            if reconnect_deadline is not None and loop.time() >= reconnect_deadline:
                return window_over_reason
        return None

    async def _run_listener(self, stream: _Stream, reconnect_deadline: float | None) -> _Outcome:
        """Run one FFmpeg listener from spawn to exit and publish what it reports."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        live = stream.live
        assert live is not None
        # The stream key travels in a 0600 file, never in argv (world-readable in /proc).
        # Named after the port too, so `ps` still shows which listener is which.
        input_list = self._private_dir / f"{stream.stream_id}-srt{stream.port}.ffconcat"
        listing = listener_input_list(
            settings.srt_bind_host,
            stream.port,
            stream.passphrase,
            latency_ms=settings.srt_latency_ms,
            publisher_timeout_seconds=settings.publisher_timeout_seconds,
        )
        try:
            await asyncio.to_thread(_write_private, input_list, listing)
        except OSError as exc:
            reason = f"cannot write the listener's input list {input_list}: {exc}"
            stream.last_error = reason
            stream.log.error("%s", reason)
            return _Outcome(received_media=False, reason=reason)
        argv = build_fmp4_argv(
            ffmpeg_binary=settings.ffmpeg_binary,
            input_list=str(input_list),
            port=stream.port,
            part_seconds=settings.part_seconds,
            aac_bsf=stream.aac_bsf,
        )
        stream.log.info(
            "starting listener on port %d (restart %d, next run %d, next segment %d): %s",
            stream.port,
            stream.restarts,
            live.cutter.next_run,
            live.cutter.next_msn,
            shlex.join(mask_secret(argv, stream.passphrase)),
        )
        stream.stderr_tail.clear()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_STREAM_READER_LIMIT,
                # Own process group: a Ctrl-C in the server's terminal must not reach FFmpeg
                # (we decide when it stops), and the whole group can be signalled at once.
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            reason = f"could not start FFmpeg ({settings.ffmpeg_binary}): {exc}"
            stream.last_error = reason
            stream.log.error("%s", reason)
            return _Outcome(received_media=False, reason=reason)

        stream.process = process
        stream.first_spawn.set()
        started = loop.time()
        stream.log.info("FFmpeg pid %d listening", process.pid)
        received_media = False
        window_over = False
        frame_rate = RateWindow(window_seconds=5.0)
        byte_rate = RateWindow(window_seconds=5.0)
        try:
            await self._bus.publish(
                ListenerStarted(stream_id=stream.stream_id, port=stream.port, restart=stream.restarts)
            )
            async with asyncio.TaskGroup() as readers:
                readers.create_task(self._drain(stream, process, live))
                terminating = False
                while True:
                    if stream.stop_requested and not terminating:
                        terminating = True
                        # Concurrently, so this loop keeps consuming until FFmpeg has exited.
                        readers.create_task(self._terminate(stream))
                    timeout = None
                    if reconnect_deadline is not None and not received_media and not terminating:
                        timeout = max(0.0, reconnect_deadline - loop.time())
                    try:
                        item = await asyncio.wait_for(stream.inbox.get(), timeout)
                    except TimeoutError:
                        stream.log.info("reconnect window over; stopping the listener")
                        window_over = terminating = True
                        readers.create_task(self._terminate(stream))
                        continue
                    if isinstance(item, _Exited):
                        break
                    if not isinstance(item, _MediaItem) or terminating:
                        continue
                    if not received_media:
                        received_media = True
                        stream.publisher_connected = True
                        stream.connected_at = time.time()
                        stream.log.info("publisher connected")
                        await self._bus.publish(PublisherConnected(stream_id=stream.stream_id))
                    if not stream.stop_requested:
                        await self._report_progress(stream, item, frame_rate, byte_rate)
        finally:
            # Reached with FFmpeg still running only when this task is cancelled (abnormal
            # shutdown): no time for a graceful stop, and the next start() salvages the
            # unfinished segment.
            signal_group(process, signal.SIGKILL)
            input_list.unlink(missing_ok=True)  # FFmpeg read it at start; the next listener rewrites it
            stream.process = None
            stream.publisher_connected = False
            stream.connected_at = None
            stream.bitrate_kbps = None
            stream.fps = None

        reason = describe_exit(process.returncode, stream.stderr_tail)
        if (
            not received_media
            and stream.aac_bsf
            and any(AAC_BSF_UNSUPPORTED in x for x in stream.stderr_tail)
        ):
            # Not AAC (Opus, MP3...): MPEG-TS AAC needs aac_adtstoasc, anything else refuses it,
            # and -bsf has no per-codec form. The publisher retries; the next listener omits it.
            stream.aac_bsf = False
            stream.log.info("the publisher's audio is not AAC: listening again without aac_adtstoasc")
        stream.last_error = reason
        level = logging.INFO if received_media or stream.stop_requested or window_over else logging.WARNING
        stream.log.log(
            level,
            "listener ended after %.1f s (media received: %s): %s",
            loop.time() - started,
            received_media,
            reason,
        )
        return _Outcome(received_media=received_media, reason=reason, reconnect_window_over=window_over)

    async def _report_progress(
        self,
        stream: _Stream,
        item: _MediaItem,
        frame_rate: RateWindow,
        byte_rate: RateWindow,
    ) -> None:
        """Update the stream's numbers from the packager's counters and publish them."""
        now = asyncio.get_running_loop().time()
        frame_rate.add(now, item.frames)
        byte_rate.add(now, item.bytes)
        fps = frame_rate.rate()
        stream.fps = round(fps, 2) if fps is not None else None
        bytes_per_second = byte_rate.rate()
        stream.bitrate_kbps = round(bytes_per_second * 8 / 1000, 1) if bytes_per_second else None
        live = stream.live
        await self._bus.publish(
            IngestProgress(
                stream_id=stream.stream_id,
                bitrate_kbps=stream.bitrate_kbps,
                fps=stream.fps,
                out_time_seconds=None if live is None else _media_seconds(live),
            )
        )

    async def _drain(self, stream: _Stream, process: asyncio.subprocess.Process, live: LiveStream) -> None:
        """Package FFmpeg's stdout (fMP4) and read its stderr to the end, then report its exit.

        Both pipes are always drained: FFmpeg blocks once a pipe buffer is full. The exit is
        queued only after both reached EOF, so every part is in the store and the stderr tail is
        complete when the consumer reads the exit.
        """
        assert process.stdout is not None and process.stderr is not None
        stdout, stderr = process.stdout, process.stderr
        loop = asyncio.get_running_loop()
        last_report = -1.0

        def on_part(stats: PackagerStats) -> None:
            nonlocal last_report
            now = loop.time()
            if now - last_report >= _MEDIA_REPORT_SECONDS:
                last_report = now
                stream.inbox.put_nowait(_MediaItem(stats.bytes, stats.frames))

        async def read_media() -> None:
            stats = PackagerStats()
            error = await package(stdout, live, stats, on_part)
            if error is not None:
                stream.stderr_tail.append(error)
            stream.log.info(
                "run ended: %d parts, %.1f s of media, %d bytes, packager CPU %.3f s",
                stats.parts,
                stats.media_seconds,
                stats.bytes,
                stats.cpu_seconds,
            )

        async def read_stderr() -> None:
            async for raw in _lines(stderr):
                line = clean_stderr_line(raw.decode("utf-8", "replace"), stream.passphrase)
                if line:
                    stream.stderr_tail.append(line)
                    stream.log.debug("ffmpeg: %s", line)

        await asyncio.gather(read_media(), read_stderr())
        returncode = await process.wait()
        stream.inbox.put_nowait(_Exited(returncode))

    async def _terminate(self, stream: _Stream) -> None:
        """SIGINT the stream's FFmpeg, wait up to stop_timeout_seconds, then SIGKILL it."""
        async with stream.terminate_lock:
            process = stream.process
            if process is None or process.returncode is not None:
                return
            timeout = self._settings.stop_timeout_seconds
            # SIGINT, not SIGTERM-then-hope: FFmpeg treats it as "finish up", writing out the
            # current segment and the playlist before exiting.
            signal_group(process, signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), timeout)
                return
            except TimeoutError:
                stream.log.warning("FFmpeg ignored SIGINT for %.1f s; sending SIGKILL", timeout)
            signal_group(process, signal.SIGKILL)
            await process.wait()


def _media_seconds(live: LiveStream) -> float | None:
    """Media time of the live run so far (end of its last part), for IngestProgress."""
    segment = live.cutter.open or (live.segments[-1] if live.segments else None)
    if segment is None:
        return None
    return segment.media_start + segment.duration


def _finalise(hls_dir: pathlib.Path, segment_seconds: float) -> None:
    """End the stream's on-disk index: fMP4 recordings, else an old MPEG-TS playlist."""
    if not finalise_index(hls_dir, segment_seconds):
        finalise_playlist(hls_dir, segment_seconds)


def _write_private(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` readable by this user only (replacing what was there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        f.write(text)


async def _lines(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Yield the reader's lines until EOF; an over-long line is cut rather than fatal."""
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # LimitOverrunError: longer than the reader limit
            line = await reader.read(_STREAM_READER_LIMIT)
        if not line:
            return
        yield line
