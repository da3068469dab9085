"""The node registry's costs on PostgreSQL: a heartbeat, stream_owner(), and finding a lost node.

    .venv/bin/python bench/nodes.py [--streams 1000] [--rounds 50]

Makes a throwaway PostgreSQL database (TEST_PG_URL, as the tests; dropped at the end), two
registries (node-a, node-b) and --streams live streams ingested by node-a. Prints p50/p99 of:
  heartbeat   one beat() + refresh() of node-b (an UPDATE, the nodes rows, every live stream's
              owner), next to `SELECT 1` on the same pool: the reference round trip
  owner       stream_owner() per call (the /hls/ hot path), next to a bare dict.get()
  detection   node-a stops beating (what SIGKILL leaves); time until node-b's own heartbeat loop
              has claimed it and stopped its streams, next to node_timeout_seconds (the floor)
Everything shares this machine's cores; the references are measured in the same run. The load
average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

HEARTBEAT = 0.5
TIMEOUT = 3.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run(url: str, n_streams: int, rounds: int) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession
    from tests.support.nodes import stream_row

    from streamplat.auth import User
    from streamplat.db import create_engine, migrate, session_factory
    from streamplat.nodes import NodeRegistry, secret_fingerprint
    from streamplat.streams.models import ACTIVE

    engine_a, engine_b = create_engine(url), create_engine(url)
    await migrate(engine_a)

    def registry(engine: object, node_id: str) -> NodeRegistry:
        return NodeRegistry(
            session_factory(engine),  # type: ignore[arg-type]
            node_id=node_id,
            public_host=f"{node_id}.example.net",
            stream_url=f"http://{node_id}:9090",
            instance=f"bench:{node_id}",
            secret_fingerprint=secret_fingerprint("b" * 48),
            schema_revision="bench",
            heartbeat_seconds=HEARTBEAT,
            node_timeout_seconds=TIMEOUT,
        )

    a, b = registry(engine_a, "node-a"), registry(engine_b, "node-b")
    await a.join()
    sessions = session_factory(engine_a)
    async with sessions() as session:
        user = User(username="bench", email="bench@example.com", password_hash="x", role="streamer")
        session.add(user)
        await session.flush()
        rows = [stream_row(user.id, "node-a", ACTIVE, title="s") for _ in range(n_streams)]
        session.add_all(rows)
        await session.commit()
    ids = [row.id for row in rows]

    ended: list[float] = []
    claimed = asyncio.Event()

    async def recover(session: AsyncSession, node_id: str, reason: str):  # type: ignore[no-untyped-def]
        await session.execute(
            text("UPDATE streams SET status = 'stopped', status_reason = :r WHERE node_id = :n"),
            {"r": reason, "n": node_id},
        )

        async def announce() -> None:
            ended.append(time.monotonic())
            claimed.set()

        return announce

    async with b:
        beats, selects = [], []
        b_sessions = session_factory(engine_b)
        for _ in range(rounds):
            await a.beat()
            t0 = time.perf_counter()
            await b.beat()
            await b.refresh()
            beats.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            async with b_sessions() as s:
                await s.execute(text("SELECT 1"))
            selects.append((time.perf_counter() - t0) * 1000)
        assert b.stream_owner(ids[0]) is not None
        owner_ns = (
            min(timeit.repeat(lambda: b.stream_owner(ids[7]), number=100_000, repeat=5)) / 100_000 * 1e9
        )
        plain = {sid: "node-a" for sid in ids}
        dict_ns = min(timeit.repeat(lambda: plain.get(ids[7]), number=100_000, repeat=5)) / 100_000 * 1e9

        b.recover = recover
        await a.beat()
        last_beat = time.monotonic()
        await asyncio.wait_for(claimed.wait(), TIMEOUT * 5)
        detection = ended[0] - last_beat if ended else float("nan")

    await engine_a.dispose()
    await engine_b.dispose()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {n_streams} live streams on node-a")
    print(f"{'measure':<12}{'p50':>10}{'p99':>10}   reference (same run)          ratio p50")
    b50, s50 = statistics.median(beats), statistics.median(selects)
    print(
        f"{'heartbeat':<12}{b50:>8.2f}ms{percentile(beats, 99):>8.2f}ms   SELECT 1 p50 {s50:.2f} ms"
        f"{'':>10}{b50 / s50:>6.1f}x"
    )
    print(
        f"{'owner':<12}{owner_ns:>8.0f}ns{'':>10}   dict.get {dict_ns:.0f} ns"
        f"{'':>15}{owner_ns / dict_ns:>6.1f}x"
    )
    print(
        f"{'detection':<12}{detection:>9.2f}s{'':>10}   node_timeout_seconds {TIMEOUT:.1f} s"
        f"{'':>8}{detection / TIMEOUT:>6.2f}x (heartbeat {HEARTBEAT} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    from tests.support import pg

    reason = pg.unavailable_reason()
    if reason is not None:
        sys.exit(reason)
    name, url = pg.create_database()
    try:
        asyncio.run(run(url, args.streams, args.rounds))
    finally:
        pg.drop_database(name)


if __name__ == "__main__":
    main()
