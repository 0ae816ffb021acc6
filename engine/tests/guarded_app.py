"""An app guarded by ``IdempotencyMiddleware`` in lease mode, with the defaults, to be served.

For tests that kill or pause the process serving it (``served.py``). Environment:
``GUARDED_STORE_URL`` the store; ``GUARDED_EFFECTS`` a file where each run of the handler
appends ``name key started_at`` (wall clock, seconds) *before* it sleeps; ``GUARDED_NAME`` this
server's name, which its answers carry; ``GUARDED_SLEEP`` how long the handler then sleeps.
"""

from __future__ import annotations

import asyncio
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from whatsorder_idempotency import IdempotencyMiddleware

NAME = os.environ.get("GUARDED_NAME", "guarded")
SLEEP = float(os.environ.get("GUARDED_SLEEP", "0"))
EFFECTS = os.environ["GUARDED_EFFECTS"]

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/orders")
async def create_order(request: Request) -> JSONResponse:
    key = request.headers["idempotency-key"]
    _note_effect(f"{NAME} {key} {time.time():.6f}\n")
    await asyncio.sleep(SLEEP)
    return JSONResponse({"served_by": NAME}, status_code=201)


def _note_effect(line: str) -> None:
    descriptor = os.open(EFFECTS, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
    try:
        os.write(descriptor, line.encode())  # one small append: whole, whatever happens next
    finally:
        os.close(descriptor)


app.add_middleware(IdempotencyMiddleware, store=os.environ["GUARDED_STORE_URL"], required=True)
