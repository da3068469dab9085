"""The in-memory live store: every live stream's window of parts and segments (design §3.6).

Everything runs on the event loop, so there are no locks. The packager calls `LiveStream`'s
`start_run` / `add_fragment` / `end_run` / `finish`; each stores the bytes first, re-renders the
playlist once, bumps `version` and wakes every waiter with one future (blocking reloads and
held preload-hint requests re-check their predicate). Requests read `Blob`s: the body and its
ready-made ASGI headers, built once per blob, never per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamplat.hls.cutter import Cut, Cutter, Init, Part, Segment
from streamplat.hls.playlist import part_name, render_live

__all__ = ["Blob", "LiveStore", "LiveStream", "StreamSink"]

PLAYLIST_TYPE = b"application/vnd.apple.mpegurl"
IMMUTABLE = b"public, max-age=31536000, immutable"
NO_CACHE = b"no-cache"


@dataclass(frozen=True, slots=True)
class Blob:
    """One response body with its headers, ready for two ASGI sends, and the same headers as
    the bytes uvicorn would write for them (`head`, "name: value\r\n" each), for the answers
    written straight to the connection (protocols.py)."""

    body: bytes
    headers: list[tuple[bytes, bytes]]
    head: bytes = field(init=False)

    def __post_init__(self) -> None:
        head = b"".join(b"%s: %s\r\n" % (name, value) for name, value in self.headers)
        object.__setattr__(self, "head", head)


def blob(body: bytes, content_type: bytes, cache: bytes) -> Blob:
    return Blob(
        body,
        [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", cache),
        ],
    )


class StreamSink:
    """Where closed segments and inits go besides memory (the disk writer). No-op by default."""

    def init(self, init: Init) -> None:
        """A run's init arrived (must not block: queue the write)."""

    def segment(self, segment: Segment, init: Init) -> None:
        """A segment closed (must not block: queue the write)."""


