"""``IdempotencyMiddleware``: the engine in front of any ASGI app (Starlette, FastAPI, …).

Pure ASGI: it wraps ``receive`` and ``send`` and never touches a framework's request objects.
POST and PATCH with a key are claimed before the app sees them; the app's response is held
until it is stored, so a client that got an answer can always have it replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import timedelta

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
from whatsorder_idempotency.config import (
    DEFAULT_IN_FLIGHT_WAIT,
    DEFAULT_LEASE,
    IdempotencyConfig,
    two_to_four_hundreds,
)
from whatsorder_idempotency.engine import IdempotencyEngine
from whatsorder_idempotency.errors import IdempotencyError, StoreUnavailable
from whatsorder_idempotency.fingerprint import fingerprint as default_fingerprint
from whatsorder_idempotency.keys import InvalidKey, key_from_headers
from whatsorder_idempotency.outcomes import Outcome, Result
from whatsorder_idempotency.record import (
    HandlerResult,
)
from whatsorder_idempotency.responses import (
    ResponseCapture,
    Send,
    send_problem,
    send_raw,
    send_stored,
    shares_a_transaction,
    too_large,
)
from whatsorder_idempotency.stores import open_store
from whatsorder_idempotency.stores.base import LeaseStore

log = logging.getLogger("whatsorder_idempotency")


class IdempotencyMiddleware:
    """Runs each keyed POST/PATCH once and replays its response to retries.

    ``store``: a lease store or a URL for ``open_store`` (``memory://``, ``sqlite:///…``,
    ``postgresql://…``, ``redis://…``). ``required``: refuse keyed methods without a key (400).
    ``store_status``: which statuses are kept (default 2xx–4xx; 5xx never, whatever it says).
    ``scope``: how keys are partitioned (default method + path; add tenant or principal).
    ``max_stored_bytes``: larger responses go out unstored, with ``Idempotency-Stored: false``;
    their retries get the status without the body, never a second run.
    ``fail_open``: with the store unreachable, run the app unprotected instead of answering 503.
    ``lease``: how long a crashed holder's key stays claimed (renewed while the app runs); keep
    it below ``in_flight_wait`` so a retry waits the dead lease out (``IdempotencyConfig``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: LeaseStore | str,
        required: bool = False,
        ttl: timedelta = timedelta(hours=24),
        in_flight_wait: timedelta = DEFAULT_IN_FLIGHT_WAIT,
        lease: timedelta = DEFAULT_LEASE,
        store_status: Callable[[int], bool] = two_to_four_hundreds,
        scope: ScopeFunction = method_and_path,
        fingerprint: FingerprintFunction = default_fingerprint,
        max_stored_bytes: int = 64 * 1024,
        max_request_bytes: int = 1024 * 1024,
        methods: Collection[str] = ("POST", "PATCH"),
        fail_open: bool = False,
    ) -> None:
        self.app = app
        self.store = (
            open_store(store, in_flight_wait=in_flight_wait) if isinstance(store, str) else store
        )
        config = IdempotencyConfig(
            ttl=ttl,
            in_flight_wait=in_flight_wait,
            lease=lease,
            max_stored_body_bytes=max_stored_bytes,
            store_status=store_status,
        )
        self.engine: IdempotencyEngine[None] = IdempotencyEngine(self.store, config)
        self.required = required
        self.scope_of = scope
        self.fingerprint = fingerprint
        self.max_request_bytes = max_request_bytes
        self.methods = frozenset(method.upper() for method in methods)
        self.fail_open = fail_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope)
        try:
            key = key_from_headers(headers)
            if key is None and self.required:
                raise InvalidKey("missing", "This request needs an Idempotency-Key header.")
        except InvalidKey as error:
            await send_problem(send, error)
            return
        if key is None:
            await self.app(scope, receive, send)
            return

        try:
            body = await read_body(receive, self.max_request_bytes)
        except ClientGone:
            return  # nobody to answer, and part of a request is not one to run
        if body is None:
            await send_raw(send, 413, *too_large(self.max_request_bytes))
            return
        request = idempotent_request(scope, headers, key, body, self.scope_of, self.fingerprint)
        replay_receive = replaying(body, receive)
        capture = ResponseCapture(
            send, self.engine.config.max_stored_body_bytes, shares_a_transaction
        )

        async def handler() -> HandlerResult:
            await self.app(scope, replay_receive, capture.send)
            return HandlerResult(capture.stored())

        try:
            result = await self.engine.execute_leased(request, handler)
        except StoreUnavailable as error:
            if not self.fail_open or capture.started:
                await send_problem(send, error)
                return
            log.warning("idempotency store unavailable; failing open: %s", error)
            await self.app(scope, replaying(body, receive), send)
            return
        except IdempotencyError as error:
            await send_problem(send, error)
            return
        await self._respond(result, capture, send)

    async def _respond(self, result: Result, capture: ResponseCapture, send: Send) -> None:
        if result.outcome is Outcome.REPLAYED:
            await send_stored(send, result.response, replayed=True)
        elif not capture.passed_through:
            await capture.flush()
        # else: the response already streamed to the client as it was made
