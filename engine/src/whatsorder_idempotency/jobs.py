"""``@idempotent``: the engine around any async function — a job, a queue consumer, a task.

The caller says what names one piece of work (an event id, a job id); the function then runs at
most once per key, and every later call with that key gets the first call's result back,
decoded from the store. The outcomes are the middleware's: run once, replay, wait for a copy in
flight (then replay, or ``RequestInFlight``), ``FingerprintMismatch`` when the key comes back
with other arguments. A function that raises keeps nothing: the next call runs afresh. On a SQL
store the function may write on ``idempotent_connection()``: its writes then commit with its
result, exactly once even across a crash (docs/idempotency.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar

from whatsorder_idempotency.config import IdempotencyConfig
from whatsorder_idempotency.engine import IdempotencyEngine
from whatsorder_idempotency.errors import IdempotencyError
from whatsorder_idempotency.keys import validate_key
from whatsorder_idempotency.outcomes import Outcome
from whatsorder_idempotency.record import HandlerResult, IdempotentRequest, StoredResponse
from whatsorder_idempotency.stores import open_store
from whatsorder_idempotency.stores.base import LeaseStore

P = ParamSpec("P")
T = TypeVar("T")
_JSON = (("content-type", "application/json"),)
_NOT_KEPT = (("idempotency-stored", "false"),)


class ResultNotKept(IdempotencyError):
    """The function ran once, but its result could not be encoded, so a replay has none."""


@dataclass(frozen=True, slots=True)
class JobResult(Generic[T]):
    """A call's result, and whether this call ran the function or replayed an earlier run."""

    value: T
    outcome: Outcome

    @property
    def replayed(self) -> bool:
        return self.outcome is Outcome.REPLAYED


def arguments_fingerprint(*args: Any, **kwargs: Any) -> str:
    """SHA-256 of the arguments as JSON: the same key with other arguments is a mismatch."""
    canonical = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotentFunction(Generic[P, T]):
    """An async function guarded by the engine; call it as before, or ``.run`` for the outcome."""

    def __init__(
        self,
        function: Callable[P, Awaitable[T]],
        engine: IdempotencyEngine[Any],
        key: Callable[P, str],
        scope: str,
        fingerprint: Callable[P, str],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
    ) -> None:
        functools.update_wrapper(self, function)
        self.function = function
        self.engine = engine
        self._key = key
        self.scope = scope
        self._fingerprint = fingerprint
        self._encode = encode
        self._decode = decode

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return (await self.run(*args, **kwargs)).value

    async def run(self, *args: P.args, **kwargs: P.kwargs) -> JobResult[T]:
        request = IdempotentRequest(
            scope=self.scope,
            key=validate_key(self._key(*args, **kwargs), allow_space=True),
            fingerprint=self._fingerprint(*args, **kwargs),
        )
        unencodable: list[Exception] = []

        async def handler() -> HandlerResult:
            value = await self.function(*args, **kwargs)
            try:
                body = self._encode(value)
            except (TypeError, ValueError) as error:
                # The work is done and must not run again: keep the key, without a result.
                unencodable.append(error)
                return HandlerResult(StoredResponse(200, b"", _NOT_KEPT))
            return HandlerResult(StoredResponse(200, body, _JSON))

        result = await self.engine.execute_leased(request, handler)
        if unencodable:
            raise TypeError(
                f"{self.scope} ran once, but its result cannot be encoded for replay "
                f"({unencodable[0]}); pass encode= and decode= to @idempotent"
            ) from unencodable[0]
        if dict(result.response.headers).get("idempotency-stored") == "false":
            raise ResultNotKept(
                f"{self.scope} already ran for this key; its result could not be kept."
            )
        return JobResult(self._decode(result.response.body), result.outcome)


def idempotent(
    store: LeaseStore | str,
    *,
    key: Callable[P, str],
    scope: str | None = None,
    fingerprint: Callable[P, str] = arguments_fingerprint,
    ttl: timedelta = timedelta(hours=24),
    in_flight_wait: timedelta | None = None,
    lease: timedelta | None = None,
    encode: Callable[[Any], bytes] = lambda value: json.dumps(value).encode(),
    decode: Callable[[bytes], Any] = json.loads,
) -> Callable[[Callable[P, Awaitable[T]]], IdempotentFunction[P, T]]:
    """Run the decorated async function at most once per ``key(*args, **kwargs)``.

    ``store``: a lease store or a URL for ``open_store``. ``scope`` partitions keys (default:
    the function's module and qualified name). Results are kept as JSON unless ``encode`` and
    ``decode`` say otherwise; ``max_stored_body_bytes`` does not apply to them.
    """
    defaults = IdempotencyConfig()
    config = IdempotencyConfig(
        ttl=ttl,
        in_flight_wait=in_flight_wait or defaults.in_flight_wait,
        lease=lease or defaults.lease,
        max_stored_body_bytes=2**31,
    )
    opened = (
        open_store(store, in_flight_wait=config.in_flight_wait) if isinstance(store, str) else store
    )
    engine: IdempotencyEngine[Any] = IdempotencyEngine(opened, config)

    def decorate(function: Callable[P, Awaitable[T]]) -> IdempotentFunction[P, T]:
        name = scope or f"{function.__module__}.{function.__qualname__}"
        return IdempotentFunction(function, engine, key, name, fingerprint, encode, decode)

    return decorate
