"""The records' table, and the one place that maps its rows to the engine's records.

The engine speaks of a *scope*; the table's column for it is ``webhook_type``, a name the
service's schema keeps (docs/architecture.md §4). Nothing else of the package names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    or_,
)
from sqlalchemy.sql.elements import BindParameter

from whatsorder_idempotency.record import (
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
)

DEFAULT_TABLE_NAME = "webhook_idempotency"
SCOPE_COLUMN = "webhook_type"
KEY_COLUMN = "idempotency_key"

_T = TypeVar("_T")
# A value in a WHERE clause: given, or a parameter of a statement compiled once (lone.py).
Value: TypeAlias = _T | BindParameter[_T]


def idempotency_table(
    metadata: MetaData, name: str = DEFAULT_TABLE_NAME, extra_columns: Sequence[Column[Any]] = ()
) -> Table:
    """The records' table. ``extra_columns`` lets an application note its own ids on a record."""
    return Table(
        name,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column(SCOPE_COLUMN, String(64), nullable=False),
        Column(KEY_COLUMN, String(255), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("status", String(16), nullable=False),
        Column("epoch", Integer, nullable=False),
        Column("locked_until", DateTime(timezone=True)),
        Column("request_body", Text),
        Column("response_status", Integer),
        Column("response_body", LargeBinary),
        Column("response_headers", Text),
        Column("source_ip", String(45)),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("completed_at", DateTime(timezone=True)),
        Column("expires_at", DateTime(timezone=True)),
        *extra_columns,
        UniqueConstraint(SCOPE_COLUMN, KEY_COLUMN, name=f"uq_{name}_scope_key"),
        Index(f"ix_{name}_expires_at", "expires_at"),
    )


def is_key(table: Table, scope: Value[str], key: Value[str]) -> tuple[ColumnElement[bool], ...]:
    """The WHERE clause of one record (values, or parameters of a statement compiled once)."""
    return (table.c[SCOPE_COLUMN] == scope, table.c[KEY_COLUMN] == key)


def is_held(
    table: Table, scope: Value[str], key: Value[str], epoch: Value[int]
) -> tuple[ColumnElement[bool], ...]:
    """The WHERE clause of a record still held, unreleased, by ``epoch`` (the fence)."""
    return (
        *is_key(table, scope, key),
        table.c.epoch == epoch,
        table.c.status == Status.IN_PROGRESS.value,
        table.c.locked_until.is_not(None),  # not released
    )


def can_be_taken_over(table: Table, now: datetime) -> ColumnElement[bool]:
    """``IdempotencyRecord.can_be_taken_over`` as SQL: a dead or released lease, or expired.

    In a take-over's WHERE it is checked again on the row as it is when written (on PostgreSQL
    also after waiting for another writer's lock), not as the take-over last read it.
    """
    lease_over = or_(table.c.locked_until.is_(None), table.c.locked_until <= now)
    return or_(
        and_(table.c.status == Status.IN_PROGRESS.value, lease_over),
        and_(table.c.status == Status.COMPLETED.value, table.c.expires_at <= now),
    )


def claimed_row(request: IdempotentRequest, now: datetime, lease: timedelta) -> dict[str, Any]:
    """A new record in progress, held by epoch 1."""
    return {
        SCOPE_COLUMN: request.scope,
        KEY_COLUMN: request.key,
        "fingerprint": request.fingerprint,
        "status": Status.IN_PROGRESS.value,
        "epoch": 1,
        "locked_until": now + lease,
        "request_body": request.request_body,
        "source_ip": request.source_ip,
        "created_at": now,
    }


def completed_values(response: StoredResponse, now: datetime, ttl: timedelta) -> dict[str, Any]:
    """What completion writes: the answer to replay until ``now + ttl``."""
    return {
        "status": Status.COMPLETED.value,
        "locked_until": None,
        "response_status": response.status,
        "response_body": response.body,
        "response_headers": json.dumps([list(pair) for pair in response.headers]),
        "completed_at": now,
        "expires_at": now + ttl,
    }


def record_of(row: Mapping[Any, Any]) -> IdempotencyRecord:
    """The engine's record of one row."""
    response = None
    if row["response_status"] is not None:
        headers = tuple(
            (str(name), str(value)) for name, value in json.loads(row["response_headers"] or "[]")
        )
        response = StoredResponse(
            status=row["response_status"],
            body=bytes(row["response_body"] or b""),
            headers=headers,
        )
    return IdempotencyRecord(
        scope=row[SCOPE_COLUMN],
        key=row[KEY_COLUMN],
        fingerprint=row["fingerprint"],
        status=Status(row["status"]),
        epoch=row["epoch"],
        locked_until=row["locked_until"],
        expires_at=row["expires_at"],
        response=response,
    )
