"""Two nodes behind nginx with TLS (deploy/nginx/streamplat.conf), end to end (issue 12's goal).

One cluster per module (tests/support/cluster.py): moto S3, two `streamplat serve` nodes on one
fresh PostgreSQL database and one Redis prefix, Debian's nginx running the deploy template with
a self-signed certificate. A real FFmpeg publisher feeds node A; everything else goes through
node B or through nginx over HTTPS, whose upstreams alternate between A and B. The last test
(one plain server each) checks `server.trusted_proxies`, which decides whose X-Forwarded-For a
node believes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamplat.hls.playlist import PlaylistFacts, check_playlist
from tests.integration.test_auth import bearer
from tests.integration.test_llhls import hint, last_part, parts, uris
from tests.integration.test_realtime import read_until, recv, status_message
from tests.support import pg
from tests.support.cluster import Cluster, LoopWebSocket, nginx_available, running_cluster, ssl_context
from tests.support.media import Publisher, wait_for
from tests.support.redis import require_redis
from tests.support.server import ServerProcess, running_server

SERVICE_NAMES = {"auth": "auth-service", "main": "main-app", "stream": "stream-app", "vod": "vod-service"}

ENV = {
    "STREAMPLAT_INGEST__SEGMENT_SECONDS": "1",
    "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "60",
    "STREAMPLAT_CLUSTER__HEARTBEAT_SECONDS": "0.5",
    "STREAMPLAT_CLUSTER__NODE_TIMEOUT_SECONDS": "5",
}


@pytest.fixture(name="cluster", scope="module")
def fixture_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    pg.require()
    require_redis()
    if missing := nginx_available():
        pytest.fail(f"the cluster tests need nginx and openssl: {missing}")
    with running_cluster(tmp_path_factory.mktemp("cluster"), ENV) as cluster:
        yield cluster


@pytest.fixture(name="edge")
def fixture_edge(cluster: Cluster) -> Iterator[httpx.Client]:
    """HTTPS to nginx, trusting only the cluster's self-signed certificate."""
    with cluster.nginx.client() as client:
        yield client


class Watcher:
    """A player through nginx: every playlist goes through the invariant checker."""

    def __init__(self, edge: httpx.Client, sid: str) -> None:
        self.edge, self.sid = edge, sid
        self.facts: PlaylistFacts | None = None

    def get(self, name: str, **kw: Any) -> httpx.Response:
        return self.edge.get(f"/hls/{self.sid}/{name}", **kw)

    def playlist(self, query: str = "") -> str:
        r = self.get("stream.m3u8" + (f"?{query}" if query else ""))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/vnd.apple.mpegurl")
        assert "x-cache-status" not in r.headers  # playlists never touch the cache
        self.facts = check_playlist(r.text, self.facts)
        return r.text

    def wait_segments(self, n: int) -> str:
        def ready() -> str | None:
            r = self.get("stream.m3u8")
            if r.status_code != 200:
                return None
            self.facts = check_playlist(r.text, self.facts)
            return r.text if len(uris(r.text)) >= n else None

        return str(wait_for(ready, 40, message=f"{n} segments through nginx"))


def hls_requests(node: ServerProcess, status: str) -> float:
    """How many /hls/ requests the node's Stream App answered with `status` (its /metrics)."""
    text = node.main.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        wanted = (
            "streamplat_http_requests_total{",
            'service="stream-app"',
            'route="/hls/',
            f'status="{status}"',
        )
        if line.startswith(wanted[0]) and all(w in line for w in wanted[1:]):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_on(node: ServerProcess, token: str, name: str) -> tuple[str, dict[str, Any]]:
    r = node.main.post("/api/streams", json={"name": name}, headers=bearer(token))
    assert r.status_code == 201, r.text
    sid = str(r.json()["stream_id"])
    r = node.main.post(f"/api/streams/{sid}/start", headers=bearer(token))
    assert r.status_code == 200, r.text
    return sid, dict(r.json())


def srt_port(started: dict[str, Any]) -> int:
    return int(re.search(r"srt://[^:/]+:(\d+)", started["srt_url"]).group(1))  # type: ignore[union-attr]


