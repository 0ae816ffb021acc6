"""The HTTP scenarios' tables: first request, replay and mixed traffic per group, and the storm.

Every contender's figures sit beside its ratios: first-request p50 to no idempotency, replay
throughput to the best layer's, and each figure to the limit's (``bench/ratios.py``). The storm
has no limit (``Group.storm_contenders`` says why).
"""

from __future__ import annotations

from typing import Any

from bench import ratios
from bench.cells import num, ratio, statuses
from bench.contenders import BASELINE, GROUPS, LIMIT, OURS, OURS_TX, PEER_STORES

LIMIT_STORES = {
    "sqlite": "sqlite3, one transaction",
    "postgres": "asyncpg, one transaction",
    "redis": "redis.asyncio GET / SET NX",
}


def http_tables(results: dict[str, Any]) -> list[str]:
    http = results.get("throughput")
    if not http:
        return []
    s = results["settings"]
    out = [
        "### First request, replay and mixed traffic",
        "",
        f"Each wrk run: {s['seconds']:.0f} s after {s['warmup']:.0f} s of warm-up, "
        f"{s['connections']} connections, {s['workers']} uvicorn workers; medians of "
        f"{s['rounds']} interleaved rounds. Mixed: {s['rate']:.0f} requests/s for "
        f"{s['mixed_seconds']:.0f} s, 10% duplicates, latency from the scheduled send time. "
        "Ratios: first-request p50 to no idempotency; replay throughput to the best layer's "
        "(a replay counts only when every answer was the first one, 201); × limit: each "
        "figure to `limit`'s, the cheapest correct answer (contender / limit: below 1× "
        "throughput or above 1× latency is that far from the floor; — where it was not run).",
        "",
    ]
    for group, rows in http.items():
        out += _group_table(group, rows)
    return out


def _group_table(group: str, rows: dict[str, Any]) -> list[str]:
    out = [
        f"**Records in {group}** (orders in {GROUPS[group].database})",
        "",
        "| contender | store | first req/s | first p50 ms | first p99 ms | p50 vs none "
        "| first × limit | replay req/s | replay p50 ms | replay p99 ms | replay vs best "
        "| replay × limit | replays right? | mixed p50 ms | mixed p99 ms | mixed × limit |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|",
    ]
    none_p50 = rows.get(BASELINE, {}).get("first", {}).get("p50_ms")
    best_replay = max(
        (
            r["replay"]["rps"]
            for n, r in rows.items()
            if n not in (BASELINE, LIMIT) and r.get("replay") and r["replay"].get("correct")
        ),
        default=None,
    )
    limit = ratios.limit_row(rows)
    for name, row in rows.items():
        store = store_label(name, group)
        if "error" in row and not row.get("first"):
            out.append(f"| {name} | {store} | not measured: {row['error']} |" + " |" * 13)
            continue
        first, replay, mixed = row.get("first", {}), row.get("replay", {}), row.get("mixed", {})
        p50_ratio = first["p50_ms"] / none_p50 if none_p50 and first else None
        replay_ratio = (
            replay["rps"] / best_replay
            if best_replay and replay and name not in (BASELINE, LIMIT) and replay.get("correct")
            else None
        )
        if name == BASELINE:
            right = "n/a (no layer)"
        elif not replay:
            right = "not measured" + (f": {row['error']}" if "error" in row else "")
        elif replay.get("correct"):
            right = "yes"
        else:
            right = f"**no** ({statuses(replay['statuses'])})"
        first_to_limit = ratios.cell(first, limit.get("first", {}), ["rps", "p50_ms"])
        replay_to_limit = ratios.cell(replay, limit.get("replay", {}), ["rps", "p50_ms"])
        mixed_to_limit = ratios.cell(mixed, limit.get("mixed", {}), ["p50_ms", "p99_ms"])
        out.append(
            f"| {name} | {store} | {num(first.get('rps'), 0)} "
            f"| {num(first.get('p50_ms'), 2)} "
            f"| {num(first.get('p99_ms'), 1)} | {ratio(p50_ratio)} | {first_to_limit} "
            f"| {num(replay.get('rps'), 0)} | {num(replay.get('p50_ms'), 2)} "
            f"| {num(replay.get('p99_ms'), 1)} | {ratio(replay_ratio)} | {replay_to_limit} "
            f"| {right} | {num(mixed.get('p50_ms'), 1)} | {num(mixed.get('p99_ms'), 1)} "
            f"| {mixed_to_limit} |"
        )
    out.append("")
    return out


def store_label(name: str, group: str) -> str:
    if name == BASELINE:
        return "–"
    if name == LIMIT:
        return LIMIT_STORES[group]
    if name == OURS:
        return {"sqlite": "SqlStore", "postgres": "SqlStore", "redis": "RedisStore"}[group]
    if name == OURS_TX:
        return "SqlStore, one transaction"
    return PEER_STORES[name][group] or "–"


def storm_table(results: dict[str, Any]) -> list[str]:
    storm = results.get("storm")
    if not storm:
        return []
    s = results["settings"]
    out = [
        "### Duplicate storm",
        "",
        f"{s['storm_copies']:,} connections opened, then the same request (one key) written on "
        f"all at once; {s['storm_workers']} uvicorn workers; the handler takes "
        f"{s['storm_sleep_ms']} ms. Effects: orders in the table afterwards (must be 1). `none` "
        "(no idempotency: every copy runs) gives the floor: how long this machine takes to "
        "answer that many simultaneous requests at all. `limit` is not in this table: it is the "
        "floor for requests one after another (see What is measured).",
        "",
        "| store | contender | effects | slowest ms | p50 ms | statuses |",
        "|---|---|--:|--:|--:|---|",
    ]
    for group, rows in storm.items():
        for name, row in rows.items():
            if "error" in row:
                out.append(f"| {group} | {name} | not measured: {row['error']} | | | |")
                continue
            if name == BASELINE:  # no layer: every copy runs, as it should
                effects = f"{row['effects']:,} (no layer)"
            elif row["effects"] == 1:
                effects = "1"
            else:
                effects = f"**{row['effects']}**"
            out.append(
                f"| {group} | {name} | {effects} | {row['slowest_ms']:,.0f} | "
                f"{row['p50_ms']:,.0f} | {statuses(row['statuses'])} |"
            )
    return [*out, ""]
