"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

# Replicas keep serving while this runs (docs/deployment.md), so nothing here may lock a busy
# table for long. An index on a table that already holds rows is built CONCURRENTLY on
# PostgreSQL, outside the migration's transaction:
#
#     with op.get_context().autocommit_block():
#         op.create_index("ix_t_c", "t", ["c"], postgresql_concurrently=True)
#
# (and dropped the same way in downgrade). Say in a comment why an index is not, e.g. its table
# is created in this same migration and is empty. tests/deploy/test_migrations.py checks this.
# Old replicas run against the new schema until the roll is over: add, never rename or drop,
# in the release that migrates; the release after can drop what nothing reads any more.

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
