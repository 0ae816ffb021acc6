"""A ``redis-server`` of the fault suite's own on a spare port, to stop and start at will.

The shared Redis on 6379 is never touched. The append-only file is synced at every write, as a
deployment that keeps idempotency records in Redis would run it, so a stop and a start keep
every record. Missing ``redis-server`` fails the test under CI and skips it elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class RedisServer:
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.directory),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.directory / "redis.log").read_text(errors="replace"))
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM: Redis finishes its append-only file and exits; clients are cut off."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_redis() -> Iterator[RedisServer]:
    """A running ``redis-server`` of our own; stopped and its files removed afterwards."""
    if shutil.which("redis-server") is None:
        message = "redis-server not found: install redis-server to run the Redis outage tests."
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(Path(tempfile.mkdtemp(prefix="whatsorder-redis-")), _free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
