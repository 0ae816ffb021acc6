"""What goes to a provider: one outbox row in the form it is sent in, and how a send can fail.

A row leaves as free-form text inside WhatsApp's 24-hour window, or as an approved template
outside it (docs/architecture.md, "The outbox"). The providers' senders
(`whatsorder.providers.meta.outbound`, `whatsorder.providers.twilio_outbound`) turn these
forms into their API's request and their answers into `SendFailed`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Text:
    """Free-form text: a reply, or a notification inside the 24-hour window."""

    body: str


@dataclass(frozen=True, slots=True)
class MetaTemplate:
    """A template approved on Meta: its name, language code and body parameters in order."""

    name: str
    language: str
    parameters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TwilioTemplate:
    """A Content API template on Twilio: its Content SID and its variables by number."""

    content_sid: str
    variables: Mapping[str, str]


Form = Text | MetaTemplate | TwilioTemplate


@dataclass(frozen=True, slots=True)
class Outbound:
    """One outbox row as sent: ``key`` is its outbox key, the same on every attempt."""

    key: str
    recipient: str
    form: Form

    @property
    def sent_as(self) -> str:
        """``text`` or ``template``, as ``outbox_messages.sent_as`` records it."""
        return "text" if isinstance(self.form, Text) else "template"


class Refusal(enum.Enum):
    """A refusal that sending again cannot cure and that the outbox holds the row for."""

    OPTED_OUT = "opted_out"  # the customer stopped these messages (Meta 131050, Twilio 21610)
    WINDOW_CLOSED = "window_closed"  # free-form text outside the 24-hour window (Meta 131047)


class SendFailed(Exception):
    """The provider did not take the message.

    ``permanent`` if sending it again cannot help; ``refusal`` when the provider said why in a
    way the outbox acts on (it holds the row instead of failing it).
    """

    def __init__(self, reason: str, *, permanent: bool, refusal: Refusal | None = None) -> None:
        super().__init__(reason)
        self.permanent = permanent or refusal is not None
        self.refusal = refusal


class Channel(Protocol):
    """One provider's way of sending: the provider part of an outbox sender."""

    @property
    def provider(self) -> str:
        """The provider's name as the outbox rows carry it (``meta``, ``twilio``)."""
        ...

    @property
    def missing_configuration(self) -> str | None:
        """What is missing for sending, in words (``None`` when it can send)."""
        ...

    async def send(self, outbound: Outbound) -> str | None:
        """Send one message; the provider's id for it. Raises `SendFailed`.

        The caller bounds the whole call in time; a channel needs no deadline of its own.
        """
        ...

    async def aclose(self) -> None:
        """Close what the channel opened (HTTP sessions)."""
        ...
