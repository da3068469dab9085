"""Live HLS delivery as a viewer sees it: streamplat against FFmpeg's HLS muxer + nginx, side by side.

    .venv/bin/python bench/llhls.py [--only latency,first,reqs,players,llplayers,cpu] [--prototype]

Needs Debian's chromium, nginx-light and wrk (`apt-get install chromium nginx-light wrk`).

Two targets run one after the other, each with its own real FFmpeg publisher over SRT, paced by
the `realtime`/`arealtime` filters (not `-re`, which bursts ~0.45 s of media at start and makes
the latency look smaller than it is, docs/design/ll-hls.md §0, §4):
  * streamplat: a real `streamplat serve` (temporary data dir, free ports), a stream created and
    started through the API, the publisher on the returned srt_url. With --prototype, the
    throwaway LL-HLS prototype (docs/design/ll-hls-prototype/llhls_server.py) instead.
  * reference: today's path done by FFmpeg alone: an SRT listener with `-c copy -f hls` (the
    same segment length as streamplat's config), its files served by nginx (1 worker, sendfile).

Measured (select with --only; names in brackets):
  [latency]   glass to glass in Chromium (Playwright, the flags of tests/browser/conftest.py), with
              the spec's snippet `new Hls()` and with `{lowLatencyMode: false}`, both pages opened
              --join seconds after the publisher started, median over --sample seconds.
              Latency = (wall time since publisher launch) - (media time on screen), where media
              time = start of hls.js's current fragment in the publisher's timeline + position in it.
              Fragment starts come from /stream/{id}/status `hls.segments[].media_start_seconds`
              when the server has it, else from the segment files' first timestamps.
  [first]     publisher launch -> first 200 playlist with an #EXTINF.
  [reqs]      req/s for the playlist, a part and a segment: streamplat vs nginx serving the same
              bytes (copied into nginx's root), wrk with --connections connections.
  [players]   --players legacy players for --players-seconds (playlist every TARGETDURATION +
              each new segment), against streamplat and against nginx serving FFmpeg's HLS.
  [llplayers] --ll-players LL-HLS players (blocking reload for the next part + each new part).
  [cpu]       the server process's CPU time with one stream vs idle, next to the FFmpeg
              remuxer's own CPU (streamplat's child and the reference's `-f hls` FFmpeg).

--latency-runs N loads the pages N times (hls.js's start position, and so the latency, varies
per load; within a load it barely moves); --watch-page adds the built-in watch page's settings.

Everything shares this machine's cores: absolute numbers move with what else runs; each line
prints its reference from the same run. The player simulator is one asyncio process (uvloop
when installed) with raw buffered-protocol connections (bodies counted, not kept); its CPU
share is printed with its results, as is the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Route

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE.parent), str(ROOT), str(ROOT / "src")]

import api as api_bench  # noqa: E402  (bench/api.py: wrk runner and parser)
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.cluster import nginx_conf  # noqa: E402

MODES = ("latency", "first", "reqs", "players", "llplayers", "cpu")
HLSJS = ROOT / "src" / "streamplat" / "web" / "static" / "vendor" / "hls.min.js"
PROTOTYPE = ROOT / "docs" / "design" / "ll-hls-prototype" / "llhls_server.py"
GOALS = {
    "latency_ll_s": 2.0,
    "first_playlist_s": 1.0,
    "reqs_ratio": 0.5,
    "segment_p99_s": 0.5,
    "part_p99_s": 0.5,
    "cpu_share": 0.03,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------------


# OBS's default AAC bitrate. The publisher's MPEG-TS muxer packs AAC into PES packets of up to
# 2,930 bytes or 0.35 s, and the server's FFmpeg cannot write a fragment before the audio that
# covers it has come: at 64 kbps that held every part back ~0.47 s longer than at 160 kbps
# (capture -> part cut 0.82 s vs 0.35 s, 27 Nov 2026), and the late audio made hls.js stall.
AUDIO_KBPS = 160


def publisher_argv(
    srt_url: str, kbps: int, seconds: float, gop: int = 30, audio_kbps: int = AUDIO_KBPS
) -> list[str]:
    """A live x264 + AAC publisher paced by the lavfi realtime filters (not -re, see the docstring).

    x264 `-preset ultrafast -tune zerolatency` (no lookahead, no B-frames), as OBS's x264 with
    the "zerolatency" tune; without the tune (veryfast: lookahead + B-frames) capture -> part
    took 0.83 s instead of 0.35 s.
    """
    return [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30,realtime",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000,arealtime",
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-pix_fmt",
        "yuv420p",
        "-g",
        str(gop),
        "-b:v",
        f"{kbps}k",
        "-maxrate",
        f"{kbps}k",
        "-bufsize",
        f"{kbps}k",
        "-c:a",
        "aac",
        "-b:a",
        f"{audio_kbps}k",
        "-f",
        "mpegts",
        srt_url,
    ]


def stop_process(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> None:
    """Signal, bounded wait, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, b""


# --- nginx (the reference server) -------------------------------------------------------------


NGINX_SERVER = """\
types {{
    application/vnd.apple.mpegurl m3u8;
    video/mp2t ts;
    video/iso.segment m4s;
    video/mp4 mp4;
}}
server {{
    listen 127.0.0.1:{port};
    root {root};
    # Debian's tcp_nopush holds back the tail of each sendfile'd segment on a kept-alive
    # connection (~40 ms; found by bench/edge.py): the reference must be nginx at its best.
    tcp_nopush off;
    location ~ \\.m3u8$ {{ add_header Cache-Control no-cache; }}
}}
"""


@dataclass
class Nginx:
    """Debian's nginx on a free port, 1 worker, sendfile, serving `root`."""

    root: Path
    tmp: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            sys.exit("the reference needs nginx: apt-get install -y nginx-light")
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = api_bench.free_port()
        conf = self.tmp / "nginx.conf"
        conf.write_text(nginx_conf(self.tmp, NGINX_SERVER.format(port=self.port, root=self.root)))
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=(self.tmp / "nginx.out").open("wb"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"nginx exited: {(self.tmp / 'nginx.out').read_text(errors='replace')}")
            if http_get(self.url("/__nothing__"), timeout=1)[0] == 404:
                return self
            time.sleep(0.1)
        sys.exit("nginx did not answer")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def worker_pid(self) -> int | None:
        kids = children(self.proc.pid) if self.proc else []
        return kids[0] if kids else None

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)


