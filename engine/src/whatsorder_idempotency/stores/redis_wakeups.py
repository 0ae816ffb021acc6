"""Redis's wake-ups: the complete and release scripts PUBLISH, a subscriber apart listens.

The subscriber is a connection of its own, outside the client's pool (a subscribed connection
serves nothing else, and the pool's connections are the claims'). It does not reconnect by
itself: announcements published while it was away are lost, so ``Wakeups`` wakes every wait,
which polls until the next wait opens a new subscriber.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from whatsorder_idempotency.wakeups import Heard

CLIENT_NAME = "whatsorder-idempotency-wakeups"  # the subscriber, in CLIENT LIST
# The client's pool hands these to its connections as its own (redis-py 6+): a pool of our own
# makes its own.
POOL_BOUND = ("maint_notifications_pool_handler",)


class RedisChannel:
    """One subscribed connection; a PING when idle for ``PING_EVERY`` checks that it lives."""

    PING_EVERY = 30.0
    PATIENCE = 5.0

    def __init__(self, client: Redis, channel: str) -> None:
        pool = client.connection_pool
        options: dict[str, Any] = {
            name: value for name, value in pool.connection_kwargs.items() if name not in POOL_BOUND
        }
        options["retry"] = Retry(NoBackoff(), 0)  # a lost connection ends this listener: seen
        options.setdefault("client_name", CLIENT_NAME)
        self._connection_class = pool.connection_class
        self._options = options
        self._channel = channel
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._heard: Heard | None = None

    async def open(self, heard: Heard) -> None:
        pool = ConnectionPool(
            connection_class=self._connection_class, max_connections=1, **self._options
        )
        self._client = Redis.from_pool(pool)
        self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(self._channel)
        # Listening once Redis confirms: whatever it publishes after that reaches us.
        confirmed = await self._pubsub.get_message(timeout=self.PATIENCE)
        if confirmed is None or confirmed["type"] != "subscribe":
            raise ConnectionError(f"SUBSCRIBE was not confirmed: {confirmed!r}")
        self._heard = heard

    async def until_lost(self) -> None:
        assert self._pubsub is not None
        assert self._heard is not None
        pinged = False
        while True:
            message = await self._pubsub.get_message(timeout=self.PING_EVERY)
            if message is None:
                if pinged:
                    raise TimeoutError("the subscriber's PING got no answer")
                await self._pubsub.ping()
                pinged = True
            elif message["type"] == "message":
                self._heard(bytes(message["data"]).decode())
            elif message["type"] == "pong":
                pinged = False
            elif message["type"] == "subscribe":
                return  # subscribed anew after a reconnection: what came between was lost

    async def watch(self, token: str) -> None:
        """Nothing to do: every completion is published (PUBLISH costs next to nothing)."""

    async def unwatch(self, token: str) -> None:
        """Nothing to do."""

    async def close(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        try:
            if pubsub is not None:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            if client is not None:
                await client.aclose()
