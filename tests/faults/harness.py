"""Real servers for the fault suite: ``whatsorder serve`` with kill points, or any ASGI app.

Each runs in its own process group on a free port of 127.0.0.1, with its output in a log file,
and is stopped (SIGTERM, then SIGKILL) whatever the test did.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from support import Server, free_port, server_env, stop_process_group

TESTS = Path(__file__).resolve().parent.parent


def _pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))


@contextmanager
def serving(
    command: list[str], env: dict[str, str], log_path: Path, port: int, *, start_timeout: float = 30
) -> Iterator[Server]:
    """Run ``command`` (which serves on ``port``), wait for ``/healthz``, stop it afterwards."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env={**env, "PYTHONPATH": _pythonpath()},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()[-5000:]}")
            try:
                if httpx.get(server.base_url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start in {start_timeout} s")
            time.sleep(0.1)
        yield server
    finally:
        stop_process_group(process)


@dataclass(frozen=True)
class Kills:
    """The kills the workers delivered to themselves, read from their log."""

    by_point: Counter[str]
    keys: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.by_point.values())

    @classmethod
    def read(cls, path: Path) -> Kills:
        by_point: Counter[str] = Counter()
        keys: Counter[str] = Counter()
        if path.exists():
            for line in path.read_text().splitlines():
                point, key, _pid = line.split(" ")
                by_point[point] += 1
                keys[key] += 1
        return cls(by_point, keys)


@contextmanager
def whatsorder_with_kills(
    database_url: str,
    directory: Path,
    *,
    workers: int,
    points: dict[str, float],
    once_per_key: bool = False,
    **settings: str,
) -> Iterator[tuple[Server, Path]]:
    """``whatsorder serve --workers N`` whose workers SIGKILL themselves at ``points``.

    Yields the server and the kill log (see ``faults.crash_server``).
    """
    kill_log = directory / "kills.log"
    extra = {
        "CRASH_POINTS": ",".join(f"{point}={chance}" for point, chance in points.items()),
        "CRASH_LOG": str(kill_log),
    }
    if once_per_key:
        markers = directory / "once"
        markers.mkdir(exist_ok=True)
        extra["CRASH_ONCE_DIR"] = str(markers)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "faults.crash_server",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-format",
        "json",
    ]
    env = server_env(database_url, **provider_secrets(), **settings) | extra
    with serving(command, env, directory / "server.log", port) as server:
        yield server, kill_log


def provider_secrets() -> dict[str, str]:
    from support import RAZORPAY_SECRET, STRIPE_SECRET

    return {
        "WHATSORDER_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "WHATSORDER_RAZORPAY_WEBHOOK_SECRET": RAZORPAY_SECRET,
        "WHATSORDER_CLEANUP_SCHEDULE": "",
    }
