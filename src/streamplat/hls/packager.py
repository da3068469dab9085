"""Read one FFmpeg run's fMP4 from its stdout pipe and drive the live store (design §3.1).

`package()` is the body of an asyncio task per listener run: it splits the pipe into boxes,
turns `ftyp` + `moov` into the run's init and every `moof` + `mdat` into a part, and returns
when FFmpeg closes the pipe. `DiskSink` queues inits and closed segments on the stream's
`DiskWriter` (never awaited: an fsync never delays a part).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamplat.hls.boxes import BoxError, BoxSplitter
from streamplat.hls.cutter import CutterError, Init, Segment
from streamplat.hls.disk import DiskWriter
from streamplat.hls.store import LiveStream, StreamSink

__all__ = ["DiskSink", "PackagerStats", "package"]

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16
_IGNORED = frozenset({b"free", b"skip", b"mfra", b"sidx", b"styp", b"prft", b"emsg", b"uuid"})


class DiskSink(StreamSink):
    """Queues a live stream's inits and segments on its disk writer."""

    def __init__(self, writer: DiskWriter, live: Callable[[], LiveStream | None]) -> None:
        self.writer = writer
        self._live = live

    def init(self, init: Init) -> None:
        self.writer.write_init(init.run, init.data)

    def segment(self, segment: Segment, init: Init) -> None:
        stream = self._live()
        td = stream.cutter.target_duration if stream is not None else None
        self.writer.write_segment(segment.run, segment.msn, segment.data, segment.duration, td or 1)


@dataclass(slots=True)
class PackagerStats:
    """What one run delivered; the supervisor derives fps and bitrate from it."""

    bytes: int = 0
    frames: int = 0  # leading-track samples
    parts: int = 0
    media_seconds: float = 0.0
    cpu_seconds: float = 0.0  # process time spent in the packager's callbacks
    first_part_at: float | None = None  # time.time() of the run's first part


async def package(
    reader: asyncio.StreamReader,
    stream: LiveStream,
    stats: PackagerStats,
    on_part: Callable[[PackagerStats], None] | None = None,
) -> str | None:
    """Package the run until EOF; returns None, or why the bytes could not be used.

    On a broken box the run's remaining bytes are drained and dropped (FFmpeg keeps running;
    the supervisor sees it exit or stops it), and the open segment is closed.
    """
    splitter = BoxSplitter()
    ftyp = b""
    moof = b""
    error: str | None = None
    started = False
    try:
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                break
            if error is not None:
                continue
            cpu = time.process_time()
            try:
                for kind, box in splitter.feed(chunk):
                    if kind == b"ftyp":
                        ftyp = box
                    elif kind == b"moov":
                        if started:
                            raise CutterError("a second moov in one run")
                        init = stream.start_run(ftyp, box)
                        started = True
                        log.info(
                            "stream=%s run %d init: %s (%s)",
                            stream.stream_id,
                            init.run,
                            init.codecs,
                            ", ".join(t.kind for t in init.tracks),
                        )
                    elif kind == b"moof":
                        moof = box
                    elif kind == b"mdat":
                        if not moof or not started:
                            continue
                        cut = stream.add_fragment(moof, box)
                        moof = b""
                        if cut.part is not None:
                            stats.parts += 1
                            stats.bytes += len(cut.part.data)
                            stats.media_seconds += cut.part.duration
                            if stats.first_part_at is None:
                                stats.first_part_at = cut.part.created
                            if stream.inits[cut.part.run].leading.kind == "video":
                                stats.frames += cut.part.samples
                            if on_part is not None:
                                on_part(stats)
                    elif kind not in _IGNORED:
                        log.debug("stream=%s ignoring a %r box", stream.stream_id, kind)
            except (BoxError, CutterError) as exc:
                error = f"unusable fMP4 from FFmpeg: {exc}"
                log.error("stream=%s %s", stream.stream_id, error)
            stats.cpu_seconds += time.process_time() - cpu
    finally:
        if started:
            stream.end_run()
    if splitter.pending and error is None:
        log.info(
            "stream=%s dropped %d trailing bytes of an unfinished box", stream.stream_id, splitter.pending
        )
    return error