# --- targets: what is measured ----------------------------------------------------------------


@dataclass
class Target:
    """One live stream being published: where to play it and how to map fragments to media time."""

    name: str
    playlist_url: str
    server_pid: int | None = None
    publisher: subprocess.Popen[bytes] | None = None
    t0: float = 0.0  # time.time() right before the publisher was spawned
    starts: dict[int, float] = field(default_factory=dict)  # msn -> media start (s) in the run
    cleanup: list[Callable[[], object]] = field(default_factory=list)
    can_idle: bool = True  # False: the server streams from its start (the prototype)
    status_url: str | None = None  # streamplat's /stream/{id}/status (per-part creation times)
    # (run, part number) -> seconds from the capture of the part's last frame (publisher clock)
    # until the server cut the part (status `created`)
    part_lags: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        parts = urllib.parse.urlsplit(self.playlist_url)
        return f"{parts.scheme}://{parts.netloc}"

    def publish(self) -> None:
        """Start the publisher (or learn when the target started its own) and set `t0`."""
        raise NotImplementedError

    def refresh_starts(self) -> None:
        """Learn the media start of the segments in the live window (called while sampling)."""

    def start_of(self, msn: int) -> float | None:
        return self.starts.get(msn)

    def remuxer_pid(self) -> int | None:
        return None

    def stop(self) -> None:
        stop_process(self.publisher, signal.SIGKILL)
        for fn in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                fn()


def ts_start(path: Path) -> float | None:
    """The first timestamp of a media file, from `ffmpeg -i` ("start: 1.400000")."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    m = re.search(r"start: (-?[\d.]+)", out.stderr)
    return float(m[1]) if m else None


class FileStarts:
    """Media starts of `segment_NNNNN.ts` files: first timestamp minus segment 0's first timestamp."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.zero: float | None = None
        self.cache: dict[int, float] = {}

    def __call__(self, msn: int) -> float | None:
        if msn in self.cache:
            return self.cache[msn]
        if self.zero is None:
            self.zero = ts_start(self.directory / "segment_00000.ts")
        start = ts_start(self.directory / f"segment_{msn:05d}.ts")
        if start is None or self.zero is None:
            return None
        self.cache[msn] = start - self.zero
        return self.cache[msn]


class StreamplatTarget(Target):
    """A real `streamplat serve` with one stream started through the API."""

    def __init__(self, tmp: Path, kbps: int, seconds: float, audio_kbps: int = AUDIO_KBPS) -> None:
        from tests.support.server import make_server

        self.server = make_server(tmp, {"STREAMPLAT_LOGGING__LEVEL": "info"}, name="streamplat")
        self.server.start(timeout=60)
        token = self.server.user_token("bencher")
        headers = {"Authorization": f"Bearer {token}"}
        r = self.server.main.post("/api/streams", json={"name": "bench"}, headers=headers)
        assert r.status_code == 201, r.text
        self.stream_id = str(r.json()["stream_id"])
        r = self.server.main.post(f"/api/streams/{self.stream_id}/start", headers=headers)
        assert r.status_code == 200, r.text
        self.srt_url = str(r.json()["srt_url"])
        self.kbps, self.seconds, self.audio_kbps = kbps, seconds, audio_kbps
        assert self.server.proc is not None
        super().__init__(
            "streamplat",
            self.server.url("stream", f"/hls/{self.stream_id}/stream.m3u8"),
            server_pid=self.server.proc.pid,
        )
        self.status_url = self.server.url("stream", f"/stream/{self.stream_id}/status")
        self.files = FileStarts(self.server.data_dir / "hls" / self.stream_id)
        # SIGTERM: the server stops its FFmpeg children (their own process groups) itself.
        self.cleanup.append(lambda: self.server.stop(timeout=30))

    def publish(self) -> None:
        time.sleep(0.5)  # start returns once FFmpeg bound the port; keep a margin like the tests
        self.t0 = time.time()
        self.publisher = subprocess.Popen(
            publisher_argv(self.srt_url, self.kbps, self.seconds, audio_kbps=self.audio_kbps),
            stdout=subprocess.DEVNULL,
        )

    def refresh_starts(self) -> None:
        assert self.status_url is not None
        status, body = http_get(self.status_url, timeout=5)
        if status != 200:
            return
        hls = json.loads(body).get("hls") or {}
        for seg in hls.get("segments") or []:
            self.starts[int(seg["msn"])] = float(seg["media_start_seconds"])
            end = float(seg["media_start_seconds"])
            for part in seg.get("parts") or []:
                end += float(part["duration_seconds"])
                # publisher start-up + encoder + SRT latency + FFmpeg demux/remux + packager
                self.part_lags[(int(seg["run"]), int(part["number"]))] = (
                    float(part["created"]) - self.t0 - end
                )

    def start_of(self, msn: int) -> float | None:
        if msn in self.starts:
            return self.starts[msn]
        return self.files(msn)  # today's TS path: no hls.segments in the status

    def remuxer_pid(self) -> int | None:
        assert self.server_pid is not None
        for pid in children(self.server_pid):
            if "ffmpeg" in Path(cmdline(pid)[0] or "x").name:
                return pid
        return None


