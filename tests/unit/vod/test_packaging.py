"""Packaging a stopped stream's HLS directory into a seekable MP4 and a thumbnail."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamplat.vod.packaging import (
    MediaInfo,
    PackagingError,
    build_remux_argv,
    build_thumbnail_argv,
    has_media,
    list_segments,
    package_recording,
    parse_media_info,
    thumbnail_offset,
)

# --- stderr captured from FFmpeg 9 -------------------------------------------------------------

PACKAGED_MP4_STDERR = """\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'a_out/video.mp4':
  Metadata:
    major_brand     : isom
    minor_version   : 512
    compatible_brands: isomiso2avc1mp41
    encoder         : Lavf63.1.102
  Duration: 00:00:10.04, start: 0.000000, bitrate: 2071 kb/s
  Stream #0:0[0x1](und): Video: h264 (Constrained Baseline) (avc1 / 0x31637661), yuv420p(progressive), \
640x360 [SAR 1:1 DAR 16:9], 2001 kb/s, 30 fps, 30 tbr, 90k tbn, start 0.023222 (default)
    Metadata:
      handler_name    : VideoHandler
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp, 69 kb/s (default)
    Metadata:
      handler_name    : SoundHandler
At least one output file must be specified
"""

THUMBNAIL_STDERR = """\
Input #0, image2, from 'a_out/thumbnail.jpg':
  Duration: 00:00:00.04, start: 0.000000, bitrate: 3943 kb/s
  Stream #0:0: Video: mjpeg (Baseline), yuvj420p(pc, bt470bg/unknown/unknown), 640x360 [SAR 1:1 DAR 16:9], \
25 fps, 25 tbr, 25 tbn
At least one output file must be specified
"""

AUDIO_ONLY_STDERR = """\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'aud.m4a':
  Metadata:
    major_brand     : M4A
  Duration: 00:00:03.00, start: 0.000000, bitrate: 73 kb/s
  Stream #0:0[0x1](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp, 69 kb/s (default)
At least one output file must be specified
"""

HD_MKV_STDERR = """\
Input #0, matroska,webm, from 'hd.mkv':
  Metadata:
    ENCODER         : Lavf63.1.102
  Duration: 01:02:03.50, start: 0.000000, bitrate: 12750 kb/s
  Stream #0:0: Video: h264 (High), yuv420p(tv, bt709/unknown/unknown, progressive), 1920x1080 \
[SAR 1:1 DAR 16:9], 25 fps, 25 tbr, 1k tbn
"""

# A whole remux run: the TS input's header, then the output's, which must not be mixed in.
TS_REMUX_STDERR = """\
Input #0, mpegts, from 'a/segment_00000.ts':
  Duration: N/A, start: 1.400000, bitrate: N/A
  Program 1
    Metadata:
      service_name    : Service01
      service_provider: FFmpeg
  Stream #0:0[0x100]: Video: h264 (Constrained Baseline) ([27][0][0][0] / 0x001B), yuv420p(progressive), \
640x360 [SAR 1:1 DAR 16:9], 30 fps, 30 tbr, 90k tbn, start 1.423222
  Stream #0:1[0x101]: Audio: aac (LC) ([15][0][0][0] / 0x000F), 44100 Hz, mono, fltp, 72 kb/s, start 1.400000
Stream mapping:
  Stream #0:0 -> #0:0 (copy)
  Stream #0:1 -> #0:1 (copy)
Output #0, mp4, to 'out.mp4':
  Stream #0:0: Video: h264 (avc1 / 0x31637661), yuv420p(progressive), 1280x720, q=2-31, 30 fps
  Stream #0:1: Audio: opus, 48000 Hz, stereo
