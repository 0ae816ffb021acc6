"""The application's clock: the one place outside the idempotency engine that reads the time.

Times are aware and in UTC. The engine's own clock is the same one, so a record's times and the
application's agree; ``as_utc`` reads back times a database without time zones (SQLite) stored.
"""

from __future__ import annotations

from datetime import datetime

from whatsorder_idempotency.record import as_utc as as_utc
from whatsorder_idempotency.record import utcnow as utcnow


def isoformat(moment: datetime | None) -> str | None:
    """``moment`` in ISO 8601 with its UTC offset; ``None`` for no moment."""
    return None if moment is None else as_utc(moment).isoformat()
