"""The outbox sender: delivers the queued replies to Meta's Graph API, each once.

Replies are written to ``outbox_messages`` in the same transaction as the order they answer
(web/meta.py). This sender claims one due row at a time, in a short transaction, right before
POSTing it with no transaction open, then marks it sent with the message id Meta returned. A
failed send is retried with exponential backoff, up to a number of attempts, then left
``failed``.

Leases: a claim hides its row from other senders for ``claim_lease``, which must exceed the
send timeout, and the timeout bounds the whole POST (not only each read). Claiming each row
just before its own send, on a clock that moves with real time, means the lease always covers
that send: a batch of slow sends cannot outlive the leases of the rows late in it, so no row is
sent by a second sender while its first one is alive. A send starts only if the lease left after
the claim covers its whole timeout.

Crash safety: a row is marked sent only after the Graph API accepted it. A sender that dies in
between leaves the row pending; once its claim lease has passed, the next run POSTs it again
with the SAME ``Idempotency-Key`` (the row's key), so a receiving side that deduplicates by key
delivers one message. Meta does not document such deduplication for the Cloud API: against it
the exposure is exactly that crash window, one HTTP round trip per message. Every acceptance is
counted (``outbox_messages.sends``), so a reply sent twice shows in the audit.

Backlog: after each round the sender counts the replies still pending and publishes how many
and how long the oldest has waited (``observability.set_outbox_backlog``). It does so without
credentials too, sending nothing: replies that wait for a token are exactly what an operator
must see. The count only reads, so it changes nothing above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder import observability
from whatsorder.clock import utcnow
from whatsorder.db.outbox import OutboxBacklog, OutboxMessage, OutboxRepository
from whatsorder.providers import meta

log = logging.getLogger("whatsorder.outbox")

# Answers worth retrying as they are; any other 4xx will not change by sending it again.
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``first_delay`` doubled per attempt, at most ``max_delay``."""

    max_attempts: int = 8
    first_delay: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(hours=1)

    def delay(self, attempts: int) -> timedelta:
        doubled: timedelta = self.first_delay * (2 ** min(max(0, attempts - 1), 30))
        return min(doubled, self.max_delay)