"""


def test_parse_media_info_reads_duration_size_and_codecs_of_a_packaged_mp4() -> None:
    assert parse_media_info(PACKAGED_MP4_STDERR) == MediaInfo(10.04, 640, 360, "h264", "aac")


def test_parse_media_info_reads_a_jpeg_thumbnail() -> None:
    info = parse_media_info(THUMBNAIL_STDERR)
    assert (info.width, info.height, info.video_codec, info.audio_codec) == (640, 360, "mjpeg", None)


def test_parse_media_info_reads_audio_only_media() -> None:
    assert parse_media_info(AUDIO_ONLY_STDERR) == MediaInfo(3.0, None, None, None, "aac")


def test_parse_media_info_reads_hours_and_a_size_after_parenthesised_commas() -> None:
    info = parse_media_info(HD_MKV_STDERR)
    assert info.duration_seconds == pytest.approx(3723.5)
    assert (info.width, info.height) == (1920, 1080)


def test_parse_media_info_reads_only_the_input_section() -> None:
    # "Duration: N/A" is no duration, and the output's 1280x720/opus is not the input.
    assert parse_media_info(TS_REMUX_STDERR) == MediaInfo(None, 640, 360, "h264", "aac")


def test_parse_media_info_of_an_error_is_all_unknown() -> None:
    stderr = "[in#0 @ 0x55] Error opening input: Invalid data found when processing input\n"
    assert parse_media_info(stderr) == MediaInfo(None, None, None, None, None)


# --- argv builders -----------------------------------------------------------------------------


def test_remux_argv_copies_streams_into_a_faststart_mp4() -> None:
    argv = build_remux_argv("ffmpeg", Path("/vod/.list.txt"), Path("/vod/.video.mp4"))
    pairs = list(itertools.pairwise(argv))
    assert argv[0] == "ffmpeg"
    assert ("-i", "concatf:file:/vod/.list.txt") in pairs
    assert ("-c", "copy") in pairs  # no transcoding
    assert ("-movflags", "+faststart") in pairs
    assert ("-map", "0:v?") in pairs and ("-map", "0:a?") in pairs
    assert ("-f", "mp4") in pairs
    assert argv[-1] == "file:/vod/.video.mp4"


def test_thumbnail_argv_seeks_and_picks_a_representative_frame() -> None:
    argv = build_thumbnail_argv("ffmpeg", Path("/vod/v.mp4"), Path("/vod/t.jpg"), 7.25)
    pairs = list(itertools.pairwise(argv))
    assert argv.index("-ss") < argv.index("-i")  # input seeking: fast on long recordings
    assert ("-ss", "7.250") in pairs
    assert any(flag == "-vf" and value.startswith("thumbnail") for flag, value in pairs)
    assert ("-frames:v", "1") in pairs
    assert argv[-1] == "file:/vod/t.jpg"


@pytest.mark.parametrize(("duration", "expected"), [(3600.0, 10.0), (20.0, 5.0), (0.4, 0.1), (0.0, 0.0)])
def test_thumbnail_offset_is_ten_seconds_or_a_quarter_of_short_recordings(
    duration: float, expected: float
) -> None:
    assert thumbnail_offset(duration) == pytest.approx(expected)


# --- the media directory -----------------------------------------------------------------------


def test_list_segments_is_in_numeric_order_and_ignores_other_files(tmp_path: Path) -> None:
    for name in ["segment_00010.ts", "segment_00002.ts", "segment_100000.ts", "segment_00009.ts"]:
        (tmp_path / name).write_bytes(b"x")
    for name in ["stream.m3u8", "segment_1.ts", "segment_00003.ts.tmp", "init.mp4", "segment_0000a.ts"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "segment_00004.ts").mkdir()
    names = [path.name for path in list_segments(tmp_path)]
    assert names == ["segment_00002.ts", "segment_00009.ts", "segment_00010.ts", "segment_100000.ts"]


def test_has_media_needs_a_non_empty_segment(tmp_path: Path) -> None:
    assert not has_media(tmp_path / "missing")
    assert not has_media(tmp_path)
    (tmp_path / "stream.m3u8").write_text("#EXTM3U\n")
    (tmp_path / "segment_00000.ts").write_bytes(b"")
    assert not has_media(tmp_path)
    (tmp_path / "segment_00001.ts").write_bytes(b"G" * 188)
    assert has_media(tmp_path)


# --- packaging real media ----------------------------------------------------------------------


def _top_level_boxes(mp4: Path) -> list[str]:
    boxes = []
    with mp4.open("rb") as f:
        while header := f.read(8):
            size, kind = struct.unpack(">I4s", header)
            header_size = 8
            if size == 1:  # 64-bit size follows
                (size,) = struct.unpack(">Q", f.read(8))
                header_size = 16
            boxes.append(kind.decode("latin-1"))
            if size == 0:  # box runs to the end of the file
                break
            f.seek(size - header_size, os.SEEK_CUR)
    return boxes


def _probe(ffmpeg: str, media: Path) -> MediaInfo:
    done = subprocess.run([ffmpeg, "-hide_banner", "-i", str(media)], capture_output=True, text=True)
    return parse_media_info(done.stderr)


def _decode(ffmpeg: str, media: Path) -> subprocess.CompletedProcess[str]:
    """Decode every frame of every stream, reporting only errors."""
    return subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(media), "-f", "null", "-"], capture_output=True, text=True
    )


def _video_timestamps(ffmpeg: str, mp4: Path) -> list[float]:
    """Return the video packets' DTS in seconds, in file order."""
    done = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(mp4), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    timebase = 90000
    stamps = []
    for line in done.stdout.splitlines():
        if line.startswith("#tb 0:"):
            timebase = int(line.split("/")[1])
        elif not line.startswith("#"):
            stamps.append(int(line.split(",")[1]) / timebase)
    return stamps


