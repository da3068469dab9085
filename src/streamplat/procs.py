"""Child-process plumbing shared by every domain that runs FFmpeg (ingest, vod).

Children lead their own session (so a signal reaches FFmpeg and anything it forks) and get
SIGKILL from the kernel when the server dies, even by SIGKILL, so a restart never finds its
ports or files held by orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl(), loaded in the parent: loading a library between fork and exec is unsafe."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _die_with(parent_pid: int, prctl: Callable[..., int] | None) -> None:
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork() and prctl(); then nobody would ever kill us.
    if os.getppid() != parent_pid:
        os._exit(1)


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn that has the child SIGKILLed when this process dies.

    PDEATHSIG fires when the *thread* that forked exits, so spawn from the event-loop thread
    (asyncio.create_subprocess_exec forks there), never from a worker thread.
    """
    return functools.partial(_die_with, os.getpid(), _prctl())


def signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    """Signal the child's process group (it leads its own session); already gone is fine."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
