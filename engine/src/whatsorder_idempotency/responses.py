"""The middleware's side of an ASGI response: held until stored, replayed, or a problem.

``ResponseCapture`` holds the app's answer until the engine has stored it (past the stored-body
limit it streams instead, unless the answer describes writes not yet committed); the senders
write a stored answer, a replay or an RFC 9457 problem to an ASGI ``send``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from whatsorder_idempotency.errors import IdempotencyError
from whatsorder_idempotency.held import held_key
from whatsorder_idempotency.keys import InvalidKey
from whatsorder_idempotency.problems import problem_body, problem_for
from whatsorder_idempotency.record import STORED_HEADER, StoredResponse

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
REPLAYED_HEADER = b"idempotent-replayed"


def shares_a_transaction() -> bool:
    """Whether the running handler's writes share the answer's transaction (not yet committed)."""
    held = held_key.get()
    return held is not None and held.shared is not None


class ResponseCapture:
    """Holds the app's response until it is stored; past ``limit`` bytes it streams it instead.

    Never while ``must_hold()``: an answer about writes not yet committed waits for the commit.
    """

    def __init__(self, send: Send, limit: int, must_hold: Callable[[], bool]) -> None:
        self._send = send
        self._limit = limit
        self._must_hold = must_hold
        self._start: Message | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self.passed_through = False
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            self.started = True
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        if self.passed_through:
            await self._send(message)
            return
        chunk = message.get("body", b"")
        self._size += len(chunk)
        self._chunks.append(chunk)
        if self._size > self._limit and not self._must_hold():
            await self._pass_through(more_body=message.get("more_body", False))

    async def _pass_through(self, *, more_body: bool) -> None:
        assert self._start is not None
        self.passed_through = True
        start = dict(self._start)
        start["headers"] = [*start.get("headers", []), (STORED_HEADER.encode(), b"false")]
        await self._send(start)
        await self._send(
            {"type": "http.response.body", "body": b"".join(self._chunks), "more_body": more_body}
        )
        self._chunks = []

    def stored(self) -> StoredResponse:
        """What is kept for replay: everything, or without the body when it was too large."""
        if self._start is None:
            raise RuntimeError("the application sent no response")
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in self._start.get("headers", [])
        }
        body = b"" if self.passed_through else b"".join(self._chunks)
        response = StoredResponse.build(self._start["status"], body, headers)
        return response.without_body() if self.passed_through else response

    async def flush(self) -> None:
        assert self._start is not None
        await self._send(self._start)
        await self._send({"type": "http.response.body", "body": b"".join(self._chunks)})


async def send_stored(send: Send, response: StoredResponse, *, replayed: bool) -> None:
    headers = [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers
    ]
    if replayed:
        headers.append((REPLAYED_HEADER, b"true"))
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def send_problem(send: Send, error: IdempotencyError | InvalidKey) -> None:
    status, body, headers = problem_for(error)
    await send_raw(send, status, body, headers)


def too_large(limit: int) -> tuple[bytes, dict[str, str]]:
    body = problem_body(
        "body-too-large", "Request body too large", 413, f"The limit is {limit} bytes."
    )
    return body, {"content-type": "application/problem+json"}


async def send_raw(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