def test_ingested_on_a_listed_watched_stopped_and_replayed_through_b_and_nginx(
    cluster: Cluster, edge: httpx.Client, publishers: list[Publisher]
) -> None:
    a, b, nginx = cluster.a, cluster.b, cluster.nginx
    # Signed up on B, logged in through the origin (round robin over both nodes' Auth service).
    b.register("edgecaster")
    r = edge.post("/auth/login", json={"email": "edgecaster@example.com", "password": "password123"})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]

    sid, started = start_on(a, token, "edge")
    assert (
        int(a.env["STREAMPLAT_INGEST__PORT_MIN"])
        <= srt_port(started)
        <= int(a.env["STREAMPLAT_INGEST__PORT_MAX"])
    )
    publishers.append(Publisher(started["srt_url"], duration=120).start())

    # Listed via B.
    def listed_active() -> bool:
        r = b.main.get("/api/streams", headers=bearer(token))
        assert r.status_code == 200, r.text
        return any(s["stream_id"] == sid and s["status"] == "active" for s in r.json()["streams"])

    wait_for(listed_active, 30, message="the stream listed active via B")

    with LoopWebSocket(
        nginx.https_url(f"/ws?token={token}").replace("https://", "wss://"), ssl_context(nginx.cert)
    ) as ws:
        assert recv(ws)["type"] == "welcome"

        # Watched through nginx over HTTPS: playlists, the init, parts and segments.
        redirected_before = hls_requests(b, "307")
        watcher = Watcher(edge, sid)
        text = watcher.wait_segments(3)
        for _ in range(4):  # the upstream alternates: B is asked at least twice
            text = watcher.playlist()
        init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text).group(1)  # type: ignore[union-attr]
        media = [init, uris(text)[-1], parts(text)[-1]]
        for name in media:
            first, second = watcher.get(name), watcher.get(name)
            assert first.status_code == second.status_code == 200, (name, first.text)
            assert first.content == second.content == a.stream.get(f"/hls/{sid}/{name}").content
            assert second.headers["x-cache-status"] == "HIT", name
            assert "immutable" in second.headers["cache-control"]
        assert watcher.get(uris(text)[-1]).headers["content-type"] == "video/mp4"
        # B sent those requests on to A (X-Accel-Redirect) instead of answering 404.
        assert hls_requests(b, "307") > redirected_before

        # LL-HLS through nginx: a blocking reload for the next part, then the hinted part.
        msn, index = last_part(watcher.playlist())
        text = watcher.playlist(f"_HLS_msn={msn}&_HLS_part={index + 1}")
        assert last_part(text) >= (msn, index + 1)
        hinted = hint(text)
        assert hinted is not None
        r = watcher.get(hinted, timeout=20)
        assert r.status_code == 200 and len(r.content) > 0

        # Without nginx, B sends a player to A's own URL (307), and the bytes are the same.
        r = b.stream.get(f"/hls/{sid}/{uris(text)[-1]}")
        assert r.status_code == 307
        assert r.headers["location"] == a.url("stream", f"/hls/{sid}/{uris(text)[-1]}")
        assert (
            b.stream.get(f"/hls/{sid}/{uris(text)[-1]}", follow_redirects=True).content
            == watcher.get(uris(text)[-1]).content
        )

        # Stopped via B: A's ingest ends, and the WebSocket through nginx hears it.
        r = b.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
        assert r.status_code == 200, r.text
        read_until(ws, status_message(sid, "stopped"), timeout=30)
    wait_for(
        lambda: not a.stream.get(f"/stream/{sid}/status").json()["ffmpeg_running"], 30, message="A stopped"
    )

    # The recording, played via B and through nginx (kept in S3: a 302 to a presigned URL).
    def ready() -> dict[str, Any] | None:
        r = b.vod.get(f"/api/v1/recordings/{sid}")
        return dict(r.json()) if r.status_code == 200 and r.json()["status"] == "ready" else None

    recording = wait_for(ready, 120, message="recording ready")
    assert recording["duration_seconds"] > 2
    for client, path in ((b.vod, f"/api/v1/recordings/{sid}/video"), (edge, recording["file_path"])):
        r = client.get(path)
        assert r.status_code == 302, r.text
        with httpx.Client(timeout=30) as s3:
            video = s3.get(r.headers["location"])
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        assert len(video.content) == recording["file_size_bytes"]


