"""The SRT port pool: order, reuse, exhaustion, probing real UDP sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from streamplat.streams.portpool import PortPool, PortPoolExhausted


@pytest.fixture(name="bound_udp_port")
def fixture_bound_udp_port() -> Iterator[int]:
    """A UDP port held by a socket, as another process's SRT listener would hold it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_acquire_hands_out_lowest_first() -> None:
    pool = PortPool(10000, 10004, probe=False)
    assert [pool.acquire() for _ in range(3)] == [10000, 10001, 10002]
    assert pool.in_use() == {10000, 10001, 10002}
    assert pool.size == 5


def test_released_port_is_reused() -> None:
    pool = PortPool(10000, 10004, probe=False)
    for _ in range(3):
        pool.acquire()
    pool.release(10001)
    pool.release(10001)  # idempotent
    pool.release(9999)  # outside the range: harmless
    assert pool.in_use() == {10000, 10002}
    assert pool.acquire() == 10001
    assert pool.acquire() == 10003


def test_preferred_port_when_free() -> None:
    pool = PortPool(10000, 10004, probe=False)
    assert pool.acquire(preferred=10003) == 10003
    assert pool.acquire(preferred=10003) == 10000  # taken: falls back to the lowest
    assert pool.acquire(preferred=20000) == 10001  # outside the range: ignored


def test_exhaustion_names_the_range() -> None:
    pool = PortPool(10000, 10001, probe=False)
    pool.acquire()
    pool.acquire()
    with pytest.raises(PortPoolExhausted, match="10000-10001") as raised:
        pool.acquire()
    assert "2 used by streams" in str(raised.value)
    pool.release(10000)
    assert pool.acquire() == 10000


def test_reserve_marks_recovered_ports() -> None:
    pool = PortPool(10000, 10004, probe=False)
    assert pool.reserve(10000) is True
    assert pool.reserve(10000) is False  # already taken
    assert pool.reserve(10005) is False  # outside the range
    assert pool.reserve(9999) is False
    assert pool.acquire() == 10001
    assert pool.in_use() == {10000, 10001}


def test_in_use_is_a_copy() -> None:
    pool = PortPool(10000, 10004, probe=False)
    pool.in_use().add(10000)
    assert pool.acquire() == 10000


def test_probe_skips_port_bound_elsewhere(bound_udp_port: int) -> None:
    port = bound_udp_port
    pool = PortPool(port, min(port + 2, 65535))
    got = pool.acquire(preferred=port)
    assert got != port
    assert port < got <= port + 2
    # The busy port is not marked used: it can be had once its owner lets go.
    assert port not in pool.in_use()


def test_probe_exhaustion_counts_foreign_ports(bound_udp_port: int) -> None:
    pool = PortPool(bound_udp_port, bound_udp_port)
    with pytest.raises(PortPoolExhausted, match="1 bound by other processes"):
        pool.acquire()
    # Without probing, the pool trusts its own books only.
    assert PortPool(bound_udp_port, bound_udp_port, probe=False).acquire() == bound_udp_port


def test_probe_sees_port_bound_on_loopback_only() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        port = sock.getsockname()[1]
        with pytest.raises(PortPoolExhausted):
            PortPool(port, port).acquire()
    finally:
        sock.close()
    assert PortPool(port, port).acquire() == port  # freed: usable again


def test_reserve_does_not_probe(bound_udp_port: int) -> None:
    # At start-up the port of a recovered stream may be held by that stream's own listener.
    pool = PortPool(bound_udp_port, bound_udp_port)
    assert pool.reserve(bound_udp_port) is True


@pytest.mark.parametrize(("first", "last"), [(0, 10), (10, 9), (65535, 65536), (-1, 5)])
def test_invalid_range_rejected(first: int, last: int) -> None:
    with pytest.raises(ValueError, match="invalid port range"):
        PortPool(first, last)


def test_single_port_range() -> None:
    assert PortPool(65535, 65535, probe=False).size == 1
