"""``python -m bench``: the benchmark suite (``make bench``).

    python -m bench                       everything, peers included (creates .venv-bench)
    python -m bench --smoke               a quick pass of every scenario, small sizes
    python -m bench --only replay,storm --db sqlite,postgres --no-peers
    python -m bench --only console --db sqlite,postgres   the console's pages (issue #15)
    python -m bench --render              latest.md, plots and docs again from latest.json

Writes bench/results/latest.json and latest.md, the plots in docs/benchmarks/, and the
generated section of docs/benchmarks.md. A partial run (--only/--db/--smoke) writes its results
under bench/results/ with another name and leaves the docs alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness, machine, peers, report
from bench.context import Context, Settings

SCENARIOS = ("http", "storm", "roundtrips", "growth", "cleanup", "console")
ALIASES = {"first": "http", "replay": "http", "mixed": "http", "storage": "growth"}
STORES = ("sqlite", "postgres", "redis")
RESULTS = harness.ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes and short runs")
    parser.add_argument("--only", help=f"comma-separated scenarios of {', '.join(SCENARIOS)}")
    parser.add_argument("--db", help="comma-separated stores of sqlite, postgres, redis")
    parser.add_argument("--no-peers", action="store_true", help="whatsorder, limit and none only")
    parser.add_argument("--seconds", type=float, help="length of one wrk run")
    parser.add_argument("--render", action="store_true", help="only re-render latest.json")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((RESULTS / "latest.json").read_text())
        _publish(results, "latest", full=True)
        return 0

    chosen = _pick(args.only, SCENARIOS, ALIASES, parser)
    stores = _pick(args.db, STORES, {"pg": "postgres"}, parser)
    settings = Settings.smoke() if args.smoke else Settings()
    if args.seconds:
        settings.seconds = args.seconds
    full = not (args.smoke or args.only or args.db or args.no_peers or args.seconds)

    if shutil.which("wrk") is None and set(chosen) - {"console"}:
        parser.error("wrk is not installed (make bench installs it)")
    harness.raise_open_files_limit()
    # Peers take part in the HTTP scenarios only.
    with_peers = not args.no_peers and bool({"http", "storm"} & set(chosen))
    if with_peers:
        peers.ensure_venv(log=print)
    harness.drop_stale_pg_databases()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="whatsorder-bench-") as scratch:
        ctx = Context(settings, Path(scratch), with_peers=with_peers)
        ctx.results["machine"] = machine.describe()
        ctx.results["settings"] = {
            "smoke": args.smoke,
            "scenarios": chosen,
            "stores": stores,
            **vars(settings),
        }
        if with_peers:
            ctx.results["peers"] = peers.versions()
        try:
            _run(ctx, chosen, stores)
        finally:
            harness.delete_redis_keys()
        ctx.results["seconds"] = round(time.monotonic() - started, 1)

    stem = "latest" if full else "partial-" + ("smoke" if args.smoke else "run")
    _publish(ctx.results, stem, full=full)
    return 0


def _publish(results: dict[str, Any], stem: str, *, full: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    table = report.markdown(results)
    (RESULTS / f"{stem}.md").write_text(table)
    if full:
        report.plots(results, harness.ROOT / "docs" / "benchmarks")
        report.update_docs(harness.ROOT / "docs" / "benchmarks.md", table)
    print()
    print(table)
    print(f"wrote bench/results/{stem}.json and {stem}.md ({results.get('seconds', 0):.0f} s run)")


def _run(ctx: Context, chosen: list[str], stores: list[str]) -> None:
    from bench import console, growth, roundtrips, scenarios

    if "http" in chosen:
        ctx.results["generator"] = scenarios.generator_check(ctx)
        scenarios.throughput(ctx, stores)
    if "storm" in chosen:
        scenarios.storm(ctx, stores)
    if "roundtrips" in chosen:
        roundtrips.measure(ctx, stores)
    if "growth" in chosen:
        growth.measure(ctx, stores)
    if "cleanup" in chosen:
        growth.cleanup(ctx, [store for store in stores if store != "redis"])
    if "console" in chosen:
        console.measure(ctx, stores)


def _pick(
    given: str | None,
    known: tuple[str, ...],
    aliases: dict[str, str],
    parser: argparse.ArgumentParser,
) -> list[str]:
    if not given:
        return list(known)
    picked: list[str] = []
    for name in given.split(","):
        name = aliases.get(name.strip(), name.strip())
        if name not in known:
            parser.error(f"unknown {name!r}; choose from {', '.join(known)}")
        if name not in picked:
            picked.append(name)
    return picked


if __name__ == "__main__":
    sys.exit(main())
