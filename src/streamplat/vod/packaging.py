"""Turn a stopped stream's HLS directory into a seekable MP4 and a JPEG thumbnail.

The media work only: no database, no events. The VOD service calls `package_recording`
from a background job and records the result.

How the MP4 is made, and why this way:

- The segments are joined byte for byte (FFmpeg's `concatf:` protocol over a list file) and
  remuxed with `-c copy`. MPEG-TS is designed to be cut and rejoined like this, so inside one
  publisher session the timestamps run on without a seam. The concat *demuxer* was measured
  and rejected: it re-bases every segment on an estimated duration (max stream end - min
  stream start), which leaves a gap of up to an audio frame at every segment boundary. On
  60 min of 2 s segments it made a 3715 s MP4 out of 3611 s of media, and took 33 s
  (it probes every file) where this takes about 5 s.
- A publisher reconnect restarts the timestamps. MPEG-TS is flagged as a format with
  timestamp discontinuities, so FFmpeg's demuxing loop detects the jump (by default: back by
  more than 0.1 s, or by more than 10 s either way; -dts_delta_threshold) and shifts all that
  follows so the output timeline stays continuous; both streams get the same shift, so A/V
  sync is kept. The threshold is left alone: lowering it would also "repair" the legitimate
  multi-second frame gaps of variable-frame-rate screen captures.
- A truncated last segment (server SIGKILLed) simply ends the byte stream early: all that
  was written before the cut is kept. A garbage segment in the middle is skipped by the
  demuxer's resync. Only a source with nothing decodable fails the job.
- Files appear under their final names only when complete (temp name, then `os.replace`),
  after an fsync, so a crash or power cut never leaves half a recording under a final name.
  The source segments are only read, never changed or removed: that is the caller's call.
  One job per `out_dir` at a time (the temp names are fixed, so a rerun cleans up after a
  crashed one).

Every FFmpeg child runs in its own process group and gets SIGKILL if this process dies
(PR_SET_PDEATHSIG), its stderr is always drained, and it is killed on timeout or
cancellation.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import shlex
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from streamplat.procs import die_with_parent, signal_group

log = logging.getLogger(__name__)

VIDEO_NAME = "video.mp4"
THUMBNAIL_NAME = "thumbnail.jpg"
# Temp files live next to the final ones (os.replace needs the same filesystem) and share a
# prefix so a leftover from a crash is easy to spot; a rerun overwrites and removes them.
_TEMP_PREFIX = ".packaging-"

_SEGMENT_NAME = re.compile(r"segment_(\d{5,})\.ts")
_DURATION = re.compile(r"^\s*Duration:\s*(?:(\d+):(\d{2}):(\d{2}(?:\.\d+)?)|N/A)")
_STREAM = re.compile(r"^\s*Stream #\d+:\d+\S*: (Video|Audio): ([^\s,]+)(.*)$")
# The frame size is a field of its own ("..., 640x360 [SAR 1:1 DAR 16:9], ..."); anchoring on
# ", " keeps codec tags such as "(avc1 / 0x31637661)" from passing for a size.
_FRAME_SIZE = re.compile(r", ([1-9]\d*)x([1-9]\d*)(?=[\s,]|$)")

_STDERR_TAIL_LINES = 12
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_STDERR_HEAD_CHARS = 64 * 1024  # probes need the header; remux warnings can run to megabytes

# How far into the recording the thumbnail is taken: past the black or "starting soon" opening,
# but well inside short recordings.
_THUMBNAIL_MAX_OFFSET_SECONDS = 10.0
_THUMBNAIL_OFFSET_FRACTION = 0.25
# The thumbnail filter picks the most typical of this many keyframes (keyframes only: they
# decode fast, are the sharpest frames, and 8 buffered 4K frames stay around 100 MB).
_THUMBNAIL_CANDIDATES = 8


@dataclass(frozen=True)
class MediaInfo:
    """What FFmpeg reports about a media file (first video and first audio stream)."""

    duration_seconds: float | None
    width: int | None
    height: int | None
    video_codec: str | None
    audio_codec: str | None


@dataclass(frozen=True)
class PackagedRecording:
    """A finished recording: both files exist under their final names."""

    video_path: Path
    thumbnail_path: Path
    duration_seconds: float
    file_size_bytes: int
    width: int | None
    height: int | None
    has_audio: bool


class PackagingError(Exception):
    """Packaging failed; `reason` is short, human, and ends with FFmpeg's last stderr lines."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- pure helpers --------------------------------------------------------------------------


