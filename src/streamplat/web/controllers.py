"""The web app's routes on the Main App: its pages, their static files and /app-config.json.

The pages are one `index.html` whose ES modules route on the client, so every page path answers
the same document. Static files carry a build id in their URL (`/static/b<hash>/js/main.js`),
taken from the files' names, sizes and mtimes: the browser may then keep them for a year, and a
new release (or an edited file) changes the id and so every URL. Modules import each other by
relative paths, so the id reaches every file without a build step. Unversioned `/static/...`
URLs work too, revalidated on every use.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path
from typing import Any, Final

import msgspec
from litestar import Request, Response, Router, get, route
from litestar.params import FromPath

from streamplat.errors import NotFound, responses
from streamplat.httpfiles import file_response

STATIC_ROOT: Final = Path(__file__).parent / "static"

# Fixed rather than from `mimetypes`, which reads the host's /etc/mime.types: module scripts
# must be served as JavaScript or the browser refuses them. Litestar adds "; charset=utf-8" to
# every text/* type itself.
MEDIA_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain",
    ".woff2": "font/woff2",
}
DEFAULT_MEDIA_TYPE: Final = "application/octet-stream"
# Files without an extension (LICENSE) are text.
NO_EXTENSION_MEDIA_TYPE: Final = "text/plain"

IMMUTABLE: Final = "public, max-age=31536000, immutable"
REVALIDATE: Final = "no-cache"

# The pages talk to the API on the other ports (other origins), play media from them and let
# hls.js run its demuxer in a blob: worker; scripts and styles come from this origin only, so an
# injected <script> cannot run.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob: http: https:",
        "media-src 'self' blob: http: https:",
        "connect-src 'self' http: https: ws: wss:",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)
PAGE_HEADERS: Final = {
    "Cache-Control": REVALIDATE,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

BUILD_PREFIX: Final = "b"
STATIC_PLACEHOLDER: Final = "{{STATIC}}"


class AppConfig(msgspec.Struct):
    """GET /app-config.json: what the pages need to reach the other ports."""

    auth_port: int
    main_port: int
    stream_port: int
    vod_port: int
    segment_seconds: float


def build_id(root: Path = STATIC_ROOT) -> str:
    """A short id that changes whenever any static file is added, removed or changed."""
    digest = hashlib.blake2b(digest_size=6)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return BUILD_PREFIX + digest.hexdigest()


class _CurrentBuild:
    """build_id() and the page that names it, made on a thread at most every `max_age` seconds
    instead of per request.

    The static tree (index.html included) only changes on an upgrade, or while someone edits it
    in development, so a second-old id and page are as good as fresh ones.
    """

    def __init__(self, max_age: float = 2.0) -> None:
        self.max_age = max_age
        self._value: tuple[float, str, bytes] | None = None  # (made at, build id, index page)

    async def _current(self) -> tuple[float, str, bytes]:
        if self._value is None or time.monotonic() - self._value[0] >= self.max_age:
            build, page = await asyncio.to_thread(_read_build)
            self._value = (time.monotonic(), build, page)
        return self._value

    async def id(self) -> str:
        """The build id, at most `max_age` seconds old."""
        return (await self._current())[1]

    async def page(self) -> bytes:
        """index.html with its static URLs pointing at the current build."""
        return (await self._current())[2]


def _read_build() -> tuple[str, bytes]:
    build = build_id()
    html = (STATIC_ROOT / "index.html").read_text(encoding="utf-8")
    return build, html.replace(STATIC_PLACEHOLDER, f"/static/{build}").encode()


_current_build = _CurrentBuild()

BUILD_ID: Final = re.compile(rf"{BUILD_PREFIX}[0-9a-f]{{12}}")


def _is_build_id(part: str) -> bool:
    return BUILD_ID.fullmatch(part) is not None


def static_file(root: Path, parts: list[str]) -> Path:
    """The file under `root` named by URL path `parts`; NotFound for anything else.

    Hidden names, `..` and empty parts are refused before touching the disk, and the resolved
    path must still lie under `root` (a symlink cannot lead out of it).
    """
    if not parts or any(not p or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        raise NotFound("Static file not found")
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise NotFound("Static file not found")
    return path


def media_type_of(path: Path) -> str:
    """The Content-Type a static file is served with."""
    if not path.suffix:
        return NO_EXTENSION_MEDIA_TYPE
    return MEDIA_TYPES.get(path.suffix.lower(), DEFAULT_MEDIA_TYPE)


async def _index_page() -> Response[bytes]:
    return Response(await _current_build.page(), media_type="text/html", headers=PAGE_HEADERS)


@get(["/", "/login", "/register", "/dashboard", "/library"], include_in_schema=False)
async def app_page() -> Response[bytes]:
    """The web app's page (client-side routed)."""
    return await _index_page()


@get("/watch/{stream_id:str}", include_in_schema=False)
async def watch_page(stream_id: FromPath[str]) -> Response[bytes]:
    """The web app's watch page (client-side routed; the page checks the stream id)."""
    return await _index_page()


@route("/static/{path:path}", http_method=["GET", "HEAD"], include_in_schema=False, responses=responses(404))
async def static(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[Any]:
    """A static file of the web app; versioned URLs are cached for a year."""
    parts = path.strip("/").split("/")
    cache = REVALIDATE
    if parts and _is_build_id(parts[0]):
        # A page from an older build may still ask for its id; it gets today's file, revalidated.
        cache = IMMUTABLE if parts[0] == await _current_build.id() else REVALIDATE
        parts = parts[1:]
    file = static_file(STATIC_ROOT, parts)
    response = file_response(request, file, media_type_of(file))
    response.headers["Cache-Control"] = cache
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@get("/app-config.json", tags=["web"])
async def app_config(request: Request[Any, Any, Any]) -> Response[AppConfig]:
    """The ports of the four services and the HLS segment length, for the web app."""
    settings = request.app.state.platform.settings
    s = settings.server
    ports = [s.auth_port, s.main_port, s.stream_port, s.vod_port]
    if request.headers.get("x-streamplat-edge") == "nginx":
        # Behind deploy/nginx/streamplat.conf every service is on the origin's one port.
        ports = [_origin_port(request)] * 4
    body = AppConfig(
        auth_port=ports[0],
        main_port=ports[1],
        stream_port=ports[2],
        vod_port=ports[3],
        segment_seconds=settings.ingest.segment_seconds,
    )
    return Response(body, headers={"Cache-Control": REVALIDATE})


def _origin_port(request: Request[Any, Any, Any]) -> int:
    """The port the browser reached nginx on (X-Forwarded-Port, else the scheme's default)."""
    sent = request.headers.get("x-forwarded-port", "")
    if sent.isdigit() and 0 < int(sent) < 65536:
        return int(sent)
    return 443 if request.url.scheme == "https" else 80


def web_router() -> Router:
    """Routes of the web app (pages and their static files)."""
    return Router(path="/", route_handlers=[app_page, watch_page, static, app_config], tags=["web"])
