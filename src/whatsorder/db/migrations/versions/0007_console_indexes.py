"""Indexes for the console's pages at 100,000 orders and a million idempotency records.

- ``ix_orders_created_at``: the orders list's date range (count and page).
- ``ix_webhook_idempotency_order_id`` (partial, records that name an order): the order page's
  webhooks and replies; most records name none, and a claim names none until it completes.
- ``ix_webhook_idempotency_in_flight`` (partial, ``status = 'in_progress'``): the health page's
  keys in flight, oldest first; a completed record leaves it.
- ``ix_inbound_deliveries_outcome``: the inbox filtered by outcome, newest first.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_FLIGHT = sa.text("status = 'in_progress'")
NAMES_AN_ORDER = sa.text("order_id IS NOT NULL")


def upgrade() -> None:
    # These tables hold rows and replicas keep writing them while this runs.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_orders_created_at", "orders", ["created_at"], postgresql_concurrently=True
        )
        op.create_index(
            "ix_webhook_idempotency_order_id",
            "webhook_idempotency",
            ["order_id"],
            postgresql_where=NAMES_AN_ORDER,
            sqlite_where=NAMES_AN_ORDER,
            postgresql_concurrently=True,
        )
        op.create_index(
            "ix_webhook_idempotency_in_flight",
            "webhook_idempotency",
            ["created_at"],
            postgresql_where=IN_FLIGHT,
            sqlite_where=IN_FLIGHT,
            postgresql_concurrently=True,
        )
        op.create_index(
            "ix_inbound_deliveries_outcome",
            "inbound_deliveries",
            ["outcome", "id"],
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for table, index in (
            ("inbound_deliveries", "ix_inbound_deliveries_outcome"),
            ("webhook_idempotency", "ix_webhook_idempotency_in_flight"),
            ("webhook_idempotency", "ix_webhook_idempotency_order_id"),
            ("orders", "ix_orders_created_at"),
        ):
            op.drop_index(index, table, postgresql_concurrently=True)