class PrototypeTarget(Target):
    """docs/design/ll-hls-prototype/llhls_server.py: one stream, its own realtime publisher."""

    def __init__(self, tmp: Path, seconds: float) -> None:
        port, srt = api_bench.free_port(), api_bench.free_port()
        out = (tmp / "prototype.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(PROTOTYPE), str(port), str(srt), str(seconds)],
            cwd=PROTOTYPE.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        super().__init__("prototype", f"http://127.0.0.1:{port}/s.m3u8", server_pid=proc.pid, can_idle=False)
        self.proc = proc
        self.cleanup.append(self._kill)

    def _kill(self) -> None:
        """The prototype and its FFmpeg children share its session's process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def publish(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # it launches its publisher itself, 0.5 s after start
            status, body = http_get(self.origin + "/log.json", timeout=2)
            if status == 200 and json.loads(body)["start"]:
                self.t0 = float(json.loads(body)["start"])
                return
            time.sleep(0.05)
        sys.exit("the prototype did not start its publisher")

    def refresh_starts(self) -> None:
        status, body = http_get(self.origin + "/segs.json", timeout=5)
        if status == 200:
            for msn, (_run, start, _dur, _anchor) in json.loads(body).items():
                self.starts[int(msn)] = float(start)

    def remuxer_pid(self) -> int | None:
        for pid in children(self.proc.pid):
            if "mode=listener" in " ".join(cmdline(pid)):
                return pid
        return None


class FfmpegHlsTarget(Target):
    """The reference: FFmpeg SRT listener `-c copy -f hls` into a folder nginx serves."""

    def __init__(
        self, tmp: Path, kbps: int, seconds: float, segment_seconds: float, audio_kbps: int = AUDIO_KBPS
    ) -> None:
        self.root = tmp / "ref-root"
        self.directory = self.root / "hls" / "ref"
        self.directory.mkdir(parents=True)
        self.nginx = Nginx(self.root, tmp / "ref-nginx").start()
        port = free_udp_port()
        self.srt_port = port
        self.srt_url = f"srt://127.0.0.1:{port}?mode=caller&latency=120000"
        self.kbps, self.seconds, self.audio_kbps = kbps, seconds, audio_kbps
        self.listener = subprocess.Popen(
            [
                ffmpeg_exe(),
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-analyzeduration",
                "500000",  # as streamplat's listener
                "-i",
                f"srt://127.0.0.1:{port}?mode=listener&latency=120000",
                "-map",
                "0",
                "-c",
                "copy",
                "-f",
                "hls",
                "-hls_time",
                f"{segment_seconds:g}",
                "-hls_list_size",
                "6",
                "-hls_flags",
                "omit_endlist+temp_file",
                "-hls_segment_filename",
                str(self.directory / "segment_%05d.ts"),
                str(self.directory / "stream.m3u8"),
            ],
            stdout=subprocess.DEVNULL,
        )
        super().__init__("ffmpeg -f hls + nginx", self.nginx.url("/hls/ref/stream.m3u8"))
        self.server_pid = self.nginx.worker_pid()
        self.files = FileStarts(self.directory)
        self.cleanup.append(self.nginx.stop)
        self.cleanup.append(lambda: stop_process(self.listener, signal.SIGKILL))

    def publish(self) -> None:
        time.sleep(0.5)  # let the listener bind
        self.t0 = time.time()
        self.publisher = subprocess.Popen(
            publisher_argv(
                f"srt://127.0.0.1:{self.srt_port}?mode=caller&latency=120000",
                self.kbps,
                self.seconds,
                audio_kbps=self.audio_kbps,
            ),
            stdout=subprocess.DEVNULL,
        )

    def start_of(self, msn: int) -> float | None:
        return self.files(msn)

    def remuxer_pid(self) -> int | None:
        return self.listener.pid


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- [first] publisher start -> first playable playlist ---------------------------------------


def first_playlist(target: Target, limit: float = 15.0) -> float | None:
    """Seconds from publisher launch to the first 200 playlist that lists a complete segment."""
    while time.time() - target.t0 < limit:
        status, body = http_get(target.playlist_url, timeout=limit)
        if status == 200 and b"#EXTINF" in body:
            return time.time() - target.t0
        time.sleep(0.02)
    return None


# --- [cpu] -----------------------------------------------------------------------------------


def cpu_share(pid: int | None, seconds: float) -> float | None:
    """Share of one core the process used over the next `seconds`."""
    if pid is None:
        return None
    try:
        before, t = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        return (cpu_seconds(pid) - before) / (time.monotonic() - t)
    except OSError:
        return None


def cpu_pair(a: int | None, b: int | None, seconds: float) -> tuple[float | None, float | None]:
    """cpu_share of two processes over the same window."""
    result: dict[str, float | None] = {}
    thread = threading.Thread(target=lambda: result.__setitem__("b", cpu_share(b, seconds)))
    thread.start()
    result["a"] = cpu_share(a, seconds)
    thread.join()
    return result["a"], result["b"]


# --- [latency] glass to glass in Chromium -----------------------------------------------------


PAGE = """<!doctype html><meta charset=utf-8>
<video id=video muted autoplay playsinline width=640 height=360></video>
<script src="/__bench/hls.min.js"></script><script>
performance.setResourceTimingBufferSize(100000);
const video = document.getElementById('video');
const hls = __HLS__;
window.bench = {samples: [], errors: [], stalls: 0};
hls.on(Hls.Events.ERROR, (e, d) => {
  bench.errors.push(d.details + (d.fatal ? ' (fatal)' : ''));
  if (d.details === 'bufferStalledError') bench.stalls++;
});
hls.loadSource(__URL__);
hls.attachMedia(video);
video.play().catch(() => {});
// The segment (hls.js Fragment) holding media time t: from the level's segments, else from its
// parts (the open segment's Fragment), else hls.js's own current fragment.
function fragAt(t) {
  const level = hls.levels && hls.levels[Math.max(0, hls.currentLevel)];
  const d = level && level.details;
  const has = (x) => x && t >= x.start - 0.01 && t < x.start + x.duration + 0.01;
  if (d) {
    for (const x of d.fragments) if (has(x)) return x;
    for (const p of d.partList || []) if (has(p)) return p.fragment;
  }
  const cf = hls.streamController && hls.streamController.currentFrag;
  return cf && cf.fragment ? cf.fragment : cf;
}
function onFrame(now, meta) {
  const f = fragAt(meta.mediaTime);
  if (f && typeof f.sn === 'number' && !video.paused)
    bench.samples.push([Date.now() / 1000, f.sn, f.start, f.duration, meta.mediaTime, hls.latency,
                       hls.targetLatency]);
  video.requestVideoFrameCallback(onFrame);
}
video.requestVideoFrameCallback(onFrame);
window.benchRequests = () => {
  const n = {playlist: 0, part: 0, segment: 0, init: 0};
  for (const e of performance.getEntriesByType('resource')) {
    const p = new URL(e.name).pathname;
    if (p.endsWith('.m3u8')) n.playlist++;
    else if (/part_/.test(p)) n.part++;
    else if (/init_/.test(p)) n.init++;
    else if (/\\.(ts|m4s|mp4)$/.test(p)) n.segment++;
  }
  return n;
};
</script>"""

PLAYERS = {"new Hls()": "new Hls()", "lowLatencyMode: false": "new Hls({lowLatencyMode: false})"}
# --watch-page adds the built-in watch page's settings (web/static/js/player.js): catch-up at 1.5x.
WATCH_PAGE = {"watch page": "new Hls({lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.5})"}
CONSTRUCTORS = {**PLAYERS, **WATCH_PAGE}


@dataclass
class Playback:
    latencies: list[float]
    hls_latency: list[float]
    target_latency: list[float]  # hls.js's targetLatency: where it means to sit behind the edge
    errors: list[str]
    stalls: int
    requests: dict[str, int]
    unmapped: int
    span: float  # seconds between the first and the last frame used
    run_medians: list[float] = field(default_factory=list)  # one per page load (--latency-runs)

    @property
    def median(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    @staticmethod
    def merge(runs: list[Playback]) -> Playback:
        """All frames of several page loads; the median of each load kept apart."""
        requests: dict[str, int] = {}
        for pb in runs:
            for key, n in pb.requests.items():
                requests[key] = requests.get(key, 0) + n
        return Playback(
            [x for pb in runs for x in pb.latencies],
            [x for pb in runs for x in pb.hls_latency],
            [x for pb in runs for x in pb.target_latency],
            sorted({e for pb in runs for e in pb.errors}),
            sum(pb.stalls for pb in runs),
            requests,
            sum(pb.unmapped for pb in runs),
            sum(pb.span for pb in runs),
            [m for pb in runs if (m := pb.median) is not None],
        )


def glass_to_glass(
    target: Target, join: float, sample: float, players: dict[str, str]
) -> dict[str, Playback]:
    """Open one page per hls.js config `join` s after the publisher started; sample `sample` s."""
    from playwright.sync_api import sync_playwright

    hlsjs = HLSJS.read_bytes()
    results: dict[str, Playback] = {}
    time.sleep(max(0.0, target.t0 + join - time.time()))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages: dict[str, Any] = {}
            for name, ctor in players.items():
                html = PAGE.replace("__HLS__", ctor).replace("__URL__", json.dumps(target.playlist_url))

                context = browser.new_context(viewport={"width": 800, "height": 500})
                # The page is served at the stream's own origin, so no CORS header is needed.
                context.route(f"{target.origin}/__bench/**", page_server(html, hlsjs))
                page = context.new_page()
                page.goto(f"{target.origin}/__bench/{len(pages)}.html")
                pages[name] = page
            deadline = time.time() + sample + 25  # allow for start-up
            ends: dict[str, float] = {}
            raw: dict[str, list[list[float]]] = {}
            while time.time() < deadline:
                target.refresh_starts()
                for name, page in pages.items():
                    samples = page.evaluate("bench.samples.length ? bench.samples[0][0] : 0")
                    if samples and name not in ends:
                        ends[name] = float(samples) + 1.0 + sample  # skip the first second
                if ends and all(time.time() > ends.get(n, 1e18) for n in pages):
                    break
                next(iter(pages.values())).wait_for_timeout(1000)  # keeps Playwright's loop turning
            target.refresh_starts()
            for name, page in pages.items():
                raw[name] = page.evaluate("bench.samples")
                info = page.evaluate("({errors: bench.errors, stalls: bench.stalls, req: benchRequests()})")
                first = raw[name][0][0] if raw[name] else 0.0
                window = [s for s in raw[name] if first + 1.0 <= s[0] <= first + 1.0 + sample]
                results[name] = to_playback(target, window, info)
        finally:
            browser.close()
    return results


def page_server(html: str, hlsjs: bytes) -> Callable[[Route], None]:
    """A Playwright route handler answering the bench page and hls.js (one argument: see route())."""

    def serve(route: Route) -> None:
        if route.request.url.endswith("/hls.min.js"):
            route.fulfill(body=hlsjs, content_type="application/javascript")
        else:
            route.fulfill(body=html, content_type="text/html")

    return serve


def to_playback(target: Target, samples: list[list[float]], info: dict[str, Any]) -> Playback:
    latencies, hls_latency, unmapped = [], [], 0
    target_latency = [float(x[6]) for x in samples if x[6] is not None]
    for wall, sn, start, duration, media_time, hls_lat, _ in samples:
        base = target.start_of(int(sn))
        offset = media_time - start
        if base is None or not -0.1 <= offset <= duration + 0.5:
            unmapped += 1  # the frame on screen is not in hls.js's current fragment (a seam)
            continue
        latencies.append(wall - target.t0 - (base + offset))
        if hls_lat is not None:
            hls_latency.append(float(hls_lat))
    errors = sorted(set(info["errors"]))
    span = samples[-1][0] - samples[0][0] if samples else 0.0
    return Playback(
        latencies, hls_latency, target_latency, errors, int(info["stalls"]), dict(info["req"]), unmapped, span
    )


# --- [reqs] req/s vs nginx on the same bytes --------------------------------------------------


@dataclass
class Media:
    """What a playlist lists: segments (msn, uri, duration) and parts (msn, index, uri, duration)."""

    target_duration: float
    part_target: float | None
    segments: list[tuple[int, str, float]]
    parts: list[tuple[int, int, str, float]]
    can_block: bool
    init: str | None


def parse_playlist(text: str) -> Media:
    msn, td, can_block, init, part_target = 0, 1.0, False, None, None
    segments: list[tuple[int, str, float]] = []
    parts: list[tuple[int, int, str, float]] = []
    duration, index = 0.0, 0
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            msn = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            td = float(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-PART-INF:PART-TARGET="):
            part_target = float(line.split("=", 1)[1])
        elif line.startswith("#EXT-X-SERVER-CONTROL:"):
            can_block = "CAN-BLOCK-RELOAD=YES" in line
        elif line.startswith("#EXT-X-MAP:"):
            m = re.search(r'URI="([^"]+)"', line)
            init = m[1] if m else init
        elif line.startswith("#EXT-X-PART:"):
            uri = re.search(r'URI="([^"]+)"', line)
            dur = re.search(r"DURATION=([\d.]+)", line)
            if uri:
                parts.append((msn, index, uri[1], float(dur[1]) if dur else 0.0))
                index += 1
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",", 1)[0])
        elif line and not line.startswith("#"):
            segments.append((msn, line, duration))
            msn, index = msn + 1, 0
    return Media(td, part_target, segments, parts, can_block, init)


def reqs(target: Target, tmp: Path, seconds: float, connections: int) -> dict[str, dict[str, Any]]:
    """wrk on the playlist, one part and one segment of the live stream, and on nginx with the same bytes."""
    if shutil.which("wrk") is None:
        sys.exit("[reqs] needs wrk: apt-get install -y wrk")
    root = tmp / "reqs-root"
    nginx = Nginx(root, tmp / "reqs-nginx").start()
    results: dict[str, dict[str, Any]] = {}
    try:
        for _ in range(100):  # a full window, so the playlist has its usual size
            status, body = http_get(target.playlist_url)
            if len(parse_playlist(body.decode(errors="replace")).segments) >= 4:
                break
            time.sleep(0.5)
        for kind in ("playlist", "part", "segment"):
            status, body = http_get(target.playlist_url)
            media = parse_playlist(body.decode(errors="replace"))
            if kind == "playlist":
                url = target.playlist_url
            elif kind == "part":
                if len(media.parts) < 2:
                    results[kind] = {"missing": "the playlist lists no EXT-X-PART"}
                    continue
                url = urllib.parse.urljoin(target.playlist_url, media.parts[-2][2])
            else:
                url = urllib.parse.urljoin(target.playlist_url, media.segments[-2][1])
            status, data = http_get(url)
            assert status == 200, (url, status)
            path = urllib.parse.urlsplit(url).path
            copy = root / path.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(data)
            ours, ours_cpu = wrk_with_cpu(url, seconds, connections, target.server_pid)
            ref, ref_cpu = wrk_with_cpu(nginx.url(path), seconds, connections, nginx.worker_pid())
            results[kind] = {
                "bytes": len(data),
                "ours": {**vars(ours), "cpu_us_per_request": ours_cpu},
                "nginx": {**vars(ref), "cpu_us_per_request": ref_cpu},
            }
            log(f"  reqs {kind}: {ours.requests_per_second:.0f} vs nginx {ref.requests_per_second:.0f} req/s")
    finally:
        nginx.stop()
    return results


def wrk_with_cpu(url: str, seconds: float, connections: int, pid: int | None) -> tuple[Any, float | None]:
    """wrk on `url`, and the CPU time the serving process `pid` spent per request meanwhile (µs).

    On a shared box req/s move with what else runs; CPU per request mostly does not, so the two
    servers' costs compare even when their wrk runs met different loads."""
    before = cpu_seconds(pid) if pid else None
    result = api_bench.run_wrk(url, seconds, connections)
    served = result.requests_per_second * seconds
    if before is None or pid is None or not served:
        return result, None
    return result, (cpu_seconds(pid) - before) * 1e6 / served


# --- [players] [llplayers] the simulator (its own process) ------------------------------------


_READ_BUFFER = memoryview(bytearray(256 * 1024))  # one loop, one thread: every connection reads into it


class Conn(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection; bodies are counted, and copied only when asked.

    A buffered protocol reads into one shared buffer, so a 300 KB segment costs no allocation:
    the simulator must not be what limits 1,000 players on two cores.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.head = bytearray()
        self.keep = False
        self.status = 0
        self.left = -1  # body bytes still expected; -1 while reading the head
        self.body = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection closed")

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        data = _READ_BUFFER[:nbytes]
        if self.left < 0:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).decode("latin-1")
            rest = bytes(self.head[end + 4 :])
            self.head.clear()
            self.status = int(head[9:12])
            m = re.search(r"(?im)^content-length:\s*(\d+)", head)
            if not m:  # our servers always send a length; treat anything else as an error
                self._fail("no content-length")
                return
            self.left = int(m[1])
            data = memoryview(rest)
        take = data[: self.left]
        if self.keep:
            self.body += take
        self.left -= len(take)
        if self.left == 0:
            self.left = -1
            body, self.body = bytes(self.body), bytearray()
            if self.waiter and not self.waiter.done():
                self.waiter.set_result((self.status, body))

    def _fail(self, why: str) -> None:
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(why))


