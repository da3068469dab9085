"""The data-directory lock: one holder at a time, released by the OS when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.support.media import wait_for

from streamplat import datadir


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with datadir.exclusive(tmp_path, "serve"):
        with pytest.raises(datadir.DataDirInUse) as refused, datadir.exclusive(tmp_path, "serve"):
            pass
        assert f"pid={os.getpid()} command=serve" in str(refused.value)
        with datadir.try_lock(tmp_path, "create-admin") as alone:
            assert alone is False
    with datadir.try_lock(tmp_path, "create-admin") as alone:
        assert alone is True


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from streamplat import datadir
                with datadir.exclusive(Path({str(tmp_path)!r}), "serve"):
                    print("locked", flush=True)
                    time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with (
            pytest.raises(datadir.DataDirInUse, match=f"pid={holder.pid}"),
            datadir.exclusive(tmp_path, "serve"),
        ):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()

        def free() -> bool:
            with datadir.try_lock(tmp_path, "serve") as alone:
                return alone

        wait_for(free, 5, message="the kernel to drop a dead holder's lock")
    finally:
        holder.kill()
        holder.wait()
