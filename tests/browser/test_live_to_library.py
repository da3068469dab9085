"""A streamer goes live through the pages, a viewer watches, and the recording lands in the library.

Real everything: the server process, FFmpeg publishing over SRT to the URL the dashboard shows,
hls.js in Chromium playing the live HLS, and the MP4 recording played and seeked from the VOD port.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.web import (
    app_url,
    assert_advances,
    has_websocket,
    register,
    seed_recording,
    video_state,
    wait_until_playing,
)
from tests.support.media import Publisher
from tests.support.server import ServerProcess

GRADIENTS = "gradients=size=640x360:rate=25:speed=0.05"
MANDELBROT = "mandelbrot=size=640x360:rate=25"


def test_go_live_watch_stop_and_replay_the_recording(
    web: ServerProcess,
    open_page: Callable[..., Page],
    publishers: list[Publisher],
    screenshot: Callable[[Page, str], Path],
) -> None:
    # Someone else streamed before: their recordings are made (in the background, to save
    # time) while alice signs up and goes live.
    bob = web.user_token("bob")
    with ThreadPoolExecutor(1) as pool:
        pasta = pool.submit(seed_recording, web, bob, "Sunday pasta from scratch", GRADIENTS)
        fractal = pool.submit(seed_recording, web, bob, "Fractal zoom, four hours of it", MANDELBROT)
        page = open_page("desktop")
        register(page, web, "alice", "streamer")
        for seeded in (pasta, fractal):
            seeded.result()  # raises if seeding failed
    expect(page).to_have_url(app_url(web, "/dashboard"))

    # Create a stream and start it: the panel shows the SRT URL and key for OBS.
    page.fill("#create-stream input[name=name]", "Friday speedrun")
    page.fill("#create-stream input[name=title]", "Any% practice, chill vibes")
    page.fill("#create-stream textarea[name=description]", "Routing the new skip. Questions welcome.")
    page.click("[data-action=create]")
    panel = page.locator(".stream-panel").first
    expect(panel).to_contain_text("Any% practice, chill vibes")
    expect(panel.locator(".badge")).to_have_text("Not started")
    sid = panel.get_attribute("data-stream-id")
    assert sid
    panel.locator("[data-action=start]").click()
    srt_field = panel.locator("input[name=srt_url]")
    expect(srt_field).to_have_value(re.compile(rf"^srt://127\.0\.0\.1:\d+\?streamid={sid}&passphrase=\S+$"))
    expect(panel.locator(".badge")).to_have_text("Waiting for OBS")
    expect(panel.locator(".obs-hint")).to_contain_text("Keyframe Interval 1 s")
    key_field = panel.locator("input[name=stream_key]")
    expect(key_field).not_to_have_value(re.compile(r"[A-Za-z0-9]"))  # masked until asked
    panel.locator("[data-action=reveal]").click()
    srt_url = srt_field.input_value()
    assert srt_url.endswith(f"passphrase={key_field.input_value()}")

    # OBS's stand-in publishes to exactly what the page showed; the dashboard turns live.
    publishers.append(Publisher(srt_url).start())
    expect(panel.locator(".badge")).to_have_text("Live", timeout=20_000)
    panel.locator("[data-action=reveal]").click()
    expect(key_field).not_to_have_value(re.compile(r"[A-Za-z0-9]"))

    # The watch page plays the live HLS with hls.js at the source's size.
    panel.locator("[data-action=watch]").click()
    expect(page).to_have_url(app_url(web, f"/watch/{sid}"))
    expect(page.locator(".watch-title")).to_have_text("Any% practice, chill vibes")
    expect(page.locator(".watch-badge")).to_have_text("Live")
    wait_until_playing(page, "#player", beyond=1.0)
    state = assert_advances(page, "#player")
    assert (state["width"], state["height"]) == (640, 360), state
    assert state["src"].startswith("blob:"), state  # hls.js over Media Source Extensions
    expect(page.locator(".watch-viewers")).to_contain_text("1 viewer", timeout=12_000)
    screenshot(page, "watch-desktop")

    # A second viewer on a phone (another tab, same user) whose network drops WebSockets:
    # the page falls back to asking the REST API every few seconds.
    phone = open_page("phone", beside=page)
    phone.route_web_socket(re.compile(r"/ws(\?|$)"), lambda ws: ws.close())
    phone.goto(app_url(web, f"/watch/{sid}"))
    expect(phone.locator("html")).to_have_attribute("data-live-updates", "polling")
    wait_until_playing(phone, "#player", beyond=1.0)
    assert_advances(phone, "#player", 1.0)
    screenshot(phone, "watch-phone")
    dash_phone = open_page("phone", beside=page)
    dash_phone.goto(app_url(web, "/dashboard"))
    phone_panel = dash_phone.locator(f".stream-panel[data-stream-id='{sid}']")
    expect(phone_panel.locator(".badge")).to_have_text("Live")
    expect(phone_panel.locator("input[name=srt_url]")).to_have_value(srt_url)
    screenshot(dash_phone, "dashboard-phone")

    # Everyone signed in sees it on the home page.
    page.goto(app_url(web, "/"))
    live_card = page.locator(f"#live-grid [data-stream-id='{sid}']")
    expect(live_card).to_contain_text("Any% practice, chill vibes")
    expect(live_card.locator(".badge")).to_have_text("Live")
    screenshot(page, "home-desktop")

    # Stop through the dashboard; the phone still on the watch page is told it ended.
    page.goto(app_url(web, "/dashboard"))
    if has_websocket(web, bob):
        # Live updates arrive over the Main App's WebSocket where it exists (issue #5).
        expect(page.locator("html")).to_have_attribute("data-live-updates", "socket")
    panel = page.locator(f".stream-panel[data-stream-id='{sid}']")
    expect(panel.locator(".viewer-number")).to_have_text("1", timeout=12_000)
    panel.locator(".obs-hint summary").click()
    screenshot(page, "dashboard-desktop")
    panel.locator("[data-action=stop]").click()
    page.locator("dialog button[value=ok]").click()
    expect(panel.locator(".badge")).to_have_text("Ended")
    expect(phone.locator(".ended-box")).to_contain_text("This stream has ended", timeout=15_000)
    expect(phone.locator(".player-overlay")).to_contain_text("The stream has ended")

    # The recording is offered where the stream was watched once it is ready...
    play_recording = phone.locator("[data-action=play-recording]")
    expect(play_recording).to_be_visible(timeout=60_000)
    play_recording.click()
    wait_until_playing(phone, "#player", beyond=0.5)
    assert video_state(phone, "#player")["src"].endswith(f"/recordings/vod/{sid}/video.mp4")

    # ...and in the library, with its thumbnail, beside bob's; it plays and seeks.
    page.goto(app_url(web, "/library"))
    grid = page.locator("#library-grid")
    expect(grid.locator(".recording-card")).to_have_count(3, timeout=30_000)
    card = grid.locator(f"[data-stream-id='{sid}']")
    expect(grid.locator(".recording-card").first).to_have_attribute("data-stream-id", sid)  # newest first
    expect(card).to_contain_text("Any% practice, chill vibes")
    thumb = card.locator("img")
    expect(thumb).to_have_attribute("src", re.compile(rf"/recordings/vod/{sid}/thumbnail\.jpg$"))
    page.wait_for_function("img => img.complete && img.naturalWidth === 640", arg=thumb.element_handle())
    expect(page.locator(".pager-info")).to_have_text("3 recordings")
    card.locator(".card-open").click()
    expect(page).to_have_url(app_url(web, f"/library?play={sid}"))
    wait_until_playing(page, "#vod-player", beyond=0.5)
    before_seek = video_state(page, "#vod-player")
    assert before_seek["duration"] >= 6, before_seek
    assert (before_seek["width"], before_seek["height"]) == (640, 360)
    page.eval_on_selector("#vod-player", "v => { v.currentTime = 3; }")
    vod = page.locator("#vod-player").element_handle()
    page.wait_for_function("v => !v.seeking && v.currentTime >= 3", arg=vod)
    after_seek = assert_advances(page, "#vod-player", 1.0)
    assert 3 <= after_seek["time"] < 3 + 5, after_seek  # it stuck at 3 s and went on from there
    assert not after_seek["paused"]
    # Chromium fetched the MP4 by byte ranges, as the seek needs.
    ranged = re.search(rf"GET /recordings/vod/{sid}/video\.mp4 206 ", web.logs())
    assert ranged, "no Range request reached the server"
    page.eval_on_selector("#vod-player", "v => v.pause()")
    page.wait_for_timeout(600)  # the native controls fade in after a pause
    screenshot(page, "library-desktop")

    lib_phone = open_page("phone", beside=page)
    lib_phone.goto(app_url(web, f"/library?play={sid}"))
    expect(lib_phone.locator(".vod-info h2")).to_have_text("Any% practice, chill vibes")
    wait_until_playing(lib_phone, "#vod-player", beyond=0.5)
    lib_phone.wait_for_timeout(3000)  # the phone-sized native controls hide while it plays
    screenshot(lib_phone, "library-phone")

    # Only owners may delete: bob's recording offers no Delete to alice; "Mine" shows hers alone.
    grid.locator(".recording-card", has_text="Sunday pasta").locator(".card-open").click()
    expect(page.locator(".vod-info h2")).to_have_text("Sunday pasta from scratch")
    expect(page.locator("[data-action=delete-recording]")).to_have_count(0)
    page.get_by_role("tab", name="Mine").click()
    expect(grid.locator(".recording-card")).to_have_count(1)
    expect(grid.locator(".recording-card")).to_have_attribute("data-stream-id", sid)

    # The owner deletes hers; then it is gone from the library and the VOD API.
    grid.locator(".card-open").click()
    page.locator("[data-action=delete-recording]").click()
    page.locator("dialog button[value=ok]").click()
    expect(grid.locator(".recording-card")).to_have_count(0)
    expect(grid).to_contain_text("You have no recordings yet")
    assert web.vod.get(f"/api/v1/recordings/{sid}").status_code == 404
