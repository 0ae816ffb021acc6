"""The Redis lease store (redis-py's asyncio client).

One hash per record, named ``prefix + len(scope) + ":" + scope + ":" + key`` (the length is
of the scope's UTF-8 bytes), so no scope or key, whatever it contains, can run into another's.
Claim, renew, complete and release are each one Lua script, so each is one atomic step. The
scripts decide on the caller's ``now`` (the engine's clock), exactly as the other stores do;
times are kept as integer microseconds since the Unix epoch, the resolution of ``datetime``.

Redis also forgets records by itself (native expiry, on its own clock): an in-progress record
``lease + ttl`` after its lease was last set, a completed one ``ttl`` after completion.
Complete and release PUBLISH a hash of the key on ``prefix + "changed"`` from inside their
script, waking duplicates that wait in other processes (``redis_wakeups.py``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from whatsorder_idempotency.errors import StoreBusy, StoreUnavailable
from whatsorder_idempotency.record import (
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
    as_utc,
)
from whatsorder_idempotency.stores.base import Claimed
from whatsorder_idempotency.stores.redis_pool import (
    POOL_EXHAUSTED,
    BoundedConnectionPool,
    run_script,
)
from whatsorder_idempotency.stores.redis_scripts import (
    CLAIM,
    COMPLETE,
    READ_FIELDS,
    RELEASE,
    RENEW,
)
from whatsorder_idempotency.stores.redis_wakeups import RedisChannel
from whatsorder_idempotency.stores.step_timeout import StepDeadlines
from whatsorder_idempotency.wakeups import Wakeups, token

DEFAULT_PREFIX = "idempotency:"
BUSY = "No Redis connection was free in time."
DEFAULT_COMMAND_TIMEOUT = 5.0  # seconds for one step: a free connection, the command, its answer
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Argument = int | str | bytes
Answer = TypeVar("Answer")


class RedisStore:
    """Idempotency records as Redis hashes that expire by themselves.

    ``client`` must return bytes (``decode_responses=False``): response bodies are kept byte
    for byte. Each step gives up after ``command_timeout`` seconds (None: never) with
    ``StoreUnavailable``, so a Redis that is slow but not dead fails closed. ``close()`` closes
    the client.
    """

    kind = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        command_timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisStore needs a client with decode_responses=False")
        self.client = client
        self.prefix = prefix
        self._prefix = prefix.encode()
        self._deadlines = StepDeadlines(command_timeout)
        self.channel = f"{prefix}changed"
        self.wakeups = Wakeups(
            lambda: RedisChannel(client, self.channel), f"Redis channel {self.channel}"
        )
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._complete = client.register_script(COMPLETE)
        self._release = client.register_script(RELEASE)
        pool = client.connection_pool
        self._pool = pool if isinstance(pool, BoundedConnectionPool) else None

    @property
    def command_timeout(self) -> float | None:
        """Seconds each step may take (None: no bound)."""
        return self._deadlines.seconds

    @command_timeout.setter
    def command_timeout(self, seconds: float | None) -> None:
        self._deadlines.seconds = seconds

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = DEFAULT_PREFIX, **client_options: Any
    ) -> RedisStore:
        """A store on a new client for ``redis://``, ``rediss://`` or ``unix://`` URLs.

        ``client_options`` go to the connection pool (redis_pool.py); unless given,
        connecting gives up after 5 s (and each step, ``command_timeout``, after 5 s), so an
        unreachable Redis fails closed promptly, and a process keeps at most 50 connections, a
        request waiting up to 5 s for one of them.
        """
        client_options.setdefault("socket_connect_timeout", 5)
        # Not redis-py's per-socket-call timeout (a task per send): each step has its own.
        client_options.setdefault("socket_timeout", None)
        client_options.setdefault("max_connections", 50)
        client_options.setdefault("timeout", 5)
        pool = BoundedConnectionPool.from_url(url, **client_options)
        return cls(Redis.from_pool(pool), prefix=prefix)  # closing the client closes the pool

    def record_key(self, scope: str, key: str) -> bytes:
        """The hash's name: the scope's length keeps ``("a:b", "c")`` and ``("a", "b:c")`` apart."""
        scope_bytes = scope.encode()
        return b"%s%d:%s:%s" % (self._prefix, len(scope_bytes), scope_bytes, key.encode())

    async def claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta, ttl: timedelta
    ) -> Claimed | IdempotencyRecord:
        args: list[Argument] = [
            _micros(now),
            _micros(now + lease),
            _millis(lease + ttl),
            request.fingerprint,
        ]
        noted = {"request_body": request.request_body, "source_ip": request.source_ip}
        for name, value in noted.items():
            if value is not None:
                args += [name, value]
        claimed, found = await self._step(
            self._script(self._claim, [self.record_key(request.scope, request.key)], args)
        )
        if claimed:
            epoch = int(found)
            return Claimed(epoch=epoch, takeover=epoch > 1)  # a new record starts at 1
        return _record(request.scope, request.key, found)

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        found = await self._step(self.client.hmget(self.record_key(scope, key), READ_FIELDS))
        if found[0] is None:  # no status: no record
            return None
        return _record(scope, key, found)

    async def renew(self, scope: str, key: str, epoch: int, locked_until: datetime) -> bool:
        return await self._run_as_holder(self._renew, scope, key, [epoch, _micros(locked_until)])

    async def complete(
        self,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        now: datetime,
        ttl: timedelta,
    ) -> bool:
        args: list[Argument] = [
            epoch,
            _micros(now),
            _micros(now + ttl),
            _millis(ttl),
            response.status,
            response.body,
            json.dumps([list(pair) for pair in response.headers]),
            self.channel,
            token(request.scope, request.key),
        ]
        return await self._run_as_holder(self._complete, request.scope, request.key, args)

    async def release(self, scope: str, key: str, epoch: int) -> bool:
        args: list[Argument] = [epoch, self.channel, token(scope, key)]
        return await self._run_as_holder(self._release, scope, key, args)

    async def close(self) -> None:
        await self.wakeups.close()
        await self.client.aclose()

    async def _run_as_holder(
        self, script: AsyncScript, scope: str, key: str, args: Sequence[Argument]
    ) -> bool:
        return bool(await self._step(self._script(script, [self.record_key(scope, key)], args)))

    def _script(
        self, script: AsyncScript, keys: list[bytes], args: Sequence[Argument]
    ) -> Awaitable[Any]:
        """The script run directly on our own pool's connection (redis_pool.py), else by the
        client."""
        if self._pool is not None:
            return run_script(self._pool, script, keys, args)
        return script(keys=keys, args=args)

    async def _step(self, command: Awaitable[Answer]) -> Answer:
        """``command``'s answer within ``command_timeout``; Redis's failures as the engine's."""
        try:
            return await self._deadlines.within(command)
        except TimeoutError as error:  # redis-py closed the cancelled command's connection
            if self._pool is not None and self._pool.exhausted:
                raise StoreBusy(BUSY) from error  # waiting for a free connection: Redis is up
            raise StoreUnavailable(
                f"Redis gave no answer in {self.command_timeout:g} s."
            ) from error
        except redis_errors.ConnectionError as error:
            if str(error) == POOL_EXHAUSTED:  # the pool's own wait ran out: Redis is up
                raise StoreBusy(BUSY) from error
            raise StoreUnavailable(f"Redis cannot be reached: {error}") from error
        except redis_errors.TimeoutError as error:  # a caller's client with socket timeouts
            raise StoreUnavailable(f"Redis cannot be reached: {error}") from error


