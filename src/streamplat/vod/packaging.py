"""Turn a stopped stream's HLS directory into a seekable MP4 and a JPEG thumbnail.

The media work only: no database, no events. The VOD service calls `package_recording`
from a background job and records the result.

Two on-disk layouts are packaged (`detect_layout`):

- **fMP4** (the LL-HLS packager, `init_{run}.mp4` + `seg_{run}_{msn}.m4s`): one FFmpeg run per
  publisher session writes an init (ftyp+moov) and complete segments (moof+mdat pairs) that are
  byte-contiguous after it. Each run is one fMP4 file when its init and segments are joined
  byte for byte (a `concatf:` list), and the concat *demuxer* joins the runs
  (`runs.ffconcat` naming one `concatf:` list per run), then `-c copy` into a faststart MP4.
  Byte-joining across runs is wrong (a second moov is skipped and the timestamps go back), and
  the concat demuxer over bare segments fails (no moov); per-run lists need no temp media.
  The concat demuxer re-bases each run on the previous run's end, which is right here: seams
  only happen at reconnects. That end is the longest track's, so the video may get a hole of
  up to one audio frame (~21 ms) at a reconnect; the audio stays continuous. Inside a run
  the tfdt timestamps run on, so there is no per-segment seam.
- The files are trusted, not `stream.m3u8` (it may be stale after a crash), and each
  segment's box structure is checked first (headers only): one cut short (a crash, a full
  disk) gives its whole moof+mdat pairs (a `subfile:` byte range), one that does not start
  like a segment or is empty is skipped, and so is a run without a complete init or without
  segments; each of these is logged.
- A codec change between runs (the streamer changed OBS's output settings and reconnected)
  is detected by comparing the inits' `stsd` (bitrate fields left out), logged, and accepted:
  the MP4 keeps the first run's sample description, but the ingest copies H.264 parameter
  sets in-band from MPEG-TS, so FFmpeg decodes the new resolution (tested; browsers that
  honour in-band SPS should too, not tested). The TS layout has always behaved the same.
  Splitting the recording would change the API (one video per recording), and transcoding
  would cost minutes of CPU for a rare case. Not handled, and logged: a changed AAC config
  (it has no in-band copy), and a track kind the first run lacks (the concat demuxer takes
  the tracks from its first file; audio added in a later run is not in the MP4).
- **MPEG-TS** (FFmpeg's HLS muxer before LL-HLS, `segment_NNNNN.ts`): kept for recordings made
  before the switch; described below.

How the TS MP4 is made, and why this way:

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
import struct
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
# The fMP4 layout's names: decimal without padding, as the disk writer makes them. Anything else
# (a leading zero that would alias another file, a sign, 20 digits, a ".tmp" suffix, a path
# trick) is not one of ours and is ignored. A run number fits 9 digits and an MSN 18, so both
# stay far inside FFmpeg's and SQLite's 64-bit integers.
_INIT_NAME = re.compile(r"init_([1-9][0-9]{0,8})\.mp4")
_FMP4_SEGMENT_NAME = re.compile(r"seg_([1-9][0-9]{0,8})_(0|[1-9][0-9]{0,17})\.m4s")
# An init is ftyp+moov: a few KB. Anything far bigger is not an init and is not read into memory.
_MAX_INIT_BYTES = 4 * 1024 * 1024
# Top-level boxes a segment may hold (ISO/IEC 23009-1 and 14496-12); anything else at offset 0
# means the file is not a segment.
_SEGMENT_BOXES = frozenset({b"styp", b"sidx", b"ssix", b"prft", b"emsg", b"moof", b"mdat", b"free", b"skip"})
_CONTAINER_PATH_TO_STSD = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd")
_MAX_MOOF_BYTES = 1024 * 1024  # FFmpeg's are ~0.1-1 KB; a bigger one is only partly counted
_SCAN_WINDOW_BYTES = 4096
# The MP4's moov goes into space kept free before the media (-moov_size), which saves
# +faststart's second pass over the whole file (it shifts the media to put the moov first):
# on 10 min of 2.6 Mbps fMP4 the remux + fsync took 1.55 s instead of 1.88 s (medians of 4,
# interleaved). The moov needs ~13 bytes per sample here (stsz 4, ctts 8 with B-frames, a
# share of stts/stss/stco); 24 covers variable frame rates too (stts 8 more per sample). The
# unused rest stays in the file as a `free` box (~0.3 % of the size). If it still does not
# fit, FFmpeg says so and the remux is rerun with +faststart.
_MOOV_RESERVE_BASE = 64 * 1024
_MOOV_RESERVE_PER_SAMPLE = 24
_MOOV_TOO_SMALL = "reserved_moov_size is too small"
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


@dataclass(frozen=True)
class FragmentedRun:
    """One publisher session of the fMP4 layout: its init (if present) and its segments in order."""

    run: int
    init: Path | None
    segments: tuple[Path, ...]


def list_runs(media_dir: Path) -> list[FragmentedRun]:
    """Return the fMP4 runs of a media directory, by run number, segments by MSN.

    Only regular files under the layout's exact names count: `.tmp` files, symlinks,
    directories and look-alike names are ignored.
    """
    try:
        entries = list(os.scandir(media_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    inits: dict[int, Path] = {}
    segments: dict[int, list[tuple[int, Path]]] = {}
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        if match := _INIT_NAME.fullmatch(entry.name):
            inits[int(match.group(1))] = Path(entry.path)
        elif match := _FMP4_SEGMENT_NAME.fullmatch(entry.name):
            segments.setdefault(int(match.group(1)), []).append((int(match.group(2)), Path(entry.path)))
    return [
        FragmentedRun(run, inits.get(run), tuple(path for _, path in sorted(segments.get(run, []))))
        for run in sorted(inits.keys() | segments.keys())
    ]


def detect_layout(media_dir: Path) -> str | None:
    """Return "fmp4" (`init_*.mp4` or `seg_*_*.m4s`), "ts" (`segment_*.ts`), or None (neither)."""
    if list_runs(media_dir):
        return "fmp4"
    if list_segments(media_dir):
        return "ts"
    return None


def has_media(media_dir: Path) -> bool:
    """Tell whether the directory holds something to package, in either layout.

    TS: a non-empty segment. fMP4: a run with a non-empty init and a non-empty segment.
    """
    if any(_size_or_zero(path) > 0 for path in list_segments(media_dir)):
        return True
    return any(
        run.init is not None
        and _size_or_zero(run.init) > 0
        and any(_size_or_zero(segment) > 0 for segment in run.segments)
        for run in list_runs(media_dir)
    )


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
        *_mp4_output(out, ["-movflags", "+faststart"]),
    ]


def _mp4_output(out: Path, moov: list[str]) -> list[str]:
    """The output half of a remux argv: every A/V stream copied into an MP4 at `out`.

    `moov` places the moov before mdat, so a browser can seek before it has downloaded the
    whole file: `+faststart` (a second pass) or `-moov_size` (space reserved up front).
    """
    return [
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
        *moov,
        "-f",
        "mp4",  # never guessed from the (temp) file name
        "-y",
        f"file:{out}",
    ]


def build_runs_remux_argv(
    ffmpeg: str, runs_list: Path, out: Path, moov_reserve: int | None = None
) -> list[str]:
    """Build the argv that joins the fMP4 runs named in `runs_list` into an MP4 at `out`.

    `runs_list` is an ffconcat file with one `concatf:` list per run (its init, then its
    segments, as `file:` or `subfile:` URLs). With `moov_reserve` (bytes), the moov is written
    into that much space kept free before the media, instead of `+faststart`'s second pass.
    """
    moov = ["-moov_size", str(moov_reserve)] if moov_reserve else ["-movflags", "+faststart"]
    return [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        # The lists may only name local files, byte ranges of them and other lists: nothing a
        # crafted file name could turn into a network fetch or a device.
        "-protocol_whitelist",
        "file,concatf,subfile",
        "-f",
        "concat",
        # The entries are `concatf:` URLs, which the demuxer's "safe" mode rejects as unsafe;
        # every one of them is written by us from a directory scan.
        "-safe",
        "0",
        "-i",
        f"file:{runs_list}",
        *_mp4_output(out, moov),
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
    work = await asyncio.to_thread(_prepare, media_dir, out_dir, log_prefix)
    log.info(
        "%spackaging %d %s segments%s from %s",
        log_prefix,
        work.segment_count,
        work.layout,
        f" of {work.run_count} runs" if work.layout == "fmp4" else "",
        media_dir,
    )
    try:
        async with asyncio.timeout(timeout_seconds):
            if work.layout == "fmp4":
                argv = build_runs_remux_argv(ffmpeg, work.concat_list, work.video_tmp, work.moov_reserve)
            else:
                argv = build_remux_argv(ffmpeg, work.concat_list, work.video_tmp)
            remux = await _run_ffmpeg(argv, what="remux", log_prefix=log_prefix)
            if work.moov_reserve and remux.returncode != 0 and _MOOV_TOO_SMALL in "\n".join(remux.tail):
                log.warning(
                    "%sthe moov did not fit in %d bytes, remuxing with +faststart",
                    log_prefix,
                    work.moov_reserve,
                )
                argv = build_runs_remux_argv(ffmpeg, work.concat_list, work.video_tmp)
                remux = await _run_ffmpeg(argv, what="remux", log_prefix=log_prefix)
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
    layout: str  # "ts" or "fmp4"
    segment_count: int
    run_count: int
    concat_list: Path  # what FFmpeg's -i names: a concatf list (TS) or an ffconcat (fMP4)
    run_lists: tuple[Path, ...]  # fMP4: one concatf list per run
    moov_reserve: int | None  # fMP4: bytes kept for the moov before the media
    video_tmp: Path
    thumbnail_tmp: Path
    video_path: Path
    thumbnail_path: Path


def _prepare(media_dir: Path, out_dir: Path, log_prefix: str = "") -> _Workspace:
    layout = detect_layout(media_dir)
    if layout is None:
        raise PackagingError("no media")
    # Absolute: concatf resolves relative names against FFmpeg's cwd, not the list's directory.
    base = media_dir.resolve()
    run_entries: list[tuple[int, list[str]]] = []
    moov_reserve: int | None
    if layout == "fmp4":
        run_entries, samples = _fmp4_run_entries(base, log_prefix)
        moov_reserve = _MOOV_RESERVE_BASE + _MOOV_RESERVE_PER_SAMPLE * samples
        segment_count = sum(len(urls) - 1 for _, urls in run_entries)
        if not segment_count:
            found = sum(len(run.segments) for run in list_runs(media_dir))
            raise PackagingError(
                f"no media: none of the {found} segments is readable" if found else "no media"
            )
        if segments := list_segments(media_dir):
            log.warning(
                "%s%d MPEG-TS segments next to the fMP4 runs are not packaged (%s .. %s)",
                log_prefix,
                len(segments),
                segments[0].name,
                segments[-1].name,
            )
    else:
        segments = [path for path in list_segments(media_dir) if _size_or_zero(path) > 0]
        if not segments:
            raise PackagingError("no media")
        run_entries = [(0, [_file_url(base / segment.name) for segment in segments])]
        segment_count = len(segments)
        moov_reserve = None

    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir = out_dir.resolve()
    _remove_leftovers(out_dir)
    run_lists = tuple(out_dir / f"{_TEMP_PREFIX}run-{run}.list" for run, _ in run_entries)
    work = _Workspace(
        layout=layout,
        segment_count=segment_count,
        run_count=len(run_entries),
        concat_list=out_dir
        / (f"{_TEMP_PREFIX}runs.ffconcat" if layout == "fmp4" else f"{_TEMP_PREFIX}segments.txt"),
        run_lists=run_lists if layout == "fmp4" else (),
        moov_reserve=moov_reserve,
        video_tmp=out_dir / f"{_TEMP_PREFIX}{VIDEO_NAME}",
        thumbnail_tmp=out_dir / f"{_TEMP_PREFIX}{THUMBNAIL_NAME}",
        video_path=out_dir / VIDEO_NAME,
        thumbnail_path=out_dir / THUMBNAIL_NAME,
    )
    if layout == "fmp4":
        for run_list, (_, urls) in zip(run_lists, run_entries, strict=True):
            run_list.write_text(_concatf_list(urls), encoding="utf-8")
        # ffconcat quoting: inside '...' only the quote itself needs escaping ('\'' closes,
        # escapes and reopens); the names are ours, but the data directory's path is not.
        lines = ["ffconcat version 1.0"]
        lines += ["file '" + f"concatf:{run_list}".replace("'", "'\\''") + "'" for run_list in run_lists]
        work.concat_list.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        work.concat_list.write_text(_concatf_list(run_entries[0][1]), encoding="utf-8")
    return work


def _concatf_list(urls: list[str]) -> str:
    """Write URLs as a `concatf:` list: one a line, read back with av_get_token's escaping."""
    # concatf tokenises each line: a quote starts a quoted string, a backslash escapes, and
    # blanks at either end are trimmed. A backslash before each of them keeps the name as is.
    return "".join(re.sub(r"([\\'\s])", r"\\\1", url) + "\n" for url in urls)


