"""Throwaway LL-HLS prototype: real FFmpeg pipeline -> in-memory parts/segments -> raw ASGI server.

Not product code; it exists to check the design in docs/design/ll-hls.md end to end with
hls.js in Chromium. One stream, one run (no reconnects), no disk writer.

    python llhls_server.py PORT SRT_PORT DURATION_S [PART_US] [SEG_TARGET_S] [GOP]

Publisher: FFmpeg -re testsrc2 + sine -> x264 zerolatency + AAC -> MPEG-TS over SRT (caller).
Ingest:    FFmpeg SRT listener -> -c copy -> fragmented MP4 on stdout (the design's argv).
EXT-X-PROGRAM-DATE-TIME of a segment = publisher launch wall time + media start (tfdt), so
hls.js's `playingDate` is the capture time of the frame on screen and Date.now() - playingDate is
the glass-to-glass latency as the issue defines it (wall time since publisher start - media time).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import pathlib
import sys
import time
import urllib.parse

import uvicorn

import boxes

FF = "/work/main/.venv/lib/python3.11/site-packages/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v9.0.2"
HLSJS = pathlib.Path("/work/main/src/streamplat/web/static/vendor/hls.min.js").read_bytes()
PORT, SRT_PORT, DURATION = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
PART_US = int(sys.argv[4]) if len(sys.argv) > 4 else 200000
SEG_TARGET = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
GOP = int(sys.argv[6]) if len(sys.argv) > 6 else 30
RUNS = int(sys.argv[7]) if len(sys.argv) > 7 else 1  # publisher sessions (reconnects = RUNS - 1)
GAP = 2.0  # seconds the publisher is away between sessions
FIRST_SEG = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0  # >0: close a run's first segment early (s)
ANALYZE_US = int(sys.argv[9]) if len(sys.argv) > 9 else 500000


class Store:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.changed: asyncio.Future[None] = self.loop.create_future()
        self.inits: dict[int, bytes] = {}
        self.run = -1
        self.run_start: dict[int, float] = {}
        self.segments: list[dict] = []  # closed: msn, dur, start, parts[gid], data
        self.parts: dict[int, tuple[bytes, float, bool, int]] = {}  # gid -> bytes, dur, indep, msn
        self.open: dict | None = None
        self.next_msn = 0
        self.next_gid = 0
        self.part_target = 0.0
        self.target = 0
        self.playlist = b""
        self.publisher_start = 0.0
        self.log: list[tuple[float, str]] = []

    def notify(self) -> None:
        if self.segments:
            self.playlist = self.render().encode()
        fut, self.changed = self.changed, self.loop.create_future()
        fut.set_result(None)

    def close_open(self) -> None:
        if self.open:
            seg = self.open
            seg["data"] = b"".join(self.parts[g][0] for g in seg["parts"])
            self.segments.append(seg)
            self.open = None
            self.notify()

    def add_fragment(self, data: bytes, start: float, dur: float, independent: bool) -> None:
        if self.open and independent and self.open["dur"] >= SEG_TARGET:
            seg = self.open
            seg["data"] = b"".join(self.parts[g][0] for g in seg["parts"])
            self.segments.append(seg)
            if not self.target:
                self.target = max(1, round(seg["dur"]))
            self.open = None
            self.log.append((time.time(), f"seg {seg['msn']} {seg['dur']:.3f}"))
            if seg["msn"] == 0:
                print(f"first segment closed {time.time() - self.publisher_start:.3f}s after publisher launch", flush=True)
        if self.open is None:
            prev = self.segments[-1] if self.segments else None
            dsn = 0 if prev is None else prev["dsn"] + (prev["run"] != self.run)
            first = prev is None or prev["run"] != self.run
            self.open = {"msn": self.next_msn, "dur": 0.0, "start": start, "parts": [], "run": self.run, "dsn": dsn, "first": first}
            self.next_msn += 1
        gid = self.next_gid
        self.next_gid += 1
        self.parts[gid] = (data, dur, independent, self.open["msn"])
        self.open["parts"].append(gid)
        self.open["dur"] += dur
        self.part_target = max(self.part_target, math.ceil(dur * 1000) / 1000)
        if FIRST_SEG > 0 and self.open["first"] and self.open["dur"] >= FIRST_SEG:
            seg = self.open  # close a run's first segment at once: playable playlist sooner
            seg["data"] = b"".join(self.parts[g][0] for g in seg["parts"])
            self.segments.append(seg)
            self.target = self.target or max(1, round(SEG_TARGET))
            self.open = None
            print(f"first segment closed early {time.time() - self.publisher_start:.3f}s after publisher launch", flush=True)
        self.notify()

    def render(self) -> str:
        pt = self.part_target
        window = self.segments[-8:]
        out = [
            "#EXTM3U",
            "#EXT-X-VERSION:6",
            f"#EXT-X-TARGETDURATION:{self.target}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * pt:.3f}",
            f"#EXT-X-PART-INF:PART-TARGET={pt:.3f}",
            f"#EXT-X-MEDIA-SEQUENCE:{window[0]['msn']}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{window[0]['dsn']}",
        ]
        prev_run = None

        def head(seg: dict) -> None:
            nonlocal prev_run
            if seg["run"] != prev_run:
                if prev_run is not None:
                    out.append("#EXT-X-DISCONTINUITY")
                out.append(f'#EXT-X-MAP:URI="init_{seg["run"]}.mp4"')
                prev_run = seg["run"]
            pdt = datetime.datetime.fromtimestamp(self.run_start[seg["run"]] + seg["start"], datetime.UTC)
            out.append("#EXT-X-PROGRAM-DATE-TIME:" + pdt.isoformat(timespec="milliseconds").replace("+00:00", "Z"))

        def parts(seg: dict) -> None:
            for g in seg["parts"]:
                _, d, ind, _ = self.parts[g]
                out.append(f'#EXT-X-PART:DURATION={d:.5f},URI="part_{g}.m4s"' + (",INDEPENDENT=YES" if ind else ""))

        for i, seg in enumerate(window):
            head(seg)
            if i >= len(window) - 2:
                parts(seg)
            out.append(f"#EXTINF:{seg['dur']:.5f},")
            out.append(f"seg_{seg['msn']}.m4s")
        if self.open:
            head(self.open)
            parts(self.open)
        out.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part_{self.next_gid}.m4s"')
        return "\n".join(out) + "\n"

    def have(self, msn: int, part: int | None) -> bool:
        last_closed = self.segments[-1]["msn"] if self.segments else -1
        if part is None:
            return msn <= last_closed
        while True:
            if msn <= last_closed:
                seg = next((s for s in self.segments if s["msn"] == msn), None)
                if seg is None or part < len(seg["parts"]):
                    return True
                msn, part = msn + 1, 0  # RFC 8216bis 6.2.5.2: past the last part = part 0 of next
                continue
            if self.open and msn == self.open["msn"]:
                return part < len(self.open["parts"])
            return False

    async def wait(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(asyncio.shield(self.changed), left)
            except TimeoutError:
                return False
        return True


STORE: Store


async def pipeline() -> None:
    for run in range(RUNS):
        if run:
            await asyncio.sleep(GAP)
        await one_run(run)


async def one_run(run: int) -> None:
    listener = await asyncio.create_subprocess_exec(
        FF, "-nostdin", "-hide_banner", "-loglevel", "error", "-analyzeduration", str(ANALYZE_US),
        "-i", f"srt://127.0.0.1:{SRT_PORT}?mode=listener&latency=120000",
        "-map", "0", "-c", "copy", "-bsf:a", "aac_adtstoasc", "-f", "mp4",
        "-movflags", "empty_moov+default_base_moof+frag_keyframe+delay_moov", "-frag_duration", str(PART_US), "pipe:1",
        stdout=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(0.5)
    STORE.publisher_start = STORE.publisher_start or time.time()
    STORE.run_start[run] = time.time()
    publisher = await asyncio.create_subprocess_exec(
        "nice", "-n", "5", FF, "-nostdin", "-hide_banner", "-loglevel", "error",
        # realtime/arealtime filters, not -re: -re emits the first ~0.45 s of media at once
        # (measured), which would make media time run ahead of wall time since launch.
        "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30,realtime", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000,arealtime",
        "-t", str(DURATION), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(GOP),
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "mpegts",
        f"srt://127.0.0.1:{SRT_PORT}?mode=caller&latency=120000",
    )
    reader = listener.stdout
    assert reader is not None
    tracks: dict[int, boxes.Track] = {}
    video = 0
    moof = b""
    while True:
        try:
            head = await reader.readexactly(8)
        except asyncio.IncompleteReadError:
            break
        size = int.from_bytes(head[:4], "big")
        kind = head[4:8]
        body = await reader.readexactly(size - 8)
        box = head + body
        if kind == b"ftyp":
            ftyp = box
        elif kind == b"moov":
            STORE.run = run
            STORE.inits[run] = ftyp + box
            tracks = boxes.parse_moov(box)
            video = next(t.track_id for t in tracks.values() if t.handler == "vide")
            STORE.log.append((time.time(), "init"))
            print(f"init at {time.time() - STORE.publisher_start:.3f}s after publisher launch, tracks {[t.handler for t in tracks.values()]}", flush=True)
        elif kind == b"moof":
            moof = box
        elif kind == b"mdat" and moof:
            v = next(t for t in boxes.parse_moof(moof, tracks) if t.track_id == video)
            ts = tracks[video].timescale
            STORE.add_fragment(moof + box, v.base_decode_time / ts, v.duration / ts, boxes.is_sync(v.first_flags))
            moof = b""
    STORE.close_open()  # the run ended: its open segment is complete
    await publisher.wait()
    await listener.wait()


PAGE = """<!doctype html><meta charset=utf-8><video id=v muted autoplay playsinline width=320></video>
<script src="/hls.min.js"></script><script>
const ll = new URLSearchParams(location.search).get('ll') !== '0';
const video = document.getElementById('v');
const hls = new Hls(ll ? {} : {lowLatencyMode: false});
window.samples = []; window.stalls = 0; window.errors = [];
hls.on(Hls.Events.ERROR, (e, d) => { window.errors.push(d.details + (d.fatal ? ' FATAL ' : ' ') + (d.mimeType || '') + ' ' + (d.error && d.error.message || '') + ' ' + (d.url || '')); if (d.details === 'bufferStalledError') window.stalls++; });
hls.loadSource('/s.m3u8'); hls.attachMedia(video); video.play().catch(() => {});
setInterval(() => { const d = hls.playingDate; if (d && !video.paused && video.readyState >= 3) {
  const f = hls.streamController.currentFrag; window.samples.push([Date.now() - d.getTime(), hls.latency, hls.targetLatency, f && f.sn, f && f.cc, f && +f.start.toFixed(3), f && f.programDateTime, +video.currentTime.toFixed(3)]); } }, 100);
