"""hls.js in Debian's Chromium plays the LL-HLS stream: parts with `new Hls()`, whole segments
with `lowLatencyMode: false` (design §5, "Chromium + hls.js").

The page is the web app's origin (Main App) and plays the Stream App's playlist cross-origin,
exactly like the spec's snippet. No timing is asserted: only what was loaded and that it played.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.integration.test_auth import bearer
from tests.support.media import Publisher, wait_for
from tests.support.server import ServerProcess

PLAY = """async ([src, config]) => {
  await new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = '/static/vendor/hls.min.js';
    script.onload = resolve;
    script.onerror = reject;
    document.head.append(script);
  });
  const video = document.createElement('video');
  video.muted = true;
  video.autoplay = true;
  document.body.append(video);
  const hls = config === null ? new Hls() : new Hls(config);
  window.hlsErrors = [];
  hls.on(Hls.Events.ERROR, (_e, d) => window.hlsErrors.push((d.fatal ? 'FATAL ' : '') + d.details));
  // Which media sequence numbers hls.js loaded whole, and whether any playlist it read listed
  // an INDEPENDENT part for them (hls.js can only start a segment's parts at an independent one).
  window.wholeLoads = [];
  window.independentPart = {};
  hls.on(Hls.Events.LEVEL_LOADED, (_e, d) => {
    for (const part of d.details.partList || []) {
      const sn = part.fragment.sn;
      window.independentPart[sn] = window.independentPart[sn] === true || part.independent;
    }
  });
  hls.on(Hls.Events.FRAG_LOADING, (_e, d) => {
    if (!d.part && d.frag.sn !== 'initSegment') window.wholeLoads.push(d.frag.sn);
  });
  hls.loadSource(src);
  hls.attachMedia(video);
  video.play().catch(() => {});
  window.video = video;
  window.hls = hls;
}"""

STATE = """() => {
  const names = performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname);
  return {
    time: window.video.currentTime,
    parts: names.filter((n) => /\\/part_\\d+_\\d+\\.m4s$/.test(n)).length,
    segments: names.filter((n) => /\\/seg_\\d+_\\d+\\.m4s$/.test(n)).length,
    playlists: names.filter((n) => n.endsWith('/stream.m3u8')).length,
    errors: window.hlsErrors,
    width: window.video.videoWidth,
    latency: window.hls.latency,
    wholeLoads: window.wholeLoads,
    independentPart: window.independentPart,
  };
}"""


def start_live(web: ServerProcess, publishers: list[Publisher], name: str) -> str:
    token = web.user_token(name)
    sid = web.main.post("/api/streams", json={"name": name}, headers=bearer(token)).json()["stream_id"]
    started = web.main.post(f"/api/streams/{sid}/start", headers=bearer(token)).json()
    publishers.append(Publisher(started["srt_url"]).start())
    wait_for(lambda: web.stream.get(f"/hls/{sid}/stream.m3u8").status_code == 200, 30, message="playlist")
    return str(sid)


@pytest.mark.parametrize(
    ("config", "loads_parts"),
    [(None, True), ({"lowLatencyMode": False}, False)],
    ids=["default-ll", "legacy"],
)
def test_hlsjs_plays_the_live_stream(
    web: ServerProcess,
    publishers: list[Publisher],
    open_page: Callable[..., Page],
    config: dict[str, Any] | None,
    loads_parts: bool,
) -> None:
    sid = start_live(web, publishers, "llplayer" + ("" if loads_parts else "legacy"))
    page = open_page()
    page.goto(web.url("main", "/"))
    page.evaluate(PLAY, [web.url("stream", f"/hls/{sid}/stream.m3u8"), config])
    page.wait_for_function("() => window.video.currentTime > 4", timeout=40_000)
    state = page.evaluate(STATE)
    assert state["width"] == 640
    assert not [e for e in state["errors"] if e.startswith("FATAL")], state
    if loads_parts:
        assert state["parts"] >= 5, state
        # hls.js loads a segment whole only when none of its listed parts is INDEPENDENT. That is
        # the segment after a run's short first segment (ingest.first_segment_seconds): it holds
        # the rest of the first GOP, so a player that joins within the stream's first second
        # starts there. Any other whole segment means hls.js fell out of part mode.
        keyframeless = [sn for sn, independent in state["independentPart"].items() if independent is False]
        assert state["segments"] == len(state["wholeLoads"]), state
        assert all(str(sn) in keyframeless for sn in state["wholeLoads"]), state
        assert len(state["wholeLoads"]) <= 1, state
    else:
        assert state["segments"] >= 3 and state["parts"] == 0, state
    # the viewer is counted from its playlist/part requests
    status = web.stream.get(f"/stream/{sid}/status").json()
    assert status["viewer_count"] >= 1
