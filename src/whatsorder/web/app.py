"""The ASGI application: ``create_app()`` wires settings, database, engine and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from whatsorder.settings import Settings
from whatsorder.web import operations, problems, twilio
from whatsorder.web.runtime import Runtime


def create_app(settings: Settings | None = None) -> FastAPI:
    """The whatsorder service; settings from the environment unless given."""
    runtime = Runtime.build(settings or Settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await runtime.database.dispose()

    app = FastAPI(
        title="whatsorder",
        summary="WhatsApp orders for retailers; every webhook takes effect exactly once.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    problems.install(app)
    app.include_router(twilio.router)
    app.include_router(operations.router)
    return app
