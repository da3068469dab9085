"""Packaging the LL-HLS packager's fMP4 layout (init_{run}.mp4 + seg_{run}_{msn}.m4s)."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support.fmp4 import make_fmp4_run
from tests.unit.hls.helpers import split
from tests.unit.vod.conftest import FIRST_RUN_SECONDS, HD_RUN_SECONDS, Fmp4Runs
from tests.unit.vod.test_packaging import (
    _assert_only_final_files,
    _decode,
    _mean_brightness,
    _names_in,
    _probe,
    _top_level_boxes,
    _video_timestamps,
)

from streamplat.hls.cutter import Cutter
from streamplat.hls.disk import DiskWriter, scan
from streamplat.vod import packaging
from streamplat.vod.packaging import (
    PackagingError,
    build_runs_remux_argv,
    detect_layout,
    has_media,
    list_runs,
    package_recording,
)

FRAME = 1 / 30


def _frame_sizes(ffmpeg: str, mp4: Path) -> list[str]:
    """Return the decoded size of every video frame, e.g. ["640x360", ...]."""
    done = subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-nostdin",
            "-i",
            str(mp4),
            "-map",
            "0:v:0",
            "-vf",
            "showinfo",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        line.split(" s:", 1)[1].split()[0]
        for line in done.stderr.splitlines()
        if "Parsed_showinfo" in line and " s:" in line
    ]


def _segments(media_dir: Path, run: int) -> list[Path]:
    return [path for r in list_runs(media_dir) if r.run == run for path in r.segments]


# --- the directory -----------------------------------------------------------------------------


def test_list_runs_groups_by_run_and_sorts_by_msn_numerically(tmp_path: Path) -> None:
    for name in ["init_2.mp4", "seg_2_10.m4s", "seg_2_9.m4s", "init_10.mp4", "seg_10_11.m4s", "seg_1_0.m4s"]:
        (tmp_path / name).write_bytes(b"x")

    runs = [
        (r.run, r.init.name if r.init else None, [s.name for s in r.segments]) for r in list_runs(tmp_path)
    ]

    assert runs == [
        (1, None, ["seg_1_0.m4s"]),  # a run without an init is listed; packaging skips it
        (2, "init_2.mp4", ["seg_2_9.m4s", "seg_2_10.m4s"]),
        (10, "init_10.mp4", ["seg_10_11.m4s"]),
    ]


def test_list_runs_ignores_temp_files_look_alikes_and_path_tricks(tmp_path: Path) -> None:
    (tmp_path / "init_1.mp4").write_bytes(b"x")
    (tmp_path / "seg_1_0.m4s").write_bytes(b"x")
    for name in [
        "seg_1_1.m4s.tmp",  # the disk writer's temp name: never trusted
        ".seg_1_2.m4s.tmp",
        "seg_1_03.m4s",  # a leading zero would alias seg_1_3
        "init_01.mp4",
        "init_0.mp4",  # runs start at 1
        "seg_-1_4.m4s",
        "seg_1_+5.m4s",
        "seg_1_99999999999999999999.m4s",  # 20 digits
        "init_9999999999.mp4",  # 10 digits
        "seg_1_6.m4s\n",
        "seg_1_7.M4S",
        "seg_1_8.ts",
        "segment_1_9.m4s",
        "seg_1_\uff11.m4s",  # a non-ASCII digit
    ]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "seg_1_10.m4s").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-secret"
    outside.write_bytes(b"secret")
    (tmp_path / "seg_1_11.m4s").symlink_to(outside)  # a link could point anywhere

    runs = list_runs(tmp_path)

    assert [(r.run, r.init, r.segments) for r in runs] == [
        (1, tmp_path / "init_1.mp4", (tmp_path / "seg_1_0.m4s",))
    ]


def test_layout_is_detected_from_the_files(fmp4_dir: Path, media_dir: Path, tmp_path: Path) -> None:
    assert detect_layout(fmp4_dir) == "fmp4"
    assert detect_layout(media_dir) == "ts"
    assert detect_layout(tmp_path / "missing") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "stream.m3u8").write_text("#EXTM3U\n")
    assert detect_layout(empty) is None


def test_has_media_needs_an_init_and_a_non_empty_segment(fmp4_dir: Path, tmp_path: Path) -> None:
    assert has_media(fmp4_dir)
    media = tmp_path / "m"
    media.mkdir()
    (media / "seg_1_0.m4s").write_bytes(b"x" * 100)
    assert not has_media(media)  # no init: nothing can be packaged
    (media / "init_1.mp4").write_bytes(b"")
    assert not has_media(media)
    (media / "init_1.mp4").write_bytes((fmp4_dir / "init_1.mp4").read_bytes())
    (media / "seg_1_0.m4s").write_bytes(b"")
    assert not has_media(media)
    (media / "seg_1_1.m4s").write_bytes((fmp4_dir / "seg_1_1.m4s").read_bytes())
    assert has_media(media)


def test_runs_remux_argv_reads_only_local_files_through_the_concat_demuxer() -> None:
    argv = build_runs_remux_argv("ffmpeg", Path("/vod/.runs.ffconcat"), Path("/vod/.video.mp4"))
    pairs = list(itertools.pairwise(argv))
    assert ("-protocol_whitelist", "file,concatf,subfile") in pairs
    assert ("-f", "concat") in pairs
    assert argv.index("-f") < argv.index("-i")
    assert ("-i", "file:/vod/.runs.ffconcat") in pairs
    assert ("-c", "copy") in pairs and ("-movflags", "+faststart") in pairs
    assert ("-map", "0:v?") in pairs and ("-map", "0:a?") in pairs
    assert argv[-1] == "file:/vod/.video.mp4"
    reserved = list(itertools.pairwise(build_runs_remux_argv("ffmpeg", Path("/l"), Path("/o"), 70000)))
    assert ("-moov_size", "70000") in reserved and ("-movflags", "+faststart") not in reserved


# --- packaging real fMP4 -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_one_run_becomes_a_faststart_mp4_with_both_tracks(
    ffmpeg: str, fmp4_dir: Path, out_dir: Path
) -> None:
    recording = await package_recording(ffmpeg, fmp4_dir, out_dir, stream_id="s-fmp4")

    boxes = _top_level_boxes(recording.video_path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    assert boxes.count("moov") == 1 and "moof" not in boxes  # a plain MP4, not fragments
    info = _probe(ffmpeg, recording.video_path)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert recording.has_audio and (recording.width, recording.height) == (640, 360)
    assert recording.duration_seconds == pytest.approx(6.0, abs=0.2)
    assert recording.file_size_bytes == recording.video_path.stat().st_size
    assert len(_video_timestamps(ffmpeg, recording.video_path)) == 6 * 30  # every frame
    decoded = _decode(ffmpeg, recording.video_path)
    assert (decoded.returncode, decoded.stderr) == (0, "")
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_fmp4_thumbnail_is_past_the_black_opening(ffmpeg: str, fmp4_dir: Path, out_dir: Path) -> None:
    recording = await package_recording(ffmpeg, fmp4_dir, out_dir)

    assert recording.thumbnail_path.read_bytes()[:2] == b"\xff\xd8"
    info = _probe(ffmpeg, recording.thumbnail_path)
    assert (info.width, info.height) == (640, 360)
    assert _mean_brightness(ffmpeg, recording.thumbnail_path) > 40


@pytest.mark.asyncio
async def test_a_reconnect_joins_both_runs_with_a_clean_seam(
    ffmpeg: str, fmp4_reconnect_dir: Path, out_dir: Path
) -> None:
    (fmp4_reconnect_dir / "stream.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n")  # stale index

    recording = await package_recording(ffmpeg, fmp4_reconnect_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(6.0 + 4.0, abs=0.2)
    stamps = _video_timestamps(ffmpeg, recording.video_path)
    assert len(stamps) == 10 * 30
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(steps) > 0  # no jump back to 0 at the second run
    seam = 6 * 30 - 1
    # The concat demuxer starts run 2 where run 1's longest track (audio) ends, up to an audio
    # frame after its last video frame: at most one frame's hole in the video, only there.
    assert steps[seam] < 3 * FRAME
    assert max(steps[:seam] + steps[seam + 1 :]) < 1.5 * FRAME  # segment boundaries are seamless
    decoded = _decode(ffmpeg, recording.video_path)
    assert (decoded.returncode, decoded.stderr) == (0, "")
    boxes = _top_level_boxes(recording.video_path)
    assert boxes.index("moov") < boxes.index("mdat")
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_a_segment_cut_short_keeps_its_whole_fragments(
    ffmpeg: str, fmp4_dir: Path, out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a crash mid-write or a full disk can leave: the last segment ends inside a fragment.
    last = fmp4_dir / "seg_1_5.m4s"
    os.truncate(last, last.stat().st_size // 2 + 7)

    with caplog.at_level(logging.WARNING, logger="streamplat.vod.packaging"):
        recording = await package_recording(ffmpeg, fmp4_dir, out_dir)

    assert 5.2 <= recording.duration_seconds < 5.95  # seg 0-4 plus the whole fragments of seg 5
    decoded = _decode(ffmpeg, recording.video_path)
    assert (decoded.returncode, decoded.stderr) == (0, "")  # cut at a fragment: nothing half
    assert any("seg_1_5.m4s: only the first" in r.getMessage() for r in caplog.records)
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_a_garbage_segment_in_the_middle_is_skipped(
    ffmpeg: str, fmp4_reconnect_dir: Path, out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = fmp4_reconnect_dir / "seg_1_3.m4s"
    garbage.write_bytes(os.urandom(garbage.stat().st_size))
    (fmp4_reconnect_dir / "seg_2_7.m4s").write_bytes(b"")  # zero bytes: a crash before any write

    with caplog.at_level(logging.WARNING, logger="streamplat.vod.packaging"):
        recording = await package_recording(ffmpeg, fmp4_reconnect_dir, out_dir)

    assert len(_video_timestamps(ffmpeg, recording.video_path)) == 8 * 30  # the other 8 s survive
    assert 8.0 <= recording.duration_seconds <= 10.2
    decoded = _decode(ffmpeg, recording.video_path)
    assert (decoded.returncode, decoded.stderr) == (0, "")
    messages = [r.getMessage() for r in caplog.records]
    assert "seg_1_3.m4s: not an fMP4 segment, skipped" in messages
    assert "seg_2_7.m4s: empty, skipped" in messages
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_a_run_without_its_init_is_skipped(
    ffmpeg: str, fmp4_reconnect_dir: Path, out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (fmp4_reconnect_dir / "init_1.mp4").unlink()

    with caplog.at_level(logging.WARNING, logger="streamplat.vod.packaging"):
        recording = await package_recording(ffmpeg, fmp4_reconnect_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(4.0, abs=0.2)  # run 2 alone
    assert any("run 1: no init_1.mp4, its 6 segments are skipped" in r.getMessage() for r in caplog.records)
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_a_damaged_init_skips_its_run(
    ffmpeg: str, fmp4_reconnect_dir: Path, out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    init = fmp4_reconnect_dir / "init_2.mp4"
    os.truncate(init, init.stat().st_size - 10)

    with caplog.at_level(logging.WARNING, logger="streamplat.vod.packaging"):
        recording = await package_recording(ffmpeg, fmp4_reconnect_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(6.0, abs=0.2)  # run 1 alone
    assert any("init_2.mp4 is not a complete init" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_only_unreadable_segments_fail_with_a_reason_and_leave_nothing(
    ffmpeg: str, fmp4_dir: Path, out_dir: Path
) -> None:
    for segment in _segments(fmp4_dir, 1):
        segment.write_bytes(os.urandom(1000))

    with pytest.raises(PackagingError) as failure:
        await package_recording(ffmpeg, fmp4_dir, out_dir)

    assert failure.value.reason == "no media: none of the 6 segments is readable"
    assert _names_in(out_dir) == []


@pytest.mark.asyncio
async def test_segments_without_any_init_fail_with_a_reason(
    ffmpeg: str, fmp4_dir: Path, out_dir: Path
) -> None:
    (fmp4_dir / "init_1.mp4").unlink()

    with pytest.raises(PackagingError) as failure:
        await package_recording(ffmpeg, fmp4_dir, out_dir)

    assert failure.value.reason == "no media: none of the 6 segments is readable"
    assert _names_in(out_dir) == []


@pytest.mark.asyncio
async def test_temp_files_are_never_packaged(ffmpeg: str, fmp4_dir: Path, out_dir: Path) -> None:
    # The disk writer's temp file of a segment it never finished: must not appear in the MP4.
    shutil.copy(fmp4_dir / "seg_1_0.m4s", fmp4_dir / "seg_1_6.m4s.tmp")

    recording = await package_recording(ffmpeg, fmp4_dir, out_dir)

    assert len(_video_timestamps(ffmpeg, recording.video_path)) == 6 * 30


@pytest.mark.asyncio
async def test_a_resolution_change_between_runs_is_kept_and_logged(
    ffmpeg: str,
    fmp4_runs: Fmp4Runs,
    fmp4_reconnect_dir: Path,
    out_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutil.copytree(fmp4_runs.hd, fmp4_reconnect_dir, dirs_exist_ok=True)

    with caplog.at_level(logging.WARNING, logger="streamplat.vod.packaging"):
        recording = await package_recording(ffmpeg, fmp4_reconnect_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(6.0 + 4.0 + HD_RUN_SECONDS, abs=0.3)
    # The 720p frames decode as 720p: their parameter sets travel in-band.
    sizes = _frame_sizes(ffmpeg, recording.video_path)
    assert sizes.count("640x360") == 10 * 30
    assert sizes.count("1280x720") == HD_RUN_SECONDS * 30
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "codec settings" in m] == [
        "run 3: the codec settings (stsd) differ from run 2's; the MP4 keeps the first run's "
        "sample description and relies on in-band parameter sets for this run"
    ]  # run 2 has the same settings as run 1: its measured bitrates differ, which is no change


@pytest.mark.asyncio
async def test_leftovers_of_a_crashed_job_are_removed(ffmpeg: str, fmp4_dir: Path, out_dir: Path) -> None:
    os.mkdir(out_dir)
    for name in [".packaging-run-7.list", ".packaging-video.mp4", ".packaging-runs.ffconcat"]:
        (out_dir / name).write_bytes(b"half")

    await package_recording(ffmpeg, fmp4_dir, out_dir)

    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_a_quote_in_the_data_path_is_escaped_for_ffconcat(
    ffmpeg: str, fmp4_dir: Path, tmp_path: Path
) -> None:
    odd = tmp_path / "it's data" / "media"
    shutil.copytree(fmp4_dir, odd)
    out_dir = tmp_path / "it's data" / "vod"

    recording = await package_recording(ffmpeg, odd, out_dir)

    assert recording.duration_seconds == pytest.approx(6.0, abs=0.2)
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_ts_segments_beside_fmp4_runs_are_logged(
    ffmpeg: str, fmp4_dir: Path, media_dir: Path, out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in os.listdir(media_dir):
        if name.endswith(".ts"):
            shutil.copy(media_dir / name, fmp4_dir)

    with caplog.at_level(logging.WARNING, logger="streamplat.vod.packaging"):
        recording = await package_recording(ffmpeg, fmp4_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(6.0, abs=0.2)
    assert any(
        "6 MPEG-TS segments next to the fMP4 runs are not packaged" in r.getMessage() for r in caplog.records
    )


@pytest.mark.asyncio
async def test_audio_added_after_a_silent_first_run_is_logged_as_lost(
    ffmpeg: str, tmp_path: Path, out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A known limit, stated in the log: FFmpeg's concat demuxer takes the tracks from the
    # first run, so audio that only a later run has cannot be added to the MP4.
    media_dir = tmp_path / "media"
    make_fmp4_run(ffmpeg, media_dir, 2, run=1, audio=False)
    make_fmp4_run(ffmpeg, media_dir, 2, run=2, first_msn=2)

    with caplog.at_level(logging.WARNING, logger="streamplat.vod.packaging"):
        recording = await package_recording(ffmpeg, media_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(4.0, abs=0.2)  # the video of both runs
    assert not recording.has_audio
    lost = "run 2 has audio but run 1 has none: the MP4 has no such track"
    assert any(lost in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_audio_that_stops_after_the_first_run_keeps_all_video(
    ffmpeg: str, tmp_path: Path, out_dir: Path
) -> None:
    media_dir = tmp_path / "media"
    make_fmp4_run(ffmpeg, media_dir, 2, run=1)
    make_fmp4_run(ffmpeg, media_dir, 2, run=2, first_msn=2, audio=False)

    recording = await package_recording(ffmpeg, media_dir, out_dir)

    assert recording.has_audio
    assert len(_video_timestamps(ffmpeg, recording.video_path)) == 4 * 30
    decoded = _decode(ffmpeg, recording.video_path)
    # Only the null muxer's frame-rate rounding may complain (the seam's one longer frame in a
    # 4 s file makes FFmpeg guess 29.92 fps); no decoder error.
    assert decoded.returncode == 0
    assert "[h264" not in decoded.stderr and "[aac" not in decoded.stderr, decoded.stderr


@pytest.mark.asyncio
async def test_the_moov_is_written_into_reserved_space_before_the_media(
    ffmpeg: str, fmp4_reconnect_dir: Path, out_dir: Path
) -> None:
    recording = await package_recording(ffmpeg, fmp4_reconnect_dir, out_dir)

    # No second pass: the moov sits in the space kept for it, the rest of which is a free box.
    boxes = _top_level_boxes(recording.video_path)
    assert boxes[:3] == ["ftyp", "moov", "free"] and boxes[-1] == "mdat", boxes
    assert recording.duration_seconds == pytest.approx(10.0, abs=0.2)


@pytest.mark.asyncio
async def test_a_moov_too_big_for_its_reserve_falls_back_to_faststart(
    ffmpeg: str,
    fmp4_dir: Path,
    out_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packaging, "_MOOV_RESERVE_BASE", 1000)
    monkeypatch.setattr(packaging, "_MOOV_RESERVE_PER_SAMPLE", 0)

    with caplog.at_level(logging.WARNING, logger="streamplat.vod.packaging"):
        recording = await package_recording(ffmpeg, fmp4_dir, out_dir)

    messages = [r.getMessage() for r in caplog.records]
    assert "the moov did not fit in 1000 bytes, remuxing with +faststart" in messages
    boxes = _top_level_boxes(recording.video_path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    assert recording.duration_seconds == pytest.approx(6.0, abs=0.2)
    decoded = _decode(ffmpeg, recording.video_path)
    assert (decoded.returncode, decoded.stderr) == (0, "")
    _assert_only_final_files(out_dir)


@pytest.mark.asyncio
async def test_a_run_cut_with_an_early_first_segment_keeps_every_frame(
    ffmpeg: str, fmp4_runs: Fmp4Runs, tmp_path: Path, out_dir: Path
) -> None:
    """ingest.first_segment_seconds: the packager's own cutter closes the run's first segment
    after one 0.2 s part and the next at the following keyframe (mid-GOP start); the disk
    writer records them as live; the recording still has the run's full length and frames."""
    source = sorted(_segments(fmp4_runs.first, 1), key=lambda p: int(p.stem.split("_")[2]))
    fmp4 = (fmp4_runs.first / "init_1.mp4").read_bytes() + b"".join(p.read_bytes() for p in source)
    ftyp, moov, pairs = split(fmp4)
    media_dir = tmp_path / "early"
    writer = DiskWriter(media_dir, scan(media_dir))
    cutter = Cutter(segment_seconds=1.0, first_segment_seconds=0.2, part_seconds=0.2)
    writer.write_init(cutter.start_run(ftyp, moov).run, ftyp + moov)
    closed = []
    for i, (moof, mdat) in enumerate(pairs):
        if (segment := cutter.add_fragment(moof, mdat, 1000.0 + 0.2 * i).closed) is not None:
            closed.append(segment)
    if (segment := cutter.end_run()) is not None:
        closed.append(segment)
    for segment in closed:
        assert cutter.target_duration is not None
        writer.write_segment(segment.run, segment.msn, segment.data, segment.duration, cutter.target_duration)
    writer.finish()
    writer.close()
    assert writer.failed is None
    assert closed[0].duration == pytest.approx(0.2, abs=0.002) and not closed[1].independent
    assert len(closed) == int(FIRST_RUN_SECONDS) + 1  # one more segment than GOPs

    recording = await package_recording(ffmpeg, media_dir, out_dir)

    assert recording.duration_seconds == pytest.approx(FIRST_RUN_SECONDS, abs=0.2)
    assert recording.duration_seconds == pytest.approx(sum(s.duration for s in closed), abs=0.1)
    assert len(_video_timestamps(ffmpeg, recording.video_path)) == FIRST_RUN_SECONDS * 30  # every frame
    decoded = _decode(ffmpeg, recording.video_path)
    assert (decoded.returncode, decoded.stderr) == (0, "")
