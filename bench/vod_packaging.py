"""How long packaging a recording takes, and how much memory its FFmpeg children use.

    PYTHONPATH=src .venv/bin/python bench/vod_packaging.py [--minutes 1 10 60] [--layout ts fmp4]
        [--cache DIR]

Both on-disk layouts are measured: "ts" (FFmpeg's HLS muxer, segment_NNNNN.ts) and "fmp4"
(the LL-HLS packager's init_1.mp4 + seg_1_{msn}.m4s, one segment per 2 s keyframe interval,
made from the same clip with the ingest's fragmented-MP4 flags). The reference column is FFmpeg
alone on the same input: the remux step's argv run by hand on the same list files, with
`+faststart` (the plain way to make a seekable MP4; the fMP4 job reserves the moov's space
instead), and no probe, thumbnail, fsync or Python; "ratio" is our whole job over it. Each case runs
--repeat times (default 3), ours and the reference interleaved; medians are printed.

Media: a 10 s 1280x720 30 fps clip at about 2.5 Mbps (video 2.4 Mbps + AAC 128 kbps, noise
added so x264 really spends the bits) is encoded once, then looped with `-c copy` into 2 s HLS
segments with continuous timestamps, 60 minutes' worth; shorter cases hard-link a prefix of the
same segments (30, 300, 1800 of them). The HLS muxer makes the first segment ~4 s and each loop
seam adds ~0.2 s, so the media runs ~0.3 % longer than nominal; the MP4's duration column shows
the real length, which matches the playlist's EXTINF sum. Everything is cached under the cache
directory, so reruns start at once.

Each case runs in a fresh Python process so that getrusage(RUSAGE_CHILDREN).ru_maxrss is the
peak RSS of that case's FFmpeg children alone. Source segments are warm in the page cache (as
they usually are when a stream has just stopped); the MP4 is fsynced before the call returns.
Goal to compare against: <= 1 s + 0.2 % of the recording's duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg  # type: ignore[import-untyped]

from streamplat.vod.packaging import (
    build_remux_argv,
    build_runs_remux_argv,
    list_runs,
    list_segments,
    package_recording,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support
from tests.support.fmp4 import FRAG_DURATION_US, INGEST_MOVFLAGS, split_fmp4_stream

CLIP_SECONDS = 10
SEGMENT_SECONDS = 2


def ensure_media(ffmpeg: str, cache: Path, minutes: list[int]) -> dict[int, Path]:
    """Make (or reuse) one media directory per case; return {minutes: media_dir}."""
    cache.mkdir(parents=True, exist_ok=True)
    clip = cache / "clip.ts"
    if not clip.exists():
        print(f"encoding a {CLIP_SECONDS} s clip ...", flush=True)
        tmp = cache / "clip.tmp.ts"
        subprocess.run(
            [
                ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30,noise=alls=12:allf=t",
                "-f", "lavfi", "-i", "sine=frequency=440",
                "-t", str(CLIP_SECONDS),
                "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2400k", "-maxrate", "2400k",
                "-bufsize", "4800k", "-g", str(30 * SEGMENT_SECONDS),
                "-c:a", "aac", "-b:a", "128k",
                "-f", "mpegts", str(tmp),
            ],
            check=True,
        )  # fmt: skip
        tmp.rename(clip)

    longest = max(minutes)
    full = cache / f"media-{longest}min"
    if not (full / ".complete").exists():
        print(f"looping it into {longest} min of {SEGMENT_SECONDS} s HLS segments ...", flush=True)
        shutil.rmtree(full, ignore_errors=True)
        full.mkdir()
        loops = longest * 60 // CLIP_SECONDS
        subprocess.run(
            [
                ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
                "-stream_loop", str(loops - 1), "-i", str(clip),
                "-c", "copy", "-f", "hls", "-hls_time", str(SEGMENT_SECONDS), "-hls_list_size", "0",
                "-hls_segment_filename", str(full / "segment_%05d.ts"), str(full / "stream.m3u8"),
            ],
            check=True,
        )  # fmt: skip
        (full / ".complete").touch()

    dirs = {longest: full}
    segments = list_segments(full)
    for m in minutes:
        if m == longest:
            continue
        media_dir = cache / f"media-{m}min"
        if not (media_dir / ".complete").exists():
            shutil.rmtree(media_dir, ignore_errors=True)
            media_dir.mkdir()
            for segment in segments[: m * 60 // SEGMENT_SECONDS]:
                os.link(segment, media_dir / segment.name)
            (media_dir / ".complete").touch()
        dirs[m] = media_dir
    return dirs


def ensure_fmp4_media(ffmpeg: str, cache: Path, minutes: list[int]) -> dict[int, Path]:
    """Make (or reuse) the fMP4 layout of the same looped clip; return {minutes: media_dir}."""
    clip = cache / "clip.ts"  # made by ensure_media
    longest = max(minutes)
    full = cache / f"fmp4-{longest}min"
    if not (full / ".complete").exists():
        print(f"remuxing it into {longest} min of fMP4 segments ...", flush=True)
        shutil.rmtree(full, ignore_errors=True)
        loops = longest * 60 // CLIP_SECONDS
        remux = subprocess.Popen(
            [
                ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
                "-stream_loop", str(loops - 1), "-i", str(clip),
                "-map", "0", "-c", "copy", "-bsf:a", "aac_adtstoasc",
                "-f", "mp4", "-movflags", INGEST_MOVFLAGS, "-frag_duration", str(FRAG_DURATION_US),
                "pipe:1",
            ],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert remux.stdout is not None
        split_fmp4_stream(remux.stdout, full, run=1, first_msn=0)
        if remux.wait() != 0:
            raise SystemExit("ffmpeg failed to make the fMP4 media")
        (full / ".complete").touch()

    dirs = {longest: full}
    segments = list_runs(full)[0].segments
    for m in minutes:
        if m == longest:
            continue
        media_dir = cache / f"fmp4-{m}min"
        if not (media_dir / ".complete").exists():
            shutil.rmtree(media_dir, ignore_errors=True)
            media_dir.mkdir()
            os.link(full / "init_1.mp4", media_dir / "init_1.mp4")
            for segment in segments[: m * 60 // SEGMENT_SECONDS]:
                os.link(segment, media_dir / segment.name)
            (media_dir / ".complete").touch()
        dirs[m] = media_dir
    return dirs


def source_files(media_dir: Path) -> list[Path]:
    """Every media file the job reads, in either layout."""
    files = list_segments(media_dir)
    for run in list_runs(media_dir):
        files += [run.init] if run.init else []
        files += run.segments
    return files


def ffmpeg_alone(ffmpeg: str, media_dir: Path, work: Path) -> float:
    """Time the remux step alone, by hand, on the same input; return seconds."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "reference.mp4"
    runs = list_runs(media_dir)
    if runs:
        run_lists = []
        for run in runs:
            assert run.init is not None
            run_list = work / f"run-{run.run}.list"
            run_list.write_text("".join(f"file:{p.resolve()}\n" for p in (run.init, *run.segments)))
            run_lists.append(run_list)
        listing = work / "runs.ffconcat"
        listing.write_text("ffconcat version 1.0\n" + "".join(f"file 'concatf:{r}'\n" for r in run_lists))
        argv = build_runs_remux_argv(ffmpeg, listing, out)
    else:
        listing = work / "segments.txt"
        listing.write_text("".join(f"file:{p.resolve()}\n" for p in list_segments(media_dir)))
        argv = build_remux_argv(ffmpeg, listing, out)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    return elapsed


