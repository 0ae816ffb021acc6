"""The HTTP scenarios: first requests, replays, mixed traffic at a fixed rate, duplicate storms.

Every contender of a group serves the same endpoint on the same database. Rounds interleave the
contenders (A B C, A B C) so that noise from the machine falls on all of them alike; each figure
reported is the median over rounds.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from bench import harness, load
from bench.contenders import GROUPS, Group
from bench.context import Context


def throughput(ctx: Context, group_names: list[str]) -> None:
    """First request, replay and mixed traffic for every contender of every group."""
    s = ctx.settings
    section: dict[str, Any] = ctx.results.setdefault("throughput", {})
    for name in group_names:
        group = GROUPS[name]
        contenders = group.contenders(with_peers=ctx.with_peers)
        runs: dict[str, dict[str, Any]] = {c: {"first": [], "replay": []} for c in contenders}
        with ctx.databases(group, "http") as (db_url, store_url):
            for round_number in range(s.rounds):
                for contender in contenders:
                    _one_round(ctx, group, contender, db_url, store_url, round_number, runs)
        section[name] = {c: _summary(c, runs[c]) for c in contenders}


def _one_round(
    ctx: Context,
    group: Group,
    contender: str,
    db_url: str,
    store_url: str,
    round_number: int,
    runs: dict[str, dict[str, Any]],
) -> None:
    s = ctx.settings
    run = runs[contender]
    if run.get("error"):
        return
    tag = f"{harness.RUN_ID}{group.name[0]}{round_number}"
    server = harness.Server(contender, db_url, store_url, workers=s.workers)
    try:
        with server.running(ctx.folder):
            ctx.log(f"{group.name:8} {contender:24} round {round_number + 1}: first requests")
            load.wrk(server.base_url, mode="fresh", prefix=f"w{tag}-", seconds=s.warmup)
            first = load.wrk(
                server.base_url,
                mode="fresh",
                prefix=f"f{tag}-",
                seconds=s.seconds,
                connections=s.connections,
            )
            run["first"].append(first.as_dict())
            keys = [f"r{tag}-{n}" for n in range(s.replay_keys)]
            made = asyncio.run(load.complete_keys(server.port, keys))
            ctx.log(f"{group.name:8} {contender:24} round {round_number + 1}: replays")
            load.wrk(
                server.base_url, mode="cycle", prefix=f"r{tag}-", pool=len(keys), seconds=s.warmup
            )
            replay = load.wrk(
                server.base_url,
                mode="cycle",
                prefix=f"r{tag}-",
                pool=len(keys),
                seconds=s.seconds,
                connections=s.connections,
            )
            run["replay"].append({**replay.as_dict(), "first_statuses": dict(made)})
            if round_number == 0:
                ctx.log(f"{group.name:8} {contender:24} mixed traffic at {s.rate:.0f}/s")
                mixed = asyncio.run(
                    load.constant_rate(
                        server.port, rate=s.rate, seconds=s.mixed_seconds, prefix=f"m{tag}-"
                    )
                )
                run["mixed"] = mixed.as_dict()
    except (RuntimeError, OSError) as error:
        run["error"] = _reason(error)
        ctx.log(f"{contender}: could not be measured: {run['error']}")
        run["log"] = server.log()[-1500:]


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"some answers never came ({load.STORM_TIMEOUT} s)"
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _median_of(runs: list[dict[str, Any]], field: str) -> float:
    return statistics.median(run[field] for run in runs) if runs else float("nan")


def _summary(contender: str, run: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"contender": contender}
    if run.get("error"):
        summary["error"] = run["error"]
    for kind in ("first", "replay"):
        rounds = run[kind]
        if not rounds:
            continue
        statuses: dict[str, int] = {}
        for one in rounds:
            for status, n in one["statuses"].items():
                statuses[status] = statuses.get(status, 0) + n
        summary[kind] = {
            "rps": _median_of(rounds, "rps"),
            "p50_ms": _median_of(rounds, "p50_ms"),
            "p99_ms": _median_of(rounds, "p99_ms"),
            "statuses": statuses,
            "rounds": rounds,
        }
    replay = summary.get("replay")
    if replay:  # a replay is right when it gives back the first answer: 201 with the order
        wrong = sum(n for status, n in replay["statuses"].items() if status != "201")
        replay["correct"] = wrong == 0
    if "mixed" in run:
        summary["mixed"] = run["mixed"]
    return summary


def storm(ctx: Context, group_names: list[str]) -> None:
    """1,000 simultaneous copies of one request on 4 workers: effects, slowest answer, statuses."""
    s = ctx.settings
    section: dict[str, Any] = ctx.results.setdefault("storm", {})
    for name in group_names:
        group = GROUPS[name]
        results: dict[str, Any] = {}
        with ctx.databases(group, "storm") as (db_url, store_url):
            # "none" too: every copy runs, so its slowest answer is the floor this machine
            # sets for 1,000 simultaneous requests, whatever a layer does.
            for contender in group.storm_contenders(with_peers=ctx.with_peers):
                server = harness.Server(
                    contender,
                    db_url,
                    store_url,
                    workers=s.storm_workers,
                    sleep_ms=s.storm_sleep_ms,
                )
                try:
                    with server.running(ctx.folder):
                        harness.reset_orders(db_url)
                        ctx.log(f"{name:8} {contender:24} storm of {s.storm_copies} copies")
                        figures, written = asyncio.run(
                            load.storm(
                                server.port,
                                copies=s.storm_copies,
                                # a key of its own: whatsorder and whatsorder-tx share a table
                                key=f"s{harness.RUN_ID}-{contender}",
                            )
                        )
                        effects = harness.count_orders(db_url)
                    results[contender] = {
                        "effects": effects,
                        "slowest_ms": round(figures.max_ms, 1),
                        "p50_ms": round(figures.p50_ms, 1),
                        "statuses": figures.statuses,
                        "write_ms": round(written * 1000, 1),
                        "handler_ms": s.storm_sleep_ms,
                    }
                except (RuntimeError, OSError, TimeoutError) as error:
                    results[contender] = {"error": _reason(error)}
                    ctx.log(f"{contender}: storm failed: {results[contender]['error']}")
        section[name] = results


def generator_check(ctx: Context) -> dict[str, Any]:
    """wrk against the cheapest ASGI answer: the ceiling the load generator can drive here."""
    s = ctx.settings
    server = harness.Server("trivial", "sqlite:///unused", "unused", workers=s.workers)
    with server.running(ctx.folder):
        load.wrk(server.base_url, mode="none", seconds=s.warmup)
        figures = load.wrk(
            server.base_url, mode="fresh", prefix="t", seconds=s.seconds, connections=s.connections
        )
    ctx.log(f"load generator: {figures.rps:,.0f} requests/s against a trivial ASGI app")
    return figures.as_dict()
