"""``ReplayFront``: answers replays for a transactional app before the app runs.

In transactional mode the engine runs inside the endpoint (its claim shares the endpoint's
transaction), so a replay is only answered after the framework has routed the request, solved
its dependencies and validated its body: most of a replay's cost (docs/benchmarks.md). The
front reads the key's record first, as the middleware does, and sends a completed key's stored
answer itself; every other request goes on to the app unchanged, with its body given again.

It only answers; it never decides anything else. A key in flight, expired, or sent with another
body, a store that is down or busy, a key header the app should refuse: all go on to the
endpoint, whose ``execute`` decides and answers as it always does. A key it found no record of
is noted, so the endpoint claims without reading again (``front_reads.py``): a replay costs one
read, and a first request still one read, the claim and the completion.

``scope`` and ``fingerprint`` must be the functions the endpoint builds its
``IdempotentRequest`` with: a front that computes another scope or fingerprint never finds a
replay (it never answers wrongly, since a stored fingerprint it cannot match goes on to the
endpoint). Like the middleware, it answers before the app's own authentication: a scope that
holds the tenant or principal keeps one caller's replays from another.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from whatsorder_idempotency.asgi_requests import (
    ASGIApp,
    ClientGone,
    FingerprintFunction,
    Headers,
    Receive,
    Scope,
    ScopeFunction,
    idempotent_request,
    method_and_path,
    read_body,
    replaying,
)
from whatsorder_idempotency.engine import IdempotencyEngine
from whatsorder_idempotency.errors import IdempotencyError
from whatsorder_idempotency.fingerprint import fingerprint as default_fingerprint
from whatsorder_idempotency.keys import InvalidKey, key_from_headers
from whatsorder_idempotency.responses import Send, send_raw, send_stored, too_large


class ReplayFront:
    """Sends the stored answer of a completed key; passes everything else to ``app``.

    ``engine``: the transactional engine the app's endpoints ``execute`` with (its listeners
    hear of the replays answered here). ``scope``, ``fingerprint``: as the endpoints compute
    them (defaults: the middleware's). ``methods``: those the endpoints take keys on. Bodies
    are read for the fingerprint up to ``max_request_bytes``, as ``Content-Length`` says;
    larger ones, or ones of unknown length, go on to the app unread.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: IdempotencyEngine[Any],
        scope: ScopeFunction = method_and_path,
        fingerprint: FingerprintFunction = default_fingerprint,
        methods: Collection[str] = ("POST", "PATCH"),
        max_request_bytes: int = 1024 * 1024,
    ) -> None:
        if getattr(engine.store, "get", None) is None:
            raise TypeError(f"{type(engine.store).__name__} cannot read a record by its key")
        self.app = app
        self.engine = engine
        self.scope_of = scope
        self.fingerprint = fingerprint
        self.methods = frozenset(method.upper() for method in methods)
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope)
        try:
            key = key_from_headers(headers)
        except InvalidKey:  # the endpoint refuses it, in its own words
            key = None
        if key is None or not _length_at_most(
            headers.get("content-length"), self.max_request_bytes
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.max_request_bytes)
        except ClientGone:
            return  # nobody to answer, and part of a request is not one to run
        if body is None:  # more than its Content-Length promised: refused, as the middleware does
            await send_raw(send, 413, *too_large(self.max_request_bytes))
            return
        request = idempotent_request(scope, headers, key, body, self.scope_of, self.fingerprint)
        try:
            replay = await self.engine.replay_of(request)
        except IdempotencyError:  # the store is down or busy: the endpoint meets it and says so
            replay = None
        if replay is not None:
            await send_stored(send, replay.response, replayed=True)
            return
        await self.app(scope, replaying(body, receive), send)


def _length_at_most(length: str | None, limit: int) -> bool:
    """Whether a ``Content-Length`` value promises a body of at most ``limit`` bytes."""
    return length is not None and length.isdigit() and int(length) <= limit
