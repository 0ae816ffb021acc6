"""Who is signed in to the console: a signed session cookie, an idle timeout, CSRF tokens.

The cookie is Starlette's ``SessionMiddleware`` (signed with ``itsdangerous``): it holds the
operator's name, when it was last seen and the CSRF token, never a role — the role, and whether
the operator was disabled, are read from the database on every request, so a change takes
effect at once. A form that changes anything carries the session's CSRF token.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from fastapi import Request
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from whatsorder.operators import Role

IDLE_TIMEOUT_SECONDS = 30 * 60
# Sign-in attempts: per account (guessing one password) and per address (trying many names).
PER_ACCOUNT = parse("5/minute")
PER_ADDRESS = parse("20/minute")


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: Role

    @property
    def may_change(self) -> bool:
        return self.role.may_change()


class SignInLimits:
    """Counts sign-in attempts in this process (a console is run by few people): every attempt
    from an address, and the failed ones of an account (a good password does not lock its
    owner out)."""

    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def allow(self, name: str, address: str) -> bool:
        account = await self._limiter.test(PER_ACCOUNT, "console-account", name)
        place = await self._limiter.hit(PER_ADDRESS, "console-address", address)
        return account and place

    async def failed(self, name: str) -> None:
        await self._limiter.hit(PER_ACCOUNT, "console-account", name)


def start(request: Request, name: str) -> None:
    """A new session for ``name``: a fresh CSRF token, nothing carried over."""
    request.session.clear()
    request.session.update(
        {"operator": name, "seen": int(time.time()), "csrf": secrets.token_urlsafe(32)}
    )


def end(request: Request) -> None:
    request.session.clear()


def signed_in_name(request: Request) -> str | None:
    """The operator's name, unless the session is missing or idle past the timeout."""
    name = request.session.get("operator")
    seen = request.session.get("seen")
    if not isinstance(name, str) or not isinstance(seen, int):
        return None
    now = int(time.time())
    if now - seen > IDLE_TIMEOUT_SECONDS:
        request.session.clear()
        return None
    request.session["seen"] = now
    return name


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_matches(request: Request, sent: str | None) -> bool:
    expected = request.session.get("csrf")
    return isinstance(expected, str) and sent is not None and secrets.compare_digest(expected, sent)
