"""The operator console's tables: who may sign in, and everything operators did."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text

from whatsorder.db.metadata import Id, metadata

# The operator console: who may sign in (an argon2id hash, never the password), and everything
# operators did, with the state before and after (JSON).
OPERATOR_ROLES = ("viewer", "operator", "admin")

operators = Table(
    "operators",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # viewer, operator, admin
    Column("password_hash", String(255), nullable=False),  # argon2id, never the password
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled_at", DateTime(timezone=True)),
    Column("last_login_at", DateTime(timezone=True)),
)

# Every operator action: who, what, on what, when, and the state before and after (JSON).
operator_actions = Table(
    "operator_actions",
    metadata,
    Column("id", Id, primary_key=True),
    Column("operator", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255)),
    Column("before", Text),
    Column("after", Text),
    Column("address", String(45)),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_operator_actions_at", "at"),
)
