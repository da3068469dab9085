"""How many concurrent 2.5 Mbit/s streams one machine ingests with every segment on time.

One 720p30 x264/AAC clip at ~2.5 Mbit/s is encoded once (faster than real time); each publisher
then sends it in a loop with `-re -stream_loop -1 -c copy`, so publishers cost no encoding CPU.
The clip (30 s) outlasts a step: at a loop point the timestamps jump by the input's duration
(audio runs a frame longer than video), a keyframe can miss the muxer's segment grid and one
segment becomes twice as long. A real encoder does not do that, so it must not count as late.
For N = 1, 2, 4, 8, ... the real IngestSupervisor runs N listeners; after all publishers are
connected, segments are watched for --measure seconds. A segment is late when it finished more
than 1.5 x segment length after the previous one (file mtimes). CPU is sampled from /proc:
listener FFmpegs, publisher FFmpegs and this process (the supervisor), in % of one core, and
the whole machine in % of all cores. The ramp stops at the first step with a late segment or
a publisher that did not connect.

    python bench/ingest_capacity.py [--max-streams 32] [--measure 12] [--segment 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import imageio_ffmpeg

from streamplat.events import EventBus, PublisherConnected
from streamplat.ingest import IngestSettings, IngestSupervisor

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
KEY = "bench-passphrase-0123"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CLIP_SECONDS = 30


def free_udp_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):  # held open together so the ports are distinct
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def encode_clip(path: pathlib.Path, segment_seconds: float) -> float:
    """Encode the looped test clip once; returns its measured bitrate in kbit/s."""
    gop = int(30 * segment_seconds)
    subprocess.run(
        [
            FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(CLIP_SECONDS),
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2350k", "-maxrate", "2350k",
            "-bufsize", "4700k", "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-c:a", "aac", "-b:a", "128k",
            "-f", "mpegts", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path.stat().st_size * 8 / 1000 / CLIP_SECONDS


def cpu_ticks(pid: int) -> int:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def listener_pids(ports: list[int]) -> list[int]:
    needles = [f":{port}?mode=listener".encode() for port in ports]
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if any(needle in cmdline for needle in needles):
                pids.append(int(entry))
    return pids


@dataclass
class StepResult:
    streams: int
    connected: int
    segments: int
    late: int
    worst_gap: float
    listener_cpu: float  # % of one core, all listeners together
    publisher_cpu: float
    supervisor_cpu: float
    machine_cpu: float  # % of all cores
    bitrate_kbps: float | None


async def run_step(
    streams: int, clip: pathlib.Path, root: pathlib.Path, segment_seconds: float, measure: float
) -> StepResult:
    bus = EventBus()
    connected: set[str] = set()
    all_connected = asyncio.Event()

    def on_connected(event: PublisherConnected) -> None:
        connected.add(event.stream_id)
        if len(connected) == streams:
            all_connected.set()

    bus.subscribe(PublisherConnected, on_connected)
    settings = IngestSettings(
        ffmpeg_binary=FFMPEG, srt_bind_host="127.0.0.1", segment_seconds=segment_seconds
    )
    ports = free_udp_ports(streams)
    ids = [f"cap{streams}-{i}" for i in range(streams)]
    dirs = {stream_id: root / stream_id for stream_id in ids}
    publishers: list[asyncio.subprocess.Process] = []
    async with IngestSupervisor(settings, bus) as supervisor:
        for stream_id, port in zip(ids, ports, strict=True):
            await supervisor.start(stream_id, port, KEY, dirs[stream_id])
        await asyncio.sleep(0.5)  # let the listeners bind
        try:
            for port in ports:
                publishers.append(
                    await asyncio.create_subprocess_exec(
                        FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error",
                        "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
                        "-f", "mpegts", f"srt://127.0.0.1:{port}?passphrase={KEY}",
                        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
                    )
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_connected.wait(), 10)
            # Let the first segment of every stream out, so startup does not count as late.
            await asyncio.sleep(segment_seconds + 0.5)

            listeners = listener_pids(ports)
            tracked = {
                "listener": listeners,
                "publisher": [p.pid for p in publishers],
                "supervisor": [os.getpid()],
            }
            before = {name: sum(cpu_ticks(pid) for pid in pids) for name, pids in tracked.items()}
            machine_before = machine_ticks()
            window_start = time.time()
            started = time.monotonic()
            await asyncio.sleep(measure)
            elapsed = time.monotonic() - started
            after = {name: sum(cpu_ticks(pid) for pid in pids) for name, pids in tracked.items()}
            machine_after = machine_ticks()
            window_end = time.time()
            bitrates = [
                status.bitrate_kbps
                for stream_id in ids
                if (status := supervisor.status(stream_id)) is not None and status.bitrate_kbps
            ]
        finally:
            for publisher in publishers:
                publisher.kill()
                await publisher.wait()

    segments = late = 0
    worst = 0.0
    for hls_dir in dirs.values():
        # Segments finished in the window, plus the one before it to measure the first gap.
        times = sorted(p.stat().st_mtime for p in hls_dir.glob("segment_*.ts"))
        in_window = [t for t in times if window_start <= t <= window_end]
        previous = [t for t in times if t < window_start][-1:]
        series = previous + in_window
        segments += len(in_window)
        gaps = [b - a for a, b in itertools.pairwise(series)]
        late += sum(gap > 1.5 * segment_seconds for gap in gaps)
        worst = max([worst, *gaps])
        if not in_window:
            late += 1  # nothing at all in the window is as late as it gets
    cpu = {name: (after[name] - before[name]) / CLOCK_TICKS / elapsed * 100 for name in before}
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    return StepResult(
        streams=streams,
        connected=len(connected),
        segments=segments,
        late=late,
        worst_gap=worst,
        listener_cpu=cpu["listener"],
        publisher_cpu=cpu["publisher"],
        supervisor_cpu=cpu["supervisor"],
        machine_cpu=busy / total * 100 if total else 0.0,
        bitrate_kbps=statistics.mean(bitrates) if bitrates else None,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-streams", type=int, default=32, help="largest N to try (default 32)")
    parser.add_argument("--measure", type=float, default=12.0, help="seconds measured per step (default 12)")
    parser.add_argument("--segment", type=float, default=2.0, help="HLS segment seconds (default 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ingest-capacity-") as tmp:
        root = pathlib.Path(tmp)
        clip = root / "clip.ts"
        started = time.monotonic()
        kbps = encode_clip(clip, args.segment)
        took = time.monotonic() - started
        print(f"clip: {CLIP_SECONDS} s 1280x720p30 x264 + AAC, {kbps:.0f} kbit/s, encoded in {took:.1f} s")
        late_after = 1.5 * args.segment
        print(f"machine: {os.cpu_count()} cores; segments {args.segment:g} s, late = gap > {late_after:g} s")
        header = (
            f"{'N':>3} {'conn':>4} {'segs':>5} {'late':>4} {'worst gap':>9} {'kbps/stream':>11} "
            f"{'listeners %core':>15} {'per stream':>10} {'publishers':>10} {'supervisor':>10} "
            f"{'machine %':>9}"
        )
        print(header)
        streams = 1
        while streams <= args.max_streams:
            r = await run_step(streams, clip, root / f"n{streams}", args.segment, args.measure)
            rate = f"{r.bitrate_kbps:.0f}" if r.bitrate_kbps else "-"
            print(
                f"{r.streams:>3} {r.connected:>4} {r.segments:>5} {r.late:>4} {r.worst_gap:>8.2f}s "
                f"{rate:>11} {r.listener_cpu:>14.1f}% {r.listener_cpu / r.streams:>9.1f}% "
                f"{r.publisher_cpu:>9.1f}% {r.supervisor_cpu:>9.1f}% {r.machine_cpu:>8.1f}%",
                flush=True,
            )
            if r.late or r.connected < r.streams:
                print(f"stopping: {r.late} late segment(s), {r.connected}/{r.streams} publishers connected")
                break
            streams *= 2


if __name__ == "__main__":
    if sys.platform != "linux":
        sys.exit("reads /proc: Linux only")
    asyncio.run(main())
