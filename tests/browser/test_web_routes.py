"""How the Main App serves the web app: pages, static files, /app-config.json, and the API left alone."""

from __future__ import annotations

import re

import httpx

from tests.support.server import ServerProcess

PAGES = ["/", "/login", "/register", "/dashboard", "/library", "/watch/6f1c5a52-1d7e-4b8a-9a57-0c2b0d3f6e11"]
ERROR_KEYS = {"error", "message", "code"}


def assert_house_404(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= ERROR_KEYS and body["code"] == 404, body


def test_pages_static_files_and_app_config(web: ServerProcess) -> None:
    main = web.main
    bodies = set()
    for path in PAGES:
        r = main.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in r.headers["content-security-policy"]
        bodies.add(r.text)
    assert len(bodies) == 1  # one document; the client routes
    page = bodies.pop()
    build = re.search(r'src="/static/(b[0-9a-f]{12})/js/main\.js"', page)
    assert build, page

    # Versioned URLs may be kept for a year; plain ones are revalidated.
    files = {
        "js/main.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
        "favicon.svg": "image/svg+xml",
        "vendor/hls.min.js": "text/javascript; charset=utf-8",
        "vendor/hls.js-LICENSE.txt": "text/plain; charset=utf-8",
    }
    for name, media_type in files.items():
        r = main.get(f"/static/{build[1]}/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"] == media_type, name
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable", name
        assert r.headers["x-content-type-options"] == "nosniff"
    plain = main.get("/static/js/main.js")
    assert plain.status_code == 200 and plain.headers["cache-control"] == "no-cache"
    assert main.get("/static/js/main.js", headers={"If-None-Match": plain.headers["etag"]}).status_code == 304
    assert "Apache License" in main.get("/static/vendor/hls.js-LICENSE.txt").text
    assert main.head(f"/static/{build[1]}/app.css").status_code == 200

    # Anything else under /static is a 404 in the API's error shape, and nothing leaves the folder.
    outside = ["/static/../pyproject.toml", "/static/%2e%2e/controllers.py", "/static/js/%2e%2e/index.html"]
    missing = ["/static/nope.js", f"/static/{build[1]}/nope.css", "/static/js/", "/static/.hidden"]
    for path in [*missing, *outside]:
        assert_house_404(main.get(path))
    assert_house_404(main.get("/no-such-page"))

    # The pages learn the other ports here.
    config = main.get("/app-config.json")
    assert config.status_code == 200 and config.headers["cache-control"] == "no-cache"
    assert config.json() == {
        "auth_port": web.ports["auth"],
        "main_port": web.ports["main"],
        "stream_port": web.ports["stream"],
        "vod_port": web.ports["vod"],
        "segment_seconds": 1.0,
    }

    # The API keeps its paths.
    assert main.get("/health").json()["service"] == "main-app"
    assert main.get("/schema/openapi.json").status_code == 200
    unauthorized = main.get("/api/streams")
    assert unauthorized.status_code == 401 and set(unauthorized.json()) >= ERROR_KEYS
    assert main.get("/api/streams/live").status_code == 401
