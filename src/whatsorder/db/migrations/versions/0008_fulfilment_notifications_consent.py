"""Fulfilment, customer notifications, languages and consent (issue #16).

- ``orders.fulfilment`` (placed, confirmed, packed, dispatched, delivered, cancelled), apart
  from ``orders.status`` (payment: placed, paid, cancelled, refunded); cancelled orders map
  to ``cancelled``, every other order to ``placed``. ``orders.fulfilment_changed_at``.
- ``order_transitions``: one row per fulfilment state an order reached, ``UNIQUE(order_id,
  to_state)``: the machine has no cycles, so a state is reached once, and a transition asked
  twice (a double click, two operators, a retried request) finds its row and changes nothing.
- ``outbox_messages``: ``order_id`` (indexed where set) and ``event`` (a notification of a
  fulfilment change; NULL on replies), ``language``, ``params`` (JSON: what a template is
  filled with), ``proactive`` (consent applies: a notification, not a reply to the
  customer's own message), ``held_reason`` (status ``held``: not sent, and why), ``sent_as``
  (``text`` or ``template``).
- ``retailers.language`` (NULL: English), ``last_inbound_at`` (the customer's last message:
  WhatsApp's 24-hour window), ``opted_out_at`` (NULL unless the customer said STOP) and
  ``consent_changed_at`` (when the last consent change happened, so a late one never
  overrides a newer one).
- ``consent_events``: the consent ledger, once per provider message (``UNIQUE(source,
  source_ref)``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 12:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAMES_AN_ORDER = sa.text("order_id IS NOT NULL")


def upgrade() -> None:
    # Nullable columns and constant defaults only: no table is rewritten on PostgreSQL.
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fulfilment", sa.String(length=16), server_default="placed", nullable=False)
        )
        batch_op.add_column(
            sa.Column("fulfilment_changed_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute(
        "UPDATE orders SET fulfilment = 'cancelled', fulfilment_changed_at = cancelled_at "
        "WHERE status = 'cancelled'"
    )
    with op.batch_alter_table("retailers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("language", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("last_inbound_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("consent_changed_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("order_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("event", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("language", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("params", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("proactive", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("held_reason", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("sent_as", sa.String(length=16), nullable=True))
    op.create_table(
        "order_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "order_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("orders.id"),
            nullable=False,
        ),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("order_id", "to_state", name="uq_order_transitions_order_state"),
    )
    op.create_table(
        "consent_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "retailer_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("retailers.id"),
            nullable=False,
        ),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("source_ref", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("source", "source_ref", name="uq_consent_events_source_ref"),
    )
    op.create_index("ix_consent_events_retailer_id", "consent_events", ["retailer_id"])
    # The order page's notifications; the outbox holds rows and replicas write it meanwhile.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_outbox_messages_order_id",
            "outbox_messages",
            ["order_id"],
            postgresql_where=NAMES_AN_ORDER,
            sqlite_where=NAMES_AN_ORDER,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_outbox_messages_order_id", "outbox_messages", postgresql_concurrently=True
        )
    op.drop_index("ix_consent_events_retailer_id", table_name="consent_events")
    op.drop_table("consent_events")
    op.drop_table("order_transitions")
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        for name in ("sent_as", "held_reason", "proactive", "params", "language", "event"):
            batch_op.drop_column(name)
        batch_op.drop_column("order_id")
    # Other tables refer to retailers and orders: a batch would copy and drop them, which
    # SQLite's foreign keys refuse. A plain DROP COLUMN (SQLite 3.35 and later) leaves them be.
    for name in ("consent_changed_at", "opted_out_at", "last_inbound_at", "language"):
        op.drop_column("retailers", name)
    op.drop_column("orders", "fulfilment_changed_at")
    op.drop_column("orders", "fulfilment")