def list_segments(media_dir: Path) -> list[Path]:
    """Return the HLS segments of a media directory in time (numeric) order."""
    try:
        entries = list(os.scandir(media_dir))
    except FileNotFoundError:
        return []
    numbered: list[tuple[int, Path]] = []
    for entry in entries:
        match = _SEGMENT_NAME.fullmatch(entry.name)
        if match and entry.is_file():
            numbered.append((int(match.group(1)), Path(entry.path)))
    numbered.sort()
    return [path for _, path in numbered]


def has_media(media_dir: Path) -> bool:
    """Tell whether the directory holds at least one non-empty segment."""
    return any(_size_or_zero(path) > 0 for path in list_segments(media_dir))


def parse_media_info(stderr: str) -> MediaInfo:
    """Parse the first input's duration and streams from the stderr of `ffmpeg -i FILE`."""
    duration: float | None = None
    width = height = None
    video_codec = audio_codec = None
    in_input = False
    for line in stderr.splitlines():
        if line.startswith("Input #"):
            if in_input:
                break  # only the first input
            in_input = True
            continue
        if line.startswith(("Output #", "Stream mapping:")):
            break
        if not in_input:
            continue
        if duration is None and (m := _DURATION.match(line)) and m.group(1) is not None:
            duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            continue
        stream = _STREAM.match(line)
        if stream is None:
            continue
        kind, codec, rest = stream.groups()
        if kind == "Video" and video_codec is None:
            video_codec = codec
            if size := _FRAME_SIZE.search(rest):
                width, height = int(size.group(1)), int(size.group(2))
        elif kind == "Audio" and audio_codec is None:
            audio_codec = codec
    return MediaInfo(duration, width, height, video_codec, audio_codec)


def build_remux_argv(ffmpeg: str, concat_list: Path, out: Path) -> list[str]:
    """Build the argv that joins the segments named in `concat_list` into an MP4 at `out`.

    `concat_list` is a `concatf:` list: one absolute `file:` URL per line.
    """
    return [
        ffmpeg,
        "-hide_banner",
        "-nostdin",  # never read the terminal; it is stopped by signals, and output is discarded
        "-nostats",
        "-loglevel",
        "warning",
        # Fill in a PTS where a publisher's encoder left one out; MP4 needs one on every packet.
        "-fflags",
        "+genpts",
        "-i",
        f"concatf:file:{concat_list}",
        # Every video and audio stream, and nothing else: data streams (SCTE-35, ID3 tags)
        # cannot go into MP4. The "?" keeps an audio-less (or video-less) stream from failing.
        "-map",
        "0:v?",
        "-map",
        "0:a?",
        "-c",
        "copy",
        # The timeline starts at 0 even when the first packets carry large or negative
        # timestamps (B-frames, a publisher's own clock).
        "-avoid_negative_ts",
        "make_zero",
        # moov before mdat, so a browser can seek before it has downloaded the whole file.
        "-movflags",
        "+faststart",
        "-f",
        "mp4",  # never guessed from the (temp) file name
        "-y",
        f"file:{out}",
    ]


def build_thumbnail_argv(ffmpeg: str, video: Path, out: Path, at_seconds: float) -> list[str]:
    """Build the argv that writes a representative frame at about `at_seconds` as a JPEG."""
    return [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        # Decode keyframes only: fast, sharp, and a handful of candidates span several seconds.
        "-skip_frame",
        "nokey",
        # Input seeking: jump to the keyframe before the offset instead of decoding up to it.
        "-ss",
        f"{max(at_seconds, 0.0):.3f}",
        "-i",
        f"file:{video}",
        "-map",
        "0:v:0",
        # The most typical frame of a batch (least different from the batch's mean histogram):
        # avoids picking a fade, a black frame or a transition.
        "-vf",
        f"thumbnail=n={_THUMBNAIL_CANDIDATES}",
        "-frames:v",
        "1",
        "-c:v",
        "mjpeg",
        "-q:v",
        "3",
        # One image under a fixed name (no %d pattern), overwritten if it exists.
        "-f",
        "image2",
        "-update",
        "1",
        "-y",
        f"file:{out}",
    ]


def thumbnail_offset(duration_seconds: float) -> float:
    """Return where to take the thumbnail: min(10 s, 25 % of the duration)."""
    return max(0.0, min(_THUMBNAIL_MAX_OFFSET_SECONDS, duration_seconds * _THUMBNAIL_OFFSET_FRACTION))