class LiveStream:
    """One live stream's window, playlist and waiters."""

    def __init__(
        self,
        stream_id: str,
        cutter: Cutter,
        *,
        playlist_size: int = 6,
        memory_segments: int = 12,
        low_latency: bool = True,
        sink: StreamSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream_id = stream_id
        self.cutter = cutter
        self.playlist_size = playlist_size
        self.memory_segments = max(memory_segments, playlist_size)
        self.low_latency = low_latency
        self.sink = sink or StreamSink()
        self.clock = clock
        self.inits: dict[int, Init] = {}
        self.init_blobs: dict[int, Blob] = {}
        self.segments: deque[Segment] = deque()  # closed, in memory, oldest first
        self.segment_blobs: dict[tuple[int, int], Blob] = {}
        self.part_blobs: dict[tuple[int, int], Blob] = {}
        self.playlist: Blob | None = None
        self.version = 0
        self.ended = False
        self.live_run: int | None = None  # the run whose FFmpeg is running
        self.parts_total = 0
        self.bytes_total = 0
        self._changed: asyncio.Future[None] | None = None

    # --- packager side ----------------------------------------------------------------------

    def start_run(self, ftyp: bytes, moov: bytes) -> Init:
        init = self.cutter.start_run(ftyp, moov)
        self.inits[init.run] = init
        self.init_blobs[init.run] = blob(init.data, init.content_type.encode(), IMMUTABLE)
        self.live_run = init.run
        self.sink.init(init)
        self._publish()
        return init

    def add_fragment(self, moof: bytes, mdat: bytes) -> Cut:
        cut = self.cutter.add_fragment(moof, mdat, self.clock())
        if cut.closed is not None:
            self._closed(cut.closed)
        if cut.part is not None:
            part = cut.part
            init = self.inits[part.run]
            self.part_blobs[(part.run, part.number)] = blob(part.data, init.content_type.encode(), IMMUTABLE)
            self.parts_total += 1
            self.bytes_total += len(part.data)
        if cut.closed is not None or cut.part is not None:
            self._publish()
        return cut

    def end_run(self) -> None:
        """The run's FFmpeg exited: close its open segment; its hinted part never comes."""
        closed = self.cutter.end_run()
        if closed is not None:
            self._closed(closed)
        self.live_run = None
        self._publish()

    def finish(self) -> None:
        """The stream was stopped: ENDLIST, no hint, blocking directives ignored from now on."""
        if self.cutter.open is not None:
            self.end_run()
        self.ended = True
        self.live_run = None
        self._publish()

    def _closed(self, segment: Segment) -> None:
        init = self.inits[segment.run]
        self.segments.append(segment)
        self.segment_blobs[(segment.run, segment.msn)] = blob(
            segment.data, init.content_type.encode(), IMMUTABLE
        )
        while len(self.segments) > self.memory_segments:
            old = self.segments.popleft()
            self.segment_blobs.pop((old.run, old.msn), None)
            for part in old.parts:
                self.part_blobs.pop((part.run, part.number), None)
        runs = {s.run for s in self.segments} | ({self.live_run} if self.live_run is not None else set())
        for run in [r for r in self.inits if r not in runs]:
            del self.inits[run]
            self.init_blobs.pop(run, None)
        self.sink.segment(segment, init)

    def _publish(self) -> None:
        window = self.window()
        if window:
            cutter = self.cutter
            assert cutter.target_duration is not None
            hint = None
            if self.live_run is not None and not self.ended:
                hint = part_name(self.live_run, cutter.next_part)
            body = render_live(
                window,
                cutter.open,
                target_duration=cutter.target_duration,
                part_target=cutter.part_target,
                hint=hint,
                ended=self.ended,
                low_latency=self.low_latency,
            )
            self.playlist = blob(body, PLAYLIST_TYPE, NO_CACHE)
        self.version += 1
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    # --- request side -----------------------------------------------------------------------

    def window(self) -> list[Segment]:
        """The closed segments the playlist lists (the last playlist_size in memory)."""
        n = len(self.segments)
        return [self.segments[i] for i in range(max(0, n - self.playlist_size), n)]

    async def wait(self, ready: Callable[[], bool], seconds: float) -> bool:
        """Wait until `ready()` or for `seconds`; True if ready. Woken by the packager.

        `asyncio.wait` on the shared future, never `await fut`/`wait_for`: a cancelled or timed
        out waiter must not cancel the future every other waiter shares.
        """
        if ready():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return False
            if self._changed is None:
                self._changed = loop.create_future()
            await asyncio.wait((self._changed,), timeout=left)
            if ready():
                return True

    def part(self, run: int, number: int) -> Blob | None:
        return self.part_blobs.get((run, number))

    def is_hinted(self, run: int, number: int) -> bool:
        return not self.ended and run == self.live_run and number == self.cutter.next_part

    def info(self) -> dict[str, Any]:
        """The `hls` object of /stream/{id}/status (design §3.12)."""
        cutter = self.cutter
        window = self.window()
        last = cutter.open or (window[-1] if window else None)
        init = self.inits.get(self.live_run or -1) or (self.inits.get(window[-1].run) if window else None)
        part_target = cutter.part_target
        return {
            "low_latency": self.low_latency,
            "target_duration": cutter.target_duration,
            "part_target": part_target or None,
            "part_hold_back": round(3 * part_target, 3) if part_target else None,
            "media_sequence": window[0].msn if window else None,
            "discontinuity_sequence": window[0].dsn if window else None,
            "run": self.live_run,
            "last_msn": last.msn if last else None,
            "last_part": (len(last.parts) - 1) if last and last.parts else None,
            "next_part": cutter.next_part if self.live_run is not None else None,
            "codecs": init.codecs if init else None,
            "parts_total": self.parts_total,
            "ended": self.ended,
            "segments": [_segment_info(s) for s in [*window, *([cutter.open] if cutter.open else [])]],
        }


def _segment_info(segment: Segment) -> dict[str, Any]:
    return {
        "msn": segment.msn,
        "run": segment.run,
        "dsn": segment.dsn,
        "media_start_seconds": round(segment.media_start, 6),
        "duration_seconds": round(segment.duration, 6),
        "program_date_time": round(segment.pdt, 3),
        "complete": segment.closed,
        "independent": segment.independent,
        "parts": [_part_info(p) for p in segment.parts],
    }


def _part_info(part: Part) -> dict[str, Any]:
    return {
        "number": part.number,
        "duration_seconds": round(part.duration, 6),
        "independent": part.independent,
        "created": round(part.created, 3),
    }


class LiveStore:
    """Every live stream's `LiveStream`, by stream id."""

    def __init__(self) -> None:
        self._streams: dict[str, LiveStream] = {}

    def get(self, stream_id: str) -> LiveStream | None:
        return self._streams.get(stream_id)

    def put(self, stream: LiveStream) -> None:
        self._streams[stream.stream_id] = stream

    def remove(self, stream_id: str) -> LiveStream | None:
        return self._streams.pop(stream_id, None)

    def __len__(self) -> int:
        return len(self._streams)