class Client:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn: Conn | None = None

    async def get(self, path: str, keep: bool = False) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            if self.conn is None or self.conn.closed:
                transport, self.conn = await loop.create_connection(Conn, self.host, self.port)
                # uvloop may call connection_made after create_connection returns: take it here.
                self.conn.transport = transport
            conn = self.conn
            conn.keep, conn.waiter = keep, loop.create_future()
            assert conn.transport is not None
            conn.transport.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
            try:
                return await conn.waiter
            except ConnectionError:
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


@dataclass
class SimResult:
    players: int
    seconds: float
    delays: list[float] = field(default_factory=list)  # receipt - first seen by the monitor
    downloads: list[float] = field(default_factory=list)  # request -> last byte
    errors: int = 0
    behind: int = 0
    bytes: int = 0
    requests: int = 0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def simulate(
    url: str, players: int, seconds: float, ll: bool, status_url: str | None = None
) -> dict[str, Any]:
    """`players` legacy (or LL) players for `seconds`; a monitor notes when each segment/part appears.

    With `status_url` (streamplat's status), a second monitor reads each part's creation time
    (server wall clock, same machine) so deliveries can be timed from the part's existence.
    """
    parts = urllib.parse.urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    base = path.rsplit("/", 1)[0] + "/"
    loop = asyncio.get_running_loop()
    seen: dict[str, float] = {}  # uri -> loop.time() the monitor first saw it listed
    edge: dict[str, Any] = {"msn": -1, "part": -1}
    appeared = asyncio.Event()
    result = SimResult(players, seconds)
    end = loop.time() + seconds
    created: dict[str, float] = {}  # part uri -> epoch seconds the server cut it
    received: list[tuple[str, float]] = []  # (part uri, epoch seconds of the last byte)

    async def creation_times() -> None:
        assert status_url is not None
        status_parts = urllib.parse.urlsplit(status_url)
        client = Client(status_parts.hostname or "127.0.0.1", status_parts.port or 80)
        while True:
            status, body = await client.get(status_parts.path, keep=True)
            if status == 200:
                for seg in (json.loads(body).get("hls") or {}).get("segments") or []:
                    for part in seg.get("parts") or []:
                        created[f"part_{seg['run']}_{part['number']}.m4s"] = float(part["created"])
            await asyncio.sleep(0.5)

    def note(media: Media) -> None:
        now = loop.time()
        for msn, uri, _ in media.segments:
            seen.setdefault(uri, now)
            edge["msn"] = max(edge["msn"], msn)
        for _, _, uri, _ in media.parts:
            seen.setdefault(uri, now)

    async def monitor() -> None:
        client = Client(host, port)
        while loop.time() < end + 5:
            status, body = await client.get(path + next_query(media_state), keep=True)
            if status == 200:
                media = parse_playlist(body.decode(errors="replace"))
                note(media)
                media_state[0] = media
                appeared.set()
            if not (media_state[0] and media_state[0].can_block):
                await asyncio.sleep(0.05)

    media_state: list[Media | None] = [None]

    def next_query(media: list[Media | None]) -> str:
        m = media[0]
        if m is None or not m.can_block or not m.segments:
            return ""
        if m.parts:
            last_msn, last_index = m.parts[-1][0], m.parts[-1][1]
            return f"?_HLS_msn={last_msn}&_HLS_part={last_index + 1}"
        return f"?_HLS_msn={m.segments[-1][0] + 1}"

    async def fetch(client: Client, uri: str, steady: bool = True) -> None:
        started = loop.time()
        status, _ = await client.get(base + uri if not uri.startswith("/") else uri)
        done = loop.time()
        result.requests += 1
        if status != 200:
            result.errors += 1
            return
        result.downloads.append(done - started)
        if steady and started < end and uri.startswith("part_"):
            received.append((uri, time.time()))
        if steady and uri in seen and started < end:  # not what a player fetches as it joins
            result.delays.append(done - seen[uri])

    async def legacy(i: int) -> None:
        client = Client(host, port)
        await asyncio.sleep(random.uniform(0, 1.0))
        last, newest, td = -1, "", 1.0
        while loop.time() < end:
            tick = loop.time()
            try:
                status, body = await client.get(path, keep=True)
                result.requests += 1
                if status != 200:
                    result.errors += 1
                    await asyncio.sleep(1.0)
                    continue
                media = parse_playlist(body.decode(errors="replace"))
                td = media.target_duration
                if last < 0 and media.init:
                    await fetch(client, media.init, steady=False)
                fresh = [s for s in media.segments if s[0] > last]
                if last < 0:
                    fresh = fresh[-3:]  # a player joins three segments from the end
                joining = last < 0
                for msn, uri, _ in fresh:
                    await fetch(client, uri, steady=not joining)
                    last, newest = msn, uri
                await asyncio.sleep(max(0.0, tick + media.target_duration - loop.time()))
            except (ConnectionError, OSError):
                result.errors += 1
                await asyncio.sleep(0.5)
        if is_behind(newest, 3 * td):
            result.behind += 1

    async def low_latency(i: int) -> None:
        client = Client(host, port)
        await asyncio.sleep(random.uniform(0, 1.0))
        state: list[Media | None] = [None]
        got: set[str] = set()
        newest, part_target = "", 0.2
        while loop.time() < end:
            try:
                status, body = await client.get(path + next_query(state), keep=True)
                result.requests += 1
                if status != 200:
                    result.errors += 1
                    await asyncio.sleep(0.2)
                    continue
                media = parse_playlist(body.decode(errors="replace"))
                part_target = media.part_target or part_target
                joining = state[0] is None
                if joining:
                    if media.init:
                        await fetch(client, media.init, steady=False)
                    got.update(uri for *_, uri, _ in media.parts[:-1])  # start at the newest part
                state[0] = media
                for _msn, _, uri, _ in media.parts:
                    if uri not in got:
                        got.add(uri)
                        await fetch(client, uri, steady=not joining)
                        newest = uri
                if not media.can_block:
                    await asyncio.sleep(0.2)
            except (ConnectionError, OSError):
                result.errors += 1
                await asyncio.sleep(0.5)
        if is_behind(newest, 3 * part_target + 0.5):
            result.behind += 1

    def is_behind(newest: str, limit: float) -> bool:
        """The newest media a player has was listed more than `limit` s before the run ended.

        `limit` is what the player keeps buffered (3 x TARGETDURATION for legacy players, about
        PART-HOLD-BACK for LL ones): a player that far behind the live edge has run dry.
        """
        listed = seen.get(newest)
        return listed is None or end - listed > limit

    mon = asyncio.create_task(monitor())
    stamps = asyncio.create_task(creation_times()) if status_url else None
    await asyncio.wait_for(appeared.wait(), 30)
    if ll and not (media_state[0] and media_state[0].parts):
        mon.cancel()
        return {"missing": "the playlist lists no EXT-X-PART"}
    cpu0, wall0 = time.process_time(), time.monotonic()
    end = loop.time() + seconds
    async with asyncio.TaskGroup() as group:
        for i in range(players):
            group.create_task((low_latency if ll else legacy)(i))
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    for task in (mon, stamps):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    after_created = [at - created[uri] for uri, at in received if uri in created]
    return {
        "after_created_p50": _pct(after_created, 0.5),
        "after_created_p99": _pct(after_created, 0.99),
        "after_created_n": len(after_created),
        "players": players,
        "seconds": seconds,
        "delay_p50": _pct(result.delays, 0.5),
        "delay_p99": _pct(result.delays, 0.99),
        "download_p50": _pct(result.downloads, 0.5),
        "download_p99": _pct(result.downloads, 0.99),
        "deliveries": len(result.delays),
        "behind": result.behind,
        "errors": result.errors,
        "requests": result.requests,
        "simulator_cpu": cpu,
    }


