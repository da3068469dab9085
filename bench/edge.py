"""Players through the nginx edge (deploy/nginx/streamplat.conf, 1 worker) beside the same players direct.

    .venv/bin/python bench/edge.py [--players 2000] [--ll-players 200] [--seconds 30] [--video-kbps 600]

Needs Debian's nginx-light, openssl and wrk (`apt-get install nginx-light wrk`).

One real `streamplat serve` (temporary data dir, free ports, SQLite) with one stream fed by a
realtime-paced FFmpeg publisher over SRT, and Debian's nginx running the deploy template
(tests/support/cluster.py renders it: the node as the only upstream, a self-signed certificate,
1 worker). The template's TLS server block gets one extra plain-HTTP listener, so the simulated
players (bench/llhls.py's simulator, one asyncio process, no TLS) go through exactly the same
locations, cache and headers; TLS's own cost is measured apart with wrk over HTTPS.

Measured on the same live stream, each simulation --rounds times per side, direct and through
nginx alternately (the box is shared: a round slowed by something else is not nginx's doing), the
best round of each side printed (all rounds go to --json):
  [players]   --players legacy players (playlist every TARGETDURATION + each new segment) for
              --seconds, direct to the node's Stream App, then through nginx: segment download
              p50/p99, received after first listed p50/p99, players behind, errors, CPU of the
              node, nginx's worker and the simulator.
  [ll]        --ll-players LL-HLS players (blocking reload for the next part + each new part),
              direct then through nginx: a part received after the server cut it (the part's
              `created` in /stream/{id}/status) p50/p99, and the difference nginx adds.
  [reqs]      wrk on one segment: direct, through nginx over plain HTTP and over HTTPS (cache
              hits), --connections connections for --reqs-seconds each.

Everything shares this machine's cores (the load generator too): each line prints its direct
reference from the same run and the load average. nginx's access log (with timings) gives its
own view: the time it spent on each media request and how many it answered from its cache;
TEST_EDGE_KEEP=1 keeps the temporary directory with that log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE.parent), str(ROOT), str(ROOT / "src")]

import api as api_bench  # noqa: E402  (bench/api.py: wrk)
import llhls  # noqa: E402  (bench/llhls.py: publisher, simulator, playlist parser)
from tests.support.cluster import NginxProcess, make_certificate, nginx_available  # noqa: E402

MODES = ("players", "ll", "reqs")
BEST = {"players": "download_p99", "ll": "after_created_p50"}  # which round of each side is kept
KEEP = bool(os.environ.get("TEST_EDGE_KEEP"))  # keep the temporary directory (nginx's access log)
GOALS = {"segment_p99_s": 0.5, "behind": 0, "added_latency_s": 0.2}


def log(message: str) -> None:
    llhls.log(message)


class Edge:
    """bench/llhls.py's streamplat target (a node, one stream, its publisher) with nginx in front."""

    def __init__(self, tmp: Path, kbps: int) -> None:
        self.target = llhls.StreamplatTarget(tmp, kbps, 3600)
        self.node = self.target.server
        self.sid = self.target.stream_id
        self.nginx: NginxProcess | None = None
        try:
            self.target.publish()
            cert, key = make_certificate(tmp / "tls")
            self.nginx = NginxProcess(tmp / "nginx", cert, key, plain_port=api_bench.free_port())
            # The access log (with timings) gives nginx's own view of each request.
            self.nginx.write_conf([self.node.ports], connections=16384, access_log=True)
            self.nginx.start()
        except BaseException:
            self.stop()
            raise

    def direct(self, path: str) -> str:
        return self.node.url("stream", path)

    def through(self, path: str) -> str:
        assert self.nginx is not None
        return self.nginx.plain_url(path)

    def nginx_https(self, path: str) -> str:
        assert self.nginx is not None
        return self.nginx.https_url(path)

    @property
    def playlist(self) -> str:
        return f"/hls/{self.sid}/stream.m3u8"

    @property
    def status_url(self) -> str:
        return self.direct(f"/stream/{self.sid}/status")

    def node_pid(self) -> int:
        assert self.target.server_pid is not None
        return self.target.server_pid

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        self.target.stop()  # the publisher, then the node


