"""The node registry: which `streamplat serve` processes share the database, and which is alive.

Every node has a row in `nodes` (its id, public host, Stream App URL) and writes a heartbeat
into it every `cluster.heartbeat_seconds`, in the database's clock, so the nodes' own clocks
never get compared with one another. Every heartbeat also reads the other rows and the live
streams' `node_id`s into memory: `stream_owner()` answers from there, without a query (edge
routing of /hls/ calls it per request). Stream events (local and, with Redis, remote) refresh
the one stream they name sooner than the next heartbeat would.

A node whose heartbeat is older than `cluster.node_timeout_seconds` is lost. Exactly one
survivor claims it: `UPDATE nodes SET claimed_by = me WHERE node_id = X AND claimed_by IS NULL
AND heartbeat_at < cutoff` matches one row for one claimant only (PostgreSQL holds the row lock
until the claimant commits, then the second claimant's WHERE no longer matches). The claim and
the stop of the lost node's streams (`recover`, from the stream service) share that transaction:
a claimant that dies half-way leaves neither. A node that left cleanly (`left_at`) is never
claimed: it stopped its own streams on the way out.

A node restarted with the same node_id takes its row back (claimed or not). Two processes with
one node_id alive at once, another JWT secret than the alive nodes', a database schema newer
than this code or a clock off from the database's are refused at start (`ClusterMismatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import String, Text, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from streamplat import __version__
from streamplat.db import Base, UTCDateTime, schema_revisions, session_factory, utcnow
from streamplat.events import EventBus, StreamChanged, StreamStatusChanged
from streamplat.streams.models import LIVE_STATUSES, Stream
from streamplat.streams.schemas import FORWARDED_HEADER, INTERNAL_TOKEN_HEADER

log = logging.getLogger(__name__)

NODE_ID_FILE = "node_id"
NODES_REVISION = "0006"  # the schema revision (prefix) that made the nodes table
# A forwarded stop waits for the owner's FFmpeg to finalise (up to ingest.stop_timeout_seconds).
FORWARD_TIMEOUT_SECONDS = 30.0
# Rows of nodes that left or were lost this long ago are deleted (ids generated per start, e.g.
# in containers without a kept data directory, would otherwise pile up); checked hourly.
NODE_ROW_KEEP = dt.timedelta(days=7)
PRUNE_EVERY_SECONDS = 3600.0
STATUS_TIMEOUT_SECONDS = 2.0  # a status poll answered from the database rather than waiting longer


class Node(Base):
    __tablename__ = "nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_host: Mapped[str] = mapped_column(String(255))
    stream_url: Mapped[str] = mapped_column(String(255))
    instance: Mapped[str] = mapped_column(Text)
    incarnation: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(32))
    schema_revision: Mapped[str] = mapped_column(String(64))
    secret_fingerprint: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    left_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Another node as this one reaches it."""

    node_id: str
    stream_url: str  # base URL of its Stream App, e.g. http://10.0.0.5:9090
    public_host: str


class ClusterMismatch(Exception):
    """This node must not join the nodes sharing the database; the message names the difference."""


class OwnerUnreachable(Exception):
    """The node ingesting a stream did not answer a forwarded command (the message says which)."""


# The stream service's part of a claim: stop the lost node's live streams in `session` (the
# claim's transaction) and return what to announce once it is committed.
Recover = Callable[[AsyncSession, str, str], Awaitable[Callable[[], Awaitable[None]]]]


# --- identity and secrets ------------------------------------------------------------------

_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")


def known_node_id(configured: str, data_dir: Path) -> str:
    """`configured` if set, else the id kept in `<data_dir>/node_id`, else "" (writes nothing)."""
    if configured:
        return configured
    with contextlib.suppress(FileNotFoundError):
        return (data_dir / NODE_ID_FILE).read_text(encoding="utf-8").strip()
    return ""


def load_or_create_node_id(configured: str, data_dir: Path) -> str:
    """`configured` if set, else the id kept in `<data_dir>/node_id` (written once: host name + random)."""
    kept = known_node_id(configured, data_dir)
    if kept:
        return kept
    path = data_dir / NODE_ID_FILE
    host = _NOT_ID.sub("-", socket.gethostname()).strip("-._")[:40] or "node"
    node_id = f"{host}-{secrets.token_hex(4)}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n", encoding="utf-8")
    tmp.replace(path)
    return node_id


