"""Refunds by their own id, dead letters by a business key, and sends counted per reply.

- ``payments.refund_id``: the provider's refund id on refund events, so that the event log says
  which refund each event was about (the audit reconciles it against the ledger).
- ``ledger_entries.payment_ref``: the provider's payment id of a credit or a refund reversal.
  Reversals are now keyed by the refund (several partial refunds of one payment each post
  once); this column ties each back to its payment. Filled in for the rows already there.
- ``dead_letters.delivery_key``: a business key that outlives the idempotency record, so a
  redelivered dead letter is not stored again after its record expired.
- ``outbox_messages.sends``: how many times a provider accepted this reply; more than one is a
  reply sent twice, which the audit reports.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns (and one with a constant default) are added without rewriting a table.
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refund_id", sa.String(length=255), nullable=True))
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payment_ref", sa.String(length=255), nullable=True))
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_key", sa.String(length=255), nullable=True))
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sends", sa.Integer(), server_default="0", nullable=False))
    # Until now a payment's credit and its one reversal were both keyed by the payment id.
    op.execute(
        "UPDATE ledger_entries SET payment_ref = source_ref "
        "WHERE entry_type IN ('payment_credit', 'refund_reversal')"
    )
    op.execute("UPDATE outbox_messages SET sends = 1 WHERE status = 'sent'")
    # These tables hold rows and replicas keep writing them while this runs.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_ledger_entries_payment_ref",
            "ledger_entries",
            ["source", "payment_ref"],
            postgresql_concurrently=True,
        )
        op.create_index(
            "uq_dead_letters_provider_delivery_key",
            "dead_letters",
            ["provider", "delivery_key"],
            unique=True,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "uq_dead_letters_provider_delivery_key",
            "dead_letters",
            postgresql_concurrently=True,
        )
        op.drop_index(
            "ix_ledger_entries_payment_ref", "ledger_entries", postgresql_concurrently=True
        )
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_column("sends")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("delivery_key")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_column("payment_ref")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("refund_id")
