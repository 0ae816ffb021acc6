"""An ASGI app served by uvicorn in a process of its own, for tests that kill or pause it.

``served("module:app", env)`` starts ``python -m uvicorn`` on a free port of 127.0.0.1, waits
(bounded) until ``health_path`` answers 200, and always ends the process when the block ends,
whatever happened in it. The child imports what this process can (its ``sys.path``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

HOST = "127.0.0.1"


class ServedApp:
    """One uvicorn process: its URL, its log, and the signals a test sends it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://{HOST}:{port}"
        self.log = log

    def kill(self) -> float:
        """SIGKILL, and wait until the process is gone; the moment (monotonic) it was sent."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        return sent

    def pause(self) -> float:
        """SIGSTOP: the process freezes whole, as in a long GC pause or a VM stall."""
        self.process.send_signal(signal.SIGSTOP)
        return time.monotonic()

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """End the process however it is (running, paused, gone): SIGTERM, then SIGKILL."""
        if self.process.poll() is not None:
            return
        self.resume()  # a paused process cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(
    app: str,
    env: Mapping[str, str],
    log: Path,
    *,
    health_path: str = "/health",
    startup_timeout: float = 30.0,
) -> Iterator[ServedApp]:
    """``app`` ("module:attribute") served until the block ends; ``env`` adds to os.environ."""
    for _attempt in range(3):  # another process may take the free port before uvicorn binds it
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]
        command += ["--no-access-log", "--log-level", "warning"]
        child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))}
        with log.open("ab") as output:
            process = subprocess.Popen(command, env=child_env, stdout=output, stderr=output)
        server = ServedApp(process, port, log)
        try:
            if _until_healthy(server, health_path, startup_timeout):
                yield server
                return
        finally:
            server.stop()
        if "address already in use" not in server.log_tail().lower():
            break
    raise RuntimeError(f"{app} did not start:\n{server.log_tail()}")


def _until_healthy(server: ServedApp, path: str, timeout: float) -> bool:
    """True once ``path`` answers 200; False if the process exits first. Bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            try:
                if client.get(path).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"no answer on {server.url}{path} in {timeout} s:\n{server.log_tail()}")