def _build_probe_argv(ffmpeg: str, media: Path) -> list[str]:
    # No output: FFmpeg prints the input's header and exits 1 ("At least one output file must
    # be specified"); the header is all we want and the file is not decoded.
    return [ffmpeg, "-hide_banner", "-nostdin", "-i", f"file:{media}"]


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- running FFmpeg ------------------------------------------------------------------------


@dataclass(frozen=True)
class _FfmpegRun:
    returncode: int
    head: str  # the first _STDERR_HEAD_CHARS of stderr
    tail: tuple[str, ...]  # the last _STDERR_TAIL_LINES non-empty lines of stderr
    lines: int  # number of non-empty stderr lines


async def _drain(stream: asyncio.StreamReader) -> tuple[str, tuple[str, ...], int]:
    # Read in chunks rather than readline(): a line longer than the reader's limit would raise,
    # and an undrained pipe stalls FFmpeg once the pipe buffer (64 KiB) is full.
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    head: list[str] = []
    head_len = 0
    tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
    lines = 0
    pending = ""
    while chunk := await stream.read(65536):
        text = decoder.decode(chunk)
        if head_len < _STDERR_HEAD_CHARS:
            head.append(text[: _STDERR_HEAD_CHARS - head_len])
            head_len += len(head[-1])
        *complete, pending = _LINE_BREAK.split(pending + text)
        for line in complete:
            if line.strip():
                tail.append(line.rstrip())
                lines += 1
    if pending.strip():
        tail.append(pending.rstrip())
        lines += 1
    return "".join(head), tuple(tail), lines


async def _run_ffmpeg(argv: list[str], *, what: str, log_prefix: str) -> _FfmpegRun:
    log.info("%sffmpeg %s: %s", log_prefix, what, shlex.join(argv))
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C on the server's terminal must not reach FFmpeg
        preexec_fn=die_with_parent(),
    )
    assert proc.stderr is not None
    try:
        head, tail, lines = await _drain(proc.stderr)
        returncode = await proc.wait()
    except BaseException:
        # Timeout or cancellation: whatever FFmpeg was writing is about to be deleted, so there
        # is nothing to finalise; SIGKILL and reap so no zombie or orphan is left.
        signal_group(proc, signal.SIGKILL)
        await proc.wait()
        log.warning("%sffmpeg %s killed (pid %d)", log_prefix, what, proc.pid)
        raise
    log.info(
        "%sffmpeg %s exited with code %d after %.2f s (%d stderr lines)",
        log_prefix,
        what,
        returncode,
        time.monotonic() - started,
        lines,
    )
    return _FfmpegRun(returncode, head, tail, lines)


def _failure(what: str, run: _FfmpegRun) -> PackagingError:
    last = "\n".join(run.tail) if run.tail else "(no output)"
    return PackagingError(f"{what} failed: ffmpeg exited with code {run.returncode}\n{last}")


# --- packaging -----------------------------------------------------------------------------


async def package_recording(
    ffmpeg: str,
    media_dir: Path,
    out_dir: Path,
    *,
    timeout_seconds: float = 3600,
    stream_id: str | None = None,
) -> PackagedRecording:
    """Package a stream's HLS segments as `out_dir/video.mp4` and `out_dir/thumbnail.jpg`.

    Raises PackagingError ("no media", an FFmpeg failure, or a timeout). On any failure or
    cancellation no temp file is left behind and existing final files are untouched.
    """
    log_prefix = f"stream {stream_id}: " if stream_id else ""
    started = time.monotonic()
    # Directory scans and fsyncs of a gigabyte file are blocking work: keep them off the loop.
    work = await asyncio.to_thread(_prepare, media_dir, out_dir)
    log.info("%spackaging %d segments from %s", log_prefix, work.segment_count, media_dir)
    try:
        async with asyncio.timeout(timeout_seconds):
            remux = await _run_ffmpeg(
                build_remux_argv(ffmpeg, work.concat_list, work.video_tmp),
                what="remux",
                log_prefix=log_prefix,
            )
            if remux.returncode != 0 or _size_or_zero(work.video_tmp) == 0:
                raise _failure("remux", remux)
            if remux.lines:
                # Reconnects, a truncated tail or skipped garbage show up here; worth a line.
                log.info("%sremux warnings (last lines): %s", log_prefix, " | ".join(remux.tail))

            probe = await _run_ffmpeg(
                _build_probe_argv(ffmpeg, work.video_tmp), what="probe", log_prefix=log_prefix
            )
            info = parse_media_info(probe.head)
            if info.video_codec is None:
                raise PackagingError("no video stream in the recording")
            if info.duration_seconds is None:
                raise _failure("reading the duration of the MP4", probe)
            duration = info.duration_seconds

            await _make_thumbnail(ffmpeg, work.video_tmp, work.thumbnail_tmp, duration, log_prefix)
            size = await asyncio.to_thread(_commit, work)
    except TimeoutError:
        raise PackagingError(f"timed out after {timeout_seconds:g} s") from None
    finally:
        await asyncio.to_thread(_remove_temp_files, work)

    log.info(
        "%spackaged %.1f s of %sx%s %s%s into %s (%d bytes) in %.2f s",
        log_prefix,
        duration,
        info.width,
        info.height,
        info.video_codec,
        f"+{info.audio_codec}" if info.audio_codec else "",
        work.video_path,
        size,
        time.monotonic() - started,
    )
    return PackagedRecording(
        video_path=work.video_path,
        thumbnail_path=work.thumbnail_path,
        duration_seconds=duration,
        file_size_bytes=size,
        width=info.width,
        height=info.height,
        has_audio=info.audio_codec is not None,
    )


