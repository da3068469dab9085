"""What the browser tests do with the web app's pages, in a user's words."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from tests.support.server import ServerProcess


def app_url(server: ServerProcess, path: str = "/") -> str:
    """A page of the web app on the server's Main App port."""
    return server.url("main", path)


def register(
    page: Page, server: ServerProcess, username: str, role: str = "streamer", password: str = "password123"
) -> None:
    """Sign up through the page; the app logs the new user in and moves on."""
    page.goto(app_url(server, "/register"))
    page.fill("input[name=username]", username)
    page.fill("input[name=email]", f"{username}@example.com")
    page.fill("input[name=password]", password)
    page.check(f"input[name=role][value={role}]")
    page.click("button[type=submit]")
    expect(page.locator("#account")).to_contain_text(username)


def login(page: Page, server: ServerProcess, username: str, password: str = "password123") -> None:
    """Log in through the page."""
    page.goto(app_url(server, "/login"))
    page.fill("input[name=email]", f"{username}@example.com")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page.locator("#account")).to_contain_text(username)


def video_state(page: Page, selector: str) -> dict[str, Any]:
    """What a <video> element is doing right now."""
    state: dict[str, Any] = page.eval_on_selector(
        selector,
        """v => ({time: v.currentTime, width: v.videoWidth, height: v.videoHeight, paused: v.paused,
                 ended: v.ended, error: v.error && v.error.message, src: v.currentSrc,
                 duration: v.duration, readyState: v.readyState})""",
    )
    return state


PLAYING_PAST = """([sel, t]) => {
    const v = document.querySelector(sel);
    return v && !v.paused && v.currentTime > t;
}"""


def wait_until_playing(page: Page, selector: str, beyond: float, timeout_ms: float = 30_000) -> None:
    """Wait until the video has played past `beyond` seconds of its timeline."""
    page.wait_for_function(
        PLAYING_PAST,
        arg=[selector, beyond],
        timeout=timeout_ms,
    )


def assert_advances(page: Page, selector: str, seconds: float = 1.5) -> dict[str, Any]:
    """Playback moves on: currentTime grows by at least half of `seconds` while we wait."""
    before = video_state(page, selector)
    page.wait_for_timeout(seconds * 1000)
    after = video_state(page, selector)
    assert after["error"] is None, after
    assert after["time"] > before["time"] + seconds / 2, (before, after)
    return after


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def seed_recording(server: ServerProcess, token: str, title: str, source: str, seconds: int = 3) -> str:
    """A finished stream of `source` (an FFmpeg lavfi graph) whose recording the server then packages.

    The HLS segments are written straight into the stream's folder, as a publisher would have
    made them; that is quicker than publishing in real time and gives each recording its own
    picture. Returns the stream id (processing continues in the background).
    """
    import subprocess

    from tests.support.media import FFMPEG

    r = server.main.post("/api/streams", json={"name": title, "title": title}, headers=bearer(token))
    assert r.status_code == 201, r.text
    sid = str(r.json()["stream_id"])
    r = server.main.post(f"/api/streams/{sid}/start", headers=bearer(token))
    assert r.status_code == 200, r.text
    folder = server.data_dir / "hls" / sid
    argv = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"{source},format=yuv420p"]
    argv += ["-f", "lavfi", "-i", "sine=frequency=330", "-t", str(seconds)]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac"]
    argv += ["-f", "hls", "-hls_time", "1", "-hls_list_size", "0"]
    argv += ["-hls_segment_filename", str(folder / "segment_%05d.ts"), str(folder / "seed.m3u8")]
    subprocess.run(argv, check=True, timeout=60)
    r = server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    assert r.status_code == 200, r.text
    return sid


def has_websocket(server: ServerProcess, token: str) -> bool:
    """Whether the Main App answers ws://.../ws (issue #5); the pages must work either way."""
    from websockets.sync.client import connect

    try:
        with connect(f"ws://{server.host}:{server.ports['main']}/ws?token={token}", open_timeout=5):
            return True
    except Exception:
        return False
