"""The bench-only venv (.venv-bench): whatsorder and the peer idempotency layers, pinned.

Created on first use and reinstalled when the pins change; the project's own .venv never gets
the peers (or matplotlib).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable

from bench import harness
from bench.contenders import PACKAGES

VENV = harness.ROOT / ".venv-bench"
PINS = harness.ROOT / "bench" / "requirements-peers.txt"
NO_DEPS = harness.ROOT / "bench" / "requirements-nodeps.txt"
ENGINE = harness.ROOT / "engine"


def ensure_venv(log: Callable[[str], None]) -> None:
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    projects = [harness.ROOT / "pyproject.toml", ENGINE / "pyproject.toml"]
    wanted = hashlib.sha256(
        PINS.read_bytes() + NO_DEPS.read_bytes() + b"".join(p.read_bytes() for p in projects)
    ).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    log("creating .venv-bench with whatsorder and the peers (once)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # The engine first, from this checkout: whatsorder depends on it and no index has it.
    subprocess.run([*pip, "-e", str(ENGINE), "-e", str(harness.ROOT), "-r", str(PINS)], check=True)
    subprocess.run([*pip, "--no-deps", "-r", str(NO_DEPS)], check=True)
    stamp.write_text(wanted)


def versions() -> dict[str, str]:
    """The installed version of each peer in .venv-bench ("not installed" when it is missing)."""
    script = (
        "import json, sys\nfrom importlib import metadata\nout = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError: out[name] = 'not installed'\n"
        "print(json.dumps(out))"
    )
    names = [*PACKAGES.values(), "fastapi", "starlette", "uvicorn", "sqlalchemy", "redis"]
    result = subprocess.run(
        [harness.server_python(), "-c", script, *names], capture_output=True, text=True, check=True
    )
    found: dict[str, str] = json.loads(result.stdout)
    return found
