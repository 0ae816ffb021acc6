"""The outbox senders: deliver the queued replies and notifications, each once, one loop per
provider (docs/architecture.md, "The outbox").

Rows are written to ``outbox_messages`` in the same transaction as what they tell (an order's
reply, a fulfilment change). A sender claims one due row of its provider at a time, in a short
transaction, decides right there how it goes (`whatsorder.outbound.decision`: text, template,
or held, which counts no attempt), then sends it with no transaction open through its
provider's `Channel` (Meta's Graph API, Twilio's Messages API) and marks it sent with the id
the provider returned. A failed send is retried with exponential backoff, up to a number of
attempts, then left ``failed``; a refusal the provider explains (the customer opted out, the
24-hour window closed) holds the row instead, and an opt-out is written to the consent ledger.

Leases: a claim hides its row from other senders for ``claim_lease``, which must exceed the
send timeout, and the timeout bounds the whole send (not only each read). Claiming each row
just before its own send, on a clock that moves with real time, means the lease always covers
that send: no row is sent by a second sender while its first one is alive. A send starts only
if the lease left after the claim covers its whole timeout.

Crash window: neither provider documents send-side idempotency, so a sender that dies between
the provider's acceptance and our commit leaves the row pending, and the next claim sends it
again (Meta's with the same ``Idempotency-Key``, the row's key). Nothing but that commit sits
in the window: the connection that records it is checked out before the send, so no wait for
the pool falls inside it, and a failed commit is tried again (``outbox_outcomes``). Every
acceptance recorded counts in ``outbox_messages.sends``, so a row accepted twice shows in the
audit; docs/reliability.md (§8) gives the measured window.

Backlog: after each round the sender counts its provider's pending rows and publishes how many
and how long the oldest has waited. It does so without credentials too, sending nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder import observability
from whatsorder.clock import utcnow
from whatsorder.db.outbox import OutboxBacklog, OutboxMessage, OutboxRepository
from whatsorder.db.outbox_holds import hold, recipient_of
from whatsorder.outbound.decision import Hold, Notice, Send, decide
from whatsorder.outbound.forms import Channel, Outbound, SendFailed
from whatsorder.outbound.templates import TemplateCatalogue
from whatsorder.outbox_outcomes import RetryPolicy, details, record_failure, record_sent
from whatsorder.providers.meta.outbound import MetaChannel

log = logging.getLogger("whatsorder.outbox")

__all__ = ["ChannelSender", "OutboxSender", "RetryPolicy", "SendFailed"]


class ChannelSender:
    """Sends the due outbox rows of ``channel``'s provider through it.

    Without the channel's credentials it sends nothing and only counts the backlog.
    """

    def __init__(
        self,
        database: AsyncEngine,
        channel: Channel,
        *,
        templates: TemplateCatalogue | None = None,
        retry: RetryPolicy | None = None,
        batch_size: int = 20,
        claim_lease: timedelta = timedelta(minutes=2),
        timeout: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if timeout <= 0 or claim_lease <= timedelta(seconds=timeout):
            raise ValueError(
                f"claim_lease ({claim_lease.total_seconds()} s) must exceed the send timeout "
                f"({timeout} s): a send that outlives its lease is sent again by another sender"
            )
        self._database = database
        self.channel = channel
        self.templates = templates or TemplateCatalogue()
        self.retry = retry or RetryPolicy()
        self.batch_size = batch_size
        self.claim_lease = claim_lease
        self._timeout = timeout
        self._warned_unconfigured = False

    @property
    def provider(self) -> str:
        return self.channel.provider

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close what the channel opened."""
        await self.channel.aclose()

    async def send_due(self, now: datetime | None = None) -> int:
        """Send the rows due at ``now`` (up to a batch, one by one); how many were sent.

        Each row is claimed just before its own send, at ``now`` plus the time the batch has
        taken so far. Database errors propagate: the row being sent stays pending and is
        claimed again after its lease.
        """
        return (await self._send_batch(_Clock(now or utcnow())))[1]

    async def _send_batch(
        self, clock: _Clock, stop: asyncio.Event | None = None
    ) -> tuple[int, int]:
        missing = self.channel.missing_configuration
        if missing is not None:
            if not self._warned_unconfigured:
                log.warning(f"Outbox not sent: {missing}", extra={"provider": self.provider})
                self._warned_unconfigured = True
            return 0, 0
        claimed = sent = 0
        while claimed < self.batch_size and not (stop is not None and stop.is_set()):
            # One connection for the claim and the record: no wait for the pool between the
            # provider's acceptance and the commit that records it.
            async with self._database.connect() as connection:
                claimed_at = clock.now()
                async with connection.begin():
                    found = await OutboxRepository(connection).claim_due(
                        self.provider, claimed_at, 1, self.claim_lease
                    )
                    if not found:
                        break
                    claimed += 1
                    decision = await self._decide(connection, found[0], claimed_at)
                if isinstance(decision, Send):
                    outbound = Outbound(found[0].idempotency_key, found[0].recipient, decision.form)
                    sent += await self._send(connection, found[0], outbound, clock, claimed_at)
        return claimed, sent

    async def _decide(
        self, connection: AsyncConnection, message: OutboxMessage, now: datetime
    ) -> Send | Hold:
        """How ``message`` goes; a row held here is held in the claim's own transaction."""
        notice = Notice(
            self.provider,
            message.body,
            message.proactive,
            message.event,
            message.language,
            message.params,
        )
        # A reply is sent whatever its customer's state: only a notification reads it.
        recipient = await recipient_of(connection, message) if message.proactive else None
        customer = recipient.customer if recipient is not None else None
        decision = decide(notice, customer, now, self.templates)
        if isinstance(decision, Hold):
            await hold(connection, message, decision.reason, attempted=False)
            observability.record_outbox_send("held")
            log.info("Outbox message held", extra=details(message, decision.reason))
        return decision

    async def _send(
        self,
        connection: AsyncConnection,
        message: OutboxMessage,
        outbound: Outbound,
        clock: _Clock,
        claimed_at: datetime,
    ) -> int:
        """Send one claimed row and record the outcome; 1 if the provider accepted it."""
        lease_left = claimed_at + self.claim_lease - clock.now()
        try:
            if lease_left <= timedelta(seconds=self._timeout):
                # A slow claim (a busy database): the lease could pass while the send is out.
                raise SendFailed("the claim left too little lease for a send", permanent=False)
            try:
                # The whole send, not each read: a slow drip would outlive the lease.
                async with asyncio.timeout(self._timeout):
                    provider_message_id = await self.channel.send(outbound)
            except TimeoutError as error:
                raise SendFailed(f"no answer within {self._timeout} s", permanent=False) from error
        except SendFailed as failure:
            await record_failure(
                connection, message, failure, claimed_at, self.retry, self.provider
            )
            return 0
        await self._record_sent(connection, message, provider_message_id, outbound, clock)
        observability.record_outbox_send("sent")
        return 1

    async def _record_sent(
        self,
        connection: AsyncConnection,
        message: OutboxMessage,
        provider_message_id: str | None,
        outbound: Outbound,
        clock: _Clock,
    ) -> None:
        await record_sent(connection, message, provider_message_id, outbound.sent_as, clock.now)

    async def publish_backlog(self, now: datetime | None = None) -> OutboxBacklog:
        """Count the rows pending at ``now`` and publish their number and oldest age."""
        async with self._database.connect() as connection:
            backlog = await OutboxRepository(connection).backlog(self.provider, now or utcnow())
        observability.set_outbox_backlog(self.provider, backlog.pending, backlog.oldest_age_seconds)
        return backlog

    async def run(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        """Send due rows until ``stop`` is set: a full batch goes on at once, else waits.

        Each round ends by publishing the backlog it leaves, whether anything could be sent.
        """
        try:
            while not stop.is_set():
                claimed = 0
                try:
                    claimed, _sent = await self._send_batch(_Clock(utcnow()), stop)
                except Exception:  # the database is down or busy: try again next round
                    log.exception("Outbox round failed", extra={"provider": self.provider})
                try:
                    await self.publish_backlog()
                except Exception:  # the gauges keep their last values; sending goes on
                    log.exception("Outbox backlog not counted")
                if claimed < self.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)
        finally:
            await self.aclose()


class OutboxSender(ChannelSender):
    """Meta's sender: the Cloud API's ``/{phone_number_id}/messages`` (`MetaChannel`)."""

    def __init__(
        self,
        database: AsyncEngine,
        graph_url: str,
        access_token: str | None,
        phone_number_id: str | None,
        client: httpx.AsyncClient | None = None,
        **options: Any,
    ) -> None:
        timeout = options.get("timeout", 10.0)
        channel = MetaChannel(graph_url, access_token, phone_number_id, client, timeout)
        super().__init__(database, channel, **options)


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
