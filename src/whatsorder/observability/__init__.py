"""What an operator sees of a running service: Prometheus metrics and structured log lines.

- ``metrics``: the Prometheus series and the calls that count (and log) what they measure;
- ``log_context``: the request's id and what it is about, carried by every log line of it;
- ``log_format``: JSON or text lines, for the service and uvicorn alike;
- ``redaction``: phone numbers masked, access-log query values blanked.

The names below are the package's surface; callers use ``observability.bind(...)`` and so on.
"""

from whatsorder.observability.log_context import bind as bind
from whatsorder.observability.log_context import request_context as request_context
from whatsorder.observability.log_format import JsonFormatter as JsonFormatter
from whatsorder.observability.log_format import TextFormatter as TextFormatter
from whatsorder.observability.log_format import configure_logging as configure_logging
from whatsorder.observability.log_format import (
    configure_logging_unless_configured as configure_logging_unless_configured,
)
from whatsorder.observability.log_format import logging_config as logging_config
from whatsorder.observability.metrics import MULTIPROCESS_DIR as MULTIPROCESS_DIR
from whatsorder.observability.metrics import on_idempotency_event as on_idempotency_event
from whatsorder.observability.metrics import record_cleanup as record_cleanup
from whatsorder.observability.metrics import record_invalid_key as record_invalid_key
from whatsorder.observability.metrics import record_order_created as record_order_created
from whatsorder.observability.metrics import record_outbox_send as record_outbox_send
from whatsorder.observability.metrics import record_payment_event as record_payment_event
from whatsorder.observability.metrics import record_rate_limited as record_rate_limited
from whatsorder.observability.metrics import record_signature_failure as record_signature_failure
from whatsorder.observability.metrics import record_webhook_request as record_webhook_request
from whatsorder.observability.metrics import set_outbox_backlog as set_outbox_backlog
from whatsorder.observability.metrics import set_record_counts as set_record_counts
from whatsorder.observability.redaction import mask_phone as mask_phone
