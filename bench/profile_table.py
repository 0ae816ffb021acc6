"""Which layer a sampled stack is in, and the "where the time goes" table made of the shares.

A sample counts for the innermost frame that belongs to a known layer. Frames of the standard
library count for their caller (``json.dumps`` called by the engine is the engine's time), but
for the event loop's own modules, which are a layer of their own.
"""

from __future__ import annotations

from typing import Any

# (layer, path fragments of its frames), first match wins.
_LAYER_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("whatsorder engine", ("whatsorder_idempotency/",)),
    ("endpoint (bench app)", ("bench/app.py", "bench/limit_app.py")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("asyncpg", ("asyncpg/",)),
    ("aiosqlite + sqlite3", ("aiosqlite/", "/sqlite3/")),
    ("redis-py", ("redis/", "hiredis")),
    ("FastAPI, Starlette, pydantic", ("fastapi/", "starlette/", "pydantic", "anyio/")),
    ("uvicorn + httptools", ("uvicorn/", "httptools", "h11/")),
    ("event loop (asyncio)", ("asyncio/", "selectors.py", "uvloop", "socket.py", "threading.py")),
)
LAYERS = [name for name, _ in _LAYER_PATHS] + ["other"]
_STDLIB = "/lib/python3"


def layer_of(frames: list[str]) -> str:
    """The layer of one collapsed stack (root first, as py-spy writes it)."""
    for frame in reversed(frames):
        for name, fragments in _LAYER_PATHS:
            if any(fragment in frame for fragment in fragments):
                return name
        if _STDLIB in frame and "site-packages" not in frame:
            continue  # the standard library: its caller's time
        if "(" in frame:  # a Python frame of some other package
            return "other"
    return "other"


def markdown(results: dict[str, Any], label: str) -> str:
    """One table per scenario: rows are layers, columns store × contender, cells % of samples."""
    columns = [
        (store, contender) for store, by_contender in results.items() for contender in by_contender
    ]
    lines: list[str] = []
    for scenario in ("replay", "first"):
        head = [f"{store} {contender}" for store, contender in columns]
        lines.append(f"**{scenario} ({label})**: share of the worker's busy samples, %\n")
        lines.append("| layer | " + " | ".join(head) + " |")
        lines.append("|---|" + "--:|" * len(head))
        for layer in LAYERS:
            cells = [
                results[store][contender][scenario]["layers"].get(layer, 0.0)
                for store, contender in columns
            ]
            if any(cells):
                lines.append(f"| {layer} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
        rates = [results[s][c][scenario]["requests_per_second"] for s, c in columns]
        lines.append("| *req/s, 1 worker (profiled)* | " + " | ".join(f"{r:,.0f}" for r in rates))
        lines.append("")
    return "\n".join(lines)
