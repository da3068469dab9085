"""Live streaming end to end: the stream API, real FFmpeg publishing over real SRT, HLS out."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_auth import assert_error, bearer
from tests.support.media import Publisher, ffmpeg_children_listening, probe, wait_for
from tests.support.server import ServerProcess, running_server

LIVE_ENV = {
    "STREAMPLAT_INGEST__SEGMENT_SECONDS": "1",
    "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "60",
    # The suite loads both cores; at the default 120 ms a stalled process lets SRT drop late
    # packets, and a recording that must decode without one error then holds a damaged frame.
    "STREAMPLAT_INGEST__SRT_LATENCY_MS": "400",
}


@pytest.fixture(name="server", scope="module")
def fixture_live_server(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("live"), LIVE_ENV, db=db) as srv:
        yield srv


def create(server: ServerProcess, token: str, name: str = "My Stream", **extra: str) -> dict:
    r = server.main.post("/api/streams", json={"name": name, **extra}, headers=bearer(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def start(server: ServerProcess, token: str, stream_id: str) -> dict:
    r = server.main.post(f"/api/streams/{stream_id}/start", headers=bearer(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def status_of(server: ServerProcess, token: str, stream_id: str) -> str:
    return str(server.main.get(f"/api/streams/{stream_id}", headers=bearer(token)).json()["status"])


def publish(publishers: list[Publisher], url: str, **kw: object) -> Publisher:
    p = Publisher(url, **kw).start()  # type: ignore[arg-type]
    publishers.append(p)
    return p


def playlist(server: ServerProcess, stream_id: str) -> str:
    r = server.stream.get(f"/hls/{stream_id}/stream.m3u8")
    return r.text if r.status_code == 200 else ""


def segments_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def media_sequence(text: str) -> int:
    return int(
        next(line for line in text.splitlines() if line.startswith("#EXT-X-MEDIA-SEQUENCE:")).split(":")[1]
    )


# --- the whole lifecycle ---------------------------------------------------------------------


def test_create_start_publish_watch_stop(
    server: ServerProcess, publishers: list[Publisher], tmp_path: Path
) -> None:
    token = server.user_token("live1")
    created = create(server, token, "My Awesome Stream", title="Live Coding Session", description="Learning")
    assert set(created) >= {
        "stream_id",
        "name",
        "title",
        "description",
        "user_id",
        "username",
        "status",
        "created_at",
    }
    assert (
        created["status"] == "created"
        and created["username"] == "live1"
        and created["title"] == "Live Coding Session"
    )
    sid = created["stream_id"]

    started = start(server, token, sid)
    assert started["status"] == "waiting" and started["message"] == "Stream started, waiting for connection"
    assert started["hls_url"] == f"/hls/{sid}/stream.m3u8"
    lo, hi = int(server.env["STREAMPLAT_INGEST__PORT_MIN"]), int(server.env["STREAMPLAT_INGEST__PORT_MAX"])
    assert lo <= started["port"] <= hi
    assert (
        started["srt_url"]
        == f"srt://127.0.0.1:{started['port']}?streamid={sid}&passphrase={started['stream_key']}"
    )
    assert 10 <= len(started["stream_key"]) <= 64
    assert_error(server.main.post(f"/api/streams/{sid}/start", headers=bearer(token)), 409)
    assert status_of(server, token, sid) == "waiting"
    st = server.stream.get(f"/stream/{sid}/status").json()
    assert st["status"] == "waiting" and st["ffmpeg_running"] is True

    publish(publishers, started["srt_url"])
    wait_for(lambda: status_of(server, token, sid) == "active", 15, message="status active")
    text = wait_for(
        lambda: len(segments_in(playlist(server, sid))) >= 2 and playlist(server, sid), 20, message="segments"
    )
    r = server.stream.get(f"/hls/{sid}/stream.m3u8", headers={"Origin": "http://example.org"})
    assert r.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert "no-cache" in r.headers["cache-control"]
    assert r.headers["access-control-allow-origin"] in ("*", "http://example.org")
    assert text.startswith("#EXTM3U") and "#EXT-X-TARGETDURATION" in text and "#EXT-X-ENDLIST" not in text

    first = segments_in(text)[0]
    seg = server.stream.get(f"/hls/{sid}/{first}")
    assert seg.status_code == 200 and seg.headers["content-type"] == "video/mp4"
    assert "max-age" in seg.headers["cache-control"]
    assert seg.content[4:8] == b"moof"  # fMP4 fragments, playable after the run's init
    init = server.stream.get(f"/hls/{sid}/init_1.mp4")
    assert init.status_code == 200 and init.content[4:8] == b"ftyp"
    (tmp_path / "seg.mp4").write_bytes(init.content + seg.content)
    info = probe(tmp_path / "seg.mp4")
    assert info.video == "h264" and info.audio == "aac" and (info.width, info.height) == (640, 360)

    detail = server.main.get(f"/api/streams/{sid}", headers=bearer(token)).json()
    assert detail["status"] == "active" and detail["viewer_count"] >= 1 and detail["port"] == started["port"]
    assert detail["start_time"].endswith("Z") and detail["duration_seconds"] >= 1
    st = server.stream.get(f"/stream/{sid}/status").json()
    assert st["ffmpeg_running"] is True and st["hls_files_count"] >= 2 and st["publisher_connected"] is True
    assert set(st) >= {"stream_id", "status", "ffmpeg_running", "hls_files_count", "uptime_seconds"}
    wait_for(
        lambda: (server.stream.get(f"/stream/{sid}/status").json().get("bitrate_kbps") or 0) > 0,
        10,
        message="bitrate from FFmpeg progress",
    )

    r = server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    assert r.status_code == 200, r.text
    stopped = r.json()
    assert stopped["status"] == "stopped" and stopped["message"] == "Stream stopped, VOD processing started"
    assert stopped["user_id"] == created["user_id"] and stopped["username"] == "live1"
    final = playlist(server, sid)
    assert final.rstrip().endswith("#EXT-X-ENDLIST")
    detail = server.main.get(f"/api/streams/{sid}", headers=bearer(token)).json()
    assert detail["status"] == "stopped" and detail["viewer_count"] == 0 and detail["duration_seconds"] >= 2
    assert detail["port"] is None
    assert not ffmpeg_children_listening(started["port"])
    assert_error(server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token)), 409)
    assert_error(server.main.post(f"/api/streams/{sid}/start", headers=bearer(token)), 409)


def test_wrong_key_is_refused_and_stream_stays_waiting(
    server: ServerProcess, publishers: list[Publisher]
) -> None:
    token = server.user_token("live2")
    sid = create(server, token)["stream_id"]
    started = start(server, token, sid)
    bad_url = started["srt_url"].replace(started["stream_key"], "wrong-passphrase-123")
    intruder = publish(publishers, bad_url)
    time.sleep(4)
    assert status_of(server, token, sid) == "waiting"
    assert server.stream.get(f"/hls/{sid}/stream.m3u8").status_code == 404
    intruder.kill()
    publish(publishers, started["srt_url"])
    wait_for(lambda: status_of(server, token, sid) == "active", 15, message="active with the right key")
    server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))


def test_the_stream_key_is_not_in_any_command_line(
    server: ServerProcess, publishers: list[Publisher]
) -> None:
    token = server.user_token("keyhider")
    sid = create(server, token)["stream_id"]
    started = start(server, token, sid)
    key = started["stream_key"].encode()
    # (That a wrong key is still refused by this route is test_wrong_key_is_refused_... above.)
    publish(publishers, started["srt_url"])
    wait_for(lambda: status_of(server, token, sid) == "active", 15, message="active with the right key")
    [pid] = ffmpeg_children_listening(started["port"])
    # What any local user can read: every process's argv (ps, /proc/PID/cmdline). The test's
    # publishers (OBS's stand-in, with the key in its URL) are the only ones allowed to show it.
    ours = {str(p.proc.pid) for p in publishers if p.proc is not None}
    leaks = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.name not in ours and key in (proc / "cmdline").read_bytes():
                leaks.append(proc.name)
        except OSError:
            continue
    assert leaks == [], f"stream key visible in the command line of pids {leaks}"
    # The key reaches FFmpeg in a file only its user may read, in a directory only it may list.
    cmdline = (Path(f"/proc/{pid}/cmdline").read_bytes()).split(b"\0")
    listing = Path(cmdline[cmdline.index(b"-i") + 1].decode())
    assert key in listing.read_bytes()
    assert listing.stat().st_mode & 0o777 == 0o600
    assert listing.parent.stat().st_mode & 0o777 == 0o700
    server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    wait_for(lambda: not listing.exists(), 15, message="the input list removed when FFmpeg ended")


def test_publisher_drop_and_return_continues_the_playlist(
    server: ServerProcess, publishers: list[Publisher]
) -> None:
    token = server.user_token("live3")
    sid = create(server, token)["stream_id"]
    started = start(server, token, sid)
    first = publish(publishers, started["srt_url"])
    wait_for(lambda: len(segments_in(playlist(server, sid))) >= 3, 20, message="first segments")
    before = playlist(server, sid)
    first.kill()
    wait_for(
        lambda: status_of(server, token, sid) == "waiting", 20, message="waiting after the publisher died"
    )
    assert "publisher" in (
        server.main.get(f"/api/streams/{sid}", headers=bearer(token)).json()["status_reason"] or ""
    )
    publish(publishers, started["srt_url"])
    wait_for(lambda: status_of(server, token, sid) == "active", 20, message="active again")
    after = wait_for(
        lambda: "#EXT-X-DISCONTINUITY" in playlist(server, sid) and playlist(server, sid),
        20,
        message="a discontinuity",
    )
    assert media_sequence(after) >= media_sequence(before)
    # seg_<run>_<msn>.m4s: the MSN keeps counting, the run (publisher session) goes up by one
    numbers = [int(name.split("_")[2].split(".")[0]) for name in segments_in(after)]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert max(numbers) > max(int(n.split("_")[2].split(".")[0]) for n in segments_in(before))
    # the new publisher session is a new run with its own init (its parts may come before
    # its first complete segment, so the map is what shows it)
    assert '#EXT-X-MAP:URI="init_2.mp4"' in after
    server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))


def test_stream_stops_itself_when_no_publisher_returns(
    server_factory: Callable[..., ServerProcess], publishers: list[Publisher]
) -> None:
    srv = server_factory({**LIVE_ENV, "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "2"})
    token = srv.user_token("autostop")
    sid = create(srv, token)["stream_id"]
    started = start(srv, token, sid)
    pub = publish(publishers, started["srt_url"])
    wait_for(lambda: status_of(srv, token, sid) == "active", 15, message="active")
    time.sleep(2)
    pub.kill()
    wait_for(lambda: status_of(srv, token, sid) == "stopped", 30, message="auto-stop")
    detail = srv.main.get(f"/api/streams/{sid}", headers=bearer(token)).json()
    assert "reconnect" in (detail["status_reason"] or "")
    # Stopped like an owner would: the media went to VOD processing.
    assert srv.vod.get(f"/api/v1/recordings/{sid}").json()["status"] in ("processing", "ready")
    assert not ffmpeg_children_listening(started["port"])


# --- who may do what --------------------------------------------------------------------------


def test_stream_reads_are_cached_but_every_change_shows_at_once(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # A long cache, so that what the API shows after each change can only come from invalidation.
    srv = server_factory({**LIVE_ENV, "STREAMPLAT_SERVER__READ_CACHE_SECONDS": "30"})
    token = srv.user_token("cached")
    sid = create(srv, token, title="Before")["stream_id"]

    def detail() -> dict:
        r = srv.main.get(f"/api/streams/{sid}", headers=bearer(token))
        assert r.status_code == 200, r.text
        return dict(r.json())

    def listed(path: str = "/api/streams") -> dict[str, dict]:
        r = srv.main.get(path, headers=bearer(token))
        assert r.status_code == 200, r.text
        return {item["stream_id"]: item for item in r.json()["streams"]}

    assert detail()["status"] == "created"
    assert listed()[sid]["title"] == "Before" and sid not in listed("/api/streams/live")
    # A change behind the server's back (another process, hand-written SQL) is not seen while the
    # row is cached: proof that the reads above and below come from the cache ...
    srv.sql("UPDATE streams SET title = 'Edited by SQL' WHERE id = ?", sid)
    assert detail()["title"] == "Before"
    assert listed()[sid]["title"] == "Before"
    # ... while every change made through the server shows on the very next read.
    other = create(srv, token, title="Second")["stream_id"]
    assert set(listed()) == {sid, other}
    assert listed()[sid]["title"] == "Edited by SQL"  # every page was read again
    start(srv, token, sid)
    assert listed("/api/streams/live")[sid]["status"] == "waiting"
    after_start = detail()
    assert after_start["status"] == "waiting" and after_start["port"]
    assert after_start["title"] == "Edited by SQL"  # the row was read again after the change
    old_key = after_start["stream_key"]
    r = srv.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert detail()["status"] == "stopped"
    assert sid not in listed("/api/streams/live") and listed()[sid]["status"] == "stopped"
    assert srv.stream.get(f"/stream/{sid}/status").json()["status"] == "stopped"
    r = srv.main.post(f"/api/streams/{sid}/rotate-key", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert detail()["stream_key"] not in (None, old_key)
    r = srv.main.delete(f"/api/streams/{sid}", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert_error(srv.main.get(f"/api/streams/{sid}", headers=bearer(token)), 404)
    assert set(listed()) == {other}


def test_owner_and_role_matrix(server: ServerProcess) -> None:
    viewer = server.user_token("mviewer", "viewer")
    owner = server.user_token("mowner")
    other = server.user_token("mother")
    assert_error(server.main.post("/api/streams", json={"name": "x"}, headers=bearer(viewer)), 403)
    assert_error(server.main.post("/api/streams", json={"name": "x"}), 401)
    assert_error(server.main.get("/api/streams"), 401)
    assert_error(server.main.get("/api/streams", headers=bearer("garbage")), 401)
    sid = create(server, owner)["stream_id"]
    for method, path in (("post", "start"), ("post", "stop"), ("post", "rotate-key")):
        assert_error(getattr(server.main, method)(f"/api/streams/{sid}/{path}", headers=bearer(other)), 403)
        assert_error(getattr(server.main, method)(f"/api/streams/{sid}/{path}", headers=bearer(viewer)), 403)
    assert_error(server.main.delete(f"/api/streams/{sid}", headers=bearer(other)), 403)
    # Others may look at the stream, but never at its key.
    seen = server.main.get(f"/api/streams/{sid}", headers=bearer(viewer)).json()
    assert seen["stream_id"] == sid and seen["srt_url"] is None and seen["stream_key"] is None
    mine = server.main.get(f"/api/streams/{sid}", headers=bearer(owner)).json()
    assert mine["stream_key"]
    assert_error(
        server.main.get("/api/streams/00000000-0000-4000-8000-000000000000", headers=bearer(owner)), 404
    )
    assert_error(server.main.get("/api/streams/not-a-uuid", headers=bearer(owner)), 404)
    # Lists: your own streams only; admins all, or one user's.
    assert server.main.get("/api/streams", headers=bearer(other)).json()["total"] == 0
    assert_error(
        server.main.get("/api/streams", params={"user_id": seen["user_id"]}, headers=bearer(other)), 403
    )
    from tests.integration.test_auth import create_admin

    admin = create_admin(server, "streamsadmin")
    listed = server.main.get(
        "/api/streams", params={"user_id": seen["user_id"]}, headers=bearer(admin)
    ).json()
    assert [s["stream_id"] for s in listed["streams"]] == [sid]
    r = server.main.post(f"/api/streams/{sid}/rotate-key", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["stream_key"] != mine["stream_key"]
    r = server.main.delete(f"/api/streams/{sid}", headers=bearer(admin))
    assert r.status_code == 200 and r.json() == {"message": "Stream deleted successfully", "stream_id": sid}
    assert_error(server.main.get(f"/api/streams/{sid}", headers=bearer(owner)), 404)


def test_stream_detail_fast_path_answers_as_the_route(server: ServerProcess) -> None:
    # Without an Origin, GET /api/streams/{id} is answered in front of Litestar
    # (StreamDetailFastPath); with one, by the Litestar route (for CORS). Same answers for all.
    from tests.integration.test_auth import create_admin
    from tests.integration.test_metrics import scrape

    owner, other = server.user_token("fastowner"), server.user_token("fastother")
    viewer, admin = server.user_token("fastviewer", "viewer"), create_admin(server, "fastadmin")
    sid = create(server, owner, title="Fast", description="both ways")["stream_id"]
    origin = {"Origin": "http://localhost:3000"}
    counted = (
        "streamplat_http_requests_total",
        frozenset(
            {
                "service": "main-app",
                "route": "/api/streams/{stream_id}",
                "method": "GET",
                "status": "200",
            }.items()
        ),
    )
    before = scrape(server).get(counted, 0.0)
    for token in (owner, other, viewer, admin):
        fast = server.main.get(f"/api/streams/{sid}", headers=bearer(token))
        routed = server.main.get(f"/api/streams/{sid}", headers={**bearer(token), **origin})
        assert fast.status_code == routed.status_code == 200, (fast.text, routed.text)
        assert fast.json() == routed.json()
        assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
        assert fast.headers["x-request-id"] and "access-control-allow-origin" not in fast.headers
        assert "access-control-allow-origin" in routed.headers
    assert [
        server.main.get(f"/api/streams/{sid}", headers=bearer(t)).json()["stream_key"] is None
        for t in (owner, other, viewer, admin)
    ] == [False, True, True, False]
    assert scrape(server)[counted] == before + 12  # counted under the route, whichever way answered
    # Failures are the route's own answers.
    gone = "00000000-0000-4000-8000-000000000000"
    for path, headers, status in (
        (f"/api/streams/{sid}", {}, 401),
        (f"/api/streams/{sid}", bearer("garbage"), 401),
        (f"/api/streams/{sid}", {"Authorization": f"Basic {owner}"}, 401),
        (f"/api/streams/{gone}", bearer(owner), 404),
        ("/api/streams/not-a-uuid", bearer(owner), 404),
    ):
        fast = server.main.get(path, headers=headers)
        routed = server.main.get(path, headers={**headers, **origin})
        assert assert_error(fast, status) == assert_error(routed, status)
    assert server.main.get("/api/streams/live", headers=bearer(owner)).status_code == 200
    assert (
        server.main.head(f"/api/streams/{sid}", headers=bearer(owner)).status_code
        == server.main.head(f"/api/streams/{sid}", headers={**bearer(owner), **origin}).status_code
    )


def test_create_validation_and_list_filters(server: ServerProcess) -> None:
    token = server.user_token("validator")
    body = assert_error(
        server.main.post(
            "/api/streams",
            json={"name": "", "title": "t" * 201, "description": "d" * 5001},
            headers=bearer(token),
        ),
        422,
    )
    assert set(body["details"]) == {"name", "title", "description"}
    assert_error(server.main.post("/api/streams", json={"name": "n" * 101}, headers=bearer(token)), 422)
    assert_error(server.main.post("/api/streams", json={"title": "no name"}, headers=bearer(token)), 422)
    assert_error(
        server.main.post(
            "/api/streams", content=b"{", headers={**bearer(token), "Content-Type": "application/json"}
        ),
        400,
    )
    untitled = create(server, token, "Only a name")
    assert untitled["title"] == "Only a name" and untitled["description"] == ""
    for params in ({"status": "running"}, {"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "ten"}):
        assert_error(server.main.get("/api/streams", params=params, headers=bearer(token)), 422)
    for i in range(3):
        create(server, token, f"s{i}")
    page = server.main.get("/api/streams", params={"limit": 2, "offset": 1}, headers=bearer(token)).json()
    assert page["total"] == 4 and page["limit"] == 2 and page["offset"] == 1 and len(page["streams"]) == 2
    assert (
        server.main.get("/api/streams", params={"status": "created"}, headers=bearer(token)).json()["total"]
        == 4
    )
    assert (
        server.main.get("/api/streams", params={"status": "active"}, headers=bearer(token)).json()["total"]
        == 0
    )
    default = server.main.get("/api/streams", headers=bearer(token)).json()
    assert default["limit"] == 50 and default["offset"] == 0
    assert set(default["streams"][0]) >= {
        "stream_id",
        "name",
        "title",
        "status",
        "created_at",
        "viewer_count",
    }


def test_live_list_shows_everyones_live_streams(server: ServerProcess) -> None:
    owner = server.user_token("liveowner")
    viewer = server.user_token("liveviewer", "viewer")
    sid = create(server, owner)["stream_id"]
    start(server, owner, sid)
    live = server.main.get("/api/streams/live", headers=bearer(viewer)).json()
    assert sid in [s["stream_id"] for s in live["streams"]]
    assert_error(server.main.post(f"/api/streams/{sid}/rotate-key", headers=bearer(owner)), 409)
    server.main.post(f"/api/streams/{sid}/stop", headers=bearer(owner))
    live = server.main.get("/api/streams/live", headers=bearer(viewer)).json()
    assert sid not in [s["stream_id"] for s in live["streams"]]


def test_hls_paths_cannot_leave_the_stream_folder(server: ServerProcess) -> None:
    token = server.user_token("pathtricks")
    sid = create(server, token)["stream_id"]
    (server.data_dir / "hls" / sid).mkdir(parents=True, exist_ok=True)
    (server.data_dir / "hls" / sid / "secret.txt").write_text("secret")
    for path in (
        f"/hls/{sid}/secret.txt",
        f"/hls/{sid}/..%2F..%2Fstreamplat.db",
        f"/hls/{sid}/segment_1.ts%00.txt",
        "/hls/..%2F..%2Fsecrets/jwt_secret",
        f"/hls/{sid}/segment_00001.ts",
        "/hls/not-a-stream/stream.m3u8",
        "/stream/not-a-stream/status",
    ):
        r = httpx.get(server.url("stream", path), timeout=5)
        assert r.status_code == 404, path
        assert "secret" not in r.text


def test_port_pool_exhausted_is_503(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory({**LIVE_ENV})
    lo = int(srv.env["STREAMPLAT_INGEST__PORT_MIN"])
    srv.stop()
    srv.env["STREAMPLAT_INGEST__PORT_MAX"] = str(lo)
    srv.start()
    token = srv.user_token("pooluser")
    a = create(srv, token)["stream_id"]
    b = create(srv, token)["stream_id"]
    assert start(srv, token, a)["port"] == lo
    body = assert_error(srv.main.post(f"/api/streams/{b}/start", headers=bearer(token)), 503)
    assert "port" in body["message"].lower()
    srv.main.post(f"/api/streams/{a}/stop", headers=bearer(token))
    assert start(srv, token, b)["port"] == lo  # the port went back to the pool


def test_sigkill_leaves_no_ffmpeg_and_restart_reconciles(
    server_factory: Callable[..., ServerProcess], publishers: list[Publisher]
) -> None:
    srv = server_factory(LIVE_ENV)
    token = srv.user_token("crashy")
    waiting = create(srv, token)["stream_id"]
    active = create(srv, token)["stream_id"]
    w = start(srv, token, waiting)
    a = start(srv, token, active)
    publish(publishers, a["srt_url"])
    wait_for(lambda: status_of(srv, token, active) == "active", 15, message="active")
    wait_for(lambda: len(segments_in(playlist(srv, active))) >= 2, 15, message="segments")
    assert ffmpeg_children_listening(w["port"]) and ffmpeg_children_listening(a["port"])
    # The listeners' input lists (they hold the stream keys) live in the data directory ...
    lists = sorted((srv.data_dir / "run" / "ingest").glob("*.ffconcat"))
    assert len(lists) == 2
    assert any(w["stream_key"].encode() in f.read_bytes() for f in lists)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    wait_for(
        lambda: not ffmpeg_children_listening(w["port"]) and not ffmpeg_children_listening(a["port"]),
        10,
        message="FFmpeg children to die with the server",
    )
    assert all(f.exists() for f in lists)  # a SIGKILLed server cannot clean up ...
    srv.start()
    assert not any(f.exists() for f in lists)  # ... so the next start does
    for sid in (waiting, active):
        detail = srv.main.get(f"/api/streams/{sid}", headers=bearer(token)).json()
        assert detail["status"] == "stopped" and "restart" in detail["status_reason"]
    assert srv.vod.get(f"/api/v1/recordings/{active}").json()["status"] in ("processing", "ready")
    assert srv.vod.get(f"/api/v1/recordings/{waiting}").status_code == 404  # no media, no recording
    # The ports are free again: a new stream can listen on them.
    fresh = create(srv, token)["stream_id"]
    assert start(srv, token, fresh)["port"] in (w["port"], a["port"])


def test_graceful_shutdown_stops_every_ffmpeg(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory(LIVE_ENV)
    token = srv.user_token("shutdown")
    ports = [start(srv, token, create(srv, token)["stream_id"])["port"] for _ in range(2)]
    assert all(ffmpeg_children_listening(p) for p in ports)
    assert srv.stop() == 0
    assert not any(ffmpeg_children_listening(p) for p in ports)


def test_spec_javascript_client_creates_and_starts(
    server_factory: Callable[..., ServerProcess], run_spec_client
) -> None:
    srv = server_factory(LIVE_ENV, spec_ports=True)
    srv.register("jsstreamer")
    steps = [
        ["login", "jsstreamer@example.com", "password123"],
        ["createStream", "My Stream", "Live Coding", "React tutorial"],
    ]
    login, created = run_spec_client(f"http://{srv.host}", steps)
    assert login["ok"] and created["ok"] and created["result"]["status"] == "created"
    sid = created["result"]["stream_id"]
    token = login["result"]["access_token"]
    (started,) = run_spec_client(f"http://{srv.host}", [["startStream", sid]], token)
    assert started["ok"] and started["result"]["status"] == "waiting"
    assert started["result"]["srt_url"].startswith(f"srt://{srv.host}:")
