"""What a message says about its sender: they exist, they wrote (the 24-hour window), the
language they read, and whether they want proactive messages (the consent ledger).

Consent changes are recorded once per provider message (``source``, ``source_ref``): a retried
STOP, even after its idempotency record expired, records nothing new, and a change that
happened before the newest recorded one is kept in the ledger without overriding it.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime

from whatsorder.ordering import replies
from whatsorder.ordering.customer import ConsentChange, Customer
from whatsorder.ordering.grammar import ChangeConsent, ChooseLanguage
from whatsorder.ordering.model import InboundMessage
from whatsorder.ordering.ports import UnitOfWork

META_PREFERENCES = "meta_preferences"  # consent_events.source of Meta's user_preferences


def message_time(message: InboundMessage, now: datetime) -> datetime:
    """When the customer sent it: the provider's time if it gave one (never later than now,
    whatever a clock says), else when it reached us (Twilio's webhook carries no time)."""
    return now if message.sent_at is None else min(message.sent_at, now)


async def register(uow: UnitOfWork, message: InboundMessage, now: datetime) -> Customer:
    """The sender, registered on their first message, with their last message moved forward."""
    async with uow:
        retailer_id = await uow.ordering.register_retailer(
            message.sender, _retailer_name(message.sender_name, message.sender), now
        )
        customer = await uow.customers.seen(retailer_id, message_time(message, now))
        await uow.commit()
    return customer


def _retailer_name(profile_name: str, sender: str) -> str:
    """The profile name without control characters (PostgreSQL refuses NUL), else the number."""
    name = "".join(char for char in profile_name if unicodedata.category(char) != "Cc")
    return name.strip() or sender


async def choose_language(uow: UnitOfWork, customer: Customer, command: ChooseLanguage) -> str:
    """Keep the language asked for and confirm in it; a language we lack gets the choices."""
    if command.language is None:
        return replies.language_unknown(command.asked, customer.language)
    async with uow:
        await uow.customers.choose_language(customer.id, command.language)
        await uow.commit()
    return replies.language_chosen(command.language)


async def change_consent(
    uow: UnitOfWork,
    customer: Customer,
    command: ChangeConsent,
    message: InboundMessage,
    now: datetime,
) -> str:
    """Record a STOP or START from the customer's own message and say where consent stands.

    The answer is the state after recording, not the word received: a STOP that reaches us
    after the START the customer sent later does not stop anything, and saying it did would
    mislead them. A reply to their own message is always allowed, STOP or not.
    """
    async with uow:
        await uow.consent.record(
            customer.id,
            command.change,
            source=message.source,
            source_ref=message.message_id,
            occurred_at=message_time(message, now),
            now=now,
        )
        stopped = await uow.consent.opted_out(customer.id)
        await uow.commit()
    return replies.consent_changed(stopped, customer.language)


async def record_preference(
    uow: UnitOfWork,
    sender: str,
    profile_name: str,
    change: ConsentChange,
    reference: str,
    occurred_at: datetime,
    detail: str | None,
    now: datetime,
) -> bool:
    """Meta's ``user_preferences`` (the customer stopped or resumed marketing messages in
    WhatsApp itself): recorded like a STOP or START, once per ``reference``; True if new. It is
    no message from the customer: their last message and language stay as they were."""
    async with uow:
        retailer_id = await uow.ordering.register_retailer(
            sender, _retailer_name(profile_name, sender), now
        )
        added = await uow.consent.record(
            retailer_id,
            change,
            source=META_PREFERENCES,
            source_ref=reference,
            occurred_at=min(occurred_at, now),
            now=now,
            detail=detail,
        )
        await uow.commit()
    return added
