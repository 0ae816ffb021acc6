"""The read-only views an operator uses, in one namespace: the audit, statistics and listings.

Each lives in its own module (``audit``, ``payment_audit``, ``idempotency_statistics``,
``listings``); callers may import them from here as ``reports.audit(connection)``.
"""

from whatsorder.db.audit import audit as audit
from whatsorder.db.idempotency_statistics import idempotency_statistics as idempotency_statistics
from whatsorder.db.listings import order_total as order_total
from whatsorder.db.listings import recent_dead_letters as recent_dead_letters
from whatsorder.db.listings import recent_orders as recent_orders
from whatsorder.db.payment_audit import payment_audit as payment_audit
