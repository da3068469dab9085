"""Crash-safe recording of a live stream's fMP4 runs (design §3.9; layout in the README).

In each stream's HLS directory:

- `init_{run}.mp4`: ftyp + moov of one run (one publisher session); run >= 1, grows forever;
- `seg_{run}_{msn}.m4s`: one complete segment (moof + mdat pairs), byte-contiguous after its
  run's init; msn >= 0 grows across runs;
- `stream.m3u8`: a VOD-style index (MAP, DISCONTINUITY, EXTINF; no parts) rewritten after each
  segment; `#EXT-X-ENDLIST` once the stream is stopped;
- `*.tmp`: never trusted (deleted by `scan`).

Every file is written tmp -> fsync -> rename -> directory fsync, so a SIGKILLed server leaves
only whole files under final names and loses at most the segment in progress. `DiskWriter`
does the writes in order on one worker thread per stream: the event loop only queues them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pathlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from streamplat.hls.boxes import BoxError, BoxSplitter, parse_moof, parse_moov
from streamplat.hls.playlist import IndexEntry, init_name, render_index, segment_name

__all__ = [
    "INDEX_NAME",
    "DiskState",
    "DiskWriter",
    "fsync_dir",
    "scan",
    "segment_duration",
    "write_durably",
]

log = logging.getLogger(__name__)

INDEX_NAME = "stream.m3u8"
INIT_RE = re.compile(r"init_([1-9]\d{0,8})\.mp4")
SEGMENT_RE = re.compile(r"seg_([1-9]\d{0,8})_(\d{1,12})\.m4s")
_EXTINF_RE = re.compile(r"#EXTINF:([\d.]+),")


def write_durably(path: pathlib.Path, data: bytes) -> None:
    """Replace `path` with `data`: tmp file, fsync, rename, fsync of the directory."""
    # Unique per thread: two writers of one index (the stream's writer and a finaliser) never
    # share a temporary file; the last rename wins, and both write whole files.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: pathlib.Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_duration(init: bytes, segment: bytes) -> float:
    """Seconds of a segment file, from its moofs' leading-track sample durations."""
    boxes = BoxSplitter().feed(init)
    moov = next(box for kind, box in boxes if kind == b"moov")
    tracks = parse_moov(moov)
    media = [t for t in tracks if t.kind in ("video", "audio")]
    leading = next((t for t in media if t.kind == "video"), media[0] if media else tracks[0])
    ticks = 0
    for kind, box in BoxSplitter().feed(segment):
        if kind == b"moof":
            ticks += sum(t.duration for t in parse_moof(box, tracks) if t.track_id == leading.track_id)
    return ticks / leading.timescale


@dataclass(slots=True)
class DiskState:
    """What `scan` found: enough to continue the stream (next run, msn, dsn) and its index."""

    entries: list[IndexEntry] = field(default_factory=list)
    target_duration: int | None = None
    next_run: int = 1
    ended: bool = False

    @property
    def next_msn(self) -> int:
        return self.entries[-1].msn + 1 if self.entries else 0

    @property
    def next_dsn(self) -> int:
        """The dsn of the last run with segments (the next run's first segment adds one)."""
        runs = {e.run for e in self.entries}
        return max(0, len(runs) - 1)

    @property
    def has_media(self) -> bool:
        return bool(self.entries)


