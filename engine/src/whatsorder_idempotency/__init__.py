"""An idempotency engine for webhooks and APIs: claim-first, atomic, crash-safe.

Stands alone: it imports nothing else from whatsorder, so it can serve any application.
"""

from whatsorder_idempotency.config import IdempotencyConfig
from whatsorder_idempotency.engine import IdempotencyEngine
from whatsorder_idempotency.errors import (
    FingerprintMismatch,
    IdempotencyError,
    RequestInFlight,
    StoreBusy,
    StoreUnavailable,
    TransactionConflict,
)
from whatsorder_idempotency.events import IdempotencyEvent, Listener
from whatsorder_idempotency.fingerprint import fingerprint, form_fingerprint
from whatsorder_idempotency.held import NotGuarded, idempotent_connection
from whatsorder_idempotency.jobs import IdempotentFunction, JobResult, ResultNotKept, idempotent
from whatsorder_idempotency.keys import (
    InvalidKey,
    key_from_headers,
    parse_key_header,
    validate_key,
)
from whatsorder_idempotency.middleware import IdempotencyMiddleware
from whatsorder_idempotency.outcomes import Outcome, Result
from whatsorder_idempotency.problems import problem_body, problem_for
from whatsorder_idempotency.record import (
    HandlerResult,
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
)
from whatsorder_idempotency.replay_front import ReplayFront
from whatsorder_idempotency.stores import open_store
from whatsorder_idempotency.stores.sql import SqlStore, idempotency_table, sql_engine

__all__ = [
    "FingerprintMismatch",
    "HandlerResult",
    "IdempotencyConfig",
    "IdempotencyEngine",
    "IdempotencyError",
    "IdempotencyEvent",
    "IdempotencyMiddleware",
    "IdempotencyRecord",
    "IdempotentFunction",
    "IdempotentRequest",
    "InvalidKey",
    "JobResult",
    "Listener",
    "NotGuarded",
    "Outcome",
    "ReplayFront",
    "RequestInFlight",
    "Result",
    "ResultNotKept",
    "SqlStore",
    "Status",
    "StoreBusy",
    "StoreUnavailable",
    "StoredResponse",
    "TransactionConflict",
    "fingerprint",
    "form_fingerprint",
    "idempotency_table",
    "idempotent",
    "idempotent_connection",
    "key_from_headers",
    "open_store",
    "parse_key_header",
    "problem_body",
    "problem_for",
    "sql_engine",
    "validate_key",
]
