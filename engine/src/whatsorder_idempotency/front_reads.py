"""What a replay front's read found, handed to the engine's ``execute`` of the same request.

A replay front (``replay_front.py``) reads a key's record before the app runs. When it finds
none, the transactional endpoint behind it would read the same record again before its claim;
this note lets it skip that read and claim at once.

Only ever a saving, never a decision: the claim is ``INSERT … ON CONFLICT DO NOTHING`` and
reads the record when the insert finds one, so a record committed after the front's read (a
duplicate that won the race) is still seen and replayed. The note belongs to one task (a
context variable: an ASGI request is one task), names the store and the key it was read for,
and is used up by the first ``execute`` that matches it.
"""

from __future__ import annotations

from contextvars import ContextVar

from whatsorder_idempotency.record import IdempotentRequest

_found_none: ContextVar[tuple[int, str, str] | None] = ContextVar(
    "whatsorder_idempotency_front_found_none", default=None
)


def note_found_none(store: object, request: IdempotentRequest) -> None:
    """The front read ``store`` for this request's key and found no record."""
    _found_none.set((id(store), request.scope, request.key))


def take_found_none(store: object, request: IdempotentRequest) -> bool:
    """Whether the front just found no record of this key in ``store``; the note is used up."""
    noted = _found_none.get()
    if noted is None or noted != (id(store), request.scope, request.key):
        return False
    _found_none.set(None)
    return True