def _derived(secret: str | bytes, purpose: bytes) -> str:
    """HMAC-SHA256 of `purpose` under the JWT secret (hex): one value per purpose, and useless
    for recovering the secret."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, purpose, hashlib.sha256).hexdigest()


def secret_fingerprint(secret: str | bytes) -> str:
    """Equal for equal secrets (what the nodes table stores to compare nodes' secrets)."""
    return _derived(secret, b"streamplat cluster fingerprint v1")[:32]


def internal_token(secret: str | bytes) -> str:
    """The token nodes send each other on internal calls, derived from the shared JWT secret."""
    return _derived(secret, b"streamplat internal call v1")


def stream_url_of(internal_stream_url: str, public_host: str, stream_port: int) -> str:
    """This node's Stream App base URL for other nodes (cluster.internal_stream_url or the default)."""
    if internal_stream_url:
        return internal_stream_url.rstrip("/")
    host = f"[{public_host}]" if ":" in public_host else public_host
    return f"http://{host}:{stream_port}"


async def db_clock(session: AsyncSession) -> dt.datetime:
    """The database's current time (PostgreSQL's clock; SQLite lives on this machine: ours)."""
    if session.get_bind().dialect.name == "postgresql":
        value = await session.scalar(text("SELECT clock_timestamp()"))
        assert isinstance(value, dt.datetime)
        return value.astimezone(dt.UTC)
    return utcnow()


def has_nodes_table(revision: str | None) -> bool:
    """Whether a database at schema `revision` has the nodes table."""
    return revision is not None and revision >= NODES_REVISION


@dataclass(frozen=True, slots=True)
class NodeState:
    """One row of `streamplat nodes`."""

    node_id: str
    state: str  # alive, left, lost (claimed by <node>), silent (not claimed yet)
    public_host: str
    stream_url: str
    version: str
    heartbeat_age_seconds: float
    live_streams: int


async def list_nodes(sessions: async_sessionmaker[AsyncSession], timeout_seconds: float) -> list[NodeState]:
    """Every registered node and what the others make of it (reads only: safe beside servers)."""
    async with sessions() as session:
        now = await db_clock(session)
        rows = (await session.scalars(select(Node).order_by(Node.node_id))).all()
        result = await session.execute(
            select(Stream.node_id, func.count(Stream.id))
            .where(Stream.status.in_(LIVE_STATUSES))
            .group_by(Stream.node_id)
        )
        # Not dict(result): a Result has keys() (its column names), so dict() would index it.
        counts = {node_id: count for node_id, count in result}
    states = []
    for row in rows:
        age = (now - row.heartbeat_at).total_seconds()
        if row.left_at is not None:
            state = "left"
        elif row.claimed_by is not None:
            state = f"lost (claimed by {row.claimed_by})"
        elif age > timeout_seconds:
            state = "silent"
        else:
            state = "alive"
        states.append(
            NodeState(
                row.node_id,
                state,
                row.public_host,
                row.stream_url,
                row.version,
                age,
                counts.get(row.node_id, 0),
            )
        )
    return states


class MigrationBlocked(ClusterMismatch):
    """Other nodes still run on the database a migration would change under them."""


async def refuse_migration_beside_nodes(
    engine: AsyncEngine, *, own_node_id: str, timeout_seconds: float
) -> None:
    """Before migrating a shared database: raise MigrationBlocked if another node is alive on it.

    A node keeps running its own code against the tables it started with; a newer node's
    migration would change them behind its back. Nothing to check when the schema is up to date
    (no migration) or older than the nodes table. Reads only the columns 0006 made, so an older
    schema never fails the check itself.
    """
    current, head = await schema_revisions(engine)
    # Revisions are numbered (0006_nodes): nothing to migrate when the database is at or past this
    # code's head (past it, migrate() refuses with SchemaNewer), no nodes table before 0006.
    if current is None or head is None or current[:4] >= head[:4] or not has_nodes_table(current):
        return
    async with session_factory(engine)() as session:
        now = await db_clock(session)
        rows = (
            await session.execute(
                text(
                    "SELECT node_id, heartbeat_at FROM nodes WHERE left_at IS NULL AND claimed_by IS NULL"
                ).columns(node_id=String(), heartbeat_at=UTCDateTime())
            )
        ).all()
    alive = sorted(
        node_id
        for node_id, beat in rows
        if node_id != own_node_id and (now - beat).total_seconds() <= timeout_seconds
    )
    if alive:
        raise MigrationBlocked(
            f"the database schema is at revision {current} but this streamplat needs {head}, and "
            f"{len(alive)} other node(s) still run on it: {', '.join(alive)}. Migrating would change "
            "their tables under them: stop them (`streamplat nodes` lists them), start this node "
            "(it migrates), then start them again with this version"
        )


# --- the registry --------------------------------------------------------------------------


class NodeRegistry:
    """This node's row, its heartbeat, the other nodes and which node ingests each live stream.

    Enter it (async with) to join (refused with ClusterMismatch), run the heartbeat loop, and
    leave cleanly on exit. Set `recover` (the stream service's) before dead nodes may be claimed.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        node_id: str,
        public_host: str,
        stream_url: str,
        instance: str,
        secret_fingerprint: str,
        schema_revision: str,
        heartbeat_seconds: float = 2.0,
        node_timeout_seconds: float = 10.0,
        max_clock_skew_seconds: float = 2.0,
        buses: tuple[EventBus, ...] = (),
        internal_token: str = "",
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self.node_id = node_id
        self.public_host = public_host
        self.stream_url = stream_url
        self._instance = instance
        self._incarnation = secrets.token_hex(8)
        self._usurped = False  # another process joined with this node_id (logged once)
        self._pruned_at: float | None = None
        self._fingerprint = secret_fingerprint
        self._schema_revision = schema_revision
        self.heartbeat_seconds = heartbeat_seconds
        self.timeout = dt.timedelta(seconds=node_timeout_seconds)
        self._max_skew = max_clock_skew_seconds
        self._buses = buses
        self._token = internal_token
        self._clock = clock
        self.recover: Recover | None = None
        # Called after this node finds it was declared lost while running (its streams were
        # stopped by the claimer): the stream service ends the listeners it still runs.
        self.rejoined: Callable[[], Awaitable[None]] | None = None
        # Refreshed every heartbeat; read without I/O.
        self._alive: dict[str, NodeInfo] = {}  # other nodes whose heartbeat is fresh
        self._hosts: dict[str, str] = {node_id: public_host}  # every known node's public host
        self._owners: dict[str, str] = {}  # live stream id -> ingesting node id (other nodes only)
        self._pending: set[str] = set()  # stream ids to look up again (events)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._beat_failing = False
        self.claims = 0  # lost nodes this node claimed (for tests and logs)

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> NodeRegistry:
        await self.join()
        await self.refresh()
        for bus in self._buses:
            bus.subscribe(StreamStatusChanged, self._on_stream_event)
            bus.subscribe(StreamChanged, self._on_stream_event)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="node-heartbeat"),
            asyncio.create_task(self._lookup_loop(), name="node-stream-lookups"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for bus in self._buses:
            bus.unsubscribe(StreamStatusChanged, self._on_stream_event)
            bus.unsubscribe(StreamChanged, self._on_stream_event)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Left, not lost: this node's streams were stopped by their service before this runs,
        # so nobody must claim it (and log a "node lost") once its heartbeat ages.
        try:
            async with self._sessions() as session:
                now = await db_clock(session)
                await session.execute(
                    update(Node).where(Node.node_id == self.node_id).values(left_at=now, heartbeat_at=now)
                )
                await session.commit()
        except Exception as exc:
            log.warning("node=%s could not record leaving the cluster: %s", self.node_id, exc)

    async def join(self) -> None:
        """Check this node may join (else ClusterMismatch), then write its row."""
        async with self._sessions() as session:
            before = self._clock()
            db_now = await db_clock(session)
            after = self._clock()
            skew = abs((db_now - (before + (after - before) / 2)).total_seconds())
            if skew > self._max_skew:
                raise ClusterMismatch(
                    f"this machine's clock differs from the database's by {skew:.1f} s "
                    f"(database {db_now.isoformat()}, here {after.isoformat()}); the limit is "
                    f"{self._max_skew} s (cluster.max_clock_skew_seconds): synchronise the clocks (NTP)"
                )
            rows = (await session.scalars(select(Node))).all()
            cutoff = db_now - self.timeout
            for row in rows:
                alive = row.left_at is None and row.claimed_by is None and row.heartbeat_at >= cutoff
                if row.node_id == self.node_id:
                    # Our data directory is locked by us (datadir.py): a row naming it was written by a
                    # process that is gone. Any other live holder is another machine or directory.
                    if alive and row.instance != self._instance:
                        age = (db_now - row.heartbeat_at).total_seconds()
                        raise ClusterMismatch(
                            f"another node with node_id {self.node_id!r} is alive ({row.instance}, "
                            f"heartbeat {age:.1f} s ago): give each node its own cluster.node_id "
                            "(or its own data directory)"
                        )
                elif alive and row.secret_fingerprint != self._fingerprint:
                    raise ClusterMismatch(
                        f"auth.jwt_secret differs from the one of the alive node {row.node_id!r} "
                        f"({row.public_host}): every node of a cluster needs the same secret"
                    )
            mine = await session.get(Node, self.node_id, with_for_update=True)
            if mine is None:
                mine = Node(node_id=self.node_id)
                session.add(mine)
            elif mine.claimed_by is not None:
                log.warning(
                    "node=%s takes its row back (node %s had found it lost at %s)",
                    self.node_id,
                    mine.claimed_by,
                    mine.claimed_at,
                )
            mine.public_host = self.public_host
            mine.stream_url = self.stream_url
            mine.instance = self._instance
            mine.incarnation = self._incarnation
            mine.version = __version__
            mine.schema_revision = self._schema_revision
            mine.secret_fingerprint = self._fingerprint
            mine.started_at = db_now
            mine.heartbeat_at = db_now
            mine.left_at = None
            mine.claimed_by = None
            mine.claimed_at = None
            await session.commit()
        log.info(
            "node=%s joined: public_host=%s stream_url=%s heartbeat=%ss timeout=%ss",
            self.node_id,
            self.public_host,
            self.stream_url,
            self.heartbeat_seconds,
            self.timeout.total_seconds(),
        )

    # --- what other parts ask ---------------------------------------------------------------

    def stream_owner(self, stream_id: str) -> NodeInfo | None:
        """The alive other node ingesting the live stream; None if this node does, nobody does,
        or the stream is unknown. From memory: no I/O."""
        owner = self._owners.get(stream_id)
        return None if owner is None else self._alive.get(owner)

    def public_host_of(self, node_id: str | None) -> str:
        """The public host of `node_id` (this node's when unknown or None: legacy rows)."""
        if node_id is None:
            return self.public_host
        return self._hosts.get(node_id, self.public_host)

    def alone(self) -> bool:
        """Whether no other node is alive (legacy streams without a node_id are then this node's)."""
        return not self._alive

    def alive_nodes(self) -> list[NodeInfo]:
        """The other alive nodes (a copy)."""
        return list(self._alive.values())

    async def forward_stop(
        self, node_id: str, stream_id: str, reason: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Ask `node_id` to stop its ingest of the stream: its HTTP status and JSON reply.

        Raises OwnerUnreachable when it cannot be asked (not alive, no connection, no answer).
        """
        info = self._alive.get(node_id)
        if info is None:
            raise OwnerUnreachable(
                f"node {node_id!r}, which ingests this stream, is not answering its heartbeat; "
                f"another node stops the stream within {self.timeout.total_seconds():.0f} s"
            )
        request = urllib.request.Request(
            f"{info.stream_url}/internal/streams/{stream_id}/stop",
            data=json.dumps({"reason": reason}).encode(),
            method="POST",
            headers={"content-type": "application/json", INTERNAL_TOKEN_HEADER: self._token},
        )

        def call() -> tuple[int, bytes]:
            # A rare command: a blocking urllib call on a worker thread costs less than a client
            # dependency. 4xx/5xx replies are answers too (HTTPError carries them).
            try:
                with urllib.request.urlopen(request, timeout=FORWARD_TIMEOUT_SECONDS) as response:
                    return int(response.status), bytes(response.read())
            except urllib.error.HTTPError as exc:
                return int(exc.code), bytes(exc.read())

        try:
            status, payload = await asyncio.to_thread(call)
        except (OSError, ValueError) as exc:
            raise OwnerUnreachable(f"node {node_id!r} at {info.stream_url} did not answer: {exc}") from None
        try:
            reply = json.loads(payload)
        except ValueError:
            reply = None
        return status, reply if isinstance(reply, dict) else {}

    async def owner_ingest_status(self, stream_id: str) -> dict[str, Any] | None:
        """The stream's /stream/{id}/status as the alive other node ingesting it answers it; None
        when this node ingests it, nobody does, or the owner does not answer in time."""
        owner = self.stream_owner(stream_id)
        if owner is None:
            return None
        request = urllib.request.Request(
            f"{owner.stream_url}/stream/{stream_id}/status", headers={FORWARDED_HEADER: self.node_id}
        )

        def call() -> Any:
            with urllib.request.urlopen(request, timeout=STATUS_TIMEOUT_SECONDS) as response:
                return json.loads(response.read())

        try:
            reply = await asyncio.to_thread(call)
        except (OSError, ValueError) as exc:  # HTTPError (404 meanwhile), refused, timeout, bad JSON
            log.debug("stream=%s status from node %s failed: %s", stream_id, owner.node_id, exc)
            return None
        return reply if isinstance(reply, dict) else None

    def check_internal_token(self, token: str | None) -> bool:
        """Whether `token` is the cluster's internal token (constant time)."""
        return bool(token) and bool(self._token) and hmac.compare_digest(token or "", self._token)

    # --- heartbeat, refresh and claims ------------------------------------------------------

    async def beat(self) -> None:
        """Write this node's heartbeat (taking the row back if another node had claimed it)."""
        async with self._sessions() as session:
            now = await db_clock(session)
            result = await session.execute(
                update(Node)
                .where(
                    Node.node_id == self.node_id,
                    Node.claimed_by.is_(None),
                    Node.incarnation == self._incarnation,
                )
                .values(heartbeat_at=now, left_at=None)
            )
            matched = result.rowcount  # type: ignore[attr-defined]
            await session.commit()
            row = None if matched else await session.get(Node, self.node_id)
        if row is not None and row.claimed_by is None and row.incarnation != self._incarnation:
            # Another process joined with our node_id after us (same host name and data directory
            # path: a cloned machine or disk). Taking the row back would make the two fight over
            # it every heartbeat; it is the operator's to fix, and it is said loudly.
            if not self._usurped:
                log.error(
                    "node=%s is now also used by another process (%s) that joined after this one: "
                    "give each node its own cluster.node_id (or <data_dir>/node_id); this process "
                    "no longer writes the node's heartbeat",
                    self.node_id,
                    row.instance,
                )
            self._usurped = True
            return
        if not matched:
            # Claimed while this process could not reach the database (its streams are stopped
            # in the database now), or the row was deleted: join again to take it back.
            log.error(
                "node=%s had been declared lost by another node (no heartbeat for %ss); rejoining",
                self.node_id,
                self.timeout.total_seconds(),
            )
            await self.join()
            if self.rejoined is not None:
                await self.rejoined()

    async def refresh(self) -> None:
        """Read the other nodes and the live streams' owners into memory; claim lost nodes."""
        async with self._sessions() as session:
            now = await db_clock(session)
            rows = (await session.scalars(select(Node))).all()
            owners = (
                await session.execute(
                    select(Stream.id, Stream.node_id).where(
                        Stream.status.in_(LIVE_STATUSES),
                        Stream.node_id.is_not(None),
                        Stream.node_id != self.node_id,
                    )
                )
            ).all()
        cutoff = now - self.timeout
        alive: dict[str, NodeInfo] = {}
        lost: list[str] = []
        for row in rows:
            self._hosts[row.node_id] = row.public_host
            if row.node_id == self.node_id or row.left_at is not None or row.claimed_by is not None:
                continue
            if row.heartbeat_at >= cutoff:
                alive[row.node_id] = NodeInfo(row.node_id, row.stream_url, row.public_host)
            else:
                lost.append(row.node_id)
        self._alive = alive
        self._owners = {stream_id: node_id for stream_id, node_id in owners if node_id is not None}
        for node_id in lost:
            try:
                await self.claim(node_id)
            except Exception:
                # Rolled back whole (claim and stops share the transaction): the next heartbeat
                # tries again, or another survivor does.
                log.exception("node=%s claiming lost node %s failed", self.node_id, node_id)

    async def claim(self, node_id: str) -> bool:
        """Claim the lost node and stop its live streams, in one transaction; False if another
        node claimed it first, it came back, or it is not lost."""
        if self.recover is None:
            return False  # the stream service is not up yet: the next heartbeat tries again
        async with self._sessions() as session:
            now = await db_clock(session)
            row = await session.get(Node, node_id)
            silent = (now - row.heartbeat_at).total_seconds() if row is not None else 0.0
            result = await session.execute(
                update(Node)
                .where(
                    Node.node_id == node_id,
                    Node.claimed_by.is_(None),
                    Node.left_at.is_(None),
                    Node.heartbeat_at < now - self.timeout,
                )
                .values(claimed_by=self.node_id, claimed_at=now)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                await session.rollback()
                return False
            reason = f"node lost: {node_id} (no heartbeat for {silent:.0f} s; stopped by {self.node_id})"
            announce = await self.recover(session, node_id, reason)
            await session.commit()
        self.claims += 1
        self._alive.pop(node_id, None)
        self._owners = {s: n for s, n in self._owners.items() if n != node_id}
        log.warning("node=%s claimed lost node %s (%s)", self.node_id, node_id, reason)
        await announce()
        return True

    async def prune(self) -> int:
        """Delete the rows of nodes that left or were claimed over NODE_ROW_KEEP ago; how many."""
        async with self._sessions() as session:
            cutoff = await db_clock(session) - NODE_ROW_KEEP
            result = await session.execute(
                delete(Node).where(or_(Node.left_at < cutoff, Node.claimed_at < cutoff))
            )
            await session.commit()
        count = int(result.rowcount)  # type: ignore[attr-defined]
        if count:
            log.info("node=%s forgot %d node(s) gone for over %s", self.node_id, count, NODE_ROW_KEEP)
        return count

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                await self.beat()
                await self.refresh()
                now = time.monotonic()
                if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_SECONDS:
                    self._pruned_at = now
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is down or busy: others may find this node lost if it lasts;
                # beat() takes the row back once it answers again.
                if not self._beat_failing:
                    log.warning("node=%s heartbeat failed: %s: %s", self.node_id, type(exc).__name__, exc)
                self._beat_failing = True
            else:
                if self._beat_failing:
                    log.info("node=%s heartbeat written again", self.node_id)
                self._beat_failing = False

    def _on_stream_event(self, event: StreamStatusChanged | StreamChanged) -> None:
        if isinstance(event, StreamStatusChanged) and event.status not in LIVE_STATUSES:
            self._owners.pop(event.stream_id, None)
            return
        self._pending.add(event.stream_id)
        self._wake.set()

    async def _lookup_loop(self) -> None:
        # One query per batch of stream events, off the publisher's path.
        while True:
            await self._wake.wait()
            self._wake.clear()
            ids, self._pending = self._pending, set()
            if not ids:
                continue
            try:
                async with self._sessions() as session:
                    rows = (
                        await session.execute(
                            select(Stream.id, Stream.node_id, Stream.status).where(Stream.id.in_(ids))
                        )
                    ).all()
            except Exception as exc:
                log.debug("node=%s owner lookup failed (the next heartbeat retries): %s", self.node_id, exc)
                continue
            found = {stream_id: (node_id, status) for stream_id, node_id, status in rows}
            for stream_id in ids:
                node_id, status = found.get(stream_id, (None, None))
                if node_id is not None and node_id != self.node_id and status in LIVE_STATUSES:
                    self._owners[stream_id] = node_id
                else:
                    self._owners.pop(stream_id, None)


class NodesCollector:
    """Prometheus series of the registry (registered on the platform's registry).

    streamplat_cluster_nodes_alive        gauge, the nodes this one sees alive (itself included)
    streamplat_cluster_claims_total       counter, lost nodes this node claimed
    """

    def __init__(self, registry: NodeRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        r = self._registry
        yield GaugeMetricFamily(
            "streamplat_cluster_nodes_alive",
            "Nodes this node sees alive (itself included), as of its last heartbeat.",
            value=1 + len(r.alive_nodes()),
        )
        yield CounterMetricFamily(
            "streamplat_cluster_claims",
            "Lost nodes this node claimed (and whose live streams it stopped).",
            value=r.claims,
        )


__all__ = [
    "NODES_REVISION",
    "ClusterMismatch",
    "MigrationBlocked",
    "Node",
    "NodeInfo",
    "NodeRegistry",
    "NodeState",
    "NodesCollector",
    "OwnerUnreachable",
    "db_clock",
    "has_nodes_table",
    "internal_token",
    "known_node_id",
    "list_nodes",
    "load_or_create_node_id",
    "refuse_migration_beside_nodes",
    "secret_fingerprint",
    "stream_url_of",
]
