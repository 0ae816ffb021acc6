"""The tables of what follows an order: fulfilment transitions and consent (migration 0008),
payment links (0009).

``whatsorder.db.tables`` re-exports them, with every other table.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, String, Table, UniqueConstraint

from whatsorder.db.metadata import Id, metadata


def _created_at() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False)


# One row per fulfilment state an order reached: the machine has no cycles, so a state is
# reached once, and a transition asked twice finds its row and changes nothing.
order_transitions = Table(
    "order_transitions",
    metadata,
    Column("id", Id, primary_key=True),
    Column("order_id", Id, ForeignKey("orders.id"), nullable=False),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    _created_at(),
    UniqueConstraint("order_id", "to_state", name="uq_order_transitions_order_state"),
)

# The consent ledger: STOP and START, Meta's user preferences and opt-out send errors, once
# per provider message; retailers.opted_out_at is where it stands.
consent_events = Table(
    "consent_events",
    metadata,
    Column("id", Id, primary_key=True),
    Column("retailer_id", Id, ForeignKey("retailers.id"), nullable=False, index=True),
    Column("change", String(8), nullable=False),  # stop, start
    Column("source", String(32), nullable=False),
    Column("source_ref", String(255), nullable=False),
    Column("detail", String(200)),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    _created_at(),
    UniqueConstraint("source", "source_ref", name="uq_consent_events_source_ref"),
)

# Payment links (migration 0009): one per provider and reference (the order, the amount, the
# currency), the key the provider deduplicates on too.
payment_links = Table(
    "payment_links",
    metadata,
    Column("id", Id, primary_key=True),
    Column("order_id", Id, ForeignKey("orders.id"), nullable=False, index=True),
    Column("provider", String(32), nullable=False),
    Column("reference", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("provider_link_id", String(255)),
    Column("url", String(1000)),
    Column("status", String(16), nullable=False),  # live, paid, expired, cancelled, failed
    Column("last_error", String(500)),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("provider", "reference", name="uq_payment_links_provider_reference"),
)