def _record(scope: str, key: str, found: Sequence[Any]) -> IdempotencyRecord:
    """A record from READ_FIELDS' values (bytes, or None for a field the hash lacks), in order."""
    status, epoch, locked_until, expires_at, fingerprint, answer, body, headers = found
    response = None
    if answer is not None:
        response = StoredResponse(
            status=int(answer), body=bytes(body or b""), headers=_headers(headers or b"[]")
        )
    return IdempotencyRecord(
        scope=scope,
        key=key,
        fingerprint=fingerprint.decode(),
        status=_STATUSES[status],
        epoch=int(epoch),
        locked_until=_moment(locked_until),
        expires_at=_moment(expires_at),
        response=response,
    )


_STATUSES = {status.value.encode(): status for status in Status}
# Stored headers as read (bytes of JSON), parsed: an endpoint answers with a handful of header
# sets, and parsing one (JSON, then a tuple of pairs) was 3% of a replay's CPU. Bounded, and
# the values are immutable tuples of strings: nothing of a record is kept, only the parse.
_PARSED_HEADERS: dict[bytes, tuple[tuple[str, str], ...]] = {}
_MAX_PARSED_HEADERS = 256


def _headers(stored: bytes) -> tuple[tuple[str, str], ...]:
    parsed = _PARSED_HEADERS.get(stored)
    if parsed is None:
        parsed = tuple((str(name), str(value)) for name, value in json.loads(stored))
        if len(_PARSED_HEADERS) >= _MAX_PARSED_HEADERS:
            _PARSED_HEADERS.clear()
        _PARSED_HEADERS[stored] = parsed
    return parsed


def _micros(moment: datetime) -> int:
    since = as_utc(moment) - UNIX_EPOCH  # whole days, seconds and microseconds: exact
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


def _moment(micros: bytes | None) -> datetime | None:
    return None if micros is None else UNIX_EPOCH + timedelta(0, 0, int(micros))


def _millis(span: timedelta) -> int:
    """Rounded up, so Redis never forgets a record before the engine's clock would."""
    return (span.days * 86_400 + span.seconds) * 1_000 - (-span.microseconds // 1_000)
