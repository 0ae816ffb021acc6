"""Re-drives of dead letters, in the database: the listing, the claim, the outcome, retention.

A re-drive claims its row first with a compare-and-set (`claim`): of two operators pressing at
the same instant one gets the row, the other is told who has it. The outcome and its audit
line commit together (`finish`). A claim whose holder died (the process stopped between the
claim and the outcome) counts as failed after `STALE_AFTER`, so the row can be re-driven again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.clock import as_utc, utcnow
from whatsorder.db import operators as operator_rows
from whatsorder.db.tables import dead_letters
from whatsorder.redrives import (
    STALE_AFTER,
    Filters,
    NoSuchDeadLetter,
    RedriveRefused,
    no_payload_reason,
)

MAX_ID = 2**63 - 1  # dead_letters.id, a BIGINT on PostgreSQL
MAX_RESULT_CHARS = 500  # dead_letters.redrive_result

# What the console lists: everything but the payload, and whether there is one.
_LISTED = (
    dead_letters.c.id,
    dead_letters.c.provider,
    dead_letters.c.delivery_key,
    dead_letters.c.reason,
    dead_letters.c.received_at,
    dead_letters.c.redrive_state,
    dead_letters.c.redriven_at,
    dead_letters.c.redriven_by,
    dead_letters.c.redrive_result,
    dead_letters.c.payload.is_not(None).label("has_payload"),
)


@dataclass(frozen=True, slots=True)
class Claim:
    """A dead letter taken for a re-drive: what to process, and who took it when."""

    letter_id: int
    provider: str
    delivery_key: str
    payload: str
    operator: str
    claimed_at: datetime


def _conditions(filters: Filters) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if filters.provider:
        found.append(dead_letters.c.provider == filters.provider)
    if filters.reason:
        found.append(dead_letters.c.reason.ilike(f"%{filters.reason}%"))
    if filters.received_from:
        start = datetime.combine(filters.received_from, time.min)
        found.append(dead_letters.c.received_at >= as_utc(start))
    if filters.received_to:
        end = datetime.combine(filters.received_to + timedelta(days=1), time.min)
        found.append(dead_letters.c.received_at < as_utc(end))
    if filters.state == "never":
        found.append(dead_letters.c.redrive_state.is_(None))
    elif filters.state:
        found.append(dead_letters.c.redrive_state == filters.state)
    return found


def _redrivable(now: datetime) -> ColumnElement[bool]:
    """A payload, and no re-drive that is done or still running (one past STALE_AFTER died)."""
    return and_(
        dead_letters.c.payload.is_not(None),
        or_(
            dead_letters.c.redrive_state.is_(None),
            dead_letters.c.redrive_state == "failed",
            and_(
                dead_letters.c.redrive_state == "running",
                dead_letters.c.redriven_at < now - STALE_AFTER,
            ),
        ),
    )


class DeadLetterRedrives:
    def __init__(self, database: AsyncEngine) -> None:
        self._database = database

    async def listing(
        self, filters: Filters, now: datetime, *, limit: int, redrivable_only: bool = False
    ) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` matching dead letters and how many match in all: newest first, or
        (``redrivable_only``, a batch's preview) oldest first, the order they are re-driven."""
        conditions = _conditions(filters)
        order = dead_letters.c.id.desc()
        if redrivable_only:
            conditions.append(_redrivable(now))
            order = dead_letters.c.id.asc()
        listing = select(*_LISTED).where(*conditions).order_by(order).limit(limit)
        counting = select(func.count()).select_from(dead_letters).where(*conditions)
        async with self._database.connect() as connection:
            rows = [dict(row._mapping) for row in await connection.execute(listing)]
            total = int(await connection.scalar(counting) or 0)
        for row in rows:
            row["redrivable"] = _may_redrive(row, now)
        return rows, total

    async def claim(self, letter_id: int, operator: str, now: datetime) -> Claim:
        """Take this dead letter for a re-drive, or say why not (`RedriveRefused`)."""
        if not 1 <= letter_id <= MAX_ID:
            raise NoSuchDeadLetter(f"There is no dead letter {letter_id}.")
        async with self._database.begin() as connection:
            taken = await connection.execute(
                update(dead_letters)
                .where(dead_letters.c.id == letter_id, _redrivable(now))
                .values(
                    redrive_state="running",
                    redriven_by=operator,
                    redriven_at=now,
                    redrive_result=None,
                )
            )
            row = (
                await connection.execute(
                    select(*_LISTED, dead_letters.c.payload).where(dead_letters.c.id == letter_id)
                )
            ).first()
        if row is None:
            raise NoSuchDeadLetter(f"There is no dead letter {letter_id}.")
        if taken.rowcount != 1:
            raise RedriveRefused(_why_not(dict(row._mapping)))
        return Claim(
            letter_id, str(row.provider), str(row.delivery_key), str(row.payload), operator, now
        )

    async def finish(self, claim: Claim, *, done: bool, result: str, address: str) -> None:
        """Record how the re-drive went, with its audit line, in one transaction. A done one
        drops its payload: nothing is left to re-drive, and nothing to keep. A claim taken
        over meanwhile (this one counted as dead) changes nothing but the audit trail."""
        state = "done" if done else "failed"
        result = result[:MAX_RESULT_CHARS]
        now = utcnow()
        values: dict[str, Any] = {
            "redrive_state": state,
            "redrive_result": result,
            "redriven_at": now,
        }
        if done:
            values["payload"] = None
        async with self._database.begin() as connection:
            await connection.execute(
                update(dead_letters)
                .where(
                    dead_letters.c.id == claim.letter_id,
                    dead_letters.c.redrive_state == "running",
                    dead_letters.c.redriven_by == claim.operator,
                    dead_letters.c.redriven_at == claim.claimed_at,
                )
                .values(**values)
            )
            await operator_rows.record_action(
                connection,
                operator=claim.operator,
                action="dead-letter.redrive",
                target=f"dead letter {claim.letter_id}",
                before={"state": "running", "since": claim.claimed_at},
                after={"state": state, "result": result},
                address=address,
                now=now,
            )

    async def clear_expired_payloads(self, before: datetime) -> int:
        """Drop the payloads of dead letters received before ``before``; how many."""
        async with self._database.begin() as connection:
            cleared = await connection.execute(
                update(dead_letters)
                .where(dead_letters.c.received_at < before, dead_letters.c.payload.is_not(None))
                .values(payload=None)
            )
        return int(cleared.rowcount or 0)


def _may_redrive(row: dict[str, Any], now: datetime) -> bool:
    if not row["has_payload"]:
        return False
    state = row["redrive_state"]
    if state == "running":
        return bool(as_utc(row["redriven_at"]) < now - STALE_AFTER)
    return bool(state != "done")


def _why_not(row: dict[str, Any]) -> str:
    """Why dead letter ``row`` could not be claimed, as the operator should read it."""
    name = f"Dead letter {row['id']}"
    if row["redrive_state"] == "done":
        return (
            f"{name} was re-driven already by {row['redriven_by']}: {row['redrive_result']}. "
            "Nothing was done again."
        )
    if row["redrive_state"] == "running":
        return (
            f"{name} is being re-driven by {row['redriven_by']} right now. Nothing was done "
            "twice; reload the page in a moment to see the result."
        )
    if not row["has_payload"]:
        return f"{name} cannot be re-driven: {no_payload_reason(row)}"
    return f"{name} cannot be re-driven now; reload the page to see its state."
