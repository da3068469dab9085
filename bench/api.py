"""The API's request path against a bare Litestar app under the same uvicorn, side by side.

    .venv/bin/python bench/api.py [--seconds 10] [--connections 64] [--logins 20] [--login-seconds 15]

Starts `streamplat serve` (temporary data directory, free ports, rate limits off) and a one-route
Litestar app served exactly like streamplat's listeners: sockets from `streamplat.server.bind_sockets`,
uvicorn settings from `streamplat.server.uvicorn_config`, the same event loop and HTTP parser.
Both run as their own processes, with the same environment, so `STREAMPLAT_SERVER__LOOP` /
`STREAMPLAT_SERVER__HTTP` switch both. Load comes from wrk (Debian: `apt-get install wrk`).

Measured, in this order, each run for --seconds with --connections keep-alive connections:
  1. bare app `GET /`                                   (the reference)
  2. `GET /api/streams/{id}` with a Bearer token         (ratio to 1)
  3. `GET /health` on the main port                      (ratio to 1)
  4. --logins parallel logins for --login-seconds, while one connection polls `GET /health`
     50 times a second: logins per second and /health p50/p99 during the burst. Its reference,
     in the same run: argon2id alone (the server's `[auth]` cost, on as many threads as the
     server hashes on, in its own process) verifying back to back for as long: the most logins
     the cores could give, and logins/s as a share of it.
  5. every other read of the spec (and of ours) at --connections, --route-seconds each, with
     the shipped settings (caches as configured): /auth/validate, the stream list pages, live
     streams, /stream/{id}/status, the recordings list, users (admin) and /health on the
     other three ports; p99 against the goal "any API p99 < 50 ms", beside the server's own
     p99 (its access lines). References, in the same run: the bare app burning 150 and 250 us
     of CPU per request (about what these reads cost), on the server's loop and on the other
     one (asyncio's / uvloop).
Beside req/s, runs 1-3 print the serving process's CPU time per request (all its threads, from
/proc) and the ratio of the bare app's to it: on a busy box req/s moves with what else runs,
CPU per request hardly does, so that ratio is the one to compare between runs at different load.
Then the same API on PostgreSQL vs on SQLite (skipped with a note when PostgreSQL at --pg-url
does not answer): two streamplat servers, one per database, both with the read caches off
(auth.principal_cache_seconds = server.read_cache_seconds = 0: no answer outlives its request,
though identical reads in flight at once share one query) and each run alternately --rounds
times, best run kept:
  6. `GET /api/streams/{id}` (Bearer): 2 queries per read (principal, stream + owner)
  7. `GET /api/streams?limit=20` (Bearer): 2 queries (principal, the page with its total)
  printed with the PostgreSQL/SQLite ratio (goal >= 0.8x). `--databases-only` runs just this part.
The machine running this is the one serving: wrk, both servers and argon2 share its cores, so
absolute numbers move with whatever else runs. The ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
GOALS = {
    "api_ratio": 0.5,
    "health_ratio": 0.7,
    "health_p99_during_logins_ms": 50.0,
    "logins_per_second": 12.0,
    "api_p99_ms": 50.0,
    "postgres_ratio": 0.8,
}
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


# --- the reference app (run as `bench/api.py --serve-bare PORT`) ------------------------------


def serve_bare(port: int) -> None:
    """Serve a one-route Litestar app on 127.0.0.1:`port` the way streamplat serves its apps."""
    import asyncio

    import uvicorn
    from litestar import Litestar, get

    from streamplat import config, server

    settings = config.load(None)

    @get("/", sync_to_thread=False)
    def hello() -> dict[str, str]:
        """A tiny JSON reply."""
        return {"status": "ok"}

    @get("/busy", sync_to_thread=False)
    def busy(us: int) -> dict[str, str]:
        """The same reply after `us` microseconds of CPU: a handler as costly as one of ours."""
        end = time.perf_counter() + us / 1e6
        while time.perf_counter() < end:
            pass
        return {"status": "ok"}

    app = Litestar(route_handlers=[hello, busy], logging_config=None)
    sockets = server.bind_sockets("127.0.0.1", port, "bare")
    # Plain uvicorn.Server: it handles SIGTERM itself (streamplat's own servers leave that to `serve`).
    srv = uvicorn.Server(server.uvicorn_config(app, settings))
    factory = server.loop_factory(settings) if hasattr(server, "loop_factory") else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(srv.serve(sockets=sockets))


# --- helpers ----------------------------------------------------------------------------------


def argon2_alone(seconds: float) -> None:
    """Verify one password back to back on the server's hashing threads; print verifications/s.

    Uses `PasswordHashing.from_settings` with the same settings (and environment) the server
    loads, so the cost, the lanes and the number of threads are the server's.
    """
    import asyncio

    from streamplat import config
    from streamplat.auth.passwords import PasswordHashing

    auth = config.load(None).auth
    hashing = PasswordHashing.from_settings(auth)

    async def run() -> tuple[int, float]:
        password_hash = await hashing.hash("password123")
        started = time.monotonic()
        end = started + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                assert await hashing.verify(password_hash, "password123")
                done += 1

        await asyncio.gather(*(worker() for _ in range(auth.password_hash_threads)))
        return done, time.monotonic() - started

    try:
        done, took = asyncio.run(run())
        print(json.dumps({"per_second": done / took, "threads": auth.password_hash_threads}))
    finally:
        hashing.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    sys.exit(f"{url} did not answer in {timeout} s")


@dataclass
class WrkResult:
    requests_per_second: float
    ok_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    # CPU time (all threads) the serving process spent per request during the run: unlike
    # req/s, it hardly moves with what else the box runs, so it is the figure to compare when
    # the load average is high.
    server_cpu_us: float | None = None
    # The 99th percentile of the times the server itself logged for these requests.
    server_p99_ms: float | None = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m[1]) * _UNITS[m[2]]


def parse_wrk(out: str, seconds: float) -> WrkResult:
    """The numbers of one wrk --latency run."""
    try:
        return _parse_wrk(out, seconds)
    except (KeyError, TypeError, ValueError):
        sys.exit(f"cannot read wrk's output:\n{out}")


def _parse_wrk(out: str, seconds: float) -> WrkResult:
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    duration = re.search(r"requests in ([\d.]+)(\w+),", out)
    elapsed = float(duration[1]) * (60.0 if duration[2] == "m" else 1.0) if duration else seconds
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(non2xx[1]) if non2xx else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = bad + (sum(int(x) for x in socket_errors.groups()) if socket_errors else 0)
    return WrkResult(
        requests_per_second=rps,
        ok_per_second=(total - bad) / elapsed,
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        errors=errors,
        requests=total,
    )


def wrk_args(
    url: str, seconds: float, connections: int, headers: dict[str, str], script: Path | None = None
) -> list[str]:
    threads = min(2, connections)
    argv = ["wrk", "--latency", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    headers: dict[str, str] | None = None,
    server_pid: int | None = None,
) -> WrkResult:
    """One wrk run; with `server_pid`, also that process's CPU time per request."""
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    out = subprocess.run(
        wrk_args(url, seconds, connections, headers or {}), capture_output=True, text=True, check=True
    ).stdout
    result = parse_wrk(out, seconds)
    if server_pid and result.requests:
        result.server_cpu_us = (cpu_seconds(server_pid) - cpu_before) / result.requests * 1e6
    return result


