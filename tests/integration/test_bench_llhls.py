"""Smoke test of bench/llhls.py's helpers: its playlist parser, and its player simulator against
a real nginx (the bench's own reference server) serving a live playlist that grows on disk."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "llhls.py"

LL_PLAYLIST = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:1
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600
#EXT-X-PART-INF:PART-TARGET=0.200
#EXT-X-MEDIA-SEQUENCE:7
#EXT-X-MAP:URI="init_0.mp4"
#EXTINF:1.00000,
seg_0_7.m4s
#EXT-X-PART:DURATION=0.20000,URI="part_0_40.m4s",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.20000,URI="part_0_41.m4s"
#EXTINF:0.40000,
seg_0_8.m4s
#EXT-X-PART:DURATION=0.20000,URI="part_0_42.m4s",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part_0_43.m4s"
"""


@pytest.fixture(name="llhls", scope="module")
def fixture_llhls() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_llhls", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_llhls"] = module
    spec.loader.exec_module(module)
    return module


def test_parser_reads_segments_parts_and_the_open_segment(llhls: ModuleType) -> None:
    media = llhls.parse_playlist(LL_PLAYLIST)
    assert media.target_duration == 1
    assert media.can_block and media.init == "init_0.mp4"
    assert [(msn, uri) for msn, uri, _ in media.segments] == [(7, "seg_0_7.m4s"), (8, "seg_0_8.m4s")]
    # Parts belong to the segment they precede; the last one is in the open segment 9.
    assert [(msn, i, uri) for msn, i, uri, _ in media.parts] == [
        (8, 0, "part_0_40.m4s"),
        (8, 1, "part_0_41.m4s"),
        (9, 0, "part_0_42.m4s"),
    ]


class GrowingStream:
    """Writes a new part every 0.1 s and closes a segment every 3 parts, like a live packager."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stop = threading.Event()
        self.segments: list[tuple[int, list[int]]] = []
        self.open: list[int] = []
        self.next_part = 0
        (directory / "init_0.mp4").write_bytes(b"\0" * 800)
        for _ in range(12):
            self.step()

    def step(self) -> None:
        n = self.next_part
        self.next_part += 1
        (self.directory / f"part_0_{n}.m4s").write_bytes(bytes([n % 256]) * 4000)
        self.open.append(n)
        if len(self.open) == 3:
            msn = len(self.segments)
            (self.directory / f"seg_0_{msn}.m4s").write_bytes(b"\1" * 12000)
            self.segments.append((msn, self.open))
            self.open = []
        window = self.segments[-4:]
        if not window:
            return  # no playlist before the first complete segment
        lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-TARGETDURATION:1"]
        lines.append("#EXT-X-PART-INF:PART-TARGET=0.100")
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{window[0][0]}")
        lines.append('#EXT-X-MAP:URI="init_0.mp4"')
        for msn, parts in window:
            lines += [f'#EXT-X-PART:DURATION=0.10000,URI="part_0_{p}.m4s"' for p in parts]
            lines += ["#EXTINF:0.30000,", f"seg_0_{msn}.m4s"]
        lines += [f'#EXT-X-PART:DURATION=0.10000,URI="part_0_{p}.m4s"' for p in self.open]
        tmp = self.directory / "stream.m3u8.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(self.directory / "stream.m3u8")  # atomic, as a real packager would

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.step()


@pytest.fixture(name="live_nginx")
def fixture_live_nginx(llhls: ModuleType, tmp_path: Path) -> Iterator[str]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("the bench's reference server needs nginx: apt-get install -y nginx-light")
    directory = tmp_path / "root" / "hls" / "s"
    directory.mkdir(parents=True)
    stream = GrowingStream(directory)
    writer = threading.Thread(target=stream.run)
    writer.start()
    nginx = llhls.Nginx(tmp_path / "root", tmp_path / "nginx").start()
    try:
        yield nginx.url("/hls/s/stream.m3u8")
    finally:
        nginx.stop()
        stream.stop.set()
        writer.join()


@pytest.mark.parametrize("ll", [False, True], ids=["legacy", "ll"])
def test_simulated_players_receive_new_media_without_errors(
    llhls: ModuleType, live_nginx: str, ll: bool
) -> None:
    result = llhls.run_simulation(live_nginx, 20, 3.0, ll)
    assert result["errors"] == 0
    assert result["deliveries"] > 20  # every player got something new after joining
    assert result["behind"] == 0
    assert 0 < result["simulator_cpu"] < 2  # measured, as a share of one core
