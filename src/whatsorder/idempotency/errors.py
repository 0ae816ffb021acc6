"""One exception per outcome the caller must act on; ``problems.py`` maps them to HTTP."""

from __future__ import annotations


class IdempotencyError(Exception):
    """Base of the engine's outcomes that are not a response to send."""


class FingerprintMismatch(IdempotencyError):
    """The key was used before with another request: nothing is processed (422)."""


class RequestInFlight(IdempotencyError):
    """The same key is being processed right now and did not finish in time (409)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreBusy(IdempotencyError):
    """The store could not take the claim in time (locks or pool exhausted); retry later (503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransactionConflict(StoreBusy):
    """The transaction lost a race with another one and was rolled back whole: a deadlock, a
    serialization failure, or a unique key another transaction took meanwhile. Running it again
    is safe (the engine does, a few times); if it escapes, it is a 503 like any busy store."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=1)


class StoreUnavailable(IdempotencyError):
    """The store cannot be reached; failing closed (503)."""
