"""The send-time decision: send an outbox row as text, as a template, or hold it, and why.

Pure: the outbox sender calls `decide` right before each send with what it read about the row
and its customer, and holds the row (status ``held``, never sent, no attempt counted) when the
answer is `Hold`. The rules (issue #16; docs/architecture.md, "The outbox"):

- A reply answers the customer's own message: always sent, always as text.
- A notification (``proactive``) to a customer who said STOP is held; when they START again
  the held ones stay held (stale news) and the next notification goes.
- Inside the 24-hour window since the customer's last message a notification is text; outside
  it (or with no message on record) it is the approved template for its event in the
  customer's language, else English, else held saying which template to add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from whatsorder.outbound.forms import Form, MetaTemplate, Text, TwilioTemplate
from whatsorder.outbound.templates import (
    FALLBACK_LANGUAGE,
    SETTING,
    Approved,
    TemplateCatalogue,
)

WINDOW = timedelta(hours=24)
# A text decided just before the window closes may reach the provider just after it, and the
# provider then refuses it for good: near the end a template goes instead.
WINDOW_MARGIN = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Notice:
    """What the decision reads of an outbox row."""

    provider: str
    body: str
    proactive: bool
    event: str | None = None
    language: str | None = None
    params: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    """What the decision reads of the customer: consent and their last message."""

    opted_out_at: datetime | None
    last_inbound_at: datetime | None


@dataclass(frozen=True, slots=True)
class Send:
    form: Form


@dataclass(frozen=True, slots=True)
class Hold:
    reason: str


def decide(
    notice: Notice, customer: Customer | None, now: datetime, templates: TemplateCatalogue
) -> Send | Hold:
    """How to send ``notice`` at ``now``, or why not to."""
    if not notice.proactive:
        return Send(Text(notice.body))
    if customer is not None and customer.opted_out_at is not None:
        return Hold(f"the customer opted out (STOP) at {_when(customer.opted_out_at)}")
    if in_window(customer, now):
        return Send(Text(notice.body))
    if notice.event is None:
        return Hold("outside the 24-hour window, and a message with no event has no template")
    language = notice.language or FALLBACK_LANGUAGE
    approved = templates.find(notice.event, language, notice.provider)
    if approved is None:
        languages = " or ".join(repr(name) for name in dict.fromkeys((language, "en")))
        return Hold(
            f"no approved template for {notice.event!r} in {languages}: add one to {SETTING}"
        )
    return _filled(approved, notice)


def in_window(customer: Customer | None, now: datetime) -> bool:
    """Whether free-form text may still go: the customer wrote within the last 24 hours."""
    if customer is None or customer.last_inbound_at is None:
        return False
    return now < customer.last_inbound_at + WINDOW - WINDOW_MARGIN


def _filled(approved: Approved, notice: Notice) -> Send | Hold:
    params = notice.params or {}
    missing = [name for name in approved.param_names() if params.get(name) is None]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        return Hold(
            f"the template for {notice.event!r} in {approved.language!r} needs {names}, "
            "which the notification does not carry"
        )
    template = approved.template
    if isinstance(template, MetaTemplate):
        values = tuple(str(params[name]) for name in template.parameters)
        return Send(MetaTemplate(template.name, template.language, values))
    variables = {number: str(params[name]) for number, name in template.variables.items()}
    return Send(TwilioTemplate(template.content_sid, variables))


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
