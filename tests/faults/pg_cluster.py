"""A PostgreSQL of the fault suite's own, on a spare port, that tests may stop and start.

The shared server (``WHATSORDER_TEST_POSTGRES_URL``) is never stopped: outage tests need a
cluster nobody else uses. ``initdb``, ``pg_ctl`` and ``postgres`` refuse to run as root, so as
root they run as the ``postgres`` user, in a temporary directory that user owns; the directory
is removed whatever happens. Missing binaries fail the test under CI and skip it elsewhere.
"""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from whatsorder.db import migrate
from whatsorder.db.seed import seed_demo

SERVICE_USER = "postgres"


def _bin_directory() -> Path | None:
    found = shutil.which("pg_config")
    if found:
        bindir = subprocess.run(
            [found, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if bindir and (Path(bindir) / "initdb").exists():
            return Path(bindir)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def require_postgres_binaries() -> Path:
    """The directory of ``initdb``/``pg_ctl``; fails under CI, skips elsewhere, when missing."""
    bindir = _bin_directory()
    if bindir is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql "
            "to run the outage tests."
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return bindir


def _as_service_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresCluster:
    """One ``initdb`` cluster on 127.0.0.1:``port``; ``stop()`` and ``start()`` make outages."""

    bindir: Path
    directory: Path
    port: int
    log_path: Path = field(init=False)
    template: str = "whatsorder_template"

    def __post_init__(self) -> None:
        self.log_path = self.directory / "server.log"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            _as_service_user([str(self.bindir / args[0]), *args[1:]]),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                + (self.log_path.read_text(errors="replace") if self.log_path.exists() else "")
            )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.directory}",
                "-c max_connections=200",
                # No fsync: a stopped or killed server loses nothing the OS already has, and
                # the suite never crashes the machine. Commits stay synchronous.
                "-c fsync=off",
                "-c full_page_writes=off",
            ]
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "start"
        )

    def stop(self, mode: str = "fast", *, wait: bool = True) -> None:
        """``fast``: sessions are ended and rolled back; ``immediate``: as if it crashed;
        ``smart``: new sessions are refused while the open ones finish."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w" if wait else "-W", "stop")

    async def until_shutting_down(self) -> None:
        """Wait (10 s at most) until new sessions are refused: "the database system is shutting
        down"."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                connection = await asyncpg.connect(self.url("postgres"), timeout=2)
            except asyncpg.CannotConnectNowError:
                return
            await connection.close()
            await asyncio.sleep(0.05)
        raise TimeoutError("the cluster never began to shut down")

    def wait_stopped(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not stop")
            time.sleep(0.05)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def new_database(self) -> str:
        """A new database copied from the migrated, seeded template; its URL."""
        name = f"whatsorder_{secrets.token_hex(5)}"
        asyncio.run(self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        return self.url(name)

    def prepare_template(self) -> None:
        asyncio.run(self.execute(f'CREATE DATABASE "{self.template}"'))
        url = self.url(self.template)
        migrate.upgrade(url)
        asyncio.run(seed_demo(url))

    async def execute(self, sql: str, database: str = "postgres") -> None:
        connection = await asyncpg.connect(self.url(database), timeout=5)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_postgres() -> Iterator[PostgresCluster]:
    """A running cluster of our own with a migrated, seeded template; removed afterwards."""
    bindir = require_postgres_binaries()
    directory = Path(tempfile.mkdtemp(prefix="whatsorder-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, SERVICE_USER, SERVICE_USER)
    cluster = PostgresCluster(bindir, directory, _free_port())
    try:
        cluster.init()
        cluster.start()
        cluster.prepare_template()
        yield cluster
    finally:
        if cluster.running():
            try:
                cluster.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                _kill_postmaster(cluster)
        shutil.rmtree(directory, ignore_errors=True)


def _kill_postmaster(cluster: PostgresCluster) -> None:
    """Last resort when pg_ctl cannot stop it: the postmaster's pid is the file's first line."""
    try:
        pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 9)
        time.sleep(0.5)
    except (OSError, ValueError, IndexError):
        pass
