"""IngestSupervisor against real FFmpeg listeners and real SRT publishers on 127.0.0.1.

Fakes appear only where a real FFmpeg cannot be made to misbehave on demand: a tiny script
that crashes at once, and one that ignores SIGINT.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import imageio_ffmpeg
import pytest
import pytest_asyncio

import streamplat
from streamplat.events import (
    Event,
    EventBus,
    IngestGaveUp,
    IngestProgress,
    ListenerStarted,
    PublisherConnected,
    PublisherDisconnected,
)
from streamplat.ingest import IngestSettings, IngestSupervisor, ListenerAlreadyRunning
from streamplat.ingest.supervisor import udp_port_bound

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
KEY = "correct-horse-battery"
SRC_DIR = pathlib.Path(streamplat.__file__).resolve().parents[1]
E = TypeVar("E", bound=Event)
Publish = Callable[..., Awaitable["asyncio.subprocess.Process"]]


# --- helpers ------------------------------------------------------------------------------


def free_udp_port() -> int:
    """A UDP port nobody uses right now (SRT runs over UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings(**overrides: Any) -> IngestSettings:
    """Fast settings for tests: 1 s segments, quick dead-publisher detection."""
    values: dict[str, Any] = {
        "ffmpeg_binary": FFMPEG,
        "srt_bind_host": "127.0.0.1",
        "segment_seconds": 1.0,
        "publisher_timeout_seconds": 1.0,
        "stop_timeout_seconds": 5.0,
        "restart_backoff_initial": 0.05,
        "restart_backoff_max": 0.2,
    }
    values.update(overrides)
    return IngestSettings(**values)


class EventLog:
    """Every event published on the bus, with waiting helpers."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        bus.subscribe(Event, self.events.append)

    def of(self, event_type: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, event_type)]

    async def wait_for(self, event_type: type[E], count: int = 1, within: float = 15.0) -> E:
        await wait_until(
            lambda: len(self.of(event_type)) >= count, within, f"{count} x {event_type.__name__}"
        )
        return self.of(event_type)[count - 1]


async def wait_until(predicate: Callable[[], bool], within: float, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


def listener_pids(port: int, parent: int | None = None) -> list[int]:
    """Pids of live FFmpeg SRT listeners on the port (optionally children of `parent`)."""
    needle = f"-srt{port}.ffconcat\0".encode()  # the input list, named after the port
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
            fields = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if needle in cmdline and state != "Z" and (parent is None or ppid == parent):
            pids.append(int(entry))
    return pids


def process_alive(pid: int) -> bool:
    """True while the pid runs; a zombie nobody reaped yet counts as dead."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def playlist_numbers(text: str) -> list[int]:
    """MSNs of the fMP4 segments (seg_<run>_<msn>.m4s) a playlist lists."""
    return [int(n) for n in re.findall(r"^seg_\d+_(\d+)\.m4s$", text, re.MULTILINE)]


def media_sequence(text: str) -> int:
    match = re.search(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)$", text, re.MULTILINE)
    assert match, text
    return int(match.group(1))


def segments_on_disk(hls_dir: pathlib.Path) -> dict[int, os.stat_result]:
    return {
        int(match.group(2)): path.stat()
        for path in hls_dir.glob("seg_*.m4s")
        if (match := re.fullmatch(r"seg_(\d+)_(\d+)\.m4s", path.name))
    }


def read_playlist(hls_dir: pathlib.Path) -> str:
    try:
        return (hls_dir / "stream.m3u8").read_text()
    except FileNotFoundError:
        return ""


def write_playlist(hls_dir: pathlib.Path, text: str) -> None:
    (hls_dir / "stream.m3u8").write_text(text)


def streams_in(segment: pathlib.Path) -> str:
    """FFmpeg's description of the streams in a media file (its stderr)."""
    result = subprocess.run(
        [FFMPEG, "-hide_banner", "-nostdin", "-i", str(segment), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stderr


def write_fake_ffmpeg(path: pathlib.Path, body: str) -> str:
    """An executable Python script standing in for FFmpeg."""
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(name="bus")
def fixture_bus() -> EventBus:
    return EventBus()


@pytest.fixture(name="events")
def fixture_events(bus: EventBus) -> EventLog:
    return EventLog(bus)


@pytest.fixture(name="hls_dir")
def fixture_hls_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "hls" / "stream-1"


@pytest_asyncio.fixture(name="publish")
async def fixture_publish() -> AsyncIterator[Publish]:
    """Start real SRT publishers (x264 + AAC test signal); all are killed at teardown."""
    started: list[asyncio.subprocess.Process] = []

    async def publish(
        port: int, passphrase: str = KEY, seconds: float | None = None, streamid: str | None = None
    ) -> asyncio.subprocess.Process:
        argv = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-re"]
        argv += ["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"]
        argv += ["-f", "lavfi", "-i", "sine=frequency=440"]
        if seconds is not None:
            argv += ["-t", str(seconds)]
        # -g 30: a keyframe every second at 30 fps, so 1 s segments can be cut on time.
        argv += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30"]
        url = f"srt://127.0.0.1:{port}?passphrase={passphrase}"
        if streamid is not None:
            url += f"&streamid={streamid}"
        argv += ["-c:a", "aac", "-f", "mpegts", url]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield publish
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


def stop_on_give_up(bus: EventBus, supervisor: IngestSupervisor) -> None:
    """Do what the streams service does: stop a stream as soon as ingest gives up on it."""

    async def on_gave_up(event: IngestGaveUp) -> None:
        await supervisor.stop(event.stream_id)

    bus.subscribe(IngestGaveUp, on_gave_up)


# --- tests --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_publisher_goes_live_and_stop_ends_the_playlist(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, publish: Publish
) -> None:
    port = free_udp_port()
    async with IngestSupervisor(settings(), bus) as supervisor:
        await supervisor.start("s1", port, KEY, hls_dir)
        await events.wait_for(ListenerStarted)
        waiting = supervisor.status("s1")
        assert waiting is not None and waiting.ffmpeg_running and not waiting.publisher_connected
        assert supervisor.running_streams() == ["s1"]
        with pytest.raises(ListenerAlreadyRunning):
            await supervisor.start("s1", port, KEY, hls_dir)

        await publish(port)
        await events.wait_for(PublisherConnected, within=10)
        live = supervisor.status("s1")
        assert live is not None and live.publisher_connected and live.connected_at is not None
        await wait_until(lambda: len(playlist_numbers(read_playlist(hls_dir))) >= 2, 10, "2 segments")
        await events.wait_for(IngestProgress, count=4)
        live = supervisor.status("s1")
        assert live is not None and live.fps is not None and 20 < live.fps < 40
        assert live.bitrate_kbps is not None and live.bitrate_kbps > 100
        assert "#EXT-X-ENDLIST" not in read_playlist(hls_dir)  # live
        [ffmpeg_pid] = listener_pids(port, parent=os.getpid())

        await supervisor.stop("s1")
        assert supervisor.status("s1") is None
        assert not process_alive(ffmpeg_pid)
        await supervisor.stop("s1")  # idempotent
        await supervisor.stop("never-started")

    playlist = read_playlist(hls_dir)
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    assert "#EXT-X-DISCONTINUITY" not in playlist  # a new stream starts clean
    numbers = playlist_numbers(playlist)
    assert numbers[0] == 0 and numbers == list(range(numbers[0], numbers[-1] + 1))
    assert '#EXT-X-MAP:URI="init_1.mp4"' in playlist
    for number in numbers:
        data = (hls_dir / f"seg_1_{number}.m4s").read_bytes()
        assert data[4:8] == b"moof"  # fMP4 fragments, byte-contiguous after the run's init
    first = hls_dir.parent / "first.mp4"
    first.write_bytes((hls_dir / "init_1.mp4").read_bytes() + (hls_dir / "seg_1_0.m4s").read_bytes())
    description = streams_in(first)
    assert "Video: h264" in description and "Audio: aac" in description
    assert not events.of(PublisherDisconnected)  # stop() is not a publisher drop


@pytest.mark.asyncio
async def test_stop_from_an_event_handler_while_live_does_not_deadlock(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, publish: Publish
) -> None:
    port = free_udp_port()
    async with IngestSupervisor(settings(), bus) as supervisor:
        stopped = asyncio.Event()

        async def stop_once_segments_exist(event: IngestProgress) -> None:
            # Runs inside the stream's own task, with FFmpeg live.
            if len(playlist_numbers(read_playlist(hls_dir))) >= 1 and not stopped.is_set():
                await supervisor.stop(event.stream_id)
                stopped.set()

        bus.subscribe(IngestProgress, stop_once_segments_exist)
        await supervisor.start("s1", port, KEY, hls_dir)
        await publish(port)
        await events.wait_for(PublisherConnected, within=10)
        [ffmpeg_pid] = listener_pids(port, parent=os.getpid())
        await asyncio.wait_for(stopped.wait(), 15)
        progress_seen = len(events.of(IngestProgress))
        assert supervisor.status("s1") is None
        assert not process_alive(ffmpeg_pid)
        await asyncio.sleep(0.6)  # a progress period: nothing more may be published
        assert len(events.of(IngestProgress)) == progress_seen
    assert read_playlist(hls_dir).rstrip().endswith("#EXT-X-ENDLIST")
    assert not events.of(PublisherDisconnected) and not events.of(IngestGaveUp)


@pytest.mark.asyncio
async def test_leaving_the_supervisor_stops_ffmpeg_but_keeps_the_playlist_live(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, publish: Publish
) -> None:
    port = free_udp_port()
    async with IngestSupervisor(settings(), bus) as supervisor:
        await supervisor.start("s1", port, KEY, hls_dir)
        await publish(port)
        await wait_until(lambda: len(playlist_numbers(read_playlist(hls_dir))) >= 1, 10, "a segment")
        [ffmpeg_pid] = listener_pids(port, parent=os.getpid())
    # A server shutdown is not the end of the stream: the next start() continues the playlist.
    assert not process_alive(ffmpeg_pid)
    assert "#EXT-X-ENDLIST" not in read_playlist(hls_dir)
    assert supervisor.status("s1") is None


@pytest.mark.asyncio
async def test_start_returns_once_ffmpeg_listens_on_the_port(bus: EventBus, hls_dir: pathlib.Path) -> None:
    # The URL handed to the encoder works the moment start() returns: an SRT caller that comes
    # too early is refused and gives up after a few seconds.
    port = free_udp_port()
    async with IngestSupervisor(settings(), bus) as supervisor:
        await supervisor.start("s1", port, KEY, hls_dir)
        assert udp_port_bound(port)
        await supervisor.stop("s1")
    assert not udp_port_bound(port)


@pytest.mark.asyncio
async def test_wrong_passphrase_is_refused_and_the_stream_keeps_waiting(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, publish: Publish
) -> None:
    port = free_udp_port()
    async with IngestSupervisor(settings(), bus) as supervisor:
        await supervisor.start("s1", port, KEY, hls_dir)
        await events.wait_for(ListenerStarted)

        intruder = await publish(port, passphrase="wrong-passphrase-123")
        _, stderr = await asyncio.wait_for(intruder.communicate(), 15)
        assert intruder.returncode != 0
        assert b"passphrase" in stderr.lower() or b"error" in stderr.lower()
        status = supervisor.status("s1")
        assert status is not None and status.ffmpeg_running and not status.publisher_connected
        assert not events.of(PublisherConnected)
        assert len(events.of(ListenerStarted)) == 1  # SRT refused it; FFmpeg never noticed
        assert not segments_on_disk(hls_dir)

        await publish(port, streamid="s1")  # what the platform's SRT URL carries
        await events.wait_for(PublisherConnected, within=10)
        await wait_until(lambda: len(playlist_numbers(read_playlist(hls_dir))) >= 1, 10, "a segment")
        await supervisor.stop("s1")


@pytest.mark.asyncio
async def test_killed_publisher_reconnects_and_the_playlist_continues(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, publish: Publish
) -> None:
    port = free_udp_port()
    async with IngestSupervisor(settings(), bus) as supervisor:
        await supervisor.start("s1", port, KEY, hls_dir)
        first = await publish(port)
        await events.wait_for(PublisherConnected, within=10)
        await wait_until(lambda: len(playlist_numbers(read_playlist(hls_dir))) >= 2, 10, "2 segments")

        first.kill()
        killed_at = time.monotonic()
        await first.wait()
        disconnected = await events.wait_for(PublisherDisconnected, within=10)
        detection_seconds = time.monotonic() - killed_at
        assert disconnected.stream_id == "s1"
        await events.wait_for(ListenerStarted, count=2)  # relistening on the same port
        assert events.of(ListenerStarted)[1].port == port
        status = supervisor.status("s1")
        assert status is not None and not status.publisher_connected and status.restarts == 1
        before = read_playlist(hls_dir)
        old_files = segments_on_disk(hls_dir)

        await publish(port)
        await events.wait_for(PublisherConnected, count=2, within=10)
        last_old = max(old_files)
        await wait_until(
            lambda: sum(n > last_old for n in playlist_numbers(read_playlist(hls_dir))) >= 2,
            10,
            "2 new segments",
        )
        await supervisor.stop("s1")

    after = read_playlist(hls_dir)
    numbers = playlist_numbers(after)
    assert numbers == sorted(set(numbers)), "segment numbers must strictly increase"
    assert media_sequence(after) >= media_sequence(before)
    assert media_sequence(after) == numbers[0]  # sequence number == file number, still counting
    # The first new segment follows a discontinuity, right after the last old one.
    new_part = re.split(rf"seg_\d+_{last_old}\.m4s\n", after, maxsplit=1)[1]
    assert new_part.lstrip().startswith("#EXT-X-DISCONTINUITY")
    assert playlist_numbers(new_part)[0] == last_old + 1
    files_now = segments_on_disk(hls_dir)
    for number, old in old_files.items():  # nothing was overwritten
        assert (files_now[number].st_ino, files_now[number].st_size) == (old.st_ino, old.st_size)
    assert detection_seconds < 6


@pytest.mark.asyncio
async def test_gives_up_when_no_publisher_returns_within_the_window(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, publish: Publish
) -> None:
    port = free_udp_port()
    async with IngestSupervisor(settings(reconnect_window_seconds=2.0), bus) as supervisor:
        stop_on_give_up(bus, supervisor)
        await supervisor.start("s1", port, KEY, hls_dir)
        await publish(port, seconds=1.5)  # publishes briefly, then leaves cleanly
        await events.wait_for(PublisherConnected, within=10)
        await events.wait_for(PublisherDisconnected, within=10)
        dropped_at = time.monotonic()

        gave_up = await events.wait_for(IngestGaveUp, within=10)
        waited = time.monotonic() - dropped_at
        assert gave_up.reason == "no publisher reconnected within 2 s"
        assert 1.5 < waited < 5
        # The handler's stop() ran inside the stream's own task without deadlocking.
        await wait_until(lambda: supervisor.status("s1") is None, 5, "stop from the handler")
        assert supervisor.running_streams() == []
        assert listener_pids(port) == []
    assert read_playlist(hls_dir).rstrip().endswith("#EXT-X-ENDLIST")


@pytest.mark.asyncio
async def test_crashing_ffmpeg_is_restarted_with_backoff_then_given_up(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    runs = tmp_path / "runs.log"
    fake = write_fake_ffmpeg(
        tmp_path / "crashing-ffmpeg",
        f"""
        import sys, time
        with open({str(runs)!r}, "a") as log:
            log.write(f"{{time.monotonic()}}\\n")
        sys.stderr.write("fake ffmpeg: cannot do anything\\n")
        sys.exit(1)
        """,
    )
    config = settings(
        ffmpeg_binary=fake, max_restarts=3, restart_backoff_initial=0.1, restart_backoff_max=0.3
    )
    async with IngestSupervisor(config, bus) as supervisor:
        stop_on_give_up(bus, supervisor)
        await supervisor.start("s1", free_udp_port(), KEY, hls_dir)
        gave_up = await events.wait_for(IngestGaveUp, within=15)

    assert "code 1" in gave_up.reason and "fake ffmpeg: cannot do anything" in gave_up.reason
    starts = [float(line) for line in runs.read_text().split()]
    assert len(starts) == 4  # the first run and max_restarts restarts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.3  # backoff doubles up to the max
    assert [e.restart for e in events.of(ListenerStarted)] == [0, 1, 2, 3]
    assert not events.of(PublisherConnected)


@pytest.mark.asyncio
async def test_listener_on_a_taken_port_reports_a_clear_error(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]
        async with IngestSupervisor(settings(max_restarts=1), bus) as supervisor:
            await supervisor.start("s1", port, KEY, hls_dir)
            gave_up = await events.wait_for(IngestGaveUp, within=15)
            status = supervisor.status("s1")  # kept visible until stop()
            assert status is not None and not status.ffmpeg_running
            assert supervisor.running_streams() == []
            await supervisor.stop("s1")
    assert status.last_error is not None and "Address already in use" in status.last_error
    assert "Address already in use" in gave_up.reason
    assert KEY not in gave_up.reason  # FFmpeg echoes the URL; the passphrase must not leak


@pytest.mark.asyncio
async def test_stop_kills_an_ffmpeg_that_ignores_sigint(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    pid_file = tmp_path / "pid"
    fake = write_fake_ffmpeg(
        tmp_path / "stubborn-ffmpeg",
        f"""
        import os, re, signal, socket, sys, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Listen like FFmpeg does, on the port named in the input list's file name.
        port = int(re.search(r"srt(\\d+)\\.ffconcat", " ".join(sys.argv)).group(1))
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", port))
        with open({str(pid_file)!r}, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
        """,
    )
    async with IngestSupervisor(settings(ffmpeg_binary=fake, stop_timeout_seconds=1.0), bus) as supervisor:
        await supervisor.start("s1", free_udp_port(), KEY, hls_dir)
        await wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", 10, "the fake to start")
        pid = int(pid_file.read_text())

        started = time.monotonic()
        await supervisor.stop("s1")
        took = time.monotonic() - started
    assert 0.9 < took < 4
    assert not process_alive(pid)
    assert not events.of(IngestGaveUp)


SERVER_SCRIPT = """
import asyncio, pathlib, sys
from streamplat.events import EventBus, ListenerStarted
from streamplat.ingest import IngestSettings, IngestSupervisor

async def main():
    bus = EventBus()
    started = asyncio.Event()
    bus.subscribe(ListenerStarted, lambda event: started.set())
    settings = IngestSettings(
        ffmpeg_binary=sys.argv[1], srt_bind_host="127.0.0.1", segment_seconds=1.0, playlist_size=50
    )
    async with IngestSupervisor(settings, bus) as supervisor:
        await supervisor.start("s1", int(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4]))
        await started.wait()
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_killed_server_takes_ffmpeg_along_and_a_restart_continues_the_playlist(
    bus: EventBus, events: EventLog, hls_dir: pathlib.Path, publish: Publish, tmp_path: pathlib.Path
) -> None:
    port = free_udp_port()
    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT)
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        FFMPEG,
        str(port),
        KEY,
        str(hls_dir),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SRC_DIR)},
    )
    try:
        assert server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), 15) == b"ready\n"
        [ffmpeg_pid] = listener_pids(port, parent=server.pid)
        publisher = await publish(port)
        await wait_until(lambda: len(playlist_numbers(read_playlist(hls_dir))) >= 2, 15, "2 segments")
        server.send_signal(signal.SIGKILL)  # no shutdown code runs
        await server.wait()
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()

    await wait_until(lambda: not process_alive(ffmpeg_pid), 5, "FFmpeg to die with its server")
    publisher.kill()
    await publisher.wait()
    # FFmpeg writes a segment, then the playlist. Make the kill look as if it landed in between:
    # the last segment is on disk but not listed. A restart must neither lose nor overwrite it.
    listed = read_playlist(hls_dir)
    orphan = playlist_numbers(listed)[-1]
    orphan_entry = re.search(rf"#EXTINF:([\d.]+),\nseg_1_{orphan}\.m4s\n", listed)
    assert orphan_entry is not None
    write_playlist(hls_dir, listed.replace(orphan_entry.group(0), ""))
    old_files = segments_on_disk(hls_dir)

    # The server comes back and starts the same stream on the same directory.
    async with IngestSupervisor(settings(playlist_size=50), bus) as supervisor:
        await supervisor.start("s1", port, KEY, hls_dir)
        await publish(port)
        await events.wait_for(PublisherConnected, within=10)
        await wait_until(
            lambda: any(n > max(old_files) for n in playlist_numbers(read_playlist(hls_dir))),
            10,
            "a new segment",
        )
        await supervisor.stop("s1")

    after = read_playlist(hls_dir)
    numbers = playlist_numbers(after)
    assert numbers == list(range(numbers[-1] + 1))  # every segment listed once, in order, from 0
    assert numbers[-1] > orphan
    # The orphan is back with about its real duration, and the new listener's first segment
    # follows it after a discontinuity.
    salvaged = re.search(rf"#EXTINF:([\d.]+),\nseg_1_{orphan}\.m4s\n#EXT-X-DISCONTINUITY\n", after)
    assert salvaged is not None, after
    assert float(salvaged.group(1)) == pytest.approx(float(orphan_entry.group(1)), abs=0.1)
    assert after.count("#EXT-X-DISCONTINUITY") == 1
    assert after.rstrip().endswith("#EXT-X-ENDLIST")
    files_now = segments_on_disk(hls_dir)
    for number, old in old_files.items():  # nothing was overwritten
        assert (files_now[number].st_ino, files_now[number].st_size) == (old.st_ino, old.st_size)
