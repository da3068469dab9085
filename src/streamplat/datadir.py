"""One server per data directory: an OS lock on `<data_dir>/streamplat.lock`.

`streamplat serve` holds an exclusive `flock` on the file for its whole life. The kernel drops
the lock when the holder's file descriptor closes, which includes the process dying by SIGKILL,
so a crash never leaves a stale lock behind (a pid file would). The file's content (pid and
command of the holder) is only for the error message; the lock itself is the truth.

The descriptor is opened close-on-exec (Python's default), so FFmpeg children never inherit
it and cannot keep a dead server's lock alive.

Commands that may run beside a server (`create-admin`, `migrate`) use `try_lock`: when no
server holds the directory they hold it themselves for their few seconds (so no server can
start in the middle of a migration); when a server holds it they know they run beside one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "streamplat.lock"


class DataDirInUse(Exception):
    """Another streamplat process holds the data directory; the message names it."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its pid yet"


def _open(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        # Another user's server made the file: flock works on a read-only descriptor too.
        return os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def try_lock(data_dir: Path, command: str) -> Iterator[bool]:
    """Hold the data directory's lock if it is free (yields True), else yield False at once."""
    fd = _open(data_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        with contextlib.suppress(OSError):  # read-only: the message just lacks our pid
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} command={command}\n".encode(), 0)
        yield True
    finally:
        # Closing the descriptor releases the lock; the file stays (removing it would race
        # with a process that has just opened it and is about to lock it).
        os.close(fd)


@contextlib.contextmanager
def exclusive(data_dir: Path, command: str) -> Iterator[None]:
    """Hold the data directory's lock for the block; DataDirInUse if another process holds it."""
    with try_lock(data_dir, command) as locked:
        if not locked:
            raise DataDirInUse(
                f"data directory {data_dir} is in use by another streamplat ({holder(data_dir)}); "
                "only one server may run on a data directory: stop the other one, or give this one "
                "its own --data-dir"
            )
        yield


def holder(data_dir: Path) -> str:
    """Who holds (or last held) the data directory's lock, as written in the lock file."""
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "unknown process"
    try:
        return _holder(fd)
    finally:
        os.close(fd)


__all__ = ["LOCK_NAME", "DataDirInUse", "exclusive", "holder", "try_lock"]
