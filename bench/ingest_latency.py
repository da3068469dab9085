"""How fast a stream goes live: publisher start -> PublisherConnected -> first HLS segment listed.

Runs the real IngestSupervisor with 1 s segments against a real x264/AAC SRT publisher on
127.0.0.1, a few times, and prints min/median/max. With --compare it also times a bare FFmpeg
listener with FFmpeg's default probe (-analyzeduration 5 s) to show what the 0.5 s probe buys.

    python bench/ingest_latency.py [--runs 5] [--compare]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import socket
import statistics
import sys
import tempfile
import time

import imageio_ffmpeg

from streamplat.events import EventBus, ListenerStarted, PublisherConnected
from streamplat.ingest import IngestSettings, IngestSupervisor, build_listener_argv, listener_input_list

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
KEY = "bench-passphrase-0123"
SEGMENT_SECONDS = 1.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def has_segment(hls_dir: pathlib.Path) -> bool:
    try:
        text = (hls_dir / "stream.m3u8").read_text()
    except FileNotFoundError:
        return False
    return any(line.startswith("segment_") for line in text.splitlines())


async def start_publisher(port: int) -> asyncio.subprocess.Process:
    """A live x264 + AAC publisher with a keyframe every second (matches 1 s segments)."""
    return await asyncio.create_subprocess_exec(
        FFMPEG,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        "30",
        "-c:a",
        "aac",
        "-f",
        "mpegts",
        f"srt://127.0.0.1:{port}?passphrase={KEY}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )


async def wait_for_segment(hls_dir: pathlib.Path, started: float, limit: float = 20.0) -> float:
    while not has_segment(hls_dir):
        if time.monotonic() - started > limit:
            raise TimeoutError("no segment")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def one_run(root: pathlib.Path, index: int) -> tuple[float, float]:
    """(seconds to PublisherConnected, seconds to first listed segment) for one publish."""
    bus = EventBus()
    listening = asyncio.Event()
    connected_at: list[float] = []
    bus.subscribe(ListenerStarted, lambda e: listening.set())
    bus.subscribe(PublisherConnected, lambda e: connected_at.append(time.monotonic()))
    settings = IngestSettings(
        ffmpeg_binary=FFMPEG, srt_bind_host="127.0.0.1", segment_seconds=SEGMENT_SECONDS
    )
    hls_dir = root / f"run-{index}"
    port = free_udp_port()
    async with IngestSupervisor(settings, bus) as supervisor:
        await supervisor.start(f"bench-{index}", port, KEY, hls_dir)
        await listening.wait()
        await asyncio.sleep(0.5)  # ListenerStarted means spawned; give FFmpeg time to bind
        started = time.monotonic()
        publisher = await start_publisher(port)
        try:
            to_segment = await wait_for_segment(hls_dir, started)
        finally:
            publisher.kill()
            await publisher.wait()
        await supervisor.stop(f"bench-{index}")
    return connected_at[0] - started, to_segment


async def bare_listener_run(root: pathlib.Path, index: int, analyze_seconds: float) -> float:
    """Seconds to the first listed segment for a bare FFmpeg listener with the given probe."""
    hls_dir = root / f"bare-{index}"
    hls_dir.mkdir(parents=True)
    port = free_udp_port()
    input_list = root / f"bare-{index}.ffconcat"
    input_list.write_text(
        listener_input_list(
            "127.0.0.1",
            port,
            KEY,
            latency_ms=120,
            publisher_timeout_seconds=3,
            analyze_seconds=analyze_seconds,
        )
    )
    argv = build_listener_argv(
        ffmpeg_binary=FFMPEG,
        input_list=str(input_list),
        port=port,
        playlist_dir=str(hls_dir),
        segment_seconds=SEGMENT_SECONDS,
        playlist_size=6,
        analyze_seconds=analyze_seconds,
    )
    listener = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    await asyncio.sleep(0.5)
    started = time.monotonic()
    publisher = await start_publisher(port)
    try:
        return await wait_for_segment(hls_dir, started)
    finally:
        for process in (publisher, listener):
            process.kill()
            await process.wait()


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<46} min {min(values):5.2f} s   median {statistics.median(values):5.2f} s   "
        f"max {max(values):5.2f} s   (n={len(values)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="publishes to time (default 5)")
    parser.add_argument("--compare", action="store_true", help="also time FFmpeg's default 5 s probe")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ingest-latency-") as tmp:
        root = pathlib.Path(tmp)
        connected, segment = [], []
        for index in range(args.runs):
            to_connected, to_segment = await one_run(root, index)
            connected.append(to_connected)
            segment.append(to_segment)
            print(f"run {index + 1}: connected after {to_connected:.2f} s, segment after {to_segment:.2f} s")
        print(f"FFmpeg {FFMPEG}, {SEGMENT_SECONDS:g} s segments, publisher GOP 1 s")
        print(summary("publisher start -> PublisherConnected", connected))
        print(summary("publisher start -> first segment in playlist", segment))
        if args.compare:
            default_probe = [await bare_listener_run(root, i, analyze_seconds=5.0) for i in range(args.runs)]
            fast_probe = [
                await bare_listener_run(root, i + 100, analyze_seconds=0.5) for i in range(args.runs)
            ]
            print(summary("bare listener, -analyzeduration 0.5 s", fast_probe))
            print(summary("bare listener, -analyzeduration 5 s (default)", default_probe))


if __name__ == "__main__":
    if sys.platform != "linux":
        print("warning: written for Linux", file=sys.stderr)
    asyncio.run(main())
