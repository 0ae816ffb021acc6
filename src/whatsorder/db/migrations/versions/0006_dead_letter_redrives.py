"""Dead letters an operator can re-drive from the console.

- ``dead_letters.payload``: the signed delivery as it was received, which a re-drive runs
  through the webhook's own processing again. Never shown or logged; cleared once re-driven
  and after ``WHATSORDER_DEAD_LETTER_PAYLOAD_DAYS``. NULL on the rows kept before it.
- ``dead_letters.redrive_state`` (NULL, running, done, failed), ``redriven_at``,
  ``redriven_by``, ``redrive_result``: the last re-drive, who started it and what it did.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns only: added without rewriting the table on PostgreSQL.
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payload", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("redrive_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("redriven_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("redriven_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("redrive_result", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("redrive_result")
        batch_op.drop_column("redriven_by")
        batch_op.drop_column("redriven_at")
        batch_op.drop_column("redrive_state")
        batch_op.drop_column("payload")
