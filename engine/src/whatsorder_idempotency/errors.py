"""One exception per outcome the caller must act on; ``problems.py`` maps them to HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# Retry-After (seconds) when nobody said otherwise; ``IdempotencyConfig`` starts from it.
DEFAULT_RETRY_AFTER = 1


class IdempotencyError(Exception):
    """Base of the engine's outcomes that are not a response to send."""


class FingerprintMismatch(IdempotencyError):
    """The key was used before with another request: nothing is processed (422)."""


class _RetryLater(IdempotencyError):
    """An outcome that tells the client when to retry.

    A store raises it without an estimate when it has none of its own (it does not know the
    engine's configuration); the engine then gives its configured Retry-After.
    """

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self._retry_after = retry_after

    @property
    def retry_after(self) -> int:
        """Seconds the client should wait before it retries (the Retry-After header)."""
        return self._retry_after if self._retry_after is not None else DEFAULT_RETRY_AFTER


class RequestInFlight(_RetryLater):
    """The same key is being processed right now and did not finish in time (409)."""


class StoreBusy(_RetryLater):
    """The store could not take the claim in time (locks or pool exhausted); retry later (503)."""


class TransactionConflict(StoreBusy):
    """The transaction lost a race with another one and was rolled back whole: a deadlock, a
    serialization failure, or a unique key another transaction took meanwhile. Running it again
    is safe (the engine does, a few times); if it escapes, it is a 503 like any busy store."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class StoreUnavailable(IdempotencyError):
    """The store cannot be reached; failing closed (503)."""


@contextmanager
def retry_after_by_default(seconds: int) -> Iterator[None]:
    """Give ``seconds`` as Retry-After to an escaping outcome that carries no estimate."""
    try:
        yield
    except _RetryLater as error:
        if error._retry_after is None:
            error._retry_after = seconds
        raise
