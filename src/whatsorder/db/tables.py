"""The database tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    text,
)

from whatsorder.db.delivery_tables import dead_letters, inbound_deliveries, outbox_messages
from whatsorder.db.fulfilment_tables import consent_events, order_transitions, payment_links
from whatsorder.db.metadata import Id, metadata
from whatsorder.db.operator_tables import OPERATOR_ROLES, operator_actions, operators
from whatsorder_idempotency import idempotency_table

# The operator, delivery and fulfilment tables live in modules of their own; named here too, so that
# this module lists every table the migrations create.
__all__ = [
    "OPERATOR_ROLES",
    "Id",
    "consent_events",
    "dead_letters",
    "inbound_deliveries",
    "metadata",
    "operator_actions",
    "operators",
    "order_transitions",
    "outbox_messages",
    "payment_links",
]


def _now_column(name: str = "created_at") -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False)


retailers = Table(
    "retailers",
    metadata,
    Column("id", Id, primary_key=True),
    Column("whatsapp_id", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    _now_column(),
    # The customer's language for replies and notifications (NULL: English, the fallback).
    Column("language", String(8)),
    # The customer's last message: WhatsApp's 24-hour window for free-form text.
    Column("last_inbound_at", DateTime(timezone=True)),
    # Consent (migration 0008): set while the customer has said STOP; the ledger is
    # consent_events. A change older than consent_changed_at never overrides a newer one.
    Column("opted_out_at", DateTime(timezone=True)),
    Column("consent_changed_at", DateTime(timezone=True)),
)

products = Table(
    "products",
    metadata,
    Column("id", Id, primary_key=True),
    Column("sku", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("initial_stock", Integer, nullable=False),
    Column("restocked", Integer, nullable=False, server_default="0"),
    Column("stock", Integer, nullable=False),
    CheckConstraint("stock >= 0", name="stock_not_negative"),
    CheckConstraint("unit_price >= 0", name="price_not_negative"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", Id, primary_key=True),
    Column("retailer_id", Id, ForeignKey("retailers.id"), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("source", String(32), nullable=False),
    Column("source_message_id", String(255), nullable=False),
    _now_column(),
    Column("cancelled_at", DateTime(timezone=True)),
    # Fulfilment, apart from the payment status above: placed, confirmed, packed, dispatched,
    # delivered or cancelled (ordering/fulfilment.py has the machine).
    Column("fulfilment", String(16), nullable=False, server_default="placed"),
    Column("fulfilment_changed_at", DateTime(timezone=True)),
    # Forever, unlike idempotency records: a retry after the record expired finds this order.
    UniqueConstraint("source", "source_message_id", name="uq_orders_source_message"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("id", Id, primary_key=True),
    Column("order_id", Id, ForeignKey("orders.id"), nullable=False, index=True),
    Column("product_id", Id, ForeignKey("products.id"), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    CheckConstraint("quantity > 0", name="quantity_positive"),
)

payments = Table(
    "payments",
    metadata,
    Column("id", Id, primary_key=True),
    Column("order_id", Id, ForeignKey("orders.id"), index=True),
    Column("provider", String(32), nullable=False),
    Column("provider_event_id", String(255), nullable=False),
    Column("provider_payment_id", String(255)),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(32), nullable=False),
    _now_column(),
    # The provider's refund id, on refund events: which refund the event was about.
    Column("refund_id", String(255)),
    UniqueConstraint("provider", "provider_event_id", name="uq_payments_provider_event"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", Id, primary_key=True),
    Column("retailer_id", Id, ForeignKey("retailers.id"), nullable=False, index=True),
    Column("order_id", Id, ForeignKey("orders.id"), index=True),
    Column("entry_type", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    # The business key: (order, ORD-000001, order_debit), (stripe, pi_…, payment_credit), …
    Column("source", String(32), nullable=False),
    Column("source_ref", String(255), nullable=False),
    _now_column(),
    # The provider's payment id of a credit or a refund reversal (a reversal is keyed by its
    # refund): what the audit reconciles against the provider's reported amounts.
    Column("payment_ref", String(255)),
    UniqueConstraint("source", "source_ref", "entry_type", name="uq_ledger_entries_business_key"),
    Index("ix_ledger_entries_payment_ref", "source", "payment_ref"),
)

message_statuses = Table(
    "message_statuses",
    metadata,
    Column("id", Id, primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("error_code", String(32)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("provider", "message_id", name="uq_message_statuses_provider_message"),
)

webhook_idempotency = idempotency_table(
    metadata,
    extra_columns=[
        Column("retailer_id", Id, ForeignKey("retailers.id", ondelete="SET NULL")),
        Column("order_id", Id, ForeignKey("orders.id", ondelete="SET NULL")),
        # Twilio's I-Twilio-Idempotency-Token, noted for support; never relied on alone.
        Column("provider_token", String(255)),
    ],
)

Index("ix_orders_retailer_created", orders.c.retailer_id, orders.c.created_at)

# The console's pages at scale (migration 0007): the orders list's date range, the order page's
# records (partial: most records name no order), keys in flight (partial: completed ones leave).
IN_FLIGHT = text("status = 'in_progress'")
NAMES_AN_ORDER = text("order_id IS NOT NULL")
Index("ix_orders_created_at", orders.c.created_at)
Index(
    "ix_webhook_idempotency_order_id",
    webhook_idempotency.c.order_id,
    postgresql_where=NAMES_AN_ORDER,
    sqlite_where=NAMES_AN_ORDER,
)
Index(
    "ix_webhook_idempotency_in_flight",
    webhook_idempotency.c.created_at,
    postgresql_where=IN_FLIGHT,
    sqlite_where=IN_FLIGHT,
)

# Idempotency outcomes per hour, flushed from each worker's counters (see web/statistics.py):
# replays stay one store round trip, and stats still cover every worker and replica.
idempotency_stats = Table(
    "idempotency_stats",
    metadata,
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("webhook_type", String(64), primary_key=True),
    Column("outcome", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

# One row per cleanup run, for `whatsorder stats` and the admin API.
idempotency_cleanup_runs = Table(
    "idempotency_cleanup_runs",
    metadata,
    Column("id", Id, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("rows_deleted", BigInteger, nullable=False),
    Column("stale_removed", BigInteger, nullable=False),
    Column("outcome", String(16), nullable=False),  # completed, stopped, failed, skipped
    Column("detail", String(500)),
    Column("trigger", String(16), nullable=False),  # schedule, cli
)


# Payment events that did not match their order (amount, currency, unknown order, order of
# events): recorded, never silently accepted.
payment_exceptions = Table(
    "payment_exceptions",
    metadata,
    Column("id", Id, primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("provider_event_id", String(255), nullable=False),
    Column("order_id", Id, ForeignKey("orders.id")),
    Column("kind", String(32), nullable=False),
    Column("expected_amount", BigInteger),
    Column("received_amount", BigInteger),
    Column("currency", String(3)),
    Column("detail", String(500)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # An operator's resolution: the exception leaves the open list; the audit trail keeps it.
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolved_by", String(64)),
    Column("resolution", String(500)),
    UniqueConstraint(
        "provider", "provider_event_id", "kind", name="uq_payment_exceptions_event_kind"
    ),
)