# --- the run ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for throughput runs")
    parser.add_argument("--logins", type=int, default=20, help="parallel logins in the burst")
    parser.add_argument("--login-seconds", type=float, default=15.0, help="length of the login burst")
    parser.add_argument("--route-seconds", type=float, default=5.0, help="length of each part-5 run")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL where a throwaway database may be created (empty: skip the comparison)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per database")
    parser.add_argument("--databases-only", action="store_true", help="only PostgreSQL vs SQLite")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--argon2-alone", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    if args.argon2_alone:
        argon2_alone(args.argon2_alone)
        return 0
    if shutil.which("wrk") is None:
        print(
            "bench/api.py needs wrk (a C HTTP load generator; a Python one would measure itself).\n"
            "Install it with: apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    if not args.databases_only:
        code = bench_request_path(args)
        if code:
            return code
    if args.pg_url:
        compare_databases(args)
    return 0


def base_env(ports: dict[str, int]) -> dict[str, str]:
    """The environment of a benchmarked streamplat: free ports, no rate limits, no disk floor."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STREAMPLAT_") or "__LOOP" in k or "__HTTP" in k
    }
    env.update(
        {
            "STREAMPLAT_SERVER__HOST": "127.0.0.1",
            "STREAMPLAT_SERVER__AUTH_PORT": str(ports["auth"]),
            "STREAMPLAT_SERVER__MAIN_PORT": str(ports["main"]),
            "STREAMPLAT_SERVER__STREAM_PORT": str(ports["stream"]),
            "STREAMPLAT_SERVER__VOD_PORT": str(ports["vod"]),
            "STREAMPLAT_STORAGE__MIN_FREE_BYTES": "0",
            "STREAMPLAT_RATE_LIMIT__LOGIN_PER_MINUTE": "0",
            "STREAMPLAT_RATE_LIMIT__REGISTER_PER_MINUTE": "0",
            "PYTHONPATH": str(HERE.parent.parent / "src"),
        }
    )
    return env


def bench_request_path(args: argparse.Namespace) -> int:
    """Parts 1-4: streamplat's request path against the bare app."""
    tmp = Path(tempfile.mkdtemp(prefix="streamplat-bench-api-"))
    ports = {name: free_port() for name in ("auth", "main", "stream", "vod", "bare")}
    env = base_env(ports)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = tmp / "streamplat.log"
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "streamplat", "serve", "--data-dir", str(tmp / "data")],
                    env=env,
                    cwd=tmp,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        bare_log = tmp / "bare.log"
        with bare_log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(HERE), "--serve-bare", str(ports["bare"])],
                    env=env,
                    cwd=tmp,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        auth = f"http://127.0.0.1:{ports['auth']}"
        main_url = f"http://127.0.0.1:{ports['main']}"
        bare = f"http://127.0.0.1:{ports['bare']}/"
        wait_up(f"{main_url}/health", procs[0], log)
        wait_up(bare, procs[1], bare_log)

        user, token = register_streamer(auth)
        status, stream = request("POST", f"{main_url}/api/streams", {"name": "bench"}, token)
        assert status == 201, stream
        api_url = f"{main_url}/api/streams/{stream['stream_id']}"
        status, _ = request("GET", api_url, token=token)
        assert status == 200

        c, secs = args.connections, args.seconds
        burst = f"login burst {args.logins} connections x {args.login_seconds:.0f} s"
        print(f"wrk: {c} connections, {secs:.0f} s per run; {burst}")
        print(f"streamplat: {stack_line(log)}", flush=True)
        results: dict[str, WrkResult] = {}
        server, bare_server = procs[0].pid, procs[1].pid
        results["bare"] = run_wrk(bare, secs, c, server_pid=bare_server)
        print(f"  bare done: {results['bare'].requests_per_second:.0f} req/s", flush=True)
        results["api"] = run_wrk(api_url, secs, c, {"Authorization": f"Bearer {token}"}, server)
        print(f"  api done: {results['api'].requests_per_second:.0f} req/s", flush=True)
        results["health"] = run_wrk(f"{main_url}/health", secs, c, server_pid=server)
        print(f"  health done: {results['health'].requests_per_second:.0f} req/s", flush=True)
        results["logins"], results["health_during_logins"] = login_burst(
            tmp, f"{auth}/auth/login", f"{main_url}/health", user, args.logins, args.login_seconds
        )
        hashes = argon2_reference(env, tmp, args.login_seconds)
        print(f"  logins done; argon2 alone: {hashes['per_second']:.1f} verifications/s", flush=True)
        routes = bench_routes(args, ports, tmp, token, stream["stream_id"], server)
        report(results, args, hashes)
        report_routes(routes)
        if args.json:
            numbers: dict[str, Any] = {k: vars(v) for k, v in results.items()}
            numbers["argon2_alone_per_second"] = hashes["per_second"]
            numbers["routes"] = {label: vars(res) for label, res in routes.items()}
            Path(args.json).write_text(json.dumps(numbers, indent=2))
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def argon2_reference(env: dict[str, str], tmp: Path, seconds: float) -> dict[str, float]:
    """argon2id alone with the server's settings, in its own process: {"per_second", "threads"}."""
    out = subprocess.run(
        [sys.executable, str(HERE), "--argon2-alone", str(seconds)],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def bench_routes(
    args: argparse.Namespace, ports: dict[str, int], tmp: Path, token: str, stream_id: str, server: int
) -> dict[str, WrkResult]:
    """Part 5: every other read, with the shipped settings, --route-seconds each."""
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    for i in range(29):  # a full first page (20) and a second one, beside the stream made earlier
        status, made = request("POST", f"{base['main']}/api/streams", {"name": f"bench {i}"}, token)
        assert status == 201, made
    admin = {"email": "admin@example.com", "username": "benchadmin", "password": "password123"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streamplat",
            "create-admin",
            "--data-dir",
            str(tmp / "data"),
            "--email",
            admin["email"],
            "--username",
            admin["username"],
            "--password",
            admin["password"],
        ],
        env=base_env(ports),
        cwd=tmp,
        check=True,
        capture_output=True,
    )
    status, pair = request(
        "POST", f"{base['auth']}/auth/login", {"email": admin["email"], "password": admin["password"]}
    )
    assert status == 200, pair
    admin_token = str(pair["access_token"])
    runs: list[tuple[str, str, str | None]] = [
        ("GET /auth/validate (Bearer)", f"{base['auth']}/auth/validate", token),
        ("GET /api/streams?limit=20 (Bearer, 30 streams)", f"{base['main']}/api/streams?limit=20", token),
        ("GET /api/streams (Bearer, all 30)", f"{base['main']}/api/streams", token),
        ("GET /api/streams?offset=20 (Bearer)", f"{base['main']}/api/streams?limit=20&offset=20", token),
        ("GET /api/streams/live (Bearer)", f"{base['main']}/api/streams/live", token),
        ("GET /stream/{id}/status", f"{base['stream']}/stream/{stream_id}/status", None),
        ("GET /api/v1/recordings (Bearer)", f"{base['vod']}/api/v1/recordings", token),
        ("GET /auth/users (admin)", f"{base['auth']}/auth/users", admin_token),
        ("GET /health (auth)", f"{base['auth']}/health", None),
        ("GET /health (stream)", f"{base['stream']}/health", None),
        ("GET /health (vod)", f"{base['vod']}/health", None),
    ]
    # The references: the bare app (on the server's loop) and the same app on the other loop,
    # each burning about as much CPU per request as the routes above cost.
    from streamplat import config

    own_loop = "asyncio" if config.load(None).server.loop == "asyncio" else "uvloop"
    other_loop = "uvloop" if own_loop == "asyncio" else "asyncio"
    other_port = free_port()
    other_log = tmp / f"bare-{other_loop}.log"
    with other_log.open("wb") as out:
        other_bare = subprocess.Popen(
            [sys.executable, str(HERE), "--serve-bare", str(other_port)],
            env={**base_env(ports), "STREAMPLAT_SERVER__LOOP": other_loop},
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_up(f"http://127.0.0.1:{other_port}/", other_bare, other_log)
        references = [
            (f"bare Litestar, {us} us of CPU per request ({loop})", f"{origin}/busy?us={us}")
            for us in (150, 250)
            for loop, origin in (
                (f"{own_loop}, as the server", f"http://127.0.0.1:{ports['bare']}"),
                (other_loop, f"http://127.0.0.1:{other_port}"),
            )
        ]
        results = {label: run_wrk(url, args.route_seconds, args.connections) for label, url in references}
    finally:
        stop_processes([other_bare])
    log = tmp / "streamplat.log"
    for label, url, bearer in runs:
        status, _ = request("GET", url, token=bearer)
        assert status == 200, (label, status)
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        offset = log.stat().st_size
        results[label] = run_wrk(url, args.route_seconds, args.connections, headers, server)
        time.sleep(0.5)  # the server's log writer thread catches up
        results[label].server_p99_ms = in_server_p99(log, offset)
    print(f"  {len(runs)} other reads done", flush=True)
    return results


ACCESS_LINE = re.compile(r"streamplat\.access: [A-Z]+ \S+ \d{3} ([\d.]+)ms")


def in_server_p99(log: Path, offset: int) -> float | None:
    """p99 of the request times the server logged (its access lines) after `offset` in `log`:
    from the request's arrival in the app to its answer, without the sockets and the client."""
    with log.open("rb") as f:
        f.seek(offset)
        times = sorted(float(m[1]) for m in ACCESS_LINE.finditer(f.read().decode(errors="replace")))
    return times[min(len(times) - 1, int(len(times) * 0.99))] if times else None


def report_routes(routes: dict[str, WrkResult]) -> None:
    goal = f"p99 < {GOALS['api_p99_ms']:.0f} ms"
    print()
    print(
        "| every other read (shipped settings) | req/s | 2xx/s | p50 ms | p99 ms | in-server p99 ms "
        "| errors | server CPU us/req | goal (wrk's p99) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, res in routes.items():
        cpu = f"{res.server_cpu_us:.0f}" if res.server_cpu_us else ""
        inside = f"{res.server_p99_ms:.1f}" if res.server_p99_ms is not None else ""
        met = "met" if res.p99_ms < GOALS["api_p99_ms"] and res.errors == 0 else "NOT met"
        print(
            f"| {label} | {res.requests_per_second:.0f} | {res.ok_per_second:.1f} | {res.p50_ms:.1f} | "
            f"{res.p99_ms:.1f} | {inside} | {res.errors} | {cpu} | {goal}: {met} |"
        )


# --- PostgreSQL vs SQLite ----------------------------------------------------------------------


def _pg(url: str, statement: str) -> None:
    """Run one statement as the admin of --pg-url (asyncpg: streamplat's own driver)."""
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _start_streamplat(
    tmp: Path, name: str, extra: dict[str, str]
) -> tuple[subprocess.Popen[bytes], dict[str, int], Path]:
    ports = {service: free_port() for service in ("auth", "main", "stream", "vod")}
    env = {
        **base_env(ports),
        # Every request reads the database: the comparison is of the databases, not of the caches.
        "STREAMPLAT_AUTH__PRINCIPAL_CACHE_SECONDS": "0",
        "STREAMPLAT_SERVER__READ_CACHE_SECONDS": "0",
        **extra,
    }
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamplat", "serve", "--data-dir", str(tmp / name)],
            env=env,
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_up(f"http://127.0.0.1:{ports['main']}/health", proc, log)
    return proc, ports, log


def register_streamer(auth: str) -> tuple[dict[str, str], str]:
    """Register the bench's streamer on the Auth service at `auth` and log in: (user, token)."""
    user = {"username": "bencher", "email": "bencher@example.com", "password": "password123"}
    status, _ = request("POST", f"{auth}/auth/register", {**user, "role": "streamer"})
    assert status == 201, status
    status, pair = request(
        "POST", f"{auth}/auth/login", {"email": user["email"], "password": user["password"]}
    )
    assert status == 200, pair
    return user, str(pair["access_token"])


def _prepare(ports: dict[str, int]) -> tuple[str, str]:
    """A streamer with a few streams; (its token, the id of one stream)."""
    auth, main_url = f"http://127.0.0.1:{ports['auth']}", f"http://127.0.0.1:{ports['main']}"
    _, token = register_streamer(auth)
    stream_id = ""
    for i in range(30):
        status, stream = request("POST", f"{main_url}/api/streams", {"name": f"bench {i}"}, token)
        assert status == 201, stream
        stream_id = stream["stream_id"]
    return token, stream_id


def compare_databases(args: argparse.Namespace) -> None:
    """Parts 5-6: the same authenticated requests on PostgreSQL and on SQLite, alternately."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    admin_url = str(args.pg_url)
    database = f"sp_bench_{uuid.uuid4().hex[:12]}"
    try:
        _pg(admin_url, f'CREATE DATABASE "{database}"')
    except Exception as exc:
        print(
            "\nPostgreSQL vs SQLite: skipped, PostgreSQL at --pg-url does not answer "
            f"({type(exc).__name__}: {exc})"
        )
        return
    parts = urlsplit(admin_url)
    pg_url = urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{database}", parts.query, ""))
    tmp = Path(tempfile.mkdtemp(prefix="streamplat-bench-db-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        servers: dict[str, tuple[dict[str, int], str, str]] = {}
        for name, extra in (("sqlite", {}), ("postgresql", {"STREAMPLAT_STORAGE__DATABASE_URL": pg_url})):
            proc, ports, _ = _start_streamplat(tmp, name, extra)
            procs.append(proc)
            token, stream_id = _prepare(ports)
            servers[name] = (ports, token, stream_id)
        c, secs = args.connections, args.seconds
        print(
            f"\nPostgreSQL vs SQLite: caches off, wrk {c} connections, {secs:.0f} s per run, "
            f"best of {args.rounds}"
        )
        best: dict[tuple[str, str], WrkResult] = {}
        for round_no in range(args.rounds):
            # Alternating, so a burst of load from elsewhere on the box hits both alike.
            for name in ("sqlite", "postgresql") if round_no % 2 == 0 else ("postgresql", "sqlite"):
                ports, token, stream_id = servers[name]
                main_url = f"http://127.0.0.1:{ports['main']}"
                for what, url in (
                    ("detail", f"{main_url}/api/streams/{stream_id}"),
                    ("list", f"{main_url}/api/streams?limit=20"),
                ):
                    res = run_wrk(url, secs, c, {"Authorization": f"Bearer {token}"})
                    if (name, what) not in best or res.ok_per_second > best[name, what].ok_per_second:
                        best[name, what] = res
            print(f"  round {round_no + 1} done", flush=True)
        print()
        print(
            "| measure | SQLite 2xx/s | SQLite p99 ms | PostgreSQL 2xx/s | PostgreSQL p99 ms "
            "| PG/SQLite | goal |"
        )
        print("|---|---|---|---|---|---|---|")
        for what, label in (
            ("detail", "GET /api/streams/{id} (Bearer)"),
            ("list", "GET /api/streams?limit=20 (Bearer)"),
        ):
            lite, post = best["sqlite", what], best["postgresql", what]
            ratio = post.ok_per_second / lite.ok_per_second if lite.ok_per_second else 0.0
            print(
                f"| {label} | {lite.ok_per_second:.0f} | {lite.p99_ms:.1f} | {post.ok_per_second:.0f} | "
                f"{post.p99_ms:.1f} | {ratio:.2f} | >= {GOALS['postgres_ratio']}x |"
            )
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)
        _pg(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, then wait up to 30 s each (SIGKILL after that)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def stack_line(log: Path) -> str:
    """The event loop and HTTP parser streamplat said it uses (from its start-up log)."""
    for line in log.read_text(errors="replace").splitlines():
        if "http stack" in line:
            return line.split("http stack", 1)[1].strip()
    return "asyncio + h11 (no 'http stack' line in the log: a build from before the switch)"


def login_burst(
    tmp: Path, login_url: str, health_url: str, user: dict[str, str], logins: int, seconds: float
) -> tuple[WrkResult, WrkResult]:
    """`logins` connections logging in back to back while a monitor polls /health 50 times a second.

    The poller is paced (one kept-alive connection, a request every 20 ms) like a health checker,
    so it measures how long /health waits behind the logins without taking the cores from argon2.
    """
    script = tmp / "login.lua"
    body = json.dumps({"email": user["email"], "password": user["password"]})
    lua = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(body)}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    script.write_text("\n".join(lua) + "\n")
    login_proc = subprocess.Popen(
        wrk_args(login_url, seconds, logins, {}, script), stdout=subprocess.PIPE, text=True
    )
    time.sleep(1.0)  # let the hash queue fill before /health is measured
    health = poll(health_url, seconds - 2, interval=0.02)
    out, _ = login_proc.communicate()
    return parse_wrk(out, seconds), health


def poll(url: str, seconds: float, interval: float) -> WrkResult:
    """GET `url` every `interval` seconds on one kept-alive connection; latency percentiles."""
    import http.client
    import statistics
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    took: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            conn.request("GET", parts.path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
        took.append((time.perf_counter() - started) * 1000)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    conn.close()
    took.sort()
    return WrkResult(
        requests_per_second=len(took) / seconds,
        ok_per_second=(len(took) - errors) / seconds,
        p50_ms=statistics.median(took),
        p99_ms=took[min(len(took) - 1, int(len(took) * 0.99))],
        errors=errors,
    )


def report(r: dict[str, WrkResult], args: argparse.Namespace, hashes: dict[str, float]) -> None:
    bare = r["bare"]
    logins_share = f"{r['logins'].ok_per_second / hashes['per_second']:.2f} of argon2 alone"

    def ratios(res: WrkResult) -> tuple[str, str]:
        """(req/s ratio to bare, CPU-per-request ratio: bare's CPU per request / this one's)."""
        cpu = ""
        if res.server_cpu_us and bare.server_cpu_us:
            cpu = f"{bare.server_cpu_us / res.server_cpu_us:.2f}"
        return f"{res.requests_per_second / bare.requests_per_second:.2f}", cpu

    rows = [
        ("bare Litestar GET /", bare, ("1.00", "1.00"), ""),
        (
            "GET /api/streams/{id} (Bearer)",
            r["api"],
            ratios(r["api"]),
            f">= {GOALS['api_ratio']}x, p99 < {GOALS['api_p99_ms']:.0f} ms",
        ),
        ("GET /health (main)", r["health"], ratios(r["health"]), f">= {GOALS['health_ratio']}x"),
        (
            f"POST /auth/login x{args.logins}",
            r["logins"],
            (logins_share, ""),
            f">= {GOALS['logins_per_second']:.0f} logins/s (2xx)",
        ),
        (
            "GET /health during logins (50/s poll)",
            r["health_during_logins"],
            ("", ""),
            f"p99 < {GOALS['health_p99_during_logins_ms']:.0f} ms",
        ),
    ]
    print()
    print(
        f"argon2id alone (server's [auth] cost, {hashes['threads']:.0f} threads, own process): "
        f"{hashes['per_second']:.1f} verifications/s, the most logins/s these cores could give"
    )
    print(
        "| measure | req/s | 2xx/s | p50 ms | p99 ms | errors | server CPU us/req "
        "| ratio to bare (req/s) | ratio to bare (CPU/req) | goal |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, res, (ratio, cpu_ratio), goal in rows:
        cpu = f"{res.server_cpu_us:.0f}" if res.server_cpu_us else ""
        print(
            f"| {name} | {res.requests_per_second:.0f} | {res.ok_per_second:.1f} | {res.p50_ms:.1f} | "
            f"{res.p99_ms:.1f} | {res.errors} | {cpu} | {ratio} | {cpu_ratio} | {goal} |"
        )


if __name__ == "__main__":
    sys.exit(main())