class SendFailed(Exception):
    """The Graph API did not take the message; ``permanent`` if sending again cannot help."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.permanent = permanent


class OutboxSender:
    """Sends due outbox rows through the Cloud API's ``/{phone_number_id}/messages``.

    Without an access token or a phone number id it sends nothing and only counts the backlog.
    """

    def __init__(
        self,
        database: AsyncEngine,
        graph_url: str,
        access_token: str | None,
        phone_number_id: str | None,
        client: httpx.AsyncClient | None = None,
        *,
        retry: RetryPolicy | None = None,
        batch_size: int = 20,
        claim_lease: timedelta = timedelta(minutes=2),
        timeout: float = 10.0,
    ) -> None:
        self._database = database
        self._url = f"{graph_url.rstrip('/')}/{phone_number_id}/messages"
        self._access_token = access_token if phone_number_id else None
        self._client = client
        self._owns_client = client is None
        self._timeout = timeout
        self.retry = retry or RetryPolicy()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if timeout <= 0 or claim_lease <= timedelta(seconds=timeout):
            raise ValueError(
                f"claim_lease ({claim_lease.total_seconds()} s) must exceed the send timeout "
                f"({timeout} s): a send that outlives its lease is sent again by another sender"
            )
        self.batch_size = batch_size
        self.claim_lease = claim_lease
        self._warned_unconfigured = False

    async def __aenter__(self) -> OutboxSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this sender made it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send_due(self, now: datetime | None = None) -> int:
        """Send the replies due at ``now`` (up to a batch, one by one); how many were sent.

        Each row is claimed just before its own send, at ``now`` plus the time the batch has
        taken so far. Database errors propagate: the row being sent stays pending and is
        claimed again after its lease, to be sent with the same idempotency key.
        """
        return (await self._send_batch(_Clock(now or utcnow())))[1]

    async def _send_batch(
        self, clock: _Clock, stop: asyncio.Event | None = None
    ) -> tuple[int, int]:
        if self._access_token is None:
            if not self._warned_unconfigured:
                log.warning(
                    "Outbox not sent: no Meta access token or phone number id is configured"
                )
                self._warned_unconfigured = True
            return 0, 0
        claimed = sent = 0
        while claimed < self.batch_size and not (stop is not None and stop.is_set()):
            claimed_at = clock.now()
            async with self._database.begin() as connection:
                found = await OutboxRepository(connection).claim_due(
                    meta.SOURCE, claimed_at, 1, self.claim_lease
                )
            if not found:
                break
            claimed += 1
            sent += await self._send(found[0], clock, claimed_at)
        return claimed, sent

    async def _send(self, message: OutboxMessage, clock: _Clock, claimed_at: datetime) -> int:
        """POST one claimed row and record the outcome; 1 if the Graph API accepted it."""
        lease_left = claimed_at + self.claim_lease - clock.now()
        try:
            if lease_left <= timedelta(seconds=self._timeout):
                # A slow claim (a busy database): the lease could pass while the POST is out.
                raise SendFailed("the claim left too little lease for a send", permanent=False)
            provider_message_id = await self._post(message)
        except SendFailed as failure:
            await self._record_failure(message, failure, claimed_at)
            return 0
        async with self._database.begin() as connection:
            await OutboxRepository(connection).mark_sent(message, provider_message_id, clock.now())
        observability.record_outbox_send("sent")
        return 1

    async def _post(self, message: OutboxMessage) -> str | None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        try:
            # httpx's timeout bounds each read, not the send: a slow drip would outlive the lease.
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(
                    self._url,
                    json=meta.send_payload(message.recipient, message.body),
                    headers={
                        "Authorization": f"Bearer {self._access_token}",
                        "Idempotency-Key": message.idempotency_key,
                    },
                )
        except TimeoutError as error:
            raise SendFailed(f"no answer within {self._timeout} s", permanent=False) from error
        except httpx.HTTPError as error:  # timeouts, refused connections, broken responses
            raise SendFailed(f"{type(error).__name__}: {error}", permanent=False) from error
        status = response.status_code
        if status >= 400:
            retryable = status >= 500 or status in _RETRYABLE_STATUSES
            raise SendFailed(_describe(response), permanent=not retryable)
        return _message_id(response)

    async def _record_failure(
        self, message: OutboxMessage, failure: SendFailed, now: datetime
    ) -> None:
        final = failure.permanent or message.attempts >= self.retry.max_attempts
        retry_at = None if final else now + self.retry.delay(message.attempts)
        async with self._database.begin() as connection:
            await OutboxRepository(connection).mark_failed_attempt(message, str(failure), retry_at)
        observability.record_outbox_send("failed" if final else "retry")
        log.warning(
            "Outbox send failed",
            extra={
                "outbox_id": message.id,
                "attempts": message.attempts,
                "final": final,
                "reason": str(failure)[:200],
            },
        )

    async def publish_backlog(self, now: datetime | None = None) -> OutboxBacklog:
        """Count the replies pending at ``now`` and publish their number and oldest age."""
        async with self._database.connect() as connection:
            backlog = await OutboxRepository(connection).backlog(meta.SOURCE, now or utcnow())
        observability.set_outbox_backlog(meta.SOURCE, backlog.pending, backlog.oldest_age_seconds)
        return backlog

    async def run(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        """Send due replies until ``stop`` is set: a full batch goes on at once, else waits.

        Each round ends by publishing the backlog it leaves, whether anything could be sent.
        """
        try:
            while not stop.is_set():
                claimed = 0
                try:
                    claimed, _sent = await self._send_batch(_Clock(utcnow()), stop)
                except Exception:  # the database is down or busy: try again next round
                    log.exception("Outbox round failed")
                try:
                    await self.publish_backlog()
                except Exception:  # the gauges keep their last values; sending goes on
                    log.exception("Outbox backlog not counted")
                if claimed < self.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)
        finally:
            await self.aclose()


class _Clock:
    """The caller's ``now``, moved on by the real time passed since it was first read.

    Tests drive the sender with a ``now`` of their own; a batch still has to date each row's
    claim by when its send really begins, or the rows late in a slow batch outlive their leases.
    """

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._origin: float | None = None

    def now(self) -> datetime:
        tick = time.monotonic()
        if self._origin is None:
            self._origin = tick
        return self._start + timedelta(seconds=tick - self._origin)


def _describe(response: httpx.Response) -> str:
    """``HTTP 400 (131047: Re-engagement message)``: Meta's error code and title if given."""
    reason = f"HTTP {response.status_code}"
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return reason
    if isinstance(error, dict) and (error.get("code") or error.get("message")):
        title = error.get("error_user_title") or error.get("title") or error.get("message")
        reason += f" ({error.get('code')}: {meta.redacted(str(title), 200)})"
    return reason


def _message_id(response: httpx.Response) -> str | None:
    """The id Meta gave the sent message (``messages[0].id``), if it said."""
    try:
        messages = response.json().get("messages")
    except (ValueError, AttributeError):
        return None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        found = messages[0].get("id")
        return found if isinstance(found, str) else None
    return None
