"""A deployment on this machine: nginx terminating TLS in front of whatsorder replicas.

nginx runs in the foreground as the test's child, with a prefix of its own in a temporary
directory and free ports, from ``deploy/nginx/whatsorder.conf`` itself (ports and certificate
paths replaced), so the sample the guide ships is the configuration the tests prove. Each replica
is a ``whatsorder serve`` process kept running by a supervisor thread, as systemd's
``Restart=always`` keeps a unit: a replica sent SIGTERM drains and exits, and a new process (the
"new release") starts on its port. The supervisor writes the current process id to
``replica-PORT.pid``, which is how ``deploy/rolling-restart.sh`` finds it in the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from support import server_env, whatsorder_command

REPO = Path(__file__).resolve().parents[2]
NGINX_SAMPLE = REPO / "deploy" / "nginx" / "whatsorder.conf"
ROLLING_RESTART = REPO / "deploy" / "rolling-restart.sh"
CHECK = REPO / "deploy" / "check.sh"
SAMPLE_REPLICA_PORTS = (8001, 8002, 8003)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
MAX_GENERATIONS = 10  # a replica that keeps dying is not restarted for ever


def nginx_binary() -> str:
    """nginx and the tools around it, or skip (fail under CI=true) saying how to get them."""
    # Debian puts nginx in /usr/sbin, which is not on every user's PATH.
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    missing = [
        name
        for name, found in (
            ("nginx", nginx),
            ("openssl", shutil.which("openssl")),
            ("curl", shutil.which("curl")),
        )
        if found is None
    ]
    if missing:
        message = (
            f"{', '.join(missing)} not installed: the deployment tests need them "
            "(`make test` installs nginx via scripts/system-packages.sh; "
            "or apt-get install nginx openssl curl)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    assert nginx is not None
    return nginx


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), valid for a day: the client trusts it alone."""
    certificate, key = directory / "certificate.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certificate, key


def trusting(certificate: Path) -> ssl.SSLContext:
    """A TLS context that trusts the test's self-signed certificate, and nothing else."""
    return ssl.create_default_context(cafile=str(certificate))


def site_config(listen_port: int, replica_ports: list[int], certificate: Path, key: Path) -> str:
    """``deploy/nginx/whatsorder.conf`` with this machine's ports and certificate."""
    site = NGINX_SAMPLE.read_text()
    replacements = {
        "listen 443 ssl;": f"listen 127.0.0.1:{listen_port} ssl;",
        "/etc/ssl/whatsorder/fullchain.pem": str(certificate),
        "/etc/ssl/whatsorder/privkey.pem": str(key),
    }
    replacements |= {
        f"server 127.0.0.1:{sample} ": f"server 127.0.0.1:{port} "
        for sample, port in zip(SAMPLE_REPLICA_PORTS, replica_ports, strict=True)
    }
    for old, new in replacements.items():
        # The sample changed shape: the test must follow, or it would prove something else.
        assert site.count(old) == 1, f"{old!r} is not in {NGINX_SAMPLE.name} exactly once"
        site = site.replace(old, new)
    return site


def main_config(prefix: Path) -> str:
    """The top level nginx needs around the site: foreground, and every path in ``prefix``."""
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read the temporary files
    temp_paths = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}
worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} notice;
events {{ worker_connections 512; }}
http {{
    # Which replicas answered each request: more than one address means nginx passed it on.
    log_format upstreams '$request_id $status "$upstream_addr" "$upstream_status" $request_time';
    access_log {prefix / "access.log"} upstreams;
{temp_paths}
    include {prefix / "whatsorder.conf"};
}}
"""


@dataclass
class AccessLine:
    status: int
    upstreams: list[str]
    upstream_statuses: list[str]
    seconds: float


_ACCESS = re.compile(r'^\S+ (\d+) "([^"]*)" "([^"]*)" ([\d.]+)$')


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    prefix: Path
    url: str

    def access_log(self) -> list[AccessLine]:
        lines = []
        for raw in (self.prefix / "access.log").read_text().splitlines():
            match = _ACCESS.match(raw)
            assert match is not None, raw
            lines.append(
                AccessLine(
                    int(match[1]),
                    [part.strip() for part in re.split(r",\s*|\s:\s", match[2])],
                    [part.strip() for part in re.split(r",\s*|\s:\s", match[3])],
                    float(match[4]),
                )
            )
        return lines

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def running_nginx(
    directory: Path, replica_ports: list[int], certificate: Path, key: Path, *, port: int
) -> Iterator[Nginx]:
    """nginx on ``port`` in front of the replicas until the block ends (then SIGQUIT)."""
    binary = nginx_binary()
    prefix = directory / "nginx"
    prefix.mkdir()
    (prefix / "whatsorder.conf").write_text(site_config(port, replica_ports, certificate, key))
    (prefix / "nginx.conf").write_text(main_config(prefix))
    with (prefix / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"],
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
    nginx = Nginx(process, prefix, f"https://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"nginx exited: {(prefix / 'stderr.log').read_text()}{nginx.error_log()}"
                )
            try:
                answer = httpx.get(nginx.url + "/healthz", verify=trusting(certificate), timeout=2)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"nginx did not answer:\n{nginx.error_log()}"
            time.sleep(0.1)
        yield nginx
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@dataclass(frozen=True)
class Exit:
    pid: int
    code: int
    at: float  # time.monotonic()


@dataclass
class Replica:
    """One ``whatsorder serve`` on its own port, restarted whenever it exits (until stopped)."""

    port: int
    env: dict[str, str]
    directory: Path
    pids: list[int] = field(default_factory=list)
    exits: list[Exit] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None
    _stopping: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.directory / f"replica-{self.port}.pid"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=f"replica-{self.port}")
        self._thread.start()

    def _supervise(self) -> None:
        for generation in range(MAX_GENERATIONS):
            with self._lock:
                if self._stopping:
                    return
                log = self.directory / f"replica-{self.port}.{generation}.log"
                with log.open("wb") as output:
                    process = subprocess.Popen(
                        whatsorder_command("serve", "--port", str(self.port)),
                        env=self.env,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                self._process = process
                self.pids.append(process.pid)
                temporary = self.pid_file.with_suffix(".tmp")
                temporary.write_text(f"{process.pid}\n")
                temporary.replace(self.pid_file)
            code = process.wait()  # reaped here at once: `kill -0 PID` fails as soon as it exits
            self.exits.append(Exit(process.pid, code, time.monotonic()))

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"replica {self.port} not ready:\n{self.log()}"
            time.sleep(0.1)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            process = self._process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if self._thread is not None:
            self._thread.join(timeout=35)

    def log(self, generation: int | None = None) -> str:
        """What the replica's processes wrote (one ``generation``: its n-th process)."""
        pattern = "*" if generation is None else str(generation)
        logs = sorted(self.directory.glob(f"replica-{self.port}.{pattern}.log"))
        return "".join(path.read_text(errors="replace") for path in logs)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text


def replica_env(database_url: str, public_url: str, **extra: str) -> dict[str, str]:
    """A replica as deployed: HTTPS required, the proxy trusted, a small pool each."""
    return server_env(
        database_url,
        WHATSORDER_PUBLIC_URL=public_url,
        WHATSORDER_REQUIRE_HTTPS="true",
        WHATSORDER_TRUSTED_PROXIES="127.0.0.1",
        WHATSORDER_DB_POOL_SIZE="3",
        WHATSORDER_DB_MAX_OVERFLOW="2",
        WHATSORDER_LOG_FORMAT="json",
        **extra,
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if series.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


@dataclass
class Cluster:
    """nginx at ``url`` (the public https URL providers sign) over ``replicas``."""

    url: str
    certificate: Path
    nginx: Nginx
    replicas: list[Replica]
    database_url: str
    directory: Path

    def logs(self) -> str:
        return "\n".join(
            [f"--- nginx\n{self.nginx.error_log()}"]
            + [f"--- replica {replica.port}\n{replica.log()[-4000:]}" for replica in self.replicas]
        )


# Every second, on every replica: the cleanup lock is contended all the time.
CLEANUP_EVERY_SECOND = "* * * * * *"
CLEANUP_BATCH_SIZE = 100
GRACEFUL_TIMEOUT_SECONDS = 10
