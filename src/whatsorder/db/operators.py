"""The console's operators and their audit trail, in the database."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.tables import operator_actions, operators


class OperatorExists(ValueError):
    """An operator of that name exists already."""


async def add_operator(
    connection: AsyncConnection, name: str, role: str, password_hash: str, now: datetime
) -> None:
    try:
        async with connection.begin_nested():
            await connection.execute(
                insert(operators).values(
                    name=name, role=role, password_hash=password_hash, created_at=now
                )
            )
    except sa_exc.IntegrityError as error:
        raise OperatorExists(f"An operator named {name!r} exists already.") from error


async def find_operator(connection: AsyncConnection, name: str) -> dict[str, Any] | None:
    row = (await connection.execute(select(operators).where(operators.c.name == name))).first()
    return None if row is None else dict(row._mapping)


async def all_operators(connection: AsyncConnection) -> list[dict[str, Any]]:
    rows = await connection.execute(
        select(
            operators.c.name,
            operators.c.role,
            operators.c.created_at,
            operators.c.disabled_at,
            operators.c.last_login_at,
        ).order_by(operators.c.name)
    )
    return [dict(row._mapping) for row in rows]


async def disable_operator(connection: AsyncConnection, name: str, now: datetime) -> bool:
    """False when there is no such operator, or it was disabled already."""
    result = await connection.execute(
        update(operators)
        .where(operators.c.name == name, operators.c.disabled_at.is_(None))
        .values(disabled_at=now)
    )
    return result.rowcount == 1


async def note_sign_in(connection: AsyncConnection, name: str, now: datetime) -> None:
    await connection.execute(
        update(operators).where(operators.c.name == name).values(last_login_at=now)
    )


async def record_action(
    connection: AsyncConnection,
    *,
    operator: str,
    action: str,
    now: datetime,
    target: str | None = None,
    before: Any = None,
    after: Any = None,
    address: str | None = None,
) -> None:
    """One line of the audit trail, in the caller's transaction (with the change it records)."""
    await connection.execute(
        insert(operator_actions).values(
            operator=operator,
            action=action,
            target=target,
            before=None if before is None else json.dumps(before, default=str, sort_keys=True),
            after=None if after is None else json.dumps(after, default=str, sort_keys=True),
            address=address,
            at=now,
        )
    )


async def recent_actions(connection: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    rows = await connection.execute(
        select(operator_actions).order_by(operator_actions.c.id.desc()).limit(limit)
    )
    return [dict(row._mapping) for row in rows]
