"""The service layer: what a message, a payment event or a delivery does, over a unit of work.

- `messages`: a customer's message places, cancels or shows an order;
- `customers`: who wrote and when, their language and their consent (STOP, START);
- `statuses`: outbound messages' delivery states, only forward;
- `payments` and `refunds`: a provider's payment event, once per payment and per refund;
- `deliveries`: replies to the outbox, and dead letters;
- `fulfilment`: an order moved on by an operator, its customer notified once.

Each takes a `whatsorder.ordering.ports.UnitOfWork` and commits explicitly.
"""

from whatsorder.ordering.model import InboundMessage
from whatsorder.ordering.services.customers import META_PREFERENCES, record_preference
from whatsorder.ordering.services.deliveries import (
    keep_dead_letter,
    queue_reply,
    reply_keys,
    reply_prefix,
)
from whatsorder.ordering.services.fulfilment import (
    NoSuchOrder,
    TransitionOutcome,
    transition,
)
from whatsorder.ordering.services.messages import (
    MessageOutcome,
    answer_over_limit,
    cancel_order,
    order_status,
    place_catalogue_order,
    place_order,
    receive_message,
)
from whatsorder.ordering.services.payments import apply_payment
from whatsorder.ordering.services.statuses import record_message_states, record_message_status

__all__ = [
    "META_PREFERENCES",
    "InboundMessage",
    "MessageOutcome",
    "NoSuchOrder",
    "TransitionOutcome",
    "answer_over_limit",
    "apply_payment",
    "cancel_order",
    "keep_dead_letter",
    "order_status",
    "place_catalogue_order",
    "place_order",
    "queue_reply",
    "receive_message",
    "record_message_states",
    "record_message_status",
    "record_preference",
    "reply_keys",
    "reply_prefix",
    "transition",
]
