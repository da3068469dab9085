"""Viewer counting over a sliding window, driven by a fake clock."""

from __future__ import annotations

import pytest

from streamplat.streams.viewers import ViewerTracker, viewer_key


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fixture_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="tracker")
def fixture_tracker(clock: FakeClock) -> ViewerTracker:
    return ViewerTracker(window_seconds=30, clock=clock)


def test_distinct_clients_are_counted_once(tracker: ViewerTracker) -> None:
    for _ in range(5):  # a player fetching playlist and segments over and over
        tracker.touch("s1", "alice")
    tracker.touch("s1", "bob")
    tracker.touch("s2", "alice")
    assert tracker.count("s1") == 2
    assert tracker.count("s2") == 1
    assert tracker.count("unknown") == 0
    assert tracker.counts() == {"s1": 2, "s2": 1}


def test_clients_expire_after_window(tracker: ViewerTracker, clock: FakeClock) -> None:
    tracker.touch("s1", "alice")
    clock.now += 20
    tracker.touch("s1", "bob")
    clock.now += 9.9
    assert tracker.count("s1") == 2
    clock.now += 0.1  # alice's last fetch is now exactly one window old
    assert tracker.count("s1") == 1
    clock.now += 20
    assert tracker.count("s1") == 0
    assert tracker.counts() == {}


def test_refetch_keeps_client_counted(tracker: ViewerTracker, clock: FakeClock) -> None:
    tracker.touch("s1", "alice")
    for _ in range(10):
        clock.now += 25
        tracker.touch("s1", "alice")
        assert tracker.count("s1") == 1


def test_forget_drops_stream_to_zero(tracker: ViewerTracker) -> None:
    tracker.touch("s1", "alice")
    tracker.touch("s2", "bob")
    tracker.forget("s1")
    tracker.forget("never-seen")  # harmless
    assert tracker.count("s1") == 0
    assert tracker.counts() == {"s2": 1}


def test_memory_stays_bounded_under_many_clients(tracker: ViewerTracker, clock: FakeClock) -> None:
    # Thousands of one-off clients on an idle stream that nobody asks about, then traffic
    # on another stream only: the departed clients must not linger.
    for i in range(5000):
        tracker.touch("idle", f"client-{i}")
    for i in range(200):
        clock.now += 1
        tracker.touch("busy", f"c-{i}")
    seen = tracker._seen  # the tracker's only storage
    assert "idle" not in seen
    assert len(seen["busy"]) == 30
    assert tracker.count("busy") == 30  # one new client a second, each counted for 30 s


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ViewerTracker(window_seconds=0)


def test_viewer_key_is_stable_and_short() -> None:
    key = viewer_key("203.0.113.7", "Mozilla/5.0")
    assert key == viewer_key("203.0.113.7", "Mozilla/5.0")
    assert len(key) == 16
    assert "203.0.113.7" not in key
    assert key != viewer_key("203.0.113.7", "VLC/3.0")
    assert key != viewer_key("203.0.113.8", "Mozilla/5.0")
    assert viewer_key(None, None) == viewer_key("", "")
    # The separator keeps "a"+"bc" and "ab"+"c" apart.
    assert viewer_key("a", "bc") != viewer_key("ab", "c")
