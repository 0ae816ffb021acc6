"""The fulfilment machine: placed → confirmed → packed → dispatched → delivered, or cancelled.

Plain rules, no storage. An order moves one step forward at a time (no state is skipped, so
every order that was delivered was confirmed, packed and dispatched, each once), or is
cancelled while it is still placed, confirmed or packed — never once dispatched. Cancelling
also needs the order unpaid: money that came in goes back through its payment provider first.

Asking for a state the order has already reached is the idempotent repeat, not an error: the
machine has no cycles, so "confirm" on a confirmed (or packed…) order means the confirmation
happened, and nothing changes. Whatever else is asked is refused with a reason.
"""

from __future__ import annotations

import enum

from whatsorder.ordering.model import Fulfilment, OrderStatus

FORWARD = (
    Fulfilment.PLACED,
    Fulfilment.CONFIRMED,
    Fulfilment.PACKED,
    Fulfilment.DISPATCHED,
    Fulfilment.DELIVERED,
)
CANCELLABLE = frozenset({Fulfilment.PLACED, Fulfilment.CONFIRMED, Fulfilment.PACKED})


class Action(enum.StrEnum):
    """What an operator asks for, by the verb the CLI and the console's buttons use."""

    CONFIRM = "confirm"
    PACK = "pack"
    DISPATCH = "dispatch"
    DELIVER = "deliver"
    CANCEL = "cancel"

    @property
    def target(self) -> Fulfilment:
        """The state this action moves an order to."""
        return _TARGETS[self]


_TARGETS = {
    Action.CONFIRM: Fulfilment.CONFIRMED,
    Action.PACK: Fulfilment.PACKED,
    Action.DISPATCH: Fulfilment.DISPATCHED,
    Action.DELIVER: Fulfilment.DELIVERED,
    Action.CANCEL: Fulfilment.CANCELLED,
}
_VERBS = {target: action for action, target in _TARGETS.items()}


def action_to(state: Fulfilment) -> Action:
    """The action that moves an order to ``state`` (not ``placed``: nothing moves back)."""
    return _VERBS[state]


class TransitionRefused(Exception):
    """A transition the machine does not allow; the message says why, for the operator."""


class IllegalTransition(TransitionRefused):
    """Not the next step (or cancel while still allowed) from where the order is."""


class RefundFirst(TransitionRefused):
    """Cancelling an order that was paid: its money goes back through the provider first."""


def next_states(current: Fulfilment) -> tuple[Fulfilment, ...]:
    """The states an order in ``current`` may move to: the next step, and cancelled while
    that is still allowed (the console's buttons)."""
    following: tuple[Fulfilment, ...] = ()
    if current in FORWARD and current is not Fulfilment.DELIVERED:
        following = (FORWARD[FORWARD.index(current) + 1],)
    if current in CANCELLABLE:
        following += (Fulfilment.CANCELLED,)
    return following


def next_actions(current: Fulfilment) -> tuple[Action, ...]:
    """The actions that move an order in ``current`` on (`next_states`, by their verbs)."""
    return tuple(action_to(state) for state in next_states(current))


def reached(current: Fulfilment, wanted: Fulfilment) -> bool:
    """Whether an order in ``current`` has been in ``wanted`` (is there, or went past it)."""
    if current is wanted:
        return True
    if current in FORWARD and wanted in FORWARD:
        return FORWARD.index(current) > FORWARD.index(wanted)
    return False


def decide(number: str, current: Fulfilment, wanted: Fulfilment, payment: OrderStatus) -> bool:
    """Whether an order (``number``, in ``current``, with payment status ``payment``) moves to
    ``wanted``: True to move, False for the repeat of a transition that already happened.

    Raises `IllegalTransition` or `RefundFirst`, saying why, for anything else.
    """
    if reached(current, wanted):
        return False
    if wanted is Fulfilment.CANCELLED:
        if current not in CANCELLABLE:
            raise IllegalTransition(
                f"{number} is {current.value}: an order cannot be cancelled once dispatched."
            )
        if payment is OrderStatus.PAID:
            raise RefundFirst(
                f"{number} is paid: refund it through its payment provider first; only an "
                "unpaid order can be cancelled."
            )
        if payment is not OrderStatus.PLACED:
            raise IllegalTransition(
                f"{number} is {payment.value}: only an unpaid order can be cancelled."
            )
        return True
    if wanted not in next_states(current):
        raise IllegalTransition(_why_not(number, current, wanted))
    return True


def _why_not(number: str, current: Fulfilment, wanted: Fulfilment) -> str:
    if current is Fulfilment.CANCELLED:
        return f"{number} is cancelled: a cancelled order cannot be {wanted.value}."
    if wanted is Fulfilment.PLACED:
        return f"{number} is {current.value}: an order never moves back to placed."
    verb = action_to(wanted).value
    step = action_to(FORWARD[FORWARD.index(current) + 1]).value
    return (
        f"{number} is {current.value}: it cannot {verb} yet; the next step is {step} "
        "(one step at a time)."
    )
