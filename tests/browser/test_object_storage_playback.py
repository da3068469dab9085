"""Recordings kept in object storage play and seek in Chromium through the VOD port's redirect."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LIVE_ENV
from tests.browser.web import app_url, video_state, wait_until_playing
from tests.integration.test_vod import _fake_session, _good_segments, wait_ready
from tests.support.s3 import MotoServer, running_moto
from tests.support.server import ServerProcess

BUCKET = "browser-recordings"

# The spec's playVOD, as written there, but with this server's VOD address instead of localhost:8081.
SPEC_PLAY_VOD = """async ([vodBase, streamId]) => {
  document.body.insertAdjacentHTML('beforeend', '<video id="video" muted controls></video>');
  async function playVOD(streamId) {
    const response = await fetch(`${vodBase}/api/v1/recordings/${streamId}`);
    const recording = await response.json();

    if (recording.status === 'ready') {
      const video = document.getElementById('video');
      video.src = `${vodBase}${recording.file_path}`;
      video.load();
    }
  }
  await playVOD(streamId);
}"""


@pytest.fixture(name="moto")
def fixture_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as moto:
        moto.client().create_bucket(Bucket=BUCKET)
        yield moto


def test_spec_play_vod_and_library_play_a_stored_recording(
    moto: MotoServer, server_factory: Callable[..., ServerProcess], open_page: Callable[..., Page]
) -> None:
    web = server_factory(
        {
            **LIVE_ENV,
            **moto.server_env(
                BUCKET, retry_base_seconds="0.5", retry_max_seconds="1", upload_attempts="1000"
            ),
        }
    )
    token = web.user_token("s3viewer")
    page = open_page()
    # While the store is down, the library says why the recording is not there yet.
    moto.stop()
    try:
        sid = _fake_session(web, token, _good_segments)
        page.goto(app_url(web, f"/library?play={sid}"))
        expect(page.locator(".status-reason")).to_contain_text(
            re.compile(rf"waiting for object storage: .* unreachable at {re.escape(moto.endpoint)}"),
            timeout=30_000,
        )
    finally:
        moto.start()
        moto.client().create_bucket(Bucket=BUCKET)
    rec = wait_ready(web, sid)
    assert rec["storage"] == "object_storage"

    page.goto(app_url(web, "/"))
    page.evaluate(SPEC_PLAY_VOD, [web.url("vod"), sid])
    video = page.locator("#video").element_handle()
    page.wait_for_function("v => v.readyState >= 1", arg=video)
    state = video_state(page, "#video")
    assert state["error"] is None and abs(state["duration"] - 4) <= 1, state
    page.eval_on_selector("#video", "v => { v.currentTime = 2.5; }")
    page.wait_for_function("v => !v.seeking && v.currentTime >= 2.5", arg=video)
    page.eval_on_selector("#video", "v => v.play()")
    wait_until_playing(page, "#video", beyond=2.6)

    # The web app's library plays it the same way, and shows the stored thumbnail.
    page.goto(app_url(web, f"/library?play={sid}"))
    wait_until_playing(page, "#vod-player", beyond=0.5)
    thumb = page.locator(f"[data-stream-id='{sid}'] img").element_handle()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb)
    # The bytes came from the store, by byte ranges; the VOD port only answered redirects.
    assert re.search(rf"GET /recordings/vod/{sid}/video\.mp4 302 ", web.logs())
    assert not re.search(rf"GET /recordings/vod/{sid}/video\.mp4 20[06] ", web.logs())
    store_log = re.sub(r"\x1b\[[0-9;]*m", "", moto.log_path.read_text(errors="replace"))  # no colours
    assert re.search(
        rf'"GET /{BUCKET}/recordings/{sid}/video\.mp4\?[^"]*X-Amz-Signature=[^"]*" 206 ', store_log
    )
