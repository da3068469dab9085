"""SRT listener ports, handed out from the configured range.

Each live stream gets its own FFmpeg SRT listener, hence its own UDP port. The pool is the
one owner of which ports streamplat uses; with `probe` it also steps around ports another
process already holds, so a stream does not start a listener doomed to fail on bind.
"""

from __future__ import annotations

import socket

__all__ = ["PortPool", "PortPoolExhausted"]


class PortPoolExhausted(Exception):
    """Every port of the range is in use (by streamplat or by another process)."""


class PortPool:
    """Hands out SRT listener ports from a configured inclusive range."""

    def __init__(self, first: int, last: int, *, probe: bool = True) -> None:
        """Pool over ports `first`..`last` inclusive; `probe` skips ports bound elsewhere."""
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"invalid port range {first}-{last}: need 1 <= first <= last <= 65535")
        self.first = first
        self.last = last
        self.probe = probe
        self._used: set[int] = set()

    @property
    def size(self) -> int:
        """How many ports the range holds."""
        return self.last - self.first + 1

    def acquire(self, preferred: int | None = None) -> int:
        """Take `preferred` if it is free, else the lowest free port; raise PortPoolExhausted if none."""
        if preferred is not None and self._available(preferred):
            self._used.add(preferred)
            return preferred
        busy_elsewhere = 0
        for port in range(self.first, self.last + 1):
            if port in self._used:
                continue
            if self.probe and not _udp_port_free(port):
                # Not marked used: the other process may let go of it before the next acquire.
                busy_elsewhere += 1
                continue
            self._used.add(port)
            return port
        raise PortPoolExhausted(
            f"no free SRT port in {self.first}-{self.last}: {len(self._used)} used by streams, "
            f"{busy_elsewhere} bound by other processes; widen the port range or stop a stream"
        )

    def reserve(self, port: int) -> bool:
        """Mark `port` used (e.g. recovered at start-up); False if outside the range or already taken."""
        # No probe here: a port recovered at start-up may well be bound by our own listener.
        if not self.first <= port <= self.last or port in self._used:
            return False
        self._used.add(port)
        return True

    def release(self, port: int) -> None:
        """Give `port` back to the pool; releasing a free or foreign port does nothing."""
        self._used.discard(port)

    def in_use(self) -> set[int]:
        """The ports currently handed out (a copy)."""
        return set(self._used)

    def _available(self, port: int) -> bool:
        """Whether `port` is in the range, not handed out, and (if probing) bindable."""
        if not self.first <= port <= self.last or port in self._used:
            return False
        return not self.probe or _udp_port_free(port)


def _udp_port_free(port: int) -> bool:
    """Whether a UDP socket can bind 0.0.0.0:`port` right now (SRT runs over UDP)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # No SO_REUSEADDR: with it Linux would let us share a port another socket holds.
        sock.bind(("0.0.0.0", port))
    except OSError:
        # EADDRINUSE, but also EACCES for privileged ports: unusable either way.
        return False
    finally:
        sock.close()
    return True