def _mean_brightness(ffmpeg: str, image: Path) -> int:
    done = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(image), "-vf", "scale=1:1,format=gray", "-f", "rawvideo", "-"],
        capture_output=True,
        check=True,
    )
    return done.stdout[0]


def _names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _assert_only_final_files(out_dir: Path) -> None:
    assert _names_in(out_dir) == ["thumbnail.jpg", "video.mp4"]


@pytest.mark.asyncio
async def test_package_recording_makes_a_seekable_complete_mp4(
    ffmpeg: str, media_dir: Path, out_dir: Path
) -> None:
    recording = await package_recording(ffmpeg, media_dir, out_dir, stream_id="s-happy")

    assert recording.video_path.name == "video.mp4"
    assert recording.video_path.parent.samefile(out_dir)
    assert recording.file_size_bytes == recording.video_path.stat().st_size > 0
    boxes = _top_level_boxes(recording.video_path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart: seekable while downloading
    info = _probe(ffmpeg, recording.video_path)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert recording.has_audio
    assert (recording.width, recording.height) == (640, 360)
    assert recording.duration_seconds == pytest.approx(6.0, abs=0.5)
    decoded = _decode(ffmpeg, recording.video_path)
    assert (decoded.returncode, decoded.stderr) == (0, "")
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_thumbnail_is_a_jpeg_of_the_video_size_past_the_black_opening(
    ffmpeg: str, media_dir: Path, out_dir: Path
) -> None:
    recording = await package_recording(ffmpeg, media_dir, out_dir)

    assert recording.thumbnail_path.read_bytes()[:2] == b"\xff\xd8"
    info = _probe(ffmpeg, recording.thumbnail_path)
    assert (info.width, info.height) == (recording.width, recording.height)
    # The media's first second is black (luma 16 in video range); the thumbnail must not be.
    assert _mean_brightness(ffmpeg, recording.thumbnail_path) > 40


@pytest.mark.asyncio
async def test_reconnect_yields_one_continuous_recording(
    ffmpeg: str, reconnect_media_dir: Path, out_dir: Path
) -> None:
    recording = await package_recording(ffmpeg, reconnect_media_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(6.0 + 4.0, abs=0.5)
    stamps = _video_timestamps(ffmpeg, recording.video_path)
    assert len(stamps) == 10 * 30  # every frame of both sessions
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    # Continuous: no jump back to 0 at the reconnect, no hole, no seam at segment boundaries.
    assert min(steps) > 0
    assert max(steps) < 2 / 30
    decoded = _decode(ffmpeg, recording.video_path)
    assert (decoded.returncode, decoded.stderr) == (0, "")
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_truncated_last_segment_is_salvaged(ffmpeg: str, media_dir: Path, out_dir: Path) -> None:
    # What a SIGKILLed server leaves: the segment being written is cut off mid-packet.
    last = list_segments(media_dir)[-1]
    os.truncate(last, last.stat().st_size // 2 + 7)

    recording = await package_recording(ffmpeg, media_dir, out_dir)

    assert 5.0 <= recording.duration_seconds <= 6.0
    assert _decode(ffmpeg, recording.video_path).returncode == 0
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_a_garbage_segment_in_the_middle_does_not_lose_the_recording(
    ffmpeg: str, media_dir: Path, out_dir: Path
) -> None:
    middle = list_segments(media_dir)[3]
    middle.write_bytes(os.urandom(middle.stat().st_size))

    recording = await package_recording(ffmpeg, media_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(6.0, abs=0.5)  # the other 5 s survive
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_corrupt_source_fails_with_a_reason_and_succeeds_once_repaired(
    ffmpeg: str, media_dir: Path, out_dir: Path
) -> None:
    good = {path: path.read_bytes() for path in list_segments(media_dir)}
    for path in good:
        path.write_bytes(os.urandom(len(good[path])))

    with pytest.raises(PackagingError) as failure:
        await package_recording(ffmpeg, media_dir, out_dir)
    assert failure.value.reason.startswith("remux failed: ffmpeg exited with code ")
    assert "Invalid data found" in failure.value.reason  # FFmpeg's own words, not a dump
    assert len(failure.value.reason.splitlines()) <= 15
    assert _names_in(out_dir) == []

    for path, data in good.items():
        path.write_bytes(data)
    recording = await package_recording(ffmpeg, media_dir, out_dir)
    assert recording.duration_seconds == pytest.approx(6.0, abs=0.5)
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_empty_media_dir_fails_with_no_media(ffmpeg: str, tmp_path: Path, out_dir: Path) -> None:
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    (media_dir / "stream.m3u8").write_text("#EXTM3U\n")
    (media_dir / "segment_00000.ts").write_bytes(b"")

    with pytest.raises(PackagingError) as failure:
        await package_recording(ffmpeg, media_dir, out_dir)
    assert failure.value.reason == "no media"
    assert _names_in(out_dir) == []


# --- a stuck or orphaned FFmpeg ----------------------------------------------------------------


def _stuck_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """Write a stand-in FFmpeg that starts an output file, ignores polite signals and hangs."""
    pid_file = tmp_path / "stuck.pid"
    script = tmp_path / "stuck-ffmpeg"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(f"""\
            import os, signal, sys, time
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open(sys.argv[-1].removeprefix("file:"), "wb") as out:
                out.write(b"half an mp4")
            with open({str(pid_file)!r} + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
            time.sleep(60)
            """)
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, pid_file


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie is dead, merely not yet reaped by whoever adopted it


def _read_pid(pid_file: Path) -> int | None:
    return int(pid_file.read_text()) if pid_file.exists() else None


async def _wait_for_pid(pid_file: Path) -> int:
    for _ in range(200):
        if (pid := _read_pid(pid_file)) is not None:
            return pid
        await asyncio.sleep(0.025)
    raise AssertionError("the stand-in FFmpeg never started")


@pytest.mark.asyncio
async def test_timeout_kills_a_stuck_ffmpeg_and_leaves_nothing(
    media_dir: Path, out_dir: Path, tmp_path: Path
) -> None:
    stuck, pid_file = _stuck_ffmpeg(tmp_path)

    with pytest.raises(PackagingError) as failure:
        await package_recording(str(stuck), media_dir, out_dir, timeout_seconds=0.5)

    assert failure.value.reason == "timed out after 0.5 s"
    pid = _read_pid(pid_file)
    assert pid is not None and not _is_running(pid)
    assert _names_in(out_dir) == []


@pytest.mark.asyncio
async def test_cancellation_kills_ffmpeg_and_leaves_nothing(
    media_dir: Path, out_dir: Path, tmp_path: Path
) -> None:
    stuck, pid_file = _stuck_ffmpeg(tmp_path)
    job = asyncio.create_task(package_recording(str(stuck), media_dir, out_dir))
    pid = await _wait_for_pid(pid_file)

    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    assert not _is_running(pid)
    assert _names_in(out_dir) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_ffmpeg_dies_with_a_killed_server(media_dir: Path, out_dir: Path, tmp_path: Path) -> None:
    stuck, pid_file = _stuck_ffmpeg(tmp_path)
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys; from pathlib import Path; "
            "from streamplat.vod.packaging import package_recording; "
            "asyncio.run(package_recording(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))",
            str(stuck),
            str(media_dir),
            str(out_dir),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the stand-in FFmpeg never started"
            time.sleep(0.025)
        pid = int(pid_file.read_text())
        server.send_signal(signal.SIGKILL)  # no cleanup code of ours gets to run
        server.wait()
        deadline = time.monotonic() + 5
        while _is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.025)
        assert not _is_running(pid)
    finally:
        server.kill()
        server.wait()