</script>"""


def headers(ctype: str, cache: str, n: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", ctype.encode()), (b"cache-control", cache.encode()), (b"content-length", str(n).encode())]


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    q = urllib.parse.parse_qs(scope["query_string"].decode())
    status, ctype, cache, body = 404, "text/plain", "no-cache", b"not found"
    td = max(STORE.target, 1)
    if path == "/":
        status, ctype, body = 200, "text/html", PAGE.encode()
    elif path == "/hls.min.js":
        status, ctype, body = 200, "application/javascript", HLSJS
    elif path == "/segs.json":
        status, ctype, body = 200, "application/json", json.dumps({s["msn"]: [s["run"], s["start"], s["dur"], STORE.run_start[s["run"]]] for s in STORE.segments}).encode()
    elif path == "/log.json":
        status, ctype, body = 200, "application/json", json.dumps({"start": STORE.publisher_start, "log": STORE.log}).encode()
    elif path == "/s.m3u8":
        ctype = "application/vnd.apple.mpegurl"
        msn = q.get("_HLS_msn", [None])[0]
        part = q.get("_HLS_part", [None])[0]
        if part is not None and msn is None:
            status, body = 400, b"_HLS_part without _HLS_msn"
        elif msn is not None:
            m, p = int(msn), (int(part) if part is not None else None)
            last = STORE.segments[-1]["msn"] if STORE.segments else -1
            if m > last + 2:
                status, body = 400, b"too far ahead"
            elif await STORE.wait(lambda: bool(STORE.segments) and STORE.have(m, p), 3 * td):
                status, body = 200, STORE.playlist
            else:
                status, body = 503, b"not yet"
        elif await STORE.wait(lambda: bool(STORE.segments), 10):
            status, body = 200, STORE.playlist
    elif path.startswith("/init_") and path.endswith(".mp4") and int(path[6:-4]) in STORE.inits:
        status, ctype, cache, body = 200, "video/mp4", "max-age=3600", STORE.inits[int(path[6:-4])]
    elif path.startswith("/part_") and path.endswith(".m4s"):
        g = int(path[6:-4])
        if g == STORE.next_gid:  # the preload hint: block until it exists
            await STORE.wait(lambda: g in STORE.parts, 3 * td)
        if g in STORE.parts:
            status, ctype, cache, body = 200, "video/mp4", "max-age=3600", STORE.parts[g][0]
    elif path.startswith("/seg_") and path.endswith(".m4s"):
        msn = int(path[5:-4])
        seg = next((s for s in STORE.segments if s["msn"] == msn), None)
        if seg:
            status, ctype, cache, body = 200, "video/mp4", "max-age=3600", seg["data"]
    if status != 200 or "_HLS" not in scope["query_string"].decode():
      STORE.log.append((time.time(), f"{status} {path}?{scope['query_string'].decode()}"))
    await send({"type": "http.response.start", "status": status, "headers": headers(ctype, cache, len(body))})
    await send({"type": "http.response.body", "body": body})


async def main() -> None:
    global STORE
    STORE = Store()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=PORT, log_level="warning", lifespan="off"))
    serve = asyncio.create_task(server.serve())
    await pipeline()
    await asyncio.sleep(1)
    server.should_exit = True
    await serve


if __name__ == "__main__":
    asyncio.run(main())
