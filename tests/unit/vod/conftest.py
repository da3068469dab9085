"""Real HLS media for the packaging tests, made by real FFmpeg faster than real time."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg  # type: ignore[import-untyped]
import pytest
from tests.support.fmp4 import make_fmp4_run

FIRST_RUN_SECONDS = 6.0
SECOND_RUN_SECONDS = 4.0
# The first run opens with a black second, like most real streams ("starting soon", a camera
# waking up): the thumbnail must not be taken from it.
BLACK_OPENING_SECONDS = 1.0
WIDTH, HEIGHT = 640, 360


def make_hls_run(
    ffmpeg: str, media_dir: Path, seconds: float, *, start_number: int = 0, black_seconds: float = 0.0
) -> None:
    """Encode `seconds` of test video + tone as 1 s HLS segments, as the ingest would write them.

    Every run's timestamps start from the same point, so two runs numbered one after the other
    in one directory look exactly like a publisher reconnect.
    """
    media_dir.mkdir(parents=True, exist_ok=True)
    video = f"testsrc2=size={WIDTH}x{HEIGHT}:rate=30"
    if black_seconds:
        video += f",drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='lt(t,{black_seconds})'"
    # The playlist gets a per-run name so a second run does not overwrite the first's.
    playlist = media_dir / ("stream.m3u8" if start_number == 0 else f"stream_{start_number}.m3u8")
    subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            video,
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-c:a",
            "aac",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
            "-start_number",
            str(start_number),
            "-hls_segment_filename",
            str(media_dir / "segment_%05d.ts"),
            str(playlist),
        ],
        check=True,
    )


@dataclass(frozen=True)
class HlsRuns:
    first: Path  # segment_00000.ts .. segment_00005.ts
    second: Path  # segment_00006.ts .. segment_00009.ts, timestamps starting again


@pytest.fixture(name="ffmpeg", scope="session")
def fixture_ffmpeg() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


@pytest.fixture(name="hls_runs", scope="session")
def fixture_hls_runs(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> HlsRuns:
    root = tmp_path_factory.mktemp("hls")
    first, second = root / "first", root / "second"
    make_hls_run(ffmpeg, first, FIRST_RUN_SECONDS, black_seconds=BLACK_OPENING_SECONDS)
    make_hls_run(ffmpeg, second, SECOND_RUN_SECONDS, start_number=int(FIRST_RUN_SECONDS))
    return HlsRuns(first, second)


@pytest.fixture(name="media_dir")
def fixture_media_dir(hls_runs: HlsRuns, tmp_path: Path) -> Path:
    """A stream's media directory: one uninterrupted 6 s session, 640x360, black first second."""
    media_dir = tmp_path / "media"
    shutil.copytree(hls_runs.first, media_dir)
    return media_dir


@pytest.fixture(name="reconnect_media_dir")
def fixture_reconnect_media_dir(hls_runs: HlsRuns, tmp_path: Path) -> Path:
    """A media directory where the publisher reconnected after 6 s and streamed 4 s more."""
    media_dir = tmp_path / "media"
    shutil.copytree(hls_runs.first, media_dir)
    shutil.copytree(hls_runs.second, media_dir, dirs_exist_ok=True)
    return media_dir


@pytest.fixture(name="out_dir")
def fixture_out_dir(tmp_path: Path) -> Path:
    return tmp_path / "vod"


# --- the fMP4 layout of the LL-HLS packager (init_{run}.mp4 + seg_{run}_{msn}.m4s) -------------

HD_RUN_SECONDS = 3.0


@dataclass(frozen=True)
class Fmp4Runs:
    first: Path  # init_1.mp4, seg_1_0.m4s .. seg_1_5.m4s: 6 s, black first second
    second: Path  # init_2.mp4, seg_2_6.m4s .. seg_2_9.m4s: 4 s, a reconnect
    hd: Path  # init_3.mp4, seg_3_10.m4s .. seg_3_12.m4s: 3 s at 1280x720, new OBS settings


@pytest.fixture(name="fmp4_runs", scope="session")
def fixture_fmp4_runs(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> Fmp4Runs:
    root = tmp_path_factory.mktemp("fmp4")
    runs = Fmp4Runs(root / "first", root / "second", root / "hd")
    first = make_fmp4_run(ffmpeg, runs.first, FIRST_RUN_SECONDS, run=1, black_seconds=BLACK_OPENING_SECONDS)
    assert len(first.segments) == int(FIRST_RUN_SECONDS)  # one segment per keyframe, 1 s apart
    second = make_fmp4_run(ffmpeg, runs.second, SECOND_RUN_SECONDS, run=2, first_msn=6)
    assert len(second.segments) == int(SECOND_RUN_SECONDS)
    make_fmp4_run(ffmpeg, runs.hd, HD_RUN_SECONDS, run=3, first_msn=10, size="1280x720")
    return runs


@pytest.fixture(name="fmp4_dir")
def fixture_fmp4_dir(fmp4_runs: Fmp4Runs, tmp_path: Path) -> Path:
    """A stream's media directory in the fMP4 layout: one 6 s session, black first second."""
    media_dir = tmp_path / "fmp4"
    shutil.copytree(fmp4_runs.first, media_dir)
    return media_dir


@pytest.fixture(name="fmp4_reconnect_dir")
def fixture_fmp4_reconnect_dir(fmp4_runs: Fmp4Runs, tmp_path: Path) -> Path:
    """The fMP4 layout after a reconnect: run 1 (6 s), then run 2 (4 s) with its own init."""
    media_dir = tmp_path / "fmp4"
    shutil.copytree(fmp4_runs.first, media_dir)
    shutil.copytree(fmp4_runs.second, media_dir, dirs_exist_ok=True)
    return media_dir