class _FfmpegTimes(logging.Handler):
    """Collects "ffmpeg <what> exited ... after N s" records from the packaging logger."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("%sffmpeg %s exited") and isinstance(record.args, tuple):
            _, what, _, seconds, _ = record.args
            self.seconds[str(what)] = self.seconds.get(str(what), 0.0) + float(seconds)  # type: ignore[arg-type]


def run_case(ffmpeg: str, media_dir: Path, out_dir: Path) -> dict[str, object]:
    """Package once in this process and measure it."""
    times = _FfmpegTimes()
    logger = logging.getLogger("streamplat.vod.packaging")
    logger.addHandler(times)
    logger.setLevel(logging.INFO)
    source_bytes = sum(p.stat().st_size for p in source_files(media_dir))
    started = time.perf_counter()
    recording = asyncio.run(package_recording(ffmpeg, media_dir, out_dir))
    elapsed = time.perf_counter() - started
    return {
        "elapsed": elapsed,
        "duration": recording.duration_seconds,
        "source_mbps": source_bytes * 8 / recording.duration_seconds / 1e6,
        "mp4_bytes": recording.file_size_bytes,
        "ffmpeg_seconds": times.seconds,
        "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, nargs="+", default=[1, 10, 60], help="recording lengths")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/streamplat-bench-vod"), help="media cache")
    parser.add_argument(
        "--layout", nargs="+", choices=["ts", "fmp4"], default=["ts", "fmp4"], help="on-disk layouts"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; medians are printed")
    parser.add_argument(
        "--case", nargs=2, type=Path, metavar=("MEDIA_DIR", "OUT_DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()

    if args.case:  # the child: one measurement, as JSON on stdout
        print(json.dumps(run_case(ffmpeg, *args.case)))
        return

    dirs = {"ts": ensure_media(ffmpeg, args.cache, args.minutes)}
    if "fmp4" in args.layout:
        dirs["fmp4"] = ensure_fmp4_media(ffmpeg, args.cache, args.minutes)
    print(f"\n{'layout':>6} {'minutes':>7} {'MP4 dur':>8} {'source':>10} {'elapsed':>8} {'goal':>7} "
          f"{'remux':>6} {'probe':>6} {'thumb':>6} {'other':>6} {'FFmpeg alone':>12} {'ratio':>6} "
          f"{'MP4':>7} {'FFmpeg peak RSS':>16}")  # fmt: skip
    for layout in args.layout:
        for minutes in sorted(args.minutes):
            out_dir = args.cache / f"out-{layout}-{minutes}min"
            results, references = [], []
            for _ in range(args.repeat):  # interleaved, so both see the same load
                shutil.rmtree(out_dir, ignore_errors=True)
                child = subprocess.run(
                    [sys.executable, __file__, "--case", str(dirs[layout][minutes]), str(out_dir)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results.append(json.loads(child.stdout.splitlines()[-1]))
                shutil.rmtree(out_dir, ignore_errors=True)  # 1 GB per hour; do not keep it around
                references.append(ffmpeg_alone(ffmpeg, dirs[layout][minutes], args.cache / "reference"))
            r = sorted(results, key=lambda x: float(x["elapsed"]))[len(results) // 2]  # the median run
            reference = statistics.median(references)
            t = r["ffmpeg_seconds"]
            other = r["elapsed"] - sum(t.values())
            goal = 1 + 0.002 * r["duration"]
            print(
                f"{layout:>6} {minutes:>7} {r['duration']:>7.1f}s {r['source_mbps']:>6.2f}Mb/s "
                f"{r['elapsed']:>7.2f}s {goal:>6.2f}s "
                f"{t.get('remux', 0):>5.2f}s {t.get('probe', 0):>5.2f}s {t.get('thumbnail', 0):>5.2f}s "
                f"{other:>5.2f}s {reference:>11.2f}s {r['elapsed'] / reference:>5.2f}x "
                f"{r['mp4_bytes'] / 1e6:>5.0f}MB {r['children_maxrss_kib'] / 1024:>13.1f}MiB",
                flush=True,
            )
    print(
        "\nother = Python work (fMP4: box checks of every segment) + fsync of the MP4 + renames;"
        "\nFFmpeg alone = the remux argv (+faststart) on the same input, nothing else;"
        "\nratio = elapsed / FFmpeg alone;"
        f"\nmedians of {args.repeat} interleaved runs (a row is the run with the median elapsed time);"
        "\nsource = measured bitrate of the segments"
    )


if __name__ == "__main__":
    main()