def _file_url(path: Path) -> str:
    url = f"file:{path}"
    if "\n" in url or "\r" in url:
        raise PackagingError(f"segment path cannot be listed for FFmpeg: {str(path)!r}")
    return url


def _fmp4_run_entries(base: Path, log_prefix: str) -> tuple[list[tuple[int, list[str]]], int]:
    """Return (run, [init URL, segment URLs...]) for every run worth packaging, logging the
    rest, and the number of samples (all tracks) in what is listed."""
    entries: list[tuple[int, list[str]]] = []
    samples = 0
    previous: tuple[int, tuple[bytes, ...]] | None = None
    first_kinds: set[str] = set()
    for run in list_runs(base):
        if run.init is None:
            log.warning(
                "%srun %d: no init_%d.mp4, its %d segments are skipped",
                log_prefix,
                run.run,
                run.run,
                len(run.segments),
            )
            continue
        descriptions = _read_init_descriptions(run.init)
        if descriptions is None:
            log.warning(
                "%srun %d: %s is not a complete init (ftyp+moov), the run is skipped",
                log_prefix,
                run.run,
                run.init.name,
            )
            continue
        urls = [_file_url(run.init)]
        for segment in run.segments:
            size = _size_or_zero(segment)
            valid, segment_samples = _scan_segment(segment)
            if valid > 0:
                samples += segment_samples
            if valid == size and size > 0:
                urls.append(_file_url(segment))
            elif valid > 0:
                # Keep the whole fragments before the damage; the rest cannot be parsed.
                log.warning(
                    "%s%s: only the first %d of %d bytes are whole fragments; the rest is dropped",
                    log_prefix,
                    segment.name,
                    valid,
                    size,
                )
                url = _file_url(segment)
                urls.append(f"subfile,,start,0,end,{valid},,:{url}")
            else:
                log.warning(
                    "%s%s: %s, skipped",
                    log_prefix,
                    segment.name,
                    "empty" if size == 0 else "not an fMP4 segment",
                )
        if len(urls) == 1:
            log.warning("%srun %d: no usable segments, skipped", log_prefix, run.run)
            continue
        if previous is not None and descriptions != previous[1]:
            log.warning(
                "%srun %d: the codec settings (stsd) differ from run %d's; the MP4 keeps the first "
                "run's sample description and relies on in-band parameter sets for this run",
                log_prefix,
                run.run,
                previous[0],
            )
        if entries and (missing := _track_kinds(descriptions) - first_kinds):
            # The concat demuxer takes its tracks from the first file: a track kind that run
            # lacks cannot be added later (its codec parameters are unknown when the MP4's
            # header is written).
            log.warning(
                "%srun %d has %s but run %d has none: the MP4 has no such track, so this "
                "run's %s is not in the recording",
                log_prefix,
                run.run,
                " and ".join(sorted(missing)),
                entries[0][0],
                " and ".join(sorted(missing)),
            )
        if not entries:
            first_kinds = _track_kinds(descriptions)
        previous = (run.run, descriptions)
        entries.append((run.run, urls))
    return entries, samples


