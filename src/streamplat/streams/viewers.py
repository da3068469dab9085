"""Live viewer counts, inferred from HLS fetches.

HLS has no connection to count: a player just re-fetches the playlist and segments every few
seconds. A client therefore counts as a viewer for `window_seconds` after its last fetch.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

__all__ = ["ViewerCounter", "ViewerTracker", "viewer_key"]


class ViewerCounter(Protocol):
    """What StreamService needs: ViewerTracker here, SharedViewerTracker (Redis) in streamplat.cluster."""

    def touch(self, stream_id: str, client_key: str) -> None: ...
    def count(self, stream_id: str) -> int: ...
    def counts(self) -> dict[str, int]: ...
    def forget(self, stream_id: str) -> None: ...


class ViewerTracker:
    """Distinct HLS viewers per stream, counted over a sliding time window."""

    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Count a client for `window_seconds` after its last fetch; `clock` is monotonic seconds."""
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self._window = window_seconds
        self._clock = clock
        # stream id -> client key -> last fetch time, oldest first: touch() moves a client to
        # the end, so expiry only ever pops from the front and costs O(expired), not O(clients).
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._last_sweep = clock()

    def touch(self, stream_id: str, client_key: str) -> None:
        """Record that this client fetched a playlist or segment of the stream."""
        now = self._clock()
        clients = self._seen.setdefault(stream_id, OrderedDict())
        clients[client_key] = now
        clients.move_to_end(client_key)
        self._expire(stream_id, now)
        # Streams nobody asks about would otherwise keep their departed clients for ever;
        # one sweep per window bounds memory at the clients of a single window.
        if now - self._last_sweep >= self._window:
            self._expire_all(now)

    def count(self, stream_id: str) -> int:
        """Distinct clients of the stream seen within the window."""
        self._expire(stream_id, self._clock())
        clients = self._seen.get(stream_id)
        return len(clients) if clients is not None else 0

    def counts(self) -> dict[str, int]:
        """Every stream with at least one current viewer, with its count (absent means 0)."""
        self._expire_all(self._clock())
        return {stream_id: len(clients) for stream_id, clients in self._seen.items()}

    def forget(self, stream_id: str) -> None:
        """Drop the stream's viewers at once (it stopped), so it counts 0."""
        self._seen.pop(stream_id, None)

    def _expire(self, stream_id: str, now: float) -> None:
        """Remove the stream's clients not seen within the window, and the stream if none remain."""
        clients = self._seen.get(stream_id)
        if clients is None:
            return
        horizon = now - self._window
        while clients:
            oldest_key, oldest_seen = next(iter(clients.items()))
            if oldest_seen > horizon:
                break
            del clients[oldest_key]
        if not clients:
            del self._seen[stream_id]

    def _expire_all(self, now: float) -> None:
        """Expire every stream's clients."""
        for stream_id in list(self._seen):
            self._expire(stream_id, now)
        self._last_sweep = now


def viewer_key(client_host: str | None, user_agent: str | None) -> str:
    """A stable short key for a client: a hash of its address and user agent."""
    # Hashed so the tracker holds no raw addresses; the user agent tells apart viewers
    # behind one NAT. blake2b is stable across processes, unlike hash().
    raw = f"{client_host or ''}\x00{user_agent or ''}".encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()
