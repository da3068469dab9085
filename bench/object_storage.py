"""Stop -> recording ready in object storage: packaging + upload + confirmation, against moto.

    PYTHONPATH=src .venv/bin/python bench/object_storage.py [--minutes 10] [--rounds 3]
        [--live-streams 1 8] [--live-seconds 60] [--no-recordings]

The media is vod_packaging.py's (a 720p ~2.5 Mbps clip looped into 2 s HLS segments, cached).
For each length, in one run on one machine:

  package   package_recording(): what a stopped stream's recording job runs first
  upload    ObjectStore.upload() of the MP4 and the thumbnail, as the recording job runs it:
            s3transfer multipart upload + the ETag computed alongside + HEAD confirmation
  reference the same boto3 client uploading the same MP4 alone (upload_file, same transfer
            settings, no hashing, no HEAD) - what `aws s3 cp` does - and one plain PUT of the
            whole file (put_object) to the same endpoint

The endpoint is moto's standalone server (a real S3 HTTP server, but Python): its own speed
caps every row, so the ratio upload/reference is what says how much our confirmation costs.
Goal from issue 11: stop -> ready <= 1 s + 0.2 % of the duration + size / (50 MB/s).
The best of --rounds rounds is shown for the uploads (the box is shared and noisy).

Live section (issue 12, `--live-streams`): N streams' DiskWriters are fed the fMP4 layout of the
same clip (2 s segments, ~2.5 Mbps) at real-time pace, each with the server's live upload hook
(hls/offload.py: bounded queue per stream, boto3 on its own threads, one PUT with Content-MD5
per file). "lag" is the time from a segment durable on disk (after the rename) to its PUT
confirmed by the store, p50/p99 over every segment of every stream; "PUT" is the reference:
the same client putting the same segment bytes at once, one after the other, after the run.
The ratio lag/PUT is what the queue, the thread hop and the event loop add; lag p99 as a share
of the segment duration says how much media a node's death can lose beyond the open segment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import imageio_ffmpeg  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vod_packaging import ensure_fmp4_media, ensure_media

from streamplat.config import ObjectStorageSettings
from streamplat.hls.disk import DiskWriter, scan, segment_duration
from streamplat.hls.offload import LiveOffload
from streamplat.vod.objectstore import ObjectStore
from streamplat.vod.packaging import list_runs, package_recording

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
BUCKET = "bench"
MB = 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(log: Path) -> Any:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(300):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def measure(endpoint: str, media_dir: Path, out_dir: Path, rounds: int) -> dict[str, Any]:
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    started = time.perf_counter()
    rec = await package_recording(ffmpeg, media_dir, out_dir)
    package = time.perf_counter() - started

    settings = ObjectStorageSettings(endpoint_url=endpoint, bucket=BUCKET, create_bucket=True)
    store = ObjectStore(settings, CREDENTIALS)
    await store.open()
    client, transfer = store._client, store._transfer  # the very same client and settings
    uploads, refs, puts = [], [], []
    for n in range(rounds):
        started = time.perf_counter()
        await store.upload(rec.video_path, f"r{n}/video.mp4", "video/mp4")
        await store.upload(rec.thumbnail_path, f"r{n}/thumbnail.jpg", "image/jpeg")
        uploads.append(time.perf_counter() - started)
        refs.append(
            timed(lambda n=n: client.upload_file(str(rec.video_path), BUCKET, f"ref{n}.mp4", Config=transfer))
        )
        data = await asyncio.to_thread(rec.video_path.read_bytes)
        puts.append(
            timed(lambda n=n, data=data: client.put_object(Bucket=BUCKET, Key=f"put{n}.mp4", Body=data))
        )
        del data
        # moto keeps objects in memory: drop this round's before the next.
        client.delete_objects(
            Bucket=BUCKET,
            Delete={
                "Objects": [
                    {"Key": k}
                    for k in (f"r{n}/video.mp4", f"r{n}/thumbnail.jpg", f"ref{n}.mp4", f"put{n}.mp4")
                ]
            },
        )
    store.close()
    return {
        "duration": rec.duration_seconds,
        "bytes": rec.file_size_bytes,
        "package": package,
        "upload": min(uploads),
        "ref": min(refs),
        "put": min(puts),
    }


async def measure_live(
    endpoint: str, media_dir: Path, work: Path, streams: int, seconds: float
) -> dict[str, Any]:
    """Feed `streams` disk writers `seconds` of segments at real-time pace; lags and reference PUTs."""
    run = list_runs(media_dir)[0]
    assert run.init is not None
    init = run.init.read_bytes()
    segments = [(p, p.read_bytes()) for p in run.segments]
    durations = [segment_duration(init, data) for _, data in segments[:5]]
    seg_seconds = statistics.median(durations)
    count = min(len(segments), max(1, round(seconds / seg_seconds)))
    settings = ObjectStorageSettings(endpoint_url=endpoint, bucket=BUCKET, create_bucket=True)
    store = ObjectStore(settings, CREDENTIALS)
    await store.open()
    async with LiveOffload(store) as offload:
        writers = []
        for n in range(streams):
            folder = work / f"s{n}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            writer = DiskWriter(folder, scan(folder), offload.open(f"bench-{n}", folder))
            writer.write_init(1, init)
            writers.append(writer)
        started = time.monotonic()
        cpu = time.process_time()  # this process: the writers' and the upload threads' work
        for i, (path, data) in enumerate(segments[:count]):
            msn = int(path.stem.split("_")[2])
            for writer in writers:
                writer.write_segment(1, msn, data, seg_seconds, math.ceil(seg_seconds))
            # The next segment is complete one segment duration later (the publisher is real time).
            await asyncio.sleep(max(0.0, started + (i + 1) * seg_seconds - time.monotonic()))
        expected = streams * (count + 1)
        while offload.uploaded < expected:  # noqa: ASYNC110 - a counter, no event to await
            await asyncio.sleep(0.05)
        for writer in writers:
            await asyncio.to_thread(writer.close)
        cpu = time.process_time() - cpu
        lags = sorted(offload.lags)
        failed, dropped = offload.failed, offload.dropped
    # Reference CPU: the same segments written by the same disk writers without the upload hook.
    disk_cpu = time.process_time()
    for n in range(streams):
        folder = work / f"ref{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        writer = DiskWriter(folder, scan(folder))
        writer.write_init(1, init)
        for path, data in segments[:count]:
            writer.write_segment(1, int(path.stem.split("_")[2]), data, seg_seconds, math.ceil(seg_seconds))
        await asyncio.to_thread(writer.close)
        shutil.rmtree(folder, ignore_errors=True)
    disk_cpu = time.process_time() - disk_cpu
    client = store._client
    puts = []
    for n, (_, data) in enumerate(segments[:count]):
        t0 = time.perf_counter()
        await asyncio.to_thread(client.put_object, Bucket=BUCKET, Key=f"ref/{n}.m4s", Body=data)
        puts.append(time.perf_counter() - t0)
    for n in range(streams):
        await store.delete_prefix(store.live_prefix(f"bench-{n}"))
    await store.delete_prefix("ref/")
    store.close()
    puts.sort()
    return {
        "seg": seg_seconds,
        "segments": count,
        "bytes": statistics.mean(len(d) for _, d in segments[:count]),
        "lag50": _pct(lags, 50),
        "lag99": _pct(lags, 99),
        "put50": _pct(puts, 50),
        "put99": _pct(puts, 99),
        "cpu_ms": 1e3 * cpu / (streams * count),
        "disk_cpu_ms": 1e3 * disk_cpu / (streams * count),
        "failed": failed,
        "dropped": dropped,
    }


def _pct(values: list[float], p: float) -> float:
    """The p-th percentile of sorted values (nearest rank)."""
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def live_section(endpoint: str, cache: Path, streams: list[int], seconds: float) -> None:
    media = ensure_fmp4_media(imageio_ffmpeg.get_ffmpeg_exe(), cache, [max(1, math.ceil(seconds / 60))])
    media_dir = next(iter(media.values()))
    print(
        f"\nlive uploads: {seconds:g} s of segments per stream at real-time pace, endpoint {endpoint} (moto)"
    )
    print(
        f"{'streams':>7} {'segs':>5} {'seg':>5} {'size':>7} {'lag p50':>8} {'lag p99':>8} "
        f"{'PUT p50':>8} {'PUT p99':>8} {'ratio':>6} {'p99/seg':>8} {'CPU/seg':>8} {'disk only':>9} "
        f"{'failed':>6} {'dropped':>7} {'load':>5}"
    )
    for n in streams:
        r = asyncio.run(measure_live(endpoint, media_dir, cache / "live", n, seconds))
        print(
            f"{n:>7} {r['segments']:>5} {r['seg']:>4.1f}s {r['bytes'] / 1e3:>5.0f}KB "
            f"{r['lag50'] * 1e3:>6.0f}ms {r['lag99'] * 1e3:>6.0f}ms {r['put50'] * 1e3:>6.0f}ms "
            f"{r['put99'] * 1e3:>6.0f}ms {r['lag50'] / r['put50']:>6.2f} "
            f"{100 * r['lag99'] / r['seg']:>7.1f}% {r['cpu_ms']:>6.1f}ms {r['disk_cpu_ms']:>7.1f}ms "
            f"{r['failed']:>6} {r['dropped']:>7} {os.getloadavg()[0]:>5.1f}"
        )
    print(
        "\nlag = segment durable on disk -> PUT confirmed (every segment of every stream); PUT = the same"
        "\nbytes put at once by the same client, one at a time (the store's own speed); ratio = lag p50 /"
        "\nPUT p50; p99/seg = lag p99 as a share of the segment duration; CPU/seg = this process's CPU"
        "\nper segment (disk writer + upload), disk only = the same writes without uploads (reference);"
        "\nload = 1-min load average."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, nargs="+", default=[10], help="recording lengths")
    parser.add_argument("--rounds", type=int, default=3, help="upload rounds per length (best is shown)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/streamplat-bench-s3"), help="media cache")
    parser.add_argument(
        "--live-streams", type=int, nargs="*", default=[1, 8], help="live: streams at once (none: skip)"
    )
    parser.add_argument("--live-seconds", type=float, default=60.0, help="live section: media per stream")
    parser.add_argument("--no-recordings", action="store_true", help="only the live section")
    args = parser.parse_args()
    # The live section's fMP4 is made from the same clip.
    dirs = ensure_media(
        imageio_ffmpeg.get_ffmpeg_exe(), args.cache, [1] if args.no_recordings else args.minutes
    )
    with moto_server(args.cache / "moto.log") as endpoint:
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.live_streams:
            live_section(endpoint, args.cache, args.live_streams, args.live_seconds)
        if args.no_recordings:
            return
        print(f"\nendpoint {endpoint} (moto), best of {args.rounds} rounds for uploads")
        print(
            f"{'minutes':>7} {'MP4':>8} {'package':>8} {'upload':>8} {'MB/s':>7} "
            f"{'ref MB/s':>9} {'ratio':>6} {'PUT MB/s':>9} {'ready':>7} {'goal':>7} {'goal@moto':>10}"
        )
        for minutes in sorted(args.minutes):
            out_dir = args.cache / f"out-{minutes}"
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            r = asyncio.run(measure(endpoint, dirs[minutes], out_dir, args.rounds))
            shutil.rmtree(out_dir, ignore_errors=True)
            size = r["bytes"] / MB
            ready = r["package"] + r["upload"]
            goal = 1 + 0.002 * r["duration"] + size / 50
            # The same goal with the reference upload's speed in place of 50 MB/s: what this
            # endpoint allows at best.
            goal_here = 1 + 0.002 * r["duration"] + r["ref"]
            print(
                f"{minutes:>7} {size:>6.0f}MB {r['package']:>7.2f}s {r['upload']:>7.2f}s "
                f"{size / r['upload']:>7.1f} {size / r['ref']:>9.1f} {r['ref'] / r['upload']:>6.2f} "
                f"{size / r['put']:>9.1f} {ready:>6.2f}s {goal:>6.2f}s {goal_here:>9.2f}s"
            )
    print(
        "\nupload = MP4 + thumbnail, with the ETag check and HEAD; ref = the same client's upload_file of"
        "\nthe MP4 alone; ratio = ref time / upload time (1.00 = confirmation is free); ready = package +"
        "\nupload (the recording job's remaining DB writes take milliseconds)."
    )


if __name__ == "__main__":
    main()
