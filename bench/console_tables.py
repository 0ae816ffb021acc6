"""The console benchmark's table and targets (issue #15): each page's server time per store."""

from __future__ import annotations

from typing import Any

from bench.console import TARGET_MS


def console_targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, figure, met) per store: every page's p50 within the target."""
    found: list[tuple[str, str, bool | None]] = []
    for store, run in results.get("console", {}).items():
        name = f"{store}: every console page's p50 ≤ {TARGET_MS:.0f} ms"
        if "error" in run:
            found.append((name, f"not measured ({run['error']})", None))
            continue
        pages = run["pages"]
        worst = max(pages, key=lambda page: pages[page]["p50_ms"])
        figure = f"slowest: {worst}, {pages[worst]['p50_ms']:.1f} ms"
        found.append((name, figure, all(_met(page) for page in pages.values())))
    return found


def _met(page: dict[str, Any]) -> bool:
    return page["p50_ms"] <= TARGET_MS and page["statuses"] == [200]


def console_table(results: dict[str, Any]) -> list[str]:
    console = results.get("console")
    if not console:
        return []
    out = [
        "### Console pages (issue #15)",
        "",
        "A real `whatsorder serve` (one worker) on a database of the sizes below; one operator "
        "signed in opens each page in turn, one request at a time, after one warm-up request. "
        "Server time is the console's own `Server-Timing` header (request in to headers out: "
        "the queries and the template), so the client and the loopback stay out of it; the "
        "client's wall time is beside it. "
        f"Target: p50 ≤ {TARGET_MS:.0f} ms.",
        "",
    ]
    for store, run in console.items():
        if "error" in run:
            out += [f"**{store}**: not measured ({run['error']}).", ""]
            continue
        rows = run["rows"]
        out += [
            f"**{store}**: {rows.get('orders', 0):,} orders, {rows.get('order_items', 0):,} "
            f"lines, {rows.get('ledger_entries', 0):,} ledger entries, "
            f"{rows.get('payments', 0):,} payments, {rows.get('retailers', 0):,} retailers, "
            f"{rows.get('webhook_idempotency', 0):,} idempotency records, "
            f"{rows.get('inbound_deliveries', 0):,} deliveries; built in "
            f"{run['load_seconds']:.0f} s. Measured {run.get('measured_at', '?')}, load average "
            f"after it {run.get('load_average', '?')}.",
            "",
            "| page | requests | server p50 ms | server p95 ms | client p50 ms | verdict |",
            "|---|--:|--:|--:|--:|---|",
        ]
        for name, page in run["pages"].items():
            statuses = ", ".join(str(status) for status in page["statuses"])
            verdict = "met" if _met(page) else "missed"
            if page["statuses"] != [200]:
                verdict += f" (answered {statuses})"
            out.append(
                f"| {name} (`{page['path']}`) | {page['requests']} | {page['p50_ms']:.1f} "
                f"| {page['p95_ms']:.1f} | {page['client_p50_ms']:.1f} | **{verdict}** |"
            )
        out.append("")
    return out
