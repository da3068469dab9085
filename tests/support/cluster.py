"""Several streamplat nodes behind Debian's nginx with TLS, as deploy/nginx/streamplat.conf sets them up.

`running_cluster()` starts, on free ports: a moto S3 server, two `streamplat serve` nodes sharing
one fresh PostgreSQL database, the machine's Redis (a key prefix of their own), that bucket and
one JWT secret, and nginx (non-daemon, a temporary prefix) running the deploy template with its
upstreams pointed at the nodes and a self-signed certificate made with openssl at run time.

`render_nginx_conf()` is the template's one renderer (the edge bench uses it too): every line it
rewrites must be found in the template, so a template edit that breaks the rendering fails loudly
instead of silently testing another configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from websockets.asyncio.client import ClientConnection as AsyncClientConnection
from websockets.asyncio.client import connect as async_connect

from tests.support.server import SERVICES, ServerProcess, free_tcp_port, make_server

if TYPE_CHECKING:
    from tests.support.s3 import MotoServer

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "nginx" / "streamplat.conf"
NGINX = "/usr/sbin/nginx"
UPSTREAMS = {service: f"streamplat_{service}" for service in SERVICES}

MAIN_CONTEXT = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections {connections}; }}
http {{
    log_format timed '$msec $request_time $upstream_connect_time $upstream_header_time '
                     '$upstream_response_time $upstream_cache_status $status $body_bytes_sent "$request"';
    access_log {access_log};
    # Debian's /etc/nginx/nginx.conf defaults, which the template's servers must cope with.
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
{conf}
}}
"""


def nginx_conf(tmp: Path, http: str, *, connections: int = 4096, access_log: bool = False) -> str:
    """A complete nginx.conf: one worker in the foreground, files under `tmp`, `http` in http {}.

    The one main context for every nginx the tests and benches run (bench/llhls.py's reference
    server too). With `access_log`, requests are logged to tmp/access.log with their timings.
    """
    body = "\n".join(f"    {line}" if line else "" for line in http.splitlines())
    return MAIN_CONTEXT.format(
        # Our temporary directories are 0700: as root, nginx's workers must run as root to read them.
        user="user root root;" if os.geteuid() == 0 else "",
        tmp=tmp,
        access_log=f"{tmp}/access.log timed" if access_log else "off",
        connections=connections,
        conf=body,
    )


def _replace(text: str, old: str, new: str, count: int | None = None) -> str:
    """`text` with `old` replaced; `old` must occur (exactly `count` times when given)."""
    found = text.count(old)
    if found == 0 or (count is not None and found != count):
        raise ValueError(f"deploy/nginx/streamplat.conf changed: {old!r} found {found} times")
    return text.replace(old, new)


def render_nginx_conf(
    nodes: list[dict[str, int]],
    *,
    tmp: Path,
    https_port: int,
    http_port: int,
    cert: Path,
    key: Path,
    host: str = "127.0.0.1",
    plain_port: int | None = None,
    access_log: bool = False,
    connections: int = 4096,
) -> str:
    """A complete nginx.conf: the deploy template with these nodes' ports, listeners and files.

    `nodes` holds each node's service ports (ServerProcess.ports). `plain_port` adds a plain-HTTP
    listener to the TLS server block (same locations, cache and headers, no TLS): the edge bench
    measures nginx's proxying without the load generator paying for TLS.
    """
    conf = TEMPLATE.read_text()
    for service, upstream in UPSTREAMS.items():
        block = re.search(rf"upstream {upstream} \{{\n(.*?)\n    keepalive", conf, re.S)
        if block is None:
            raise ValueError(f"deploy/nginx/streamplat.conf changed: no upstream {upstream}")
        servers = "\n".join(
            f"    server {host}:{ports[service]} max_fails=2 fail_timeout=5s;" for ports in nodes
        )
        conf = conf[: block.start(1)] + servers + conf[block.end(1) :]
    conf = _replace(conf, "    listen [::]:80;\n", "", 1)
    conf = _replace(conf, "    listen [::]:443 ssl http2;\n", "", 1)
    conf = _replace(conf, "    listen 80;\n", f"    listen {host}:{http_port};\n", 1)
    extra = f"    listen {host}:{plain_port};\n" if plain_port else ""
    tls = f"    listen {host}:{https_port} ssl http2;\n{extra}"
    conf = _replace(conf, "    listen 443 ssl http2;\n", tls, 1)
    conf = _replace(conf, "/etc/letsencrypt/live/streamplat.example.com/fullchain.pem", str(cert), 1)
    conf = _replace(conf, "/etc/letsencrypt/live/streamplat.example.com/privkey.pem", str(key), 1)
    conf = _replace(conf, "/var/cache/nginx/streamplat", str(tmp / "cache"), 1)
    conf = _replace(conf, "root /var/www/letsencrypt;", f"root {tmp / 'acme'};", 1)
    return nginx_conf(tmp, conf, connections=connections, access_log=access_log)


