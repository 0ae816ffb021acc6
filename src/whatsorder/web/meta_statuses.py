"""Meta's statuses, recorded a chunk at a time: one transaction and one idempotency record per
chunk of a delivery, not per status.

A delivery at the 3 MiB body limit holds thousands of statuses, and a claim, an upsert and a
completion per status took Meta past its timeout (Meta then retries the whole delivery). A
status needs no record of its own to take effect once: the stored state only moves forward by
rank, in one conditional upsert, so recording a state again — however the statuses are
batched, split or merged — changes nothing. The chunk's record keeps a redelivery cheap: the
same delivery cuts the same chunks (in delivery order), whose keys are their content's hash,
so a redelivered chunk is one lookup and a replay.

A chunk is one multi-row ``INSERT … ON CONFLICT DO UPDATE … WHERE stored rank < new rank``:
the same forward-only rule as ``OrderingRepository.advance_message_status``, for many messages
in one statement (one statement per status cost milliseconds each). A statement may touch a row
once, so each message's states in the chunk are first reduced to the furthest (the first of
equal rank, as one at a time would keep it). Rows go in ``wamid`` order, so two deliveries
racing lock the same rows in the same order and never deadlock on PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.tables import message_statuses
from whatsorder.ordering.model import MESSAGE_STATUS_RANK, message_status_rank
from whatsorder.providers.meta import SOURCE, StatusUpdate

CHUNK_SIZE = 500  # one transaction of this many upserts takes a fraction of a second

Chunk = tuple[StatusUpdate, ...]


def chunks(statuses: Sequence[StatusUpdate], size: int = CHUNK_SIZE) -> list[Chunk]:
    """The statuses in delivery order, cut every ``size``."""
    return [tuple(statuses[start : start + size]) for start in range(0, len(statuses), size)]


def content(chunk: Chunk) -> bytes:
    """The chunk as a JSON list of its statuses' canonical JSON: what its fingerprint covers."""
    return b"[" + b",".join(status.canonical for status in chunk) + b"]"


def key(chunk_content: bytes) -> str:
    """The chunk's idempotency key: the same statuses in the same order, the same key."""
    return "statuses:" + hashlib.sha256(chunk_content).hexdigest()


def furthest(chunk: Chunk) -> list[StatusUpdate]:
    """Each message's furthest state in ``chunk`` (the first of equal rank), by ``wamid``."""
    kept: dict[str, StatusUpdate] = {}
    for status in chunk:
        before = kept.get(status.wamid)
        if before is None or message_status_rank(status.status) > message_status_rank(
            before.status
        ):
            kept[status.wamid] = status
    return [kept[wamid] for wamid in sorted(kept)]


async def record(connection: AsyncConnection, chunk: Chunk, now: datetime) -> int:
    """Advance each message of ``chunk`` in the caller's transaction, never backwards; how
    many rows were added or moved forward."""
    rows = [
        {
            "provider": SOURCE,
            "message_id": status.wamid,
            "status": status.status,
            "error_code": status.error_code,
            "updated_at": now,
        }
        for status in furthest(chunk)
    ]
    if not rows:
        return 0
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = insert(message_statuses).values(rows)
    new = statement.excluded
    result = await connection.execute(
        statement.on_conflict_do_update(
            index_elements=["provider", "message_id"],
            set_={"status": new.status, "error_code": new.error_code, "updated_at": now},
            where=_rank(message_statuses.c.status) < _rank(new.status),
        )
    )
    return int(result.rowcount)


def _rank(status: ColumnElement[str]) -> ColumnElement[int]:
    """``message_status_rank`` in SQL: unknown states rank lowest."""
    return case(*((status == name, rank) for name, rank in MESSAGE_STATUS_RANK.items()), else_=-1)
