"""The machine the figures came from: CPU, cores, memory, OS and the versions that matter."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench import harness


def describe() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(_memory_bytes() / 2**30, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": _first_line(["psql", harness.PG_ADMIN_URL, "-X", "-A", "-t", "-c",
                                   "SHOW server_version"]),
        "redis": _redis_version(),
        "wrk": _first_line(["wrk", "--version"]).split(" [")[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _os_name() -> str:
    try:
        release = platform.freedesktop_os_release()
        return str(release.get("PRETTY_NAME", platform.platform()))
    except OSError:
        return platform.platform()


def _first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _redis_version() -> str:
    try:
        return str(harness.redis_client().info("server")["redis_version"])
    except Exception:  # unreachable Redis: say so in the table rather than fail the run
        return "unreachable"
