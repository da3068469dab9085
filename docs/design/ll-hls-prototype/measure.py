"""Throwaway: open the prototype's page in Debian's Chromium (Playwright), report glass-to-glass.

    python measure.py PORT JOIN_AT_S WATCH_S LL(1|0)

Latency sample = Date.now() - hls.playingDate, where the prototype's PROGRAM-DATE-TIME is
publisher launch time + media time, i.e. wall time since publisher start - media time on screen.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

PORT, JOIN, WATCH, LL = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required"]

base = f"http://127.0.0.1:{PORT}"
start = None
while start is None or start == 0:
    try:
        start = json.load(urllib.request.urlopen(base + "/log.json"))["start"]
    except OSError:
        pass
    time.sleep(0.1)
time.sleep(max(0.0, start + JOIN - time.time()))
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
    page = browser.new_page()
    opened = time.time()
    page.goto(f"{base}/?ll={LL}")
    page.on("console", lambda msg: print("console:", msg.text[:200]) if msg.type in ("error", "warning") else None)
    try:
        page.wait_for_function("window.samples.length > 0", timeout=15000)
    except Exception:
        print("no samples; errors:", page.evaluate("window.errors"), "state:", page.evaluate("[document.getElementById('v').readyState, document.getElementById('v').paused, document.getElementById('v').currentTime, String(hls.playingDate)]"))
        raise
    first_frame = time.time() - opened
    time.sleep(WATCH)
    samples = page.evaluate("window.samples")
    stalls = page.evaluate("window.stalls")
    errors = page.evaluate("window.errors")
    urls = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    segs = json.load(urllib.request.urlopen(base + "/segs.json"))
    browser.close()
    import collections
    seen = collections.OrderedDict()
    for smp in samples:
        if smp[3] is not None and smp[3] not in seen:
            seen[smp[3]] = smp
    for sn, smp in seen.items():
        run, start, dur, rs = segs.get(str(sn), [None]*4)
        print(f"  sn {sn} cc {smp[4]} frag.start {smp[5]} pdt-rel {(smp[6]/1000 - rs) if rs else None} server start {start} run {run} g2g {smp[0]/1000:.3f} ct {smp[7]}")
series = [round(s[0] / 1000, 2) for s in samples[::10]]
g2g = sorted(s[0] / 1000 for s in samples)
q = lambda p: g2g[min(len(g2g) - 1, int(p * len(g2g)))]
print(f"lowLatencyMode={'default(true)' if LL != '0' else 'false'} join@{JOIN:.0f}s watch {WATCH:.0f}s "
      f"time-to-first-sample {first_frame:.2f}s")
print(f"  glass-to-glass s: median {statistics.median(g2g):.3f} p10 {q(0.1):.3f} p90 {q(0.9):.3f} "
      f"(n={len(g2g)}); hls.latency median {statistics.median(s[1] for s in samples):.3f}; "
      f"targetLatency {samples[-1][2]}")
print(f"  requests: parts {sum('part_' in u for u in urls)}, segments {sum('seg_' in u for u in urls)}, "
      f"playlists {sum('.m3u8' in u for u in urls)}; stalls {stalls}; errors {errors[:8]}")
print("  g2g every ~1 s:", series)
