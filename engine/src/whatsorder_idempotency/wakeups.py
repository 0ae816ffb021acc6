"""Wake-ups across processes: a store announces the keys it completes or releases.

A store that can (PostgreSQL's NOTIFY, Redis's PUBLISH) announces a short hash of the key in the
very statement or script that completes or releases it: no extra round trip. ``Wakeups`` is its
one listener in this process, on a connection of its own, opened when the first duplicate starts
waiting; it wakes the waits (``waits.py``) of the keys it hears of. While it is down, waits poll
as they always did, and the next wait to look opens it again (at most once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("whatsorder_idempotency")

Heard = Callable[[str], None]


def token(scope: str, key: str) -> str:
    """What is announced of a key: 16 hex digits of its hash, never the key itself."""
    scope_bytes = scope.encode()
    named = b"%d:%s:%s" % (len(scope_bytes), scope_bytes, key.encode())
    return hashlib.blake2b(named, digest_size=8).hexdigest()


class Channel(Protocol):
    """A backend's listening connection; ``Wakeups`` opens a new one after each loss."""

    async def open(self, heard: Heard) -> None:
        """Connect and listen: every token announced from now on goes to ``heard``."""
        ...

    async def until_lost(self) -> None:
        """Return or raise once the connection is lost, checking on it now and then."""
        ...

    async def watch(self, token: str) -> None:
        """Have changes of ``token``'s key announced from now on (PostgreSQL: only those)."""
        ...

    async def unwatch(self, token: str) -> None: ...

    async def close(self) -> None: ...


class Watching:
    """One wait's interest in one key: ``wake`` is called whenever the key may have changed."""

    def __init__(self, wakeups: Wakeups, token: str, wake: Callable[[], None]) -> None:
        self.token = token
        self.wake = wake
        self._wakeups = wakeups

    def heard(self) -> bool:
        """True if a change of the key from now on will wake this wait (the listener is up and
        watches the key; losing it wakes the wait too). False: poll; a listener that is down is
        opened again meanwhile."""
        return self._wakeups.hears(self.token)

    def close(self) -> None:
        self._wakeups.forget(self)


@dataclass
class _Run:
    """One connection's life: whether it listens, and the tokens it watches."""

    changed: asyncio.Event = field(default_factory=asyncio.Event)
    live: bool = False
    watched: set[str] = field(default_factory=set)


class Wakeups:
    """A store's listener in this process, shared by every wait on that store."""

    RETRY_AFTER = 1.0  # seconds between attempts to open the listener while it fails
    OPEN_TIMEOUT = 5.0
    CLOSE_TIMEOUT = 2.0

    def __init__(self, new_channel: Callable[[], Channel], name: str) -> None:
        self.name = name
        self._new_channel = new_channel
        self._watching: dict[str, set[Watching]] = {}
        self._run: _Run | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_try = 0.0
        self._failing = False

    def watch(self, scope: str, key: str, wake: Callable[[], None]) -> Watching:
        """Call ``wake`` when the key is announced, until the returned ``Watching`` is closed."""
        self._listen()
        watching = Watching(self, token(scope, key), wake)
        self._watching.setdefault(watching.token, set()).add(watching)
        self._stir()
        return watching

    def hears(self, token: str) -> bool:
        self._listen()
        run = self._run
        return run is not None and run.live and token in run.watched

    def forget(self, watching: Watching) -> None:
        same = self._watching.get(watching.token)
        if same is not None and watching in same:
            same.discard(watching)
            if not same:
                del self._watching[watching.token]
                self._stir()

    async def close(self) -> None:
        task, self._task, self._run = self._task, None, None
        self._watching = {}
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            return  # a task of another loop ends with its loop
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _listen(self) -> None:
        """Open the listener on this loop if it is not open and may be tried now."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and task.get_loop() is not loop:
            # The store moved to another event loop (a new asyncio.run): the old listener and
            # the waits it knew were that loop's.
            self._task, self._run, self._watching, self._next_try = None, None, {}, 0.0
            task = None
        if (task is not None and not task.done()) or time.monotonic() < self._next_try:
            return
        run = self._run = _Run()
        self._task = loop.create_task(self._listen_until_lost(run))

    def _stir(self) -> None:
        if self._run is not None:
            self._run.changed.set()

    async def _listen_until_lost(self, run: _Run) -> None:
        channel = self._new_channel()
        lost: asyncio.Future[None] | None = None
        try:
            await asyncio.wait_for(channel.open(self._heard), self.OPEN_TIMEOUT)
            run.live = True
            if self._failing:
                log.info("idempotency wake-ups: listening on %s again", self.name)
            self._failing = False
            lost = asyncio.ensure_future(channel.until_lost())
            lost.add_done_callback(_retrieve)
            while not lost.done():
                run.changed.clear()
                await self._watch_what_is_waited_for(channel, run)
                stirred = asyncio.ensure_future(run.changed.wait())
                try:
                    await asyncio.wait({lost, stirred}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stirred.cancel()
            await lost  # raises what ended it
            raise ConnectionError("the connection closed")
        except Exception as error:
            self._note_failure(run, error)
        finally:
            was_live, run.live = run.live, False
            run.watched.clear()
            if lost is not None:
                lost.cancel()
            if self._run is run:
                self._next_try = time.monotonic() + self.RETRY_AFTER
                if was_live:  # an announcement may have been missed: every wait looks again
                    self._wake_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), self.CLOSE_TIMEOUT)

    async def _watch_what_is_waited_for(self, channel: Channel, run: _Run) -> None:
        while True:
            wanted = set(self._watching)
            gone, new = run.watched - wanted, wanted - run.watched
            if not gone and not new:
                return
            for each in gone:
                run.watched.discard(each)
                await channel.unwatch(each)
            for each in new:
                await channel.watch(each)
                run.watched.add(each)  # only now: a change from here on is announced

    def _heard(self, token: str) -> None:
        for watching in list(self._watching.get(token, ())):
            watching.wake()

    def _wake_all(self) -> None:
        for same in list(self._watching.values()):
            for watching in list(same):
                watching.wake()

    def _note_failure(self, run: _Run, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if run.live:
            log.warning(
                "idempotency wake-ups: lost the listener on %s (%s); waits poll until it is back",
                self.name,
                reason,
            )
        elif not self._failing:
            log.warning(
                "idempotency wake-ups: cannot listen on %s (%s); waits poll meanwhile",
                self.name,
                reason,
            )
        self._failing = True


def wakeups_of(store: object) -> Wakeups | None:
    """A store's wake-ups, if it has any: an optional capability, looked up once."""
    found = getattr(store, "wakeups", None)
    return found if isinstance(found, Wakeups) else None


def _retrieve(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: the listener's own loop reports it
