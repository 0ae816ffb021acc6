"""Stores for the idempotency engine, one module per backend; ``open_store(url)`` picks one."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import MetaData

if TYPE_CHECKING:
    from whatsorder_idempotency.stores.base import LeaseStore


def open_store(
    url: str,
    *,
    table_name: str = "idempotency_records",
    in_flight_wait: timedelta = timedelta(seconds=5),
) -> LeaseStore:
    """A lease-mode store for ``memory://``, ``sqlite:///…``, ``postgresql://…`` or ``redis://…``.

    SQL stores create their table on first use (``table_name``); Redis keys expire natively.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "memory":
        from whatsorder_idempotency.stores.memory import MemoryStore

        return MemoryStore()
    if scheme in {"redis", "rediss", "unix"}:
        from whatsorder_idempotency.stores.redis import RedisStore

        return RedisStore.from_url(url)
    if scheme in {"sqlite", "postgresql", "postgres"}:
        from whatsorder_idempotency.stores.sql import SqlStore, idempotency_table, sql_engine

        if scheme == "postgres":
            url = "postgresql" + url[len("postgres") :]
        engine = sql_engine(url, busy_timeout=in_flight_wait)
        table = idempotency_table(MetaData(), table_name)
        return SqlStore(engine, table, in_flight_wait=in_flight_wait, create_table=True)
    raise ValueError(
        f"no idempotency store for {scheme!r} URLs; use memory://, sqlite:///path, "
        "postgresql://… or redis://…"
    )
