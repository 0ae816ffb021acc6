"""What every log line of a request carries: its id and what it is about.

The fields live in a context variable, so any log call made while serving a request has them
without passing them along; the log formatters read them with ``current_fields``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Final

_NO_FIELDS: Final[Mapping[str, str]] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("whatsorder_log_context", default=_NO_FIELDS)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Tag the log lines of one request (a fresh context: nothing of a previous one leaks).

    On an exception the tags are kept: the error handler outside the application logs with
    them, and the next request replaces them.
    """
    token = _context.set({"request_id": request_id})
    yield
    _context.reset(token)


def bind(**fields: str) -> None:
    """Add fields (e.g. ``webhook_type``) to every later log line of the current request."""
    _context.set({**_context.get(), **fields})


def current_fields() -> Mapping[str, str]:
    """The fields of the request being served (none outside a request)."""
    return _context.get()