def test_forged_redirects_and_internal_paths_are_refused(
    cluster: Cluster, edge: httpx.Client, publishers: list[Publisher]
) -> None:
    a, b, nginx = cluster.a, cluster.b, cluster.nginx
    token = a.user_token("forger")
    sid, started = start_on(a, token, "forged")
    publishers.append(Publisher(started["srt_url"], duration=60).start())
    Watcher(edge, sid).wait_segments(1)
    a_address = f"127.0.0.1:{a.ports['stream']}"

    # nginx's hop to a node cannot be asked for from outside, whatever address it names.
    for target in (a_address, "169.254.169.254:80", "127.0.0.1:22"):
        r = edge.get(f"/_streamplat_node/{target}/hls/{sid}/stream.m3u8")
        assert r.status_code == 404, (target, r.text)

    # A client claiming to be nginx, straight to B: the address named is A's, from the registry,
    # not the Host or forwarding headers the client sent.
    forged = {"X-Streamplat-Edge": "nginx", "Host": "169.254.169.254:80", "X-Forwarded-Host": "evil.example"}
    r = b.stream.get(f"/hls/{sid}/stream.m3u8", headers=forged)
    assert r.status_code == 307
    assert r.headers["x-accel-redirect"] == f"/_streamplat_node/{a_address}/hls/{sid}/stream.m3u8"
    # A stream id or file name that is not one stays local (404), nothing is named.
    for path in (f"/hls/{sid}/..%2f..%2fetc%2fpasswd", f"/hls/{sid}/secret.txt", "/hls/nope/stream.m3u8"):
        r = b.stream.get(path, headers=forged)
        assert r.status_code == 404 and "x-accel-redirect" not in r.headers, path
    # Control characters in the query never reach the header.
    r = b.stream.get(f"/hls/{sid}/stream.m3u8?_HLS_msn=1%0d%0aX-Evil:%201", headers=forged)
    assert r.status_code == 400 and "x-accel-redirect" not in r.headers

    # Clients cannot pose as nginx's hop ("owner": answer locally) through nginx: nginx replaces
    # the header, so every request still reaches the stream, whichever node it lands on.
    for _ in range(4):
        r = edge.get(f"/hls/{sid}/stream.m3u8", headers={"X-Streamplat-Edge": "owner"})
        assert r.status_code == 200, r.text

    # Plain HTTP is redirected to HTTPS, except ACME challenges.
    (nginx.tmp / "acme" / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
    (nginx.tmp / "acme" / ".well-known" / "acme-challenge" / "token123").write_text("proof")
    with httpx.Client(timeout=10) as plain:
        r = plain.get(nginx.http_url(f"/hls/{sid}/stream.m3u8?x=1"))
        assert r.status_code == 308  # keeps the method, unlike 301
        assert r.headers["location"] == f"https://127.0.0.1/hls/{sid}/stream.m3u8?x=1"
        r = plain.get(nginx.http_url("/.well-known/acme-challenge/token123"))
        assert r.status_code == 200 and r.text == "proof"

    # Each service's /health through the one origin.
    for service, name in SERVICE_NAMES.items():
        r = edge.get(f"/health/{service}")
        assert r.status_code == 200, r.text
        assert r.json()["service"] == name and r.json()["status"] == "healthy", r.text
    assert edge.get("/metrics").status_code == 404
    r = edge.post(f"/internal/streams/{sid}/stop", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404 and "stream" not in r.text.lower()
    assert edge.get("/", headers={"Accept": "text/html"}).status_code == 200
    # The web app served through the origin reaches every service through it too.
    config = edge.get("/app-config.json").json()
    assert {config[f"{s}_port"] for s in SERVICE_NAMES} == {nginx.https_port}
    assert a.main.get("/app-config.json").json()["auth_port"] == a.ports["auth"]
    assert edge.get(f"/hls/{sid}/stream.m3u8").headers["strict-transport-security"].startswith("max-age=")
    r = a.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    assert r.status_code == 200, r.text


def test_forwarded_client_address_only_from_trusted_proxies(tmp_path: Path) -> None:
    """server.trusted_proxies: the login rate limit keys on X-Forwarded-For only from those.

    127.0.0.1 is trusted and ::1 is not: the same server, reached over each, plays a trusted
    proxy and an untrusted client.
    """
    env = {
        "STREAMPLAT_SERVER__TRUSTED_PROXIES": '["127.0.0.1"]',
        "STREAMPLAT_RATE_LIMIT__LOGIN_PER_MINUTE": "2",
    }
    wrong = {"email": "nobody@example.com", "password": "wrong-password"}
    with running_server(tmp_path, env) as srv:
        for host, honoured in (("[::1]", False), ("127.0.0.1", True)):
            with httpx.Client(base_url=f"http://{host}:{srv.ports['auth']}", timeout=30) as client:
                for _ in range(2):
                    r = client.post("/auth/login", json=wrong, headers={"X-Forwarded-For": "198.51.100.7"})
                    assert r.status_code == 401, r.text
                # A third attempt "from another client": its own window if the header is believed.
                r = client.post("/auth/login", json=wrong, headers={"X-Forwarded-For": "198.51.100.8"})
                assert r.status_code == (401 if honoured else 429), (host, r.text)


def test_the_web_app_through_the_origin_plays_a_stream_ingested_on_a(
    cluster: Cluster, publishers: list[Publisher]
) -> None:
    """Debian's Chromium on https://<nginx>/ only: sign-in, the watch page and hls.js, via either node."""
    from playwright.sync_api import expect, sync_playwright

    from tests.browser.web import assert_advances, wait_until_playing
    from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS

    a, b, nginx = cluster.a, cluster.b, cluster.nginx
    b.register("webviewer")
    sid, started = start_on(a, a.user_token("webcaster"), "web")
    publishers.append(Publisher(started["srt_url"], duration=90).start())
    origin = nginx.https_url()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()  # the test's own CA
            page.set_default_timeout(20_000)
            page.goto(f"{origin}/login")
            page.fill("input[name=email]", "webviewer@example.com")
            page.fill("input[name=password]", "password123")
            page.click("button[type=submit]")
            expect(page.locator("#account")).to_contain_text("webviewer")
            page.goto(f"{origin}/watch/{sid}")
            wait_until_playing(page, "#player", beyond=1.0, timeout_ms=40_000)
            assert_advances(page, "#player", 1.0)
            used = page.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
        finally:
            browser.close()
    # Every request of the page (API, playlists, parts) went to the one origin.
    assert any("/hls/" in url for url in used), used
    assert all(url.startswith(origin) for url in used), [u for u in used if not u.startswith(origin)]
