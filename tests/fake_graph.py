"""A fake Meta Graph API for the outbox sender: records every send, delivers each key once.

Like a receiver that honours ``Idempotency-Key``, a repeated key is answered with the message
id of its first send and delivers nothing new; ``sends`` still shows every request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from support import free_port

ERROR_TITLES = {
    131000: "Something went wrong",
    131047: "Re-engagement message",
    131050: "Unable to deliver the message: the user stopped marketing messages",
}


@dataclass(frozen=True)
class Send:
    phone_number_id: str
    idempotency_key: str | None
    authorization: str | None
    payload: dict[str, Any]


@dataclass
class FakeGraph:
    sends: list[Send] = field(default_factory=list)  # every request, repeats included
    delivered: list[Send] = field(default_factory=list)  # what a customer would receive
    # Answers before succeeding: a status (Meta's error 131000), or a status and an error code.
    failures: list[int | tuple[int, int]] = field(default_factory=list)
    _ids: dict[str, str] = field(default_factory=dict)  # idempotency key → message id

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/{version}/{phone_number_id}/messages", self._send, methods=["POST"])]
        )

    async def _send(self, request: Request) -> JSONResponse:
        send = Send(
            phone_number_id=request.path_params["phone_number_id"],
            idempotency_key=request.headers.get("idempotency-key"),
            authorization=request.headers.get("authorization"),
            payload=await request.json(),
        )
        self.sends.append(send)
        if self.failures:
            failure = self.failures.pop(0)
            status, code = failure if isinstance(failure, tuple) else (failure, 131000)
            error = {"message": f"(#{code}) {ERROR_TITLES.get(code, 'Error')}", "code": code}
            return JSONResponse({"error": error}, status_code=status)
        key = send.idempotency_key
        message_id = self._ids.get(key) if key else None
        if message_id is None:
            message_id = f"wamid.fake-{len(self.delivered) + 1}"
            self.delivered.append(send)
            if key:
                self._ids[key] = message_id
        recipient = send.payload.get("to") or send.payload.get("recipient")
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": recipient, "wa_id": recipient}],
                "messages": [{"id": message_id}],
            }
        )


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake Graph server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
