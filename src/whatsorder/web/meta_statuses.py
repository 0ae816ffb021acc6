"""Meta's statuses, recorded a chunk at a time: one transaction and one idempotency record per
chunk of a delivery, not per status.

A delivery at the 3 MiB body limit holds thousands of statuses, and a claim, an upsert and a
completion per status took Meta past its timeout (Meta then retries the whole delivery). A
status needs no record of its own to take effect once: the stored state only moves forward by
rank, in one conditional upsert, so recording a state again — however the statuses are
batched, split or merged — changes nothing. The chunk's record keeps a redelivery cheap: the
same delivery cuts the same chunks (in delivery order), whose keys are their content's hash,
so a redelivered chunk is one lookup and a replay.

A chunk is one multi-row forward-only upsert (``services.record_message_states``): one
statement per status cost milliseconds each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from whatsorder.ordering import services
from whatsorder.ordering.model import MessageState
from whatsorder.ordering.ports import UnitOfWork
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


async def record(uow: UnitOfWork, chunk: Chunk, now: datetime) -> int:
    """Advance each message of ``chunk`` in the caller's transaction, never backwards; how
    many rows were added or moved forward."""
    states = (MessageState(status.wamid, status.status, status.error_code) for status in chunk)
    return await services.record_message_states(uow, SOURCE, states, now)