def wait_live(edge: Edge) -> None:
    """Until the playlist lists four segments (a full window for joining players)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = llhls.http_get(edge.direct(edge.playlist))
        if status == 200 and len(llhls.parse_playlist(body.decode(errors="replace")).segments) >= 4:
            return
        time.sleep(0.5)
    sys.exit("the stream did not go live")


def simulate(edge: Edge, url: str, players: int, seconds: float, ll: bool, via_nginx: bool) -> dict[str, Any]:
    """bench/llhls.py's simulator against `url`, with the CPU of the node and of nginx's worker."""
    assert edge.nginx is not None
    worker = edge.nginx.worker_pid()
    pids = {"node": edge.node_pid(), "nginx": worker if via_nginx else None}
    before = {k: llhls.cpu_seconds(p) for k, p in pids.items() if p}
    access_log = edge.nginx.tmp / "access.log"
    offset = access_log.stat().st_size if access_log.exists() else 0
    started = time.monotonic()
    result = llhls.run_simulator(url, players, seconds, ll, None, edge.status_url if ll else None)
    wall = time.monotonic() - started
    for k, p in pids.items():
        if p and k in before:
            with contextlib.suppress(OSError):
                result[f"{k}_cpu"] = (llhls.cpu_seconds(p) - before[k]) / wall
    result["load"] = os.getloadavg()[0]
    if via_nginx:
        time.sleep(1.0)  # nginx writes its log buffer out
        with access_log.open("rb") as f:
            f.seek(offset)
            result.update(nginx_view(f.read().decode(errors="replace"), "part_" if ll else "seg_"))
    return result


def nginx_view(log_text: str, media: str) -> dict[str, Any]:
    """From nginx's access log (tests/support/cluster.py's `timed` format): its own request time
    for the media requests (request read -> response written, without the client's scheduling)
    and the share it answered from its cache."""
    times, hits = [], 0
    for line in log_text.splitlines():
        fields = line.split(" ", 8)
        if len(fields) == 9 and f"/{media}" in fields[8]:
            times.append(float(fields[1]))
            hits += fields[5] == "HIT"
    return {
        "nginx_time_p50": llhls._pct(times, 0.5),
        "nginx_time_p99": llhls._pct(times, 0.99),
        "nginx_hit_share": hits / len(times) if times else None,
    }


def best(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round with the lowest `key` (others were slowed by whatever else ran), with how many."""
    done = [r for r in runs if r.get(key) is not None]
    if not done:
        return runs[-1]
    return {**min(done, key=lambda r: r[key]), "of_rounds": len(runs)}


def segment_url(edge: Edge) -> str:
    status, body = llhls.http_get(edge.direct(edge.playlist))
    assert status == 200
    media = llhls.parse_playlist(body.decode(errors="replace"))
    return f"/hls/{edge.sid}/{media.segments[-2][1]}"


def reqs(edge: Edge, seconds: float, connections: int) -> dict[str, Any]:
    """wrk on one segment: direct, nginx plain HTTP, nginx HTTPS (after one request warms the cache)."""
    path = segment_url(edge)
    out: dict[str, Any] = {}
    for name, url in (
        ("direct", edge.direct(path)),
        ("nginx http", edge.through(path)),
        ("nginx https", edge.nginx_https(path)),
    ):
        llhls.http_get(edge.through(path))
        result = api_bench.run_wrk(url, seconds, connections)
        out[name] = {**vars(result), "load": os.getloadavg()[0]}
        log(f"  {name}: {result.requests_per_second:.0f} req/s, p99 {result.p99_ms:.1f} ms")
    _, body = llhls.http_get(edge.through(path))
    out["bytes"] = len(body)
    return out


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else f"{value:{spec}}"


def diff(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a - b:+.3f}"


def row(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


def pct(result: dict[str, Any], key: str) -> str:
    return fmt(result.get(key), ".0%")


# What each simulation prints: (title, players argument, rows of (what, result key, goal)).
SECTIONS: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "players": (
        "legacy players",
        "players",
        [
            ("segment download p50 (s)", "download_p50", ""),
            ("segment download p99 (s)", "download_p99", f"< {GOALS['segment_p99_s']} s"),
            ("segment received after first listed p50 (s)", "delay_p50", ""),
            ("segment received after first listed p99 (s)", "delay_p99", ""),
        ],
    ),
    "ll": (
        "LL-HLS players",
        "ll_players",
        [
            ("part cut -> delivered p50 (s)", "after_created_p50", f"<= +{GOALS['added_latency_s']} s"),
            ("part cut -> delivered p99 (s)", "after_created_p99", ""),
            ("part download p99 (s)", "download_p99", ""),
        ],
    ),
}


def report_simulation(
    label: str, n: dict[str, Any], d: dict[str, Any], rows: list[tuple[str, str, str]]
) -> None:
    """The rows of one simulation: through nginx, direct, the difference."""
    if "missing" in n or "missing" in d:
        row(label, n.get("missing", ""), d.get("missing", ""), "", "")
        return
    for what, key, goal in rows:
        row(f"{label}: {what}", fmt(n.get(key)), fmt(d.get(key)), diff(n.get(key), d.get(key)), goal)
    row(
        f"{label}: requests / players behind / errors",
        f"{n['requests']} / {n['behind']} / {n['errors']}",
        f"{d['requests']} / {d['behind']} / {d['errors']}",
        "",
        "0 behind",
    )
    row(
        f"{label}: CPU (share of one core) node / nginx worker / simulator",
        f"{pct(n, 'node_cpu')} / {pct(n, 'nginx_cpu')} / {pct(n, 'simulator_cpu')}",
        f"{pct(d, 'node_cpu')} / - / {pct(d, 'simulator_cpu')}",
        "",
        "",
    )
    row(
        f"{label}: nginx's own time per media request p50 / p99 (its log); answered from its cache",
        f"{fmt(n.get('nginx_time_p50'))} / {fmt(n.get('nginx_time_p99'))} s; {pct(n, 'nginx_hit_share')}",
        "",
        "",
        "",
    )
    row(f"{label}: load average at the end", f"{n['load']:.2f}", f"{d['load']:.2f}", "", "")


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    print(f"\n# Edge bench, {when}; {os.cpu_count()} cores; nginx 1 worker; load average now {load:.2f}")
    print(f"publisher: 640x360 30 fps x264 {args.video_kbps} kbps + AAC, GOP 1 s; one stream")
    print(
        f"each simulation run {args.rounds} times per side, alternately; the best round of each side shown\n"
    )
    row("measure", "through nginx", "direct", "nginx - direct", "goal")
    row("---", "---", "---", "---", "---")
    for mode, (title, count, rows) in SECTIONS.items():
        if mode in results:
            label = f"{getattr(args, count)} {title}, {args.seconds:g} s"
            report_simulation(label, results[mode]["nginx"], results[mode]["direct"], rows)
    r = results.get("reqs")
    if r:
        base = r["direct"]
        for name in ("nginx http", "nginx https"):
            x = r[name]
            row(
                f"one {r['bytes']} B segment, wrk {args.connections} conn.: {name} req/s (p99 ms)",
                f"{x['requests_per_second']:.0f} ({x['p99_ms']:.1f})",
                f"{base['requests_per_second']:.0f} ({base['p99_ms']:.1f})",
                f"x{x['requests_per_second'] / base['requests_per_second']:.2f}",
                "",
            )
    # The simulator's measures are bench/llhls.py's; "part cut -> delivered" is its "after the
    # server cut it": what nginx adds to a viewer's latency.
    print(
        "\nMeasures as in bench/llhls.py (its --help); the simulator shares the cores with nginx, the node."
    )


# Numeric options: (flag, type, default, help).
OPTIONS: list[tuple[str, type, float, str]] = [
    ("--players", int, 2000, "simulated legacy players"),
    ("--ll-players", int, 200, "simulated LL-HLS players"),
    ("--seconds", float, 30.0, "length of each simulation"),
    ("--rounds", int, 2, "runs of each simulation per side, alternately; the best is kept"),
    ("--video-kbps", int, 600, "publisher video bitrate"),
    ("--reqs-seconds", float, 5.0, "length of each wrk run"),
    ("--connections", int, 64, "wrk connections"),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}"
    )
    for flag, kind, default, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=kind(default), help=f"{text} (default {default:g})")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()
    modes = {m.strip() for m in args.only.split(",") if m.strip()}
    if unknown := modes - set(MODES):
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    if missing := nginx_available():
        print(f"bench/edge.py needs: {missing}", file=sys.stderr)
        return 2
    if "reqs" in modes and shutil.which("wrk") is None:
        print("bench/edge.py [reqs] needs: apt-get install -y wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="streamplat-bench-edge-"))
    results: dict[str, Any] = {}
    edge: Edge | None = None
    try:
        edge = Edge(tmp, args.video_kbps)
        wait_live(edge)
        for mode, ll, count in (("players", False, args.players), ("ll", True, args.ll_players)):
            if mode not in modes:
                continue
            rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "nginx": []}
            for i in range(args.rounds):  # alternately, so both sides see the same kind of load
                for where, url in (
                    ("direct", edge.direct(edge.playlist)),
                    ("nginx", edge.through(edge.playlist)),
                ):
                    what = "LL-HLS" if ll else "legacy"
                    log(f"round {i + 1}: {count} {what} players {where} for {args.seconds:g} s")
                    rounds[where].append(simulate(edge, url, count, args.seconds, ll, where == "nginx"))
                    summary = {k: v for k, v in rounds[where][-1].items() if not isinstance(v, list)}
                    log(f"  {json.dumps(summary)}")
            results[mode] = {where: best(runs, BEST[mode]) for where, runs in rounds.items()}
            results[mode]["rounds"] = rounds
        if "reqs" in modes:
            log("wrk on one segment")
            results["reqs"] = reqs(edge, args.reqs_seconds, args.connections)
        report(results, args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if edge is not None:
            edge.stop()
        if not KEEP:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp} (nginx access log with timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
