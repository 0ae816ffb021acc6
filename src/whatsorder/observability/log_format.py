"""How log lines are written: JSON lines for machines, text for a terminal, uvicorn's alike.

Every line carries the request's context (``log_context``) and any extra fields, with phone
numbers masked and access-log query values blanked (``redaction``).
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any, Final

from whatsorder.observability.log_context import current_fields
from whatsorder.observability.redaction import access_arguments, mask_phone, redact_access

CONTEXT_FIELDS: Final = ("webhook_type", "outcome", "key_hash")
_RECORD_ATTRIBUTES: Final = frozenset(
    {*vars(logging.makeLogRecord({})), "message", "asctime", "taskName", "color_message"}
)  # color_message: uvicorn's own copy of the message, with terminal colours
# Written as they are: ids and hashes, whose runs of digits are no phone numbers.
_UNMASKED: Final = frozenset({"request_id", "key_hash", "time"})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context and extra fields, phone numbers masked in any text among them."""
    redact_access(record)
    fields: dict[str, Any] = dict(current_fields())
    fields.update(
        (name, value) for name, value in vars(record).items() if name not in _RECORD_ATTRIBUTES
    )
    arguments = access_arguments(record)
    if arguments is not None:
        client, method, path, version, status = arguments
        fields.update(client=client, method=method, path=path, http_version=version, status=status)
    return {
        name: mask_phone(value) if isinstance(value, str) and name not in _UNMASKED else value
        for name, value in fields.items()
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, event, logger, request_id, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        event = "HTTP request" if record.name == "uvicorn.access" else record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "event": mask_phone(event),
            "logger": record.name,
            "request_id": fields.pop("request_id", None),
        }
        for name in CONTEXT_FIELDS:
            line[name] = fields.pop(name, None)
        line.update(fields)
        if record.exc_info:
            line["exception"] = mask_phone(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = mask_phone(record.exc_text)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a terminal: ``time level logger  event  key=value …``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s  %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        redact_access(record)
        line = mask_phone(super().format(record))
        fields = _fields(record)
        if record.name == "uvicorn.access":
            fields = {"request_id": fields.get("request_id")}
        extras = "  ".join(f"{name}={value}" for name, value in fields.items() if value is not None)
        return f"{line}  {extras}" if extras else line


def logging_config(json: bool | None = None) -> dict[str, Any]:
    """A ``dictConfig`` for the service and uvicorn alike (``uvicorn.run(log_config=...)``).

    ``json``: True for JSON lines, False for text, None to choose: JSON unless stdout is a
    terminal.
    """
    use_json = not sys.stdout.isatty() if json is None else json
    formatter = JsonFormatter if use_json else TextFormatter
    passthrough = {"handlers": [], "propagate": True}  # uvicorn's loggers: through ours
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"whatsorder": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "whatsorder",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": "INFO", "handlers": ["stdout"]},
        "loggers": {
            "uvicorn": {"level": "INFO", **passthrough},
            "uvicorn.error": {"level": "INFO", **passthrough},
            "uvicorn.access": {"level": "INFO", **passthrough},
            "alembic": {"level": "WARNING"},  # readiness checks would log its set-up each time
        },
    }


def configure_logging(json: bool | None = None) -> None:
    """Send every log line (uvicorn's too) to stdout, as JSON lines or text (see above)."""
    logging.config.dictConfig(logging_config(json))


def configure_logging_unless_configured() -> None:
    """``configure_logging()`` for an app served without ``whatsorder serve``.

    Leaves alone a root logger that has handlers already: ``serve`` configured it through
    uvicorn, or a host application or test runner owns logging.
    """
    if not logging.getLogger().handlers:
        configure_logging()
