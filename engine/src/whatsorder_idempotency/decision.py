"""What to do with a record already under the key: the one table of docs/architecture.md §3.

| record found                          | decision                                 |
|---------------------------------------|------------------------------------------|
| completed, same fingerprint           | ``Replay`` the stored response           |
| completed, other fingerprint          | ``FingerprintMismatch`` (422)            |
| in progress, lease live               | ``IN_FLIGHT``: wait, else 409            |
| in progress with a dead lease, or     | ``TAKE_OVER`` (the epoch grows) and run  |
| completed but expired                 |                                          |

No record at all is simpler still: the request claims the key and runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from whatsorder_idempotency.errors import FingerprintMismatch
from whatsorder_idempotency.record import (
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
)


@dataclass(frozen=True, slots=True)
class Replay:
    """Completed by an identical request: send its stored response again."""

    response: StoredResponse


class Pending(enum.Enum):
    """The record holds no answer to send yet."""

    IN_FLIGHT = "in_flight"  # another holder's lease is live
    TAKE_OVER = "take_over"  # its holder crashed, or it expired: claim it with epoch + 1


Decision = Replay | Pending


def decide(record: IdempotencyRecord, request: IdempotentRequest, now: datetime) -> Decision:
    """Replay, wait or take over; raises ``FingerprintMismatch`` for another request's key."""
    if record.can_be_taken_over(now):
        return Pending.TAKE_OVER
    if record.status is Status.COMPLETED:
        if record.fingerprint != request.fingerprint:
            raise FingerprintMismatch(
                "This idempotency key was already used with a different request."
            )
        assert record.response is not None
        return Replay(record.response)
    return Pending.IN_FLIGHT