def make_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (and localhost), made with openssl: (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=streamplat-test",
            "-addext",
            f"subjectAltName=IP:{host},DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class NginxProcess:
    """Debian's nginx running a rendered streamplat.conf in the foreground."""

    tmp: Path
    cert: Path
    key: Path
    host: str = "127.0.0.1"
    https_port: int = field(default_factory=free_tcp_port)
    http_port: int = field(default_factory=free_tcp_port)
    plain_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.tmp / "nginx.conf"

    def write_conf(self, nodes: list[dict[str, int]], **kw: object) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        for name in ("acme", "cache"):
            (self.tmp / name).mkdir(exist_ok=True)
        self.conf_path.write_text(
            render_nginx_conf(
                nodes,
                tmp=self.tmp,
                https_port=self.https_port,
                http_port=self.http_port,
                cert=self.cert,
                key=self.key,
                host=self.host,
                plain_port=self.plain_port,
                **kw,  # type: ignore[arg-type]
            )
        )
        return self.conf_path

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the rendered configuration."""
        return subprocess.run(
            [NGINX, "-t", "-c", str(self.conf_path), "-p", str(self.tmp)], capture_output=True, text=True
        )

    def start(self, timeout: float = 15.0) -> NginxProcess:
        out = (self.tmp / "nginx.out").open("wb")
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(self.conf_path), "-p", str(self.tmp)], stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.http_url("/"), timeout=1)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not answer in {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        parts = [self.tmp / "nginx.out", self.tmp / "error.log"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def https_url(self, path: str = "") -> str:
        return f"https://{self.host}:{self.https_port}{path}"

    def http_url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.http_port}{path}"

    def plain_url(self, path: str = "") -> str:
        assert self.plain_port is not None
        return f"http://{self.host}:{self.plain_port}{path}"

    def client(self) -> httpx.Client:
        """An HTTPS client that trusts only this nginx's self-signed certificate."""
        return httpx.Client(base_url=self.https_url(), verify=ssl_context(self.cert), timeout=30)

    def worker_pid(self) -> int | None:
        if self.proc is None:
            return None
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ssl_context(cert: Path) -> ssl.SSLContext:
    """A client context trusting `cert` only (hostname checked against its subjectAltName)."""
    return ssl.create_default_context(cafile=str(cert))


class LoopWebSocket:
    """A WebSocket client whose TLS runs in one thread: websockets' asyncio client on an event
    loop of its own, with the blocking `recv(timeout=...)` of its sync client.

    Not websockets' sync client over TLS: its reader thread reads the socket while the caller's
    thread writes the upgrade request, and with TLS 1.3 the reader is already inside OpenSSL
    for the server's post-handshake session tickets. Through nginx that lost the request now
    and then (nginx: "client timed out ... while waiting for request" 60 s later): 1 hang in
    8 to 400 handshakes here, none in 1,500 with TLS 1.2 or with one thread doing both.
    """

    def __init__(self, url: str, context: ssl.SSLContext, open_timeout: float = 10) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wss-client", daemon=True)
        self._thread.start()
        try:
            self._ws = self._run(_open_wss(url, context, open_timeout), open_timeout + 5)
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next message; TimeoutError after `timeout` s (the message is not lost then)."""
        return self._run(asyncio.wait_for(self._ws.recv(), timeout))

    def close(self) -> None:
        try:
            self._run(self._ws.close(), 15)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> LoopWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _open_wss(url: str, context: ssl.SSLContext, open_timeout: float) -> AsyncClientConnection:
    return await async_connect(url, ssl=context, open_timeout=open_timeout, proxy=None)


def nginx_available() -> str | None:
    """None when Debian's nginx and openssl are installed, else what is missing."""
    tools = (("nginx-light", NGINX), ("openssl", shutil.which("openssl")))
    missing = [name for name, path in tools if not path or not Path(path).exists()]
    return f"apt-get install -y {' '.join(missing)}" if missing else None


@dataclass
class Cluster:
    """Two started nodes (a, b) sharing PostgreSQL, Redis and S3, behind one nginx."""

    a: ServerProcess
    b: ServerProcess
    nginx: NginxProcess
    bucket: str
    moto: MotoServer

    @property
    def nodes(self) -> list[ServerProcess]:
        return [self.a, self.b]


def node_env(database_url: str, redis_prefix: str, secret: str, extra: dict[str, str]) -> dict[str, str]:
    """What every node of one cluster shares: database, Redis prefix, JWT secret (+ `extra`)."""
    from tests.support.redis import REDIS_URL

    return {
        "STREAMPLAT_STORAGE__DATABASE_URL": database_url,
        "STREAMPLAT_REDIS__URL": REDIS_URL,
        "STREAMPLAT_REDIS__KEY_PREFIX": redis_prefix,
        "STREAMPLAT_AUTH__JWT_SECRET": secret,
        **extra,
    }


@contextlib.contextmanager
def running_cluster(tmp: Path, extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """Moto S3, two nodes on one fresh PostgreSQL database and Redis prefix, nginx with TLS.

    Everything is stopped (nodes with SIGTERM, which must exit 0) and the database dropped and
    the Redis keys deleted when the block ends.
    """
    from tests.support import pg
    from tests.support.redis import delete_prefix, fresh_prefix
    from tests.support.s3 import MotoServer

    moto = MotoServer(tmp / "moto.log").start()
    database, url = pg.create_database()
    prefix = fresh_prefix()
    bucket = "streamplat-cluster"
    env = node_env(url, prefix, secrets.token_urlsafe(32), dict(extra_env or {}))
    env.update(moto.server_env(bucket, create_bucket="true"))
    nodes: list[ServerProcess] = []
    nginx: NginxProcess | None = None
    try:
        for name in ("a", "b"):
            node = make_server(tmp, env, name=name)
            nodes.append(node)
            node.start(timeout=60)
        cert, key = make_certificate(tmp / "tls")
        nginx = NginxProcess(tmp / "nginx", cert, key)
        nginx.write_conf([n.ports for n in nodes])
        checked = nginx.check()
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        nginx.start()
        yield Cluster(nodes[0], nodes[1], nginx, bucket, moto)
        codes = {node.data_dir.parent.name: node.stop() for node in nodes}
        assert all(code == 0 for code in codes.values()), (codes, [n.logs()[-3000:] for n in nodes])
    finally:
        if nginx is not None:
            nginx.stop()
        for node in nodes:
            node.kill()
        pg.drop_database(database)
        delete_prefix(prefix)
        moto.stop()


__all__ = [
    "SERVICES",
    "Cluster",
    "LoopWebSocket",
    "NginxProcess",
    "make_certificate",
    "nginx_available",
    "nginx_conf",
    "render_nginx_conf",
    "running_cluster",
    "ssl_context",
]
