"""The operator console: its operators, their audit trail, and the inbox of deliveries.

- ``operators``: who may sign in to ``/console``, their role and an argon2id hash.
- ``operator_actions``: every action an operator took (sign-ins too), with before and after.
- ``inbound_deliveries``: every inbound webhook delivery and its outcome (new, replayed,
  refused, …), written in batches by each worker.
- ``payment_exceptions.resolved_at/resolved_by/resolution``: an operator's resolution.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 15:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", Id, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("name", name=op.f("uq_operators_name")),
    )
    op.create_table(
        "operator_actions",
        sa.Column("id", Id, nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("address", sa.String(length=45), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_actions")),
    )
    op.create_index("ix_operator_actions_at", "operator_actions", ["at"])
    op.create_table(
        "inbound_deliveries",
        sa.Column("id", Id, nullable=False),
        sa.Column("webhook_type", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_deliveries")),
    )
    op.create_index("ix_inbound_deliveries_received_at", "inbound_deliveries", ["received_at"])
    op.create_index(
        "ix_inbound_deliveries_key", "inbound_deliveries", ["webhook_type", "idempotency_key"]
    )
    with op.batch_alter_table("payment_exceptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("resolved_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("resolution", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_exceptions", schema=None) as batch_op:
        batch_op.drop_column("resolution")
        batch_op.drop_column("resolved_by")
        batch_op.drop_column("resolved_at")
    op.drop_index("ix_inbound_deliveries_key", table_name="inbound_deliveries")
    op.drop_index("ix_inbound_deliveries_received_at", table_name="inbound_deliveries")
    op.drop_table("inbound_deliveries")
    op.drop_index("ix_operator_actions_at", table_name="operator_actions")
    op.drop_table("operator_actions")
    op.drop_table("operators")