def run_simulation(*args: Any) -> dict[str, Any]:
    """simulate() on uvloop when installed (streamplat's own loop: less CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(simulate(*args))
    return uvloop.run(simulate(*args))


def run_simulator(
    url: str, players: int, seconds: float, ll: bool, server_pid: int | None, status_url: str | None
) -> dict[str, Any]:
    """The simulator in its own process (its CPU is its own); also the server's CPU meanwhile."""
    argv = [sys.executable, str(HERE), "--simulate", json.dumps([url, players, seconds, ll, status_url])]
    before = cpu_seconds(server_pid) if server_pid else None
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"simulator failed:\n{out.stderr[-3000:]}")
        return {"missing": f"simulator failed ({last})"}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if before is not None and server_pid:
        with contextlib.suppress(OSError):
            result["server_cpu"] = (cpu_seconds(server_pid) - before) / (time.monotonic() - started)
    return result


# --- the run ----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}"


@contextlib.contextmanager
def live(target: Target) -> Iterator[Target]:
    try:
        target.publish()
        yield target
    finally:
        target.stop()


def measure_target(
    target: Target, args: argparse.Namespace, modes: set[str], tmp: Path, main: bool
) -> dict[str, Any]:
    """Everything selected, on one live target, in an order that keeps the machine quiet for latency."""
    out: dict[str, Any] = {"name": target.name}
    if "cpu" in modes and main and target.can_idle:
        log(f"{target.name}: idle CPU for {args.cpu_seconds:g} s")
        out["cpu_idle"] = cpu_share(target.server_pid, args.cpu_seconds) if main else None
    with live(target):
        log(f"{target.name}: publisher started")
        if "first" in modes:
            out["first"] = first_playlist(target)
            log(f"{target.name}: first playable playlist {fmt(out['first'])} s")
        if "cpu" in modes:
            time.sleep(max(0.0, target.t0 + 4 - time.time()))
            out["cpu_stream"], out["cpu_remuxer"] = cpu_pair(
                target.server_pid if main else None, target.remuxer_pid(), args.cpu_seconds
            )
        if "latency" in modes:
            log(f"{target.name}: pages open {args.join:g} s after the publisher started")
            players = {**PLAYERS, **(WATCH_PAGE if args.watch_page else {})}
            runs = []
            for i in range(args.latency_runs):  # later loads join as soon as the last one ends
                runs.append(glass_to_glass(target, args.join, args.sample, players))
                for name, pb in runs[-1].items():
                    log(f"  load {i + 1}, {name}: median {fmt(pb.median)} s over {len(pb.latencies)} frames")
            out["latency"] = {name: Playback.merge([r[name] for r in runs]) for name in players}
            if target.part_lags:
                out["part_lags"] = list(target.part_lags.values())
        else:
            first_playlist(target, 30)
        if "reqs" in modes and main:
            out["reqs"] = reqs(target, tmp, args.reqs_seconds, args.connections)
        if "players" in modes:
            log(f"{target.name}: {args.players} legacy players for {args.players_seconds:g} s")
            out["players"] = run_simulator(
                target.playlist_url, args.players, args.players_seconds, False, target.server_pid, None
            )
        if "llplayers" in modes and main:
            log(f"{target.name}: {args.ll_players} LL-HLS players for {args.players_seconds:g} s")
            out["llplayers"] = run_simulator(
                target.playlist_url,
                args.ll_players,
                args.players_seconds,
                True,
                target.server_pid,
                target.status_url,
            )
    return out


