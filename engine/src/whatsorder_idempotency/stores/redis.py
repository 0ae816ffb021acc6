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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
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
from whatsorder_idempotency.stores.redis_wakeups import RedisChannel
from whatsorder_idempotency.wakeups import Wakeups, token

DEFAULT_PREFIX = "idempotency:"
POOL_EXHAUSTED = "No connection available."  # redis-py's BlockingConnectionPool, on timeout
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Argument = int | str | bytes

# KEYS[1]: the record. ARGV: now, locked_until, expire_ms, fingerprint, then optional
# field/value pairs (request_body, source_ip). Returns {1, epoch} when claimed, else
# {0, the record's fields} as found.
CLAIM = """
local record = KEYS[1]
local now = tonumber(ARGV[1])
local status, epoch, locked_until, expires_at = unpack(redis.call(
    'HMGET', record, 'status', 'epoch', 'locked_until_us', 'expires_at_us'))
local new_epoch = 1
if status then
    local free
    if status == 'completed' then
        free = expires_at and tonumber(expires_at) <= now
    else
        free = not (locked_until and tonumber(locked_until) > now)
    end
    if not free then
        return {0, redis.call('HGETALL', record)}
    end
    new_epoch = tonumber(epoch) + 1
    redis.call('DEL', record)
end
redis.call('HSET', record, 'fingerprint', ARGV[4], 'status', 'in_progress',
    'epoch', new_epoch, 'locked_until_us', ARGV[2], 'created_at_us', ARGV[1])
for i = 5, #ARGV, 2 do
    redis.call('HSET', record, ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', record, ARGV[3])
return {1, new_epoch}
"""

# The compare-and-set every holder's step starts with (ARGV[1]: the holder's epoch).
HOLDER_ONLY = """
local status, epoch, held = unpack(redis.call('HMGET', KEYS[1], 'status', 'epoch',
    'locked_until_us'))
if status ~= 'in_progress' or tonumber(epoch) ~= tonumber(ARGV[1]) or not held then
    return 0
end
"""

# ARGV: epoch, locked_until. The key's expiry moves as far as the lease moved, so the record
# still outlives its lease by ttl. A renewal that lands after a later one (the heartbeat gave
# up on it) leaves the lease as it is.
RENEW = (
    HOLDER_ONLY
    + """
local previous = tonumber(redis.call('HGET', KEYS[1], 'locked_until_us'))
if tonumber(ARGV[2]) <= previous then
    return 1
end
redis.call('HSET', KEYS[1], 'locked_until_us', ARGV[2])
local moved_ms = math.ceil((tonumber(ARGV[2]) - previous) / 1000)
local remaining_ms = redis.call('PTTL', KEYS[1])
if moved_ms > 0 and remaining_ms > 0 then
    redis.call('PEXPIRE', KEYS[1], remaining_ms + moved_ms)
end
return 1
"""
)

# ARGV: epoch, now, expires_at, expire_ms, response status, body, headers (JSON), channel,
# the key's token.
COMPLETE = (
    HOLDER_ONLY
    + """
redis.call('HDEL', KEYS[1], 'locked_until_us')
redis.call('HSET', KEYS[1], 'status', 'completed', 'completed_at_us', ARGV[2],
    'expires_at_us', ARGV[3], 'response_status', ARGV[5], 'response_body', ARGV[6],
    'response_headers', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return 1
"""
)

# ARGV: epoch, channel, the key's token. The lease ends now but the record stays, so the next
# claim takes it over with a higher epoch and the released holder stays fenced out.
RELEASE = (
    HOLDER_ONLY
    + """
redis.call('HDEL', KEYS[1], 'locked_until_us')
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
)


class RedisStore:
    """Idempotency records as Redis hashes that expire by themselves.

    ``client`` must return bytes (``decode_responses=False``): response bodies are kept byte
    for byte. ``close()`` closes the client.
    """

    kind = "redis"

    def __init__(self, client: Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisStore needs a client with decode_responses=False")
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}changed"
        self.wakeups = Wakeups(
            lambda: RedisChannel(client, self.channel), f"Redis channel {self.channel}"
        )
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._complete = client.register_script(COMPLETE)
        self._release = client.register_script(RELEASE)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = DEFAULT_PREFIX, **client_options: Any
    ) -> RedisStore:
        """A store on a new client for ``redis://``, ``rediss://`` or ``unix://`` URLs.

        ``client_options`` go to the connection pool; unless given, connecting and each
        command give up after 5 s, so an unreachable Redis fails closed promptly, and a process
        keeps at most 50 connections, a request waiting up to 5 s for one of them. (redis-py's
        default pool has no bound: a storm of 1,000 copies opened hundreds of connections at
        once, overflowed Redis's accept backlog, and 600 of them failed to connect.)
        """
        client_options.setdefault("socket_connect_timeout", 5)
        client_options.setdefault("socket_timeout", 5)
        client_options.setdefault("max_connections", 50)
        client_options.setdefault("timeout", 5)
        pool = BlockingConnectionPool.from_url(url, **client_options)
        return cls(Redis.from_pool(pool), prefix=prefix)  # closing the client closes the pool

    def record_key(self, scope: str, key: str) -> bytes:
        """The hash's name: the scope's length keeps ``("a:b", "c")`` and ``("a", "b:c")`` apart."""
        scope_bytes = scope.encode()
        return b"%s%d:%s:%s" % (self.prefix.encode(), len(scope_bytes), scope_bytes, key.encode())

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
        with _unavailable_on_connection_errors():
            claimed, found = await self._claim(
                keys=[self.record_key(request.scope, request.key)], args=args
            )
        if claimed:
            epoch = int(found)
            return Claimed(epoch=epoch, takeover=epoch > 1)  # a new record starts at 1
        fields = dict(zip(found[::2], found[1::2], strict=True))
        return _record(request.scope, request.key, fields)

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        with _unavailable_on_connection_errors():
            fields = await self.client.hgetall(self.record_key(scope, key))
        if not fields:
            return None
        return _record(scope, key, cast(Mapping[bytes, bytes], fields))

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
        with _unavailable_on_connection_errors():
            done = await script(keys=[self.record_key(scope, key)], args=args)
        return bool(done)


def _record(scope: str, key: str, fields: Mapping[bytes, bytes]) -> IdempotencyRecord:
    response = None
    if b"response_status" in fields:
        response = StoredResponse(
            status=int(fields[b"response_status"]),
            body=bytes(fields[b"response_body"]),
            headers=tuple(
                (str(name), str(value)) for name, value in json.loads(fields[b"response_headers"])
            ),
        )
    return IdempotencyRecord(
        scope=scope,
        key=key,
        fingerprint=fields[b"fingerprint"].decode(),
        status=Status(fields[b"status"].decode()),
        epoch=int(fields[b"epoch"]),
        locked_until=_moment(fields.get(b"locked_until_us")),
        expires_at=_moment(fields.get(b"expires_at_us")),
        response=response,
    )


def _micros(moment: datetime) -> int:
    return (as_utc(moment) - UNIX_EPOCH) // timedelta(microseconds=1)


def _moment(micros: bytes | None) -> datetime | None:
    return None if micros is None else UNIX_EPOCH + timedelta(microseconds=int(micros))


def _millis(span: timedelta) -> int:
    """Rounded up, so Redis never forgets a record before the engine's clock would."""
    return -(-span // timedelta(milliseconds=1))


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
        if str(error) == POOL_EXHAUSTED:  # BlockingConnectionPool's wait ran out: Redis is up
            raise StoreBusy("No Redis connection was free in time.") from error
        raise StoreUnavailable(f"Redis cannot be reached: {error}") from error
