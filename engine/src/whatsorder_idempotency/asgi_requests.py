"""Reading an ASGI request before the app does, and handing it on unchanged.

The middleware and the replay front fingerprint the whole body, so they read it first; the app
then gets the same bytes through a ``receive`` that gives them again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from whatsorder_idempotency.record import IdempotentRequest
from whatsorder_idempotency.responses import Message, Send

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ScopeFunction = Callable[[Scope], str]
FingerprintFunction = Callable[[str, str, bytes, "str | None"], str]


def method_and_path(scope: Scope) -> str:
    """The default scope: the same key on two routes is two keys."""
    return f"{scope['method']} {scope.get('root_path', '')}{scope['path']}"


class Headers:
    """Case-insensitive lookup of an ASGI scope's headers, keeping every value of a repeated
    name (a repeated key header is refused, so it must be seen)."""

    def __init__(self, scope: Scope) -> None:
        self._headers: dict[str, list[str]] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            self._headers.setdefault(name, []).append(raw_value.decode("latin-1"))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``."""
        values = self._headers.get(name.lower())
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        """Every value of ``name``, in the order received."""
        return list(self._headers.get(name.lower(), ()))


class ClientGone(Exception):
    """The client went away before its request's body had all arrived."""


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body (it is fingerprinted), or None past ``limit`` bytes.

    Raises ``ClientGone`` if the client disconnects first: the part that came is not the
    request, and an app handed it as the whole body could act on a truncated form.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then the real channel."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def idempotent_request(
    scope: Scope,
    headers: Headers,
    key: str,
    body: bytes,
    scope_of: ScopeFunction,
    fingerprint: FingerprintFunction,
) -> IdempotentRequest:
    """The request as the engine sees it: its scope, key, fingerprint and client address."""
    client = scope.get("client")
    return IdempotentRequest(
        scope=scope_of(scope),
        key=key,
        fingerprint=fingerprint(scope["method"], scope["path"], body, headers.get("content-type")),
        source_ip=client[0] if client else None,
    )
