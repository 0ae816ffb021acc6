"""Who is measured against whom: one group per store, each with its database and contenders.

A group compares layers that keep their records in the same kind of store, in front of the same
endpoint on the same database. Peers without a backend for a group's store are not in it.
"""

from __future__ import annotations

from dataclasses import dataclass

OURS = "whatsorder"  # the middleware, lease mode
OURS_TX = "whatsorder-tx"  # the engine in transactional mode (records beside the orders)
OUR_VARIANTS = (OURS, OURS_TX)
BASELINE = "none"
LIMIT = "limit"  # the cheapest correct answer the drivers allow (bench/limit_app.py)
PEERS = (
    "powertools",
    "fastapi-idempotency-key",
    "fastapi-idempotency",
    "fastidempotent",
    "asgi-idempotency-header",
)
PACKAGES = {  # the PyPI name of each peer
    "powertools": "aws-lambda-powertools",
    "fastapi-idempotency-key": "fastapi-idempotency-key",
    "fastapi-idempotency": "fastapi-idempotency",
    "fastidempotent": "fastidempotent",
    "asgi-idempotency-header": "asgi-idempotency-header",
}
# Which backend each peer ships, by our store kinds (None: it has none for that store).
PEER_STORES: dict[str, dict[str, str | None]] = {
    "powertools": {"sqlite": None, "postgres": None, "redis": "Redis persistence layer"},
    "fastapi-idempotency-key": {
        "sqlite": "SQLiteBackend",
        "postgres": None,
        "redis": "RedisBackend",
    },
    "fastapi-idempotency": {
        "sqlite": "TortoiseStore (sqlite)",
        "postgres": "TortoiseStore (asyncpg)",
        "redis": None,
    },
    "fastidempotent": {
        "sqlite": "SQLiteBackend",
        "postgres": "PostgresBackend",
        "redis": "RedisBackend",
    },
    "asgi-idempotency-header": {"sqlite": None, "postgres": None, "redis": "RedisBackend"},
}


@dataclass(frozen=True)
class Group:
    """Records in ``store`` (sqlite, postgres or redis); orders in ``database``."""

    store: str
    database: str

    @property
    def name(self) -> str:
        return self.store

    def peers(self) -> list[str]:
        return [peer for peer in PEERS if PEER_STORES[peer][self.store]]

    def ours(self) -> list[str]:
        """Our variants: transactional mode only where records and orders share a database."""
        return [OURS, OURS_TX] if self.store == self.database else [OURS]

    def contenders(self, *, with_peers: bool) -> list[str]:
        return [BASELINE, LIMIT, *self.ours(), *(self.peers() if with_peers else [])]

    def storm_contenders(self, *, with_peers: bool) -> list[str]:
        """The storm's: all but the limit, a floor for requests one after another only.

        Its copies that miss the first read each run the handler before the record's key
        stops them (on SQLite one after another behind the write lock; on Redis it has no
        stop at all), so a storm measures that, not the cost of a layer.
        """
        return [c for c in self.contenders(with_peers=with_peers) if c != LIMIT]


GROUPS = {
    "sqlite": Group(store="sqlite", database="sqlite"),
    "postgres": Group(store="postgres", database="postgres"),
    "redis": Group(store="redis", database="postgres"),  # Redis keeps records, never orders
}
