"""A real S3 HTTP endpoint for tests and benches: moto's standalone server on a free port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.server import free_tcp_port

# moto accepts any credentials; the server and the test client sign with these.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "streamplat-test", "AWS_SECRET_ACCESS_KEY": "streamplat-test-secret"}


class MotoServer:
    """`python -m moto.server` on 127.0.0.1:<port>; stop() and start() again keep the port.

    moto keeps everything in memory: a restart starts with no buckets, like a wiped MinIO.
    """

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_tcp_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> MotoServer:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited with {self.proc.returncode}: {self.log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto did not listen on {self.port} in {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing, like MinIO)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )

    def server_env(self, bucket: str, **keys: str) -> dict[str, str]:
        """Environment that points a streamplat server at `bucket` here (plus more object_storage keys)."""
        env = {
            **CREDENTIALS,
            "STREAMPLAT_OBJECT_STORAGE__ENDPOINT_URL": self.endpoint,
            "STREAMPLAT_OBJECT_STORAGE__BUCKET": bucket,
        }
        env.update({f"STREAMPLAT_OBJECT_STORAGE__{k.upper()}": v for k, v in keys.items()})
        return env


@contextlib.contextmanager
def running_moto(log_path: Path) -> Iterator[MotoServer]:
    """A started moto server, killed when the block ends."""
    moto = MotoServer(log_path).start()
    try:
        yield moto
    finally:
        moto.stop()
