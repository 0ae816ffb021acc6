"""The customer as their messages see them: who they are, their language, their consent.

Consent words are the whole message (case and surrounding spaces aside, a final ``.`` or
``!`` allowed), as Twilio reads its opt-out keywords: "stop sending atta" is an order question,
not an opt-out.

- Opt-out: STOP, STOPALL, UNSUBSCRIBE, END, QUIT — Twilio's keywords without CANCEL, which is
  our order command (``CANCEL ORD-…``; a bare CANCEL asks which order).
- Opt-in: START and UNSTOP. Not YES, which Twilio also counts: "yes" is an ordinary answer in a
  conversation with a shop, and taking it as consent would resume messages for someone who
  never asked for them. Opting back in takes a word that can mean nothing else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ConsentChange(enum.StrEnum):
    STOP = "stop"
    START = "start"


OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT"})
OPT_IN_WORDS = frozenset({"START", "UNSTOP"})


def consent_word(text: str) -> ConsentChange | None:
    """The change a whole message asks for, if it is one of the consent words."""
    word = text.strip().rstrip(".!").strip().upper()
    if word in OPT_OUT_WORDS:
        return ConsentChange.STOP
    if word in OPT_IN_WORDS:
        return ConsentChange.START
    return None


@dataclass(frozen=True, slots=True)
class Customer:
    """A registered sender: ``language`` is None until they choose one (English)."""

    id: int
    language: str | None = None
