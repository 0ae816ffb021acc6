"""The cheap checks every webhook passes before any work (docs/architecture.md §2, steps 1–3)."""

from __future__ import annotations

import asyncio
import time
from ipaddress import ip_address

from fastapi import Request
from limits import parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from whatsorder.settings import Settings
from whatsorder.web.problems import Problem


async def read_body(request: Request, limit: int, seconds: float) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes, and with 408 when
    it has not all arrived within ``seconds``: a client that sends a few bytes and
    stalls (by accident or to tie the server up) is let go, never waited for without end.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError as error:
        raise Problem(
            408,
            "body-timeout",
            "Request body too slow",
            f"The body did not arrive within {seconds:g} s; send it again.",
            {"connection": "close"},
        ) from error
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large", "Request body too large", f"The limit is {limit} bytes.")


def _is_trusted(address: str, settings: Settings) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in settings.trusted_proxy_networks)


def _from_trusted_proxy(request: Request, settings: Settings) -> bool:
    return request.client is not None and _is_trusted(request.client.host, settings)


def client_ip(request: Request, settings: Settings) -> str:
    """The caller's address: the peer, or the nearest untrusted hop of a trusted proxy's chain.

    ``X-Forwarded-For`` is read from the right, where our own proxies appended; everything left
    of an address we cannot parse is the client's own say and is not believed.
    """
    peer = request.client.host if request.client else "unknown"
    if not _from_trusted_proxy(request, settings):
        return peer
    nearest = peer
    forwarded = request.headers.get("x-forwarded-for", "")
    for hop in reversed([hop.strip() for hop in forwarded.split(",") if hop.strip()]):
        try:
            address = str(ip_address(hop))  # one spelling per address: one rate-limit bucket
        except ValueError:
            return nearest
        if not _is_trusted(address, settings):
            return address
        nearest = address
    return nearest


def require_https(request: Request, settings: Settings) -> None:
    """403 unless the request came over TLS, as seen by us or told by a trusted proxy.

    Only the last ``X-Forwarded-Proto`` value counts: our proxy appended it, while earlier
    values may be the client's own claim passed along.
    """
    if not settings.require_https:
        return
    scheme = request.url.scheme
    if _from_trusted_proxy(request, settings):
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
        scheme = forwarded or scheme
    if scheme != "https":
        raise Problem(
            403,
            "https-required",
            "HTTPS required",
            "Webhooks are accepted over HTTPS only (or through a trusted TLS proxy).",
        )


# Redis answers in milliseconds; past this it is down or wedged, and the provider is waiting.
REDIS_TIMEOUT_SECONDS = 2.0


class RateLimits:
    """Per-IP (before any crypto) and per-sender (inside the idempotency scope) limits.

    With the shared counters (Redis) unreachable, a webhook is refused with 503, like an
    unreachable idempotency store: the provider retries it later, and nothing was kept.
    """

    def __init__(self, settings: Settings) -> None:
        storage: Storage
        if settings.redis_url:
            # Shared by every worker and replica; without Redis each process counts alone.
            shared = storage_from_string(
                "async+" + settings.redis_url,
                implementation="redispy",
                wrap_exceptions=True,  # every Redis failure arrives as one StorageError
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            assert isinstance(shared, Storage)
            storage = shared
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        self._per_ip = parse(settings.rate_limit_per_ip)
        self._per_sender = parse(settings.rate_limit_per_sender)

    async def check_ip(self, address: str) -> None:
        try:
            if await self._limiter.hit(self._per_ip, "ip", address):
                return
            stats = await self._limiter.get_window_stats(self._per_ip, "ip", address)
        except StorageError as error:
            raise _counters_unavailable() from error
        retry_after = max(1, int(stats.reset_time - time.time()) + 1)
        raise Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"More than {self._per_ip} from this address.",
            {"retry-after": str(retry_after)},
        )

    async def allow_sender(self, sender: str) -> bool:
        try:
            return bool(await self._limiter.hit(self._per_sender, "sender", sender))
        except StorageError as error:
            raise _counters_unavailable() from error


def _counters_unavailable() -> Problem:
    return Problem(
        503,
        "rate-limit-store-unavailable",
        "Rate-limit store unavailable",
        "The shared rate-limit counters (Redis) cannot be reached; nothing was processed. Retry.",
        {"retry-after": "5"},
    )
