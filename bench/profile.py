"""``python -m bench.profile``: where a replay's and a first request's time goes, per store.

    python -m bench.profile --label after          every store, whatsorder and whatsorder-tx
    python -m bench.profile --db redis --contender whatsorder --label before

One uvicorn worker serves the bench endpoint while wrk drives it (replays of completed keys,
or first requests with fresh keys) and py-spy samples that worker twice in a row, once for the
flame graph and once for the collapsed stacks. Writes, per store, contender and scenario, a
flame graph (``docs/benchmarks/profiles/<store>-<contender>-<scenario>-<label>
.svg``) and the share of samples by layer (``bench/results/profile-<label>.json``), which
``bench/profile_table.py`` turns into the "where the time goes" table of docs/benchmarks.md.

One worker, not the suite's two: py-spy follows one process, and a second worker would only
split the same work. Only samples of the thread holding the GIL count (py-spy ``--gil``): a
worker serves requests as fast as its one GIL lets it, so that is where its time goes; waits
(the event loop in epoll, SQLite's or the network's time without the GIL) are left out.
``BENCH_ENGINE_SRC`` names another checkout's engine to profile (the "before" pictures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench import harness, load, peers
from bench.contenders import GROUPS, OUR_VARIANTS
from bench.context import Context, Settings
from bench.profile_table import LAYERS, layer_of

PROFILES = harness.ROOT / "docs" / "benchmarks" / "profiles"
RESULTS = harness.ROOT / "bench" / "results"
PY_SPY = peers.VENV / "bin" / "py-spy"  # pinned in bench/requirements-peers.txt
RATE = 199  # samples per second: a prime, so sampling does not beat with a periodic task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--label", required=True, help="before, after, …: names the outputs")
    parser.add_argument("--db", default="sqlite,postgres,redis")
    parser.add_argument("--contender", default=",".join(OUR_VARIANTS))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--raw-dir", type=Path, help="keep the collapsed stacks here too")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (make bench installs it)")
    peers.ensure_venv(log=print)  # the servers' interpreter, as in make bench, and py-spy
    harness.raise_open_files_limit()
    PROFILES.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{args.label}.json"
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="whatsorder-profile-") as scratch:
        ctx = Context(Settings(), Path(scratch), with_peers=False)
        for store in args.db.split(","):
            group = GROUPS[store]
            with ctx.databases(group, "profile") as (db_url, store_url):
                for contender in args.contender.split(","):
                    if contender not in group.contenders(with_peers=False):
                        continue
                    shares = _profile(ctx, contender, db_url, store_url, args, store)
                    results.setdefault(store, {})[contender] = shares
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out.relative_to(harness.ROOT)} and flame graphs in docs/benchmarks/profiles/")
    return 0


def _profile(
    ctx: Context, contender: str, db_url: str, store_url: str, args: Any, store: str
) -> dict[str, Any]:
    server = harness.Server(contender, db_url, store_url, workers=1)
    shares: dict[str, Any] = {}
    with server.running(ctx.folder):
        assert server.process is not None
        tag = f"{harness.RUN_ID}p{store[0]}{contender[-2:]}"
        keys = [f"pr{tag}-{n}" for n in range(200)]
        asyncio.run(load.complete_keys(server.port, keys))
        for scenario, mode, prefix, pool in (
            ("replay", "cycle", f"pr{tag}-", len(keys)),
            ("first", "fresh", f"pf{tag}-", 1),
        ):
            stem = f"{store}-{contender}-{scenario}-{args.label}"
            ctx.log(f"profiling {stem}")
            figures: list[load.Figures] = []
            seconds = 2 * args.seconds + 3  # the flame graph's samples, then the table's
            driver = threading.Thread(
                target=_drive, args=(figures, server.base_url, mode, prefix, pool, seconds)
            )
            driver.start()
            raw = Path(ctx.folder) / f"{stem}.txt"
            _py_spy(server.process.pid, "flamegraph", PROFILES / f"{stem}.svg", args.seconds)
            _without_machine_paths(PROFILES / f"{stem}.svg")
            _py_spy(server.process.pid, "raw", raw, args.seconds)
            driver.join()
            if args.raw_dir:
                args.raw_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, args.raw_dir / raw.name)
            shares[scenario] = {
                "requests_per_second": round(figures[0].requests / figures[0].seconds, 1),
                "p50_ms": figures[0].p50_ms,
                "layers": _layer_shares(raw),
                "hottest": _hottest_frames(raw),
            }
    return shares


def _drive(
    figures: list[load.Figures], url: str, mode: str, prefix: str, pool: int, seconds: float
) -> None:
    figures.append(load.wrk(url, mode=mode, prefix=prefix, pool=pool, seconds=seconds))


def _py_spy(pid: int, fmt: str, out: Path, seconds: float) -> None:
    """Sample ``pid`` for ``seconds`` (py-spy writes the flame graph SVG itself; ``raw`` is the
    collapsed stacks the layer table is counted from)."""
    subprocess.run(
        [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(RATE), "--duration",
         str(max(1, round(seconds))), "--format", fmt, "--output", str(out), "--nonblocking",
         "--gil"],
        check=True, capture_output=True, timeout=seconds + 60,
    )  # fmt: skip


def _without_machine_paths(svg: Path) -> None:
    """The checkout's own path in py-spy's title line, as ``.``: the graphs are committed."""
    svg.write_text(svg.read_text().replace(str(harness.ROOT), "."))


def _layer_shares(raw: Path) -> dict[str, float]:
    """Share of samples whose innermost frame of ours, a library's or the server's is in each
    layer (the leaf decides: a sample spent inside asyncpg counts for asyncpg, even when our
    code called it)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().split("\n"):  # not splitlines(): a frame may hold \x1c or \u2028
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        counts[layer_of(stack.split(";"))] += int(count)
    total = sum(counts.values()) or 1
    return {layer: round(100 * counts[layer] / total, 1) for layer in LAYERS if counts[layer]}


def _hottest_frames(raw: Path, count: int = 12) -> list[tuple[str, float]]:
    """The functions most samples were in (innermost frame), with their share, %."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().split("\n"):  # not splitlines(): a frame may hold \x1c or \u2028
        stack, _, samples = line.rpartition(" ")
        if stack:
            counts[stack.split(";")[-1]] += int(samples)
    total = sum(counts.values()) or 1
    return [(frame, round(100 * n / total, 1)) for frame, n in counts.most_common(count)]


if __name__ == "__main__":
    sys.exit(main())
