"""Fragmented MP4 made by the bundled FFmpeg, the way the ingest listener makes it (design §3.2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
MOVFLAGS = "empty_moov+default_base_moof+frag_keyframe+delay_moov"


def make_fmp4(
    out: Path,
    *,
    seconds: float = 2.0,
    gop: int = 30,
    video: bool = True,
    audio: bool = True,
    frag_us: int = 200_000,
    extra: tuple[str, ...] = (),
) -> bytes:
    """Encode lavfi testsrc2/sine to MPEG-TS, then remux it like the listener: fMP4 bytes."""
    ts = out.with_suffix(".ts")
    argv = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        argv += ["-f", "lavfi", "-i", f"testsrc2=size=160x90:rate=30:duration={seconds}"]
    if audio:
        argv += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    if video:
        argv += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(gop)]
        argv += ["-pix_fmt", "yuv420p", *extra]
    if audio:
        argv += ["-c:a", "aac", "-b:a", "64k"]
    subprocess.run([*argv, "-f", "mpegts", str(ts)], check=True)
    remux = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(ts)]
    remux += ["-map", "0:v?", "-map", "0:a?", "-c", "copy"]
    if audio:
        remux += ["-bsf:a", "aac_adtstoasc"]
    remux += ["-f", "mp4", "-movflags", MOVFLAGS, "-frag_duration", str(frag_us), "pipe:1"]
    data = subprocess.run(remux, check=True, stdout=subprocess.PIPE).stdout
    out.write_bytes(data)
    return data


@pytest.fixture(scope="session")
def fmp4_av(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """2 s of 30 fps H.264 (1 s GOP) + AAC, cut into ~0.2 s fragments."""
    return make_fmp4(tmp_path_factory.mktemp("fmp4") / "av.mp4")


@pytest.fixture(scope="session")
def fmp4_gop45(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """3 s with a 1.5 s GOP: a short fragment before each keyframe."""
    return make_fmp4(tmp_path_factory.mktemp("fmp4") / "g45.mp4", seconds=3.0, gop=45)


@pytest.fixture(scope="session")
def fmp4_audio(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_fmp4(tmp_path_factory.mktemp("fmp4") / "a.mp4", video=False)


@pytest.fixture(scope="session")
def fmp4_video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_fmp4(tmp_path_factory.mktemp("fmp4") / "v.mp4", audio=False)
