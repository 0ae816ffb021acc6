"""Payment links (issue #17): one per order, amount and provider, whoever asks and however often.

- ``payment_links``: the link a provider made for an order's outstanding amount, keyed by
  ``UNIQUE(provider, reference)`` where the reference names the order, the amount and the
  currency (``ORD-000123-53000-INR``): the same key the provider deduplicates on (Stripe's
  ``Idempotency-Key``, Razorpay's ``reference_id``), so a second ``PAY`` for the same amount
  finds this row and the link in it. ``status``: live, paid, expired, cancelled or failed (a
  provider's refusal, its message in ``last_error`` for the operator).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 13:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "payment_links",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("order_id", ID, sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("provider_link_id", sa.String(length=255), nullable=True),
        sa.Column("url", sa.String(length=1000), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("provider", "reference", name="uq_payment_links_provider_reference"),
    )
    op.create_index("ix_payment_links_order_id", "payment_links", ["order_id"])


def downgrade() -> None:
    op.drop_index("ix_payment_links_order_id", table_name="payment_links")
    op.drop_table("payment_links")
