"""The tables of deliveries in and out: dead letters, the reply outbox and the inbox.

``whatsorder.db.tables`` re-exports them, with every other table.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    false,
    text,
)

from whatsorder.db.metadata import Id, metadata

# Signed deliveries we could not process: kept (redacted) for inspection, answered 200 so the
# provider stops retrying (Meta retries anything but 200 for seven days).
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("body", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    # A business key that outlives the idempotency record (Meta: the hash of what was kept), so
    # a redelivery after the record expired stores no second copy. NULL on rows from before it.
    Column("delivery_key", String(255)),
    # The signed delivery as received, for a re-drive (web/redrive.py): never shown or logged,
    # cleared once re-driven and after WHATSORDER_DEAD_LETTER_PAYLOAD_DAYS. NULL before 0006.
    Column("payload", Text),
    # The last re-drive: NULL (never), running, done or failed; when, by whom, what it did.
    Column("redrive_state", String(16)),
    Column("redriven_at", DateTime(timezone=True)),
    Column("redriven_by", String(64)),
    Column("redrive_result", String(500)),
    Index("uq_dead_letters_provider_delivery_key", "provider", "delivery_key", unique=True),
)

# Replies that do not ride on the webhook response (Meta): written in the order's transaction,
# sent afterwards by the outbox sender with an idempotent send.
outbox_messages = Table(
    "outbox_messages",
    metadata,
    Column("id", Id, primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # pending, sent, failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", String(500)),
    Column("provider_message_id", String(255)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    # How many times the provider accepted this reply: more than once is a reply sent twice.
    Column("sends", Integer, nullable=False, server_default="0"),
    # A notification of a fulfilment change (NULL on replies): its order and event.
    Column("order_id", Id),
    Column("event", String(32)),
    Column("language", String(8)),
    Column("params", Text),  # JSON: what a template is filled with
    # Consent applies to a proactive message (a notification), not to a reply.
    Column("proactive", Boolean, nullable=False, server_default=false()),
    Column("held_reason", String(500)),  # status "held": not sent, and why
    Column("sent_as", String(16)),  # "text" or "template"
    Index("ix_outbox_messages_due", "status", "next_attempt_at"),
    Index(
        "ix_outbox_messages_order_id",
        "order_id",
        postgresql_where=text("order_id IS NOT NULL"),
        sqlite_where=text("order_id IS NOT NULL"),
    ),
)

# Every inbound delivery and what became of it (the console's inbox): written in batches from
# memory, so a replay's one round trip stays one. Refusals before the engine have no key.
inbound_deliveries = Table(
    "inbound_deliveries",
    metadata,
    Column("id", Id, primary_key=True),
    Column("webhook_type", String(64), nullable=False),
    Column("idempotency_key", String(255)),
    Column("outcome", String(24), nullable=False),
    Column("http_status", Integer),
    Column("detail", String(200)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_inbound_deliveries_received_at", "received_at"),
    Index("ix_inbound_deliveries_key", "webhook_type", "idempotency_key"),
    Index("ix_inbound_deliveries_outcome", "outcome", "id"),
)
