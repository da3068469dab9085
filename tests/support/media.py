"""Real media for tests: an FFmpeg publisher over SRT (our stand-in for OBS), and probes."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@dataclass
class Publisher:
    """`ffmpeg -re -f lavfi -i testsrc2 ... -f mpegts srt://...` in the background."""

    srt_url: str
    size: str = "640x360"
    fps: int = 30
    gop_seconds: float = 1.0
    duration: float | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Publisher:
        argv = [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={self.size}:rate={self.fps}",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
        ]
        if self.duration is not None:
            argv += ["-t", str(self.duration)]
        argv += [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            str(int(self.fps * self.gop_seconds)),
            "-b:v",
            "800k",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "mpegts",
            self.srt_url,
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def kill(self) -> None:
        """Die like a crashed OBS: no goodbye to the server."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        if self.proc and self.proc.stderr and self.proc.poll() is not None:
            return self.proc.stderr.read().decode(errors="replace")
        return ""


@dataclass(frozen=True)
class Probe:
    duration: float | None
    video: str | None
    audio: str | None
    width: int | None
    height: int | None
    text: str


def probe(path: Path) -> Probe:
    """Stream info from `ffmpeg -i` (the wheel has no ffprobe)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    text = out.stderr
    duration = None
    if m := re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", text):
        duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    video = re.search(r"Stream #.*Video: (\w+)", text)
    audio = re.search(r"Stream #.*Audio: (\w+)", text)
    size = re.search(r"Stream #.*Video: .*?, (\d{2,5})x(\d{2,5})", text)
    return Probe(
        duration,
        video[1] if video else None,
        audio[1] if audio else None,
        int(size[1]) if size else None,
        int(size[2]) if size else None,
        text,
    )


def decode_errors(path: Path) -> str:
    """Everything FFmpeg complains about while decoding the whole file ("" = clean)."""
    out = subprocess.run(
        [FFMPEG, "-hide_banner", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out.stderr.strip() if out.returncode == 0 else f"exit {out.returncode}: {out.stderr.strip()}"


def wait_for(predicate, timeout: float, interval: float = 0.2, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until `predicate()` is truthy; return its value or fail with `message`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message} (last: {last!r})")


def ffmpeg_children_listening(port: int) -> list[int]:
    """PIDs of FFmpeg processes whose command line mentions the SRT port."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The SRT URL (and its key) is in a private input list named after the port, not in argv.
        if (
            cmd
            and b"ffmpeg" in cmd[0]
            and any(part.endswith(f"-srt{port}.ffconcat".encode()) for part in cmd)
        ):
            pids.append(int(proc.name))
    return pids
