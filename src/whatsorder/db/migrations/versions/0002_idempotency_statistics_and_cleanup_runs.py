"""Idempotency statistics per hour and the record of cleanup runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 12:55:49.030906
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_cleanup_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows_deleted", sa.BigInteger(), nullable=False),
        sa.Column("stale_removed", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=True),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_cleanup_runs")),
    )
    op.create_table(
        "idempotency_stats",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("webhook_type", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "webhook_type", "outcome", name=op.f("pk_idempotency_stats")
        ),
    )


def downgrade() -> None:
    op.drop_table("idempotency_stats")
    op.drop_table("idempotency_cleanup_runs")
