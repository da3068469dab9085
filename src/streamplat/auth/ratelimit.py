"""An in-memory sliding-window rate limit, for login and other abuse-prone endpoints.

In memory on purpose: streamplat runs as one process, and a limit that resets on restart
costs an attacker a restart they cannot cause.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Sliding-window request limit per key (client address), in memory."""

    def __init__(
        self, limit: int, window_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Allow `limit` requests per key in any `window_seconds`; `limit` <= 0 means unlimited."""
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        # key -> times of its allowed requests in the window, oldest first; at most `limit` long.
        self._hits: dict[str, deque[float]] = {}
        self._last_sweep = clock()

    def hit(self, key: str) -> float | None:
        """Record a request; None if allowed, else seconds until the key may try again."""
        if self.limit <= 0:
            return None
        now = self._clock()
        horizon = now - self.window
        # Keys that stopped calling would otherwise stay for ever; one sweep per window
        # bounds memory at the keys active within about two windows.
        if now - self._last_sweep >= self.window:
            self._sweep(horizon)
            self._last_sweep = now
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) >= self.limit:
            # A refused request is not recorded: a client that keeps hammering is let in again
            # once its window clears, rather than being locked out for as long as it retries.
            return hits[0] - horizon
        hits.append(now)
        return None

    async def acquire(self, key: str) -> float | None:
        """`hit`, with the interface of the shared (Redis) limiter in streamplat.cluster."""
        return self.hit(key)

    def _sweep(self, horizon: float) -> None:
        """Drop every key whose requests all fell out of the window."""
        for key in [key for key, hits in self._hits.items() if not hits or hits[-1] <= horizon]:
            del self._hits[key]
