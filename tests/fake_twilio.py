"""A fake Twilio Messages API for the outbox sender: records every request, accepts or fails.

Served over real HTTP on 127.0.0.1 (``fake_graph.serving``) and reached through the twilio
SDK, so what it records is what the SDK really sent. Twilio documents no send-side
idempotency, and neither does this fake: every accepted request is a message delivered.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "test-twilio-auth-token"
WHATSAPP_FROM = "whatsapp:+14155238886"


@dataclass(frozen=True)
class TwilioSend:
    account_sid: str
    authorization: tuple[str, str] | None  # Basic auth: (account SID, auth token)
    fields: dict[str, str]

    @property
    def body(self) -> str | None:
        return self.fields.get("Body")


@dataclass(frozen=True)
class Failure:
    status: int
    code: int
    message: str


SERVER_ERROR = Failure(500, 20500, "Internal Server Error")


@dataclass
class FakeTwilio:
    sends: list[TwilioSend] = field(default_factory=list)  # every request, failures included
    delivered: list[TwilioSend] = field(default_factory=list)  # what a customer would receive
    failures: list[Failure] = field(default_factory=list)  # answers before succeeding
    sids: list[str] = field(default_factory=list)  # the SID of each delivered message

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(
                    "/2010-04-01/Accounts/{account_sid}/Messages.json",
                    self._create,
                    methods=["POST"],
                )
            ]
        )

    async def _create(self, request: Request) -> JSONResponse:
        form = await request.form()
        send = TwilioSend(
            account_sid=request.path_params["account_sid"],
            authorization=_basic(request.headers.get("authorization")),
            fields={name: str(value) for name, value in form.items()},
        )
        self.sends.append(send)
        if self.failures:
            failure = self.failures.pop(0)
            error = {
                "code": failure.code,
                "message": failure.message,
                "more_info": f"https://www.twilio.com/docs/errors/{failure.code}",
                "status": failure.status,
            }
            return JSONResponse(error, status_code=failure.status)
        sid = "SM" + secrets.token_hex(16)
        self.delivered.append(send)
        self.sids.append(sid)
        return JSONResponse(_message(sid, send), status_code=201)


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    return user, password


def _message(sid: str, send: TwilioSend) -> dict[str, Any]:
    """A Message resource as Twilio answers a create: queued, with its SID."""
    account = send.account_sid
    return {
        "account_sid": account,
        "api_version": "2010-04-01",
        "body": send.fields.get("Body", ""),
        "date_created": "Thu, 03 Dec 2026 12:00:00 +0000",
        "date_sent": None,
        "date_updated": "Thu, 03 Dec 2026 12:00:00 +0000",
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": send.fields.get("From"),
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": None,
        "sid": sid,
        "status": "queued",
        "subresource_uris": {},
        "to": send.fields.get("To"),
        "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
    }
