"""What the engine keeps about one idempotency key: the request it saw and the answer it gave."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

# Headers worth replaying (IETF idempotency-key draft); never Set-Cookie, Date, rate limits.
REPLAYABLE_HEADERS = frozenset({"content-type", "location", "etag", "link"})
# On a response whose body was too large to keep: its replays carry the status, not the body.
STORED_HEADER = "idempotency-stored"


# The longest scope a store keeps as it is (the SQL table's column); see ``bounded_scope``.
MAX_SCOPE_LENGTH = 64


def bounded_scope(scope: str) -> str:
    """``scope``, or for a longer one its start and a hash of all of it, in 64 characters.

    A long route (a middleware scope is method and path) or a job's qualified name stays one
    distinct scope instead of failing the store's insert; a bounded scope maps to itself.
    """
    if len(scope) <= MAX_SCOPE_LENGTH:
        return scope
    digest = hashlib.sha256(scope.encode("utf-8", errors="surrogatepass")).hexdigest()[:24]
    return f"{scope[: MAX_SCOPE_LENGTH - len(digest) - 1]}~{digest}"


class Status(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """One request as the engine sees it: where it belongs, its key and what it said."""

    scope: str  # what keys are partitioned by: a webhook's type, a tenant and route, …
    key: str
    fingerprint: str
    source_ip: str | None = None
    request_body: str | None = None  # only when configured, and already redacted

    def __post_init__(self) -> None:
        if len(self.scope) > MAX_SCOPE_LENGTH:
            object.__setattr__(self, "scope", bounded_scope(self.scope))


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response small enough to keep and replay byte for byte."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def content_type(self) -> str | None:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return None

    @classmethod
    def build(cls, status: int, body: bytes, headers: Mapping[str, str]) -> StoredResponse:
        """Keep only the replayable headers, lower-cased and in a stable order."""
        kept = sorted(
            (name.lower(), value)
            for name, value in headers.items()
            if name.lower() in REPLAYABLE_HEADERS
        )
        return cls(status=status, body=body, headers=tuple(kept))

    def without_body(self) -> StoredResponse:
        """What is kept of a response too large to keep whole: its status and headers."""
        return StoredResponse(self.status, b"", (*self.headers, (STORED_HEADER, "false")))


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """What a handler gives back: the response, and optional columns to note on the record.

    ``keep=False`` answers without keeping the answer, whatever its status: the claim is
    undone (in transactional mode with the handler's writes) as for a 5xx, so the key stays
    free for the request it really belongs to. For a refusal that must not occupy a key.
    """

    response: StoredResponse
    annotations: Mapping[str, object] = field(default_factory=dict)
    keep: bool = True


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A stored key. ``epoch`` grows on every take-over and fences stale holders."""

    scope: str
    key: str
    fingerprint: str
    status: Status
    epoch: int
    locked_until: datetime | None
    expires_at: datetime | None
    response: StoredResponse | None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and as_utc(self.expires_at) <= now

    def lease_is_live(self, now: datetime) -> bool:
        return self.locked_until is not None and as_utc(self.locked_until) > now

    def can_be_taken_over(self, now: datetime) -> bool:
        """Expired, or in progress under a lease nobody renewed (its holder crashed)."""
        if self.status is Status.COMPLETED:
            return self.is_expired(now)
        return not self.lease_is_live(now)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Databases without time zones (SQLite) hand back naive UTC times."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