def report(ours: dict[str, Any], ref: dict[str, Any] | None, args: argparse.Namespace) -> None:
    ref = ref or {}
    name = ours["name"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n# LL-HLS bench, {when}; load average {os.getloadavg()[0]:.2f}")
    print(f"streamplat = {name}; reference = {ref.get('name', 'not run')}")
    print(
        f"publisher: 640x360 30 fps x264 ultrafast zerolatency {args.video_kbps} kbps + AAC "
        f"{args.audio_kbps} kbps, GOP 1 s, realtime-paced; SRT latency 120 ms\n"
    )
    print("| measure | streamplat | reference | ratio | goal |")
    print("|---|---|---|---|---|")
    for player in {**PLAYERS, **WATCH_PAGE}:
        a = ours.get("latency", {}).get(player)
        b = ref.get("latency", {}).get(player)
        goal = "<= 3 x segment" if player == "lowLatencyMode: false" else f"<= {GOALS['latency_ll_s']} s"
        if a or b:
            print(
                f"| glass to glass, `{CONSTRUCTORS[player]}`, join {args.join:g} s, median (s) | "
                f"{fmt(a.median if a else None)} | {fmt(b.median if b else None)} | "
                f"{ratio(a.median if a else None, b.median if b else None)} | {goal} |"
            )
    lags = ours.get("part_lags")
    if lags:
        print(
            "| capture -> part cut by the server (publisher start-up, encoder, SRT latency, FFmpeg "
            f"remux), median / p90 over {len(lags)} parts (s) | {fmt(statistics.median(lags))} / "
            f"{fmt(_pct(lags, 0.9))} | | | |"
        )
    if "first" in ours:
        print(
            f"| publisher start -> first playable playlist (s) | {fmt(ours['first'])} | "
            f"{fmt(ref.get('first'))} | {ratio(ours['first'], ref.get('first'))} | "
            f"<= {GOALS['first_playlist_s']} s |"
        )
    for kind, res in (ours.get("reqs") or {}).items():
        if "missing" in res:
            print(f"| {kind} req/s ({args.connections} conn.) vs nginx same bytes | {res['missing']} | | | |")
            continue
        a, b = res["ours"]["requests_per_second"], res["nginx"]["requests_per_second"]
        print(
            f"| {kind} req/s, {res['bytes']} B, {args.connections} conn. (p99 ms ours/nginx "
            f"{res['ours']['p99_ms']:.0f}/{res['nginx']['p99_ms']:.0f}; errors {res['ours']['errors']}) | "
            f"{a:.0f} | {b:.0f} (nginx) | {a / b:.3f} | >= {GOALS['reqs_ratio']} |"
        )
        a_cpu, b_cpu = res["ours"].get("cpu_us_per_request"), res["nginx"].get("cpu_us_per_request")
        if a_cpu and b_cpu:
            print(
                f"| {kind}: server CPU per request, µs (ratio nginx/ours, the req/s one core allows) | "
                f"{a_cpu:.1f} | {b_cpu:.1f} (nginx) | {b_cpu / a_cpu:.3f} | >= {GOALS['reqs_ratio']} |"
            )
    sims = (
        (
            "players",
            f"{args.players} legacy players",
            "segment",
            {0: f"p99 < {GOALS['segment_p99_s']} s", 2: "0 behind"},
        ),
        ("llplayers", f"{args.ll_players} LL-HLS players", "part", {4: f"p99 < {GOALS['part_p99_s']} s"}),
    )
    for key, label, unit, goals in sims:
        if key not in ours:
            continue
        a, b = ours[key], ref.get(key) or {"missing": ""}
        if "missing" in a:
            print(f"| {label} | {a['missing']} | | | {', '.join(goals.values())} |")
            continue
        rows = [
            (f"{unit} download (request -> last byte) p50 / p99 (s)", "download_p50", "download_p99", ".3f"),
            (f"{unit} received after first listed, p50 / p99 (s)", "delay_p50", "delay_p99", ".3f"),
            ("players behind (newest media listed > their buffer ago) / errors", "behind", "errors", "d"),
            ("server / load generator CPU, share of one core", "server_cpu", "simulator_cpu", ".0%"),
        ]
        if key == "llplayers":
            what = f"{unit} received after the server cut it (status `created`), p50 / p99 (s)"
            rows.append((what, "after_created_p50", "after_created_p99", ".3f"))
        for i, (what, x, y, spec) in enumerate(rows):
            ref_cell = "" if "missing" in b else f"{fmt(b.get(x), spec)} / {fmt(b.get(y), spec)}"
            ours_cell = f"{fmt(a.get(x), spec)} / {fmt(a.get(y), spec)}"
            goal_cell = goals.get(i, "")
            print(
                f"| {label}, {args.players_seconds:g} s: {what} | {ours_cell} | {ref_cell} | | {goal_cell} |"
            )
    if "cpu_stream" in ours:
        idle, busy = ours.get("cpu_idle"), ours.get("cpu_stream")
        packager = busy - idle if busy is not None and idle is not None else None
        print(
            f"| server process CPU with one {args.video_kbps} kbps stream, minus idle (share of one core) | "
            f"{fmt(busy, '.1%')} - {fmt(idle, '.1%')} = {fmt(packager, '.1%')} | | | "
            f"<= {GOALS['cpu_share']:.0%} |"
        )
        print(
            "| FFmpeg remuxer CPU, same window (share of one core) | "
            f"{fmt(ours.get('cpu_remuxer'), '.1%')} | {fmt(ref.get('cpu_remuxer'), '.1%')} | "
            f"{ratio(ours.get('cpu_remuxer'), ref.get('cpu_remuxer'))} | |"
        )
    print()
    for who in (ours, ref):
        for player, pb in (who.get("latency") or {}).items():
            print(
                f"{who['name']}, {CONSTRUCTORS[player]}: {len(pb.latencies)} frames over {pb.span:.1f} s, "
                f"p10/p90 {fmt(_pct(pb.latencies, 0.1))}/{fmt(_pct(pb.latencies, 0.9))} s, "
                f"hls.latency median {fmt(statistics.median(pb.hls_latency) if pb.hls_latency else None)} s "
                f"(its target {fmt(statistics.median(pb.target_latency) if pb.target_latency else None)} s), "
                f"per load {', '.join(f'{m:.2f}' for m in pb.run_medians)} s, "
                f"requests {pb.requests}, stalls {pb.stalls}, unmapped frames {pb.unmapped}, "
                f"errors {', '.join(pb.errors) or 'none'}"
            )
    print(
        "\nReceived after first listed = receipt time - when a monitor in the simulator first saw the "
        "segment/part in a playlist (blocking reload when the server offers it), so legacy players' "
        "polling phase is included; after the server cut it = receipt (wall clock) - the part's "
        "`created` in streamplat's status. Behind = the newest media a player had was listed longer "
        "ago than it buffers (3 x TARGETDURATION legacy, 3 x PART-TARGET + 0.5 s LL)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    parser.add_argument(
        "--prototype", action="store_true", help="measure the LL-HLS prototype, not streamplat"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip FFmpeg -f hls + nginx")
    parser.add_argument(
        "--join", type=float, default=20.0, help="seconds after publisher start to open the pages"
    )
    parser.add_argument(
        "--sample", type=float, default=15.0, help="seconds of playback the median is taken over"
    )
    parser.add_argument("--reqs-seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--players", type=int, default=1000, help="simulated legacy players")
    parser.add_argument("--ll-players", type=int, default=500, help="simulated LL-HLS players")
    parser.add_argument("--players-seconds", type=float, default=30.0, help="length of each simulation")
    parser.add_argument("--cpu-seconds", type=float, default=8.0, help="length of each CPU window")
    parser.add_argument("--video-kbps", type=int, default=2500, help="publisher video bitrate")
    parser.add_argument(
        "--audio-kbps",
        type=int,
        default=AUDIO_KBPS,
        help="publisher AAC bitrate (OBS's default; lower means bigger, later audio PES packets)",
    )
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=1,
        help="[latency] page loads one after the other (hls.js's start position varies per load)",
    )
    parser.add_argument(
        "--watch-page", action="store_true", help="[latency] also the watch page's hls.js settings"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--simulate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate:
        print(json.dumps(run_simulation(*json.loads(args.simulate))))
        return 0
    modes = {m.strip() for m in args.only.split(",") if m.strip()}
    if unknown := modes - set(MODES):
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")

    needs = {"nginx": "nginx-light"}
    if "reqs" in modes:
        needs["wrk"] = "wrk"
    if "latency" in modes:
        needs[CHROMIUM] = "chromium"
    missing = [pkg for exe, pkg in needs.items() if shutil.which(exe) is None and not Path(exe).is_file()]
    if missing and not (missing == ["nginx-light"] and Path("/usr/sbin/nginx").is_file()):
        print(f"bench/llhls.py needs: apt-get install -y {' '.join(missing)}", file=sys.stderr)
        return 2

    from streamplat import config

    segment_seconds = config.load(None).ingest.segment_seconds
    # Long enough for every selected phase; the publisher is killed when the target's phases end.
    publish_seconds = 600
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so servers, publishers and nginx are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="streamplat-bench-llhls-"))
    ours: dict[str, Any] = {}
    ref: dict[str, Any] | None = None
    try:
        target: Target
        if args.prototype:
            target = PrototypeTarget(tmp, publish_seconds)
        else:
            target = StreamplatTarget(tmp, args.video_kbps, publish_seconds, args.audio_kbps)
        ours = measure_target(target, args, modes, tmp, main=True)
        if not args.no_reference and modes & {"latency", "first", "players", "cpu"}:
            ref_target = FfmpegHlsTarget(
                tmp, args.video_kbps, publish_seconds, segment_seconds, args.audio_kbps
            )
            ref = measure_target(ref_target, args, modes - {"reqs", "llplayers"}, tmp, main=False)
            ref["name"] = f"ffmpeg -f hls ({segment_seconds:g} s) + nginx"
        report(ours, ref, args)
        if args.json:
            Path(args.json).write_text(json.dumps({"ours": ours, "reference": ref}, default=vars, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