def scan(directory: pathlib.Path, segment_seconds: float = 1.0) -> DiskState:
    """Read back a stream's directory (creating it): runs, segments, TD; `.tmp` files deleted.

    Durations come from the index where it lists the segment, else from the segment's moofs.
    Blocking file I/O: run it on a thread.
    """
    directory.mkdir(parents=True, exist_ok=True)
    inits: set[int] = set()
    segments: list[tuple[int, int]] = []
    for name in os.listdir(directory):
        if name.endswith(".tmp"):
            (directory / name).unlink(missing_ok=True)
        elif match := INIT_RE.fullmatch(name):
            inits.add(int(match.group(1)))
        elif match := SEGMENT_RE.fullmatch(name):
            segments.append((int(match.group(2)), int(match.group(1))))
    segments.sort()
    known: dict[str, float] = {}
    state = DiskState()
    try:
        text = (directory / INDEX_NAME).read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        text = ""
    duration: float | None = None
    for line in text.splitlines():
        if line.startswith("#EXT-X-TARGETDURATION:"):
            try:
                state.target_duration = int(line.split(":", 1)[1])
            except ValueError:
                state.target_duration = None
        elif match := _EXTINF_RE.match(line):
            duration = float(match.group(1))
        elif line == "#EXT-X-ENDLIST":
            state.ended = True
        elif line and not line.startswith("#") and duration is not None:
            known[line.strip()] = duration
            duration = None
    for msn, run in segments:
        if run not in inits:
            log.warning("segment %s has no init_%d.mp4: left out of the index", segment_name(run, msn), run)
            continue
        name = segment_name(run, msn)
        seconds = known.get(name)
        if seconds is None:
            try:
                seconds = segment_duration(
                    (directory / init_name(run)).read_bytes(), (directory / name).read_bytes()
                )
            except (OSError, BoxError, StopIteration, IndexError) as exc:
                log.warning("cannot read %s (%s): left out of the index", name, exc)
                continue
        state.entries.append(IndexEntry(run, msn, seconds))
    state.next_run = max(inits, default=0) + 1
    if state.target_duration is None and state.entries:
        longest = max(e.duration for e in state.entries)
        state.target_duration = max(1, round(segment_seconds), round(longest))
    return state


class DiskWriter:
    """Ordered, durable writes of one stream's files on a single worker thread."""

    def __init__(
        self,
        directory: pathlib.Path,
        state: DiskState,
        on_durable: Callable[[str], None] | None = None,
    ) -> None:
        """`on_durable(name)` is called on the writer's thread after each init and segment file
        is durably under its final name (the live upload hook: it must only queue, never block)."""
        self.directory = directory
        self._on_durable = on_durable
        self._entries = list(state.entries)
        self._target_duration = state.target_duration
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hls-disk")
        self._last: concurrent.futures.Future[None] | None = None
        self.failed: str | None = None

    def _submit(self, job: object, *args: object) -> None:
        self._last = self._executor.submit(self._guarded, job, *args)

    def _guarded(self, job: object, *args: object) -> None:
        try:
            job(*args)  # type: ignore[operator]
        except OSError as exc:
            self.failed = f"cannot write the recording in {self.directory}: {exc}"
            log.error("%s", self.failed)
        except Exception:  # a bug must not vanish in an unread future
            self.failed = f"internal error writing the recording in {self.directory}"
            log.exception("%s", self.failed)

    def write_init(self, run: int, data: bytes) -> None:
        self._submit(self._durable, init_name(run), data)

    def _durable(self, name: str, data: bytes) -> None:
        write_durably(self.directory / name, data)
        if self._on_durable is not None:
            self._on_durable(name)

    def write_segment(self, run: int, msn: int, data: bytes, duration: float, target_duration: int) -> None:
        self._submit(self._segment, run, msn, data, duration, target_duration)

    def _segment(self, run: int, msn: int, data: bytes, duration: float, target_duration: int) -> None:
        self._durable(segment_name(run, msn), data)
        self._entries.append(IndexEntry(run, msn, duration))
        if self._target_duration is None:
            self._target_duration = target_duration
        self._write_index(ended=False)

    def _write_index(self, *, ended: bool) -> None:
        if not self._entries:
            return
        text = render_index(self._entries, self._target_duration or 1, ended=ended)
        write_durably(self.directory / INDEX_NAME, text.encode())

    def finish(self) -> None:
        """Queue the index with ENDLIST (the stream was stopped)."""
        self._submit(self._write_index_ended)

    def _write_index_ended(self) -> None:
        self._write_index(ended=True)

    def close(self) -> None:
        """Wait for every queued write (blocking: call it on a thread) and stop the worker."""
        self._executor.shutdown(wait=True)


def finalise_index(directory: pathlib.Path, segment_seconds: float = 1.0) -> bool:
    """End a stopped stream's index with ENDLIST, rebuilt from the files (crash left-overs too).

    True if the directory holds an fMP4 recording (init files); False leaves it untouched.
    Blocking file I/O.
    """
    if not directory.is_dir() or not any(INIT_RE.fullmatch(n) for n in os.listdir(directory)):
        return False
    state = scan(directory, segment_seconds)
    if state.entries:
        text = render_index(state.entries, state.target_duration or 1, ended=True)
        write_durably(directory / INDEX_NAME, text.encode())
    return True
