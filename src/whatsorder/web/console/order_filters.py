"""The orders list's filters as the operator typed them: read, checked, and written back into
the links of the other pages.

Dates are whole UTC days (the console shows times in UTC), both ends included: "to 2026-12-03"
keeps everything placed on the 3rd.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from urllib.parse import urlencode

ORDER_STATUSES = ("placed", "paid", "cancelled")
FULFILMENT_STATES = ("placed", "confirmed", "packed", "dispatched", "delivered", "cancelled")
MAX_SEARCH_CHARS = 100  # an order number, some digits or a name; longer is not a search


class BadFilter(ValueError):
    """A filter the list cannot apply; its message says which and why."""


@dataclass(frozen=True, slots=True)
class OrderFilters:
    status: str | None = None
    fulfilment: str | None = None
    retailer_id: int | None = None
    search: str | None = None
    placed_from: date | None = None
    placed_to: date | None = None
    page: int = 1

    @classmethod
    def read(
        cls,
        *,
        status: str | None,
        retailer: str | None,
        fulfilment: str | None = None,
        search: str | None,
        placed_from: str | None,
        placed_to: str | None,
        page: str | None,
    ) -> OrderFilters:
        """The filters of a request's query string; ``BadFilter`` says what is wrong."""
        if status and status not in ORDER_STATUSES:
            raise BadFilter(f"Status must be one of {', '.join(ORDER_STATUSES)}.")
        if fulfilment and fulfilment not in FULFILMENT_STATES:
            raise BadFilter(f"Fulfilment must be one of {', '.join(FULFILMENT_STATES)}.")
        search = (search or "").strip() or None
        if search is not None and len(search) > MAX_SEARCH_CHARS:
            raise BadFilter(f"Search for at most {MAX_SEARCH_CHARS} characters.")
        first, last = _day(placed_from, "From"), _day(placed_to, "To")
        if first is not None and last is not None and first > last:
            raise BadFilter(f"From ({first}) is after To ({last}): no day is in between.")
        return cls(
            status=status or None,
            fulfilment=fulfilment or None,
            retailer_id=_whole(retailer, "Retailer", "a retailer from the list"),
            search=search,
            placed_from=first,
            placed_to=last,
            page=_whole(page, "Page", "a page number") or 1,
        )

    @property
    def since(self) -> datetime | None:
        """The first moment kept: ``placed_from`` at midnight UTC."""
        return None if self.placed_from is None else datetime.combine(self.placed_from, time(), UTC)

    @property
    def before(self) -> datetime | None:
        """The first moment no longer kept: midnight UTC after ``placed_to`` (None after the
        last day a date can name)."""
        if self.placed_to is None or self.placed_to == date.max:
            return None
        return datetime.combine(self.placed_to + timedelta(days=1), time(), UTC)

    def query(self, page: int, *, retailer: int | Literal["kept"] | None = "kept") -> str:
        """The query string of ``page`` of this list, every filter kept (the retailer's
        changed, or dropped with None, if ``retailer`` says so)."""
        values = {
            "status": self.status,
            "fulfilment": self.fulfilment,
            "retailer": self.retailer_id if retailer == "kept" else retailer,
            "q": self.search,
            "from": self.placed_from,
            "to": self.placed_to,
        }
        kept = [(name, str(value)) for name, value in values.items() if value is not None]
        return urlencode([*kept, ("page", str(page))])


def _day(value: str | None, what: str) -> date | None:
    if not value or not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise BadFilter(
            f"{what} must be a date written YYYY-MM-DD (like 2026-12-03), not {value[:40]!r}."
        ) from None


def _whole(value: str | None, what: str, meaning: str) -> int | None:
    if not value or not value.strip():
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or int(text) < 1:
        raise BadFilter(f"{what} must be {meaning}, not {value[:40]!r}.")
    return int(text)