def _track_kinds(descriptions: tuple[bytes, ...]) -> set[str]:
    """Return {"video", "audio"} as far as the sample descriptions' formats tell."""
    kinds = set()
    for description in descriptions:
        if description[:4] in _VISUAL_FORMATS:
            kinds.add("video")
        elif description[:4] in _AUDIO_FORMATS:
            kinds.add("audio")
    return kinds


def _remove_leftovers(out_dir: Path) -> None:
    """Remove temp files of a crashed earlier job on this out_dir (one job per out_dir at a time)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(out_dir):
            if entry.name.startswith(_TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


# --- the ISO-BMFF structure of the fMP4 layout ---------------------------------------------


def _iter_boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """Return (type, payload_start, box_end) for the boxes laid end to end in data[start:end].

    Raises ValueError on a box that does not fit.
    """
    boxes = []
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise ValueError("truncated box header")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise ValueError("truncated box header")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"box {kind!r} of {size} bytes does not fit")
        boxes.append((kind, pos + header, pos + size))
        pos += size
    return boxes


def _read_init_descriptions(init: Path) -> tuple[bytes, ...] | None:
    """Return the raw `stsd` payload of each track of a complete init, or None if it is not one."""
    try:
        with init.open("rb") as f:
            data = f.read(_MAX_INIT_BYTES + 1)
    except OSError:
        return None
    if not data or len(data) > _MAX_INIT_BYTES:
        return None
    try:
        top = _iter_boxes(data, 0, len(data))
        moovs = [(payload, end) for kind, payload, end in top if kind == b"moov"]
        if not moovs:
            return None
        spans = [moovs[0]]
        for kind in _CONTAINER_PATH_TO_STSD[1:]:
            spans = [
                (p, e) for start, stop in spans for k, p, e in _iter_boxes(data, start, stop) if k == kind
            ]
    except ValueError:
        return None
    if not spans:
        return None
    try:
        return tuple(_codec_signature(data, start, stop) for start, stop in spans)
    except (ValueError, struct.error):
        return tuple(data[start:stop] for start, stop in spans)  # compared as raw bytes then


# Bytes of the fixed part of a sample entry before its child boxes (ISO/IEC 14496-12 §12.1.3,
# §12.2.3): SampleEntry's 8 + VisualSampleEntry's 70, or + AudioSampleEntry's 20.
_VISUAL_ENTRY_FIXED = 78
_AUDIO_ENTRY_FIXED = 28
_VISUAL_FORMATS = frozenset({b"avc1", b"avc3", b"hvc1", b"hev1", b"av01", b"vp08", b"vp09"})
_AUDIO_FORMATS = frozenset({b"mp4a", b"Opus", b"ac-3", b"ec-3", b"fLaC", b".mp3"})
# Children that only describe bitrates: they differ between two runs of the same settings.
_BITRATE_ONLY_BOXES = frozenset({b"btrt"})


def _codec_signature(data: bytes, start: int, stop: int) -> bytes:
    """Reduce an `stsd` payload to what decoding depends on, leaving out bitrate statistics.

    Two sessions with the same OBS settings give byte-different inits: FFmpeg writes the
    measured bitrates into `btrt` and the `esds` descriptor. The signature keeps the format,
    the fixed fields (size, channels, sample rate) and every child box, with `esds` reduced to
    its DecoderSpecificInfo (the AAC AudioSpecificConfig).
    """
    parts = []
    for kind, payload, end in _iter_boxes(data, start + 8, stop):  # after version+flags+count
        fixed = _VISUAL_ENTRY_FIXED if kind in _VISUAL_FORMATS else _AUDIO_ENTRY_FIXED
        if kind not in _VISUAL_FORMATS and kind not in _AUDIO_FORMATS:
            parts.append(kind + data[payload:end])
            continue
        parts.append(kind + data[payload : payload + fixed])
        for child, child_payload, child_end in _iter_boxes(data, payload + fixed, end):
            if child in _BITRATE_ONLY_BOXES:
                continue
            body = data[child_payload:child_end]
            parts.append(child + (_esds_decoder_specific_info(body) if child == b"esds" else body))
    return b"|".join(parts)


def _esds_decoder_specific_info(esds: bytes) -> bytes:
    """Return the DecoderSpecificInfo of an `esds` payload (ISO/IEC 14496-1 §7.2.6)."""

    def descriptor(pos: int) -> tuple[int, int, int]:  # (tag, body start, body end)
        tag = esds[pos]
        pos += 1
        length = 0
        for _ in range(4):
            byte = esds[pos]
            pos += 1
            length = (length << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        if pos + length > len(esds):
            raise ValueError("descriptor does not fit")
        return tag, pos, pos + length

    tag, pos, end = descriptor(4)  # after version+flags
    if tag != 0x03:
        raise ValueError("no ES_Descriptor")
    flags = esds[pos + 2]
    pos += 3  # ES_ID, flags
    if flags & 0x80:
        pos += 2  # dependsOn_ES_ID
    if flags & 0x40:
        pos += 1 + esds[pos]  # URL
    if flags & 0x20:
        pos += 2  # OCR_ES_Id
    tag, pos, end = descriptor(pos)
    if tag != 0x04:
        raise ValueError("no DecoderConfigDescriptor")
    # objectTypeIndication (1), streamType (1), bufferSizeDB (3), maxBitrate (4), avgBitrate (4)
    object_type = esds[pos : pos + 1]
    pos += 13
    while pos < end:
        tag, body, body_end = descriptor(pos)
        if tag == 0x05:
            return object_type + esds[body:body_end]
        pos = body_end
    return object_type


def _scan_segment(segment: Path) -> tuple[int, int]:
    """Return how many leading bytes of a segment are whole boxes, up to its last whole mdat,
    and how many samples (all tracks) the moofs in those bytes describe.

    Reads box headers and moofs only, with pread (a buffered file would read 8 KiB of mdat
    per box). A segment written completely gives its size; one cut short gives the end of its
    last complete fragment; one that does not start like a segment gives 0.
    """
    valid = samples = pending = 0
    try:
        fd = os.open(segment, os.O_RDONLY)
    except OSError:
        return 0, 0
    try:
        size = os.fstat(fd).st_size
        # One pread per fragment: a window from the moof's start holds the moof and the header
        # of the mdat after it; only the mdat's payload is skipped.
        window, window_start = b"", 0
        pos = 0
        while pos + 8 <= size:
            offset = pos - window_start
            if offset < 0 or offset + 16 > len(window):
                window, window_start, offset = os.pread(fd, _SCAN_WINDOW_BYTES, pos), pos, 0
            header = window[offset : offset + 16]
            box_size, kind = struct.unpack_from(">I4s", header)
            header_size = 8
            if box_size == 1:
                if len(header) < 16:
                    break
                (box_size,) = struct.unpack_from(">Q", header, 8)
                header_size = 16
            elif box_size == 0:
                box_size = size - pos
            if kind not in _SEGMENT_BOXES or box_size < header_size or pos + box_size > size:
                break
            if kind == b"moof":
                if offset + box_size > len(window):
                    window, window_start, offset = (
                        os.pread(fd, min(box_size, _MAX_MOOF_BYTES) + 16, pos),
                        pos,
                        0,
                    )
                pending += _moof_samples(window[offset : offset + box_size])
            pos += box_size
            if kind == b"mdat":
                valid = pos
                samples += pending
                pending = 0
    except OSError:
        return 0, 0
    finally:
        os.close(fd)
    return valid, samples


def _moof_samples(moof: bytes) -> int:
    """Return the sum of the trun sample counts of a moof (0 if it cannot be read)."""
    count = 0
    try:
        for kind, payload, end in _iter_boxes(moof, 8, len(moof)):
            if kind == b"traf":
                for child, child_payload, _ in _iter_boxes(moof, payload, end):
                    if child == b"trun":
                        (n,) = struct.unpack_from(">I", moof, child_payload + 4)  # after version+flags
                        count += n
    except (ValueError, struct.error):
        return 0
    return count


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
    for temp in (work.concat_list, *work.run_lists, work.video_tmp, work.thumbnail_tmp):
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