@dataclass(frozen=True)
class _Workspace:
    segment_count: int
    concat_list: Path
    video_tmp: Path
    thumbnail_tmp: Path
    video_path: Path
    thumbnail_path: Path


def _prepare(media_dir: Path, out_dir: Path) -> _Workspace:
    segments = [path for path in list_segments(media_dir) if _size_or_zero(path) > 0]
    if not segments:
        raise PackagingError("no media")
    # Absolute: concatf resolves relative names against FFmpeg's cwd, not the list's directory.
    base = media_dir.resolve()
    urls = []
    for segment in segments:
        url = f"file:{base / segment.name}"
        if "\n" in url or "\r" in url:
            raise PackagingError(f"segment path cannot be listed for FFmpeg: {segment!r}")
        urls.append(url)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir = out_dir.resolve()
    work = _Workspace(
        segment_count=len(segments),
        concat_list=out_dir / f"{_TEMP_PREFIX}segments.txt",
        video_tmp=out_dir / f"{_TEMP_PREFIX}{VIDEO_NAME}",
        thumbnail_tmp=out_dir / f"{_TEMP_PREFIX}{THUMBNAIL_NAME}",
        video_path=out_dir / VIDEO_NAME,
        thumbnail_path=out_dir / THUMBNAIL_NAME,
    )
    work.concat_list.write_text("\n".join(urls) + "\n", encoding="utf-8")
    return work


def _commit(work: _Workspace) -> int:
    """Make both files durable, then visible under their final names; return the MP4's size."""
    # fsync before rename: the caller may delete the segments as soon as we return, and after a
    # power cut a renamed-but-unsynced file can come back empty.
    _fsync(work.video_tmp)
    _fsync(work.thumbnail_tmp)
    os.replace(work.video_tmp, work.video_path)
    os.replace(work.thumbnail_tmp, work.thumbnail_path)
    with contextlib.suppress(OSError):  # makes the renames durable; not every OS opens dirs
        _fsync(work.video_path.parent)
    return work.video_path.stat().st_size


def _remove_temp_files(work: _Workspace) -> None:
    for temp in (work.concat_list, work.video_tmp, work.thumbnail_tmp):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


async def _make_thumbnail(ffmpeg: str, video: Path, out: Path, duration: float, log_prefix: str) -> None:
    offset = thumbnail_offset(duration)
    run = await _run_ffmpeg(
        build_thumbnail_argv(ffmpeg, video, out, offset), what="thumbnail", log_prefix=log_prefix
    )
    if run.returncode == 0 and _size_or_zero(out) > 0:
        return
    if offset > 0:
        # A reported duration longer than the decodable video (damaged tail) can put the
        # offset past the last keyframe; the start of the recording is better than nothing.
        log.warning("%sno thumbnail at %.1f s, retrying at 0 s", log_prefix, offset)
        run = await _run_ffmpeg(
            build_thumbnail_argv(ffmpeg, video, out, 0.0), what="thumbnail", log_prefix=log_prefix
        )
        if run.returncode == 0 and _size_or_zero(out) > 0:
            return
    raise _failure("thumbnail", run)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
