"""The ASGI application: ``create_app()`` wires settings, database, engine and routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from whatsorder import observability
from whatsorder.scheduler import CleanupScheduler
from whatsorder.settings import Settings
from whatsorder.web import metrics, operations, problems, twilio
from whatsorder.web.runtime import Runtime


def create_app(settings: Settings | None = None) -> FastAPI:
    """The whatsorder service; settings from the environment unless given."""
    observability.configure_logging_unless_configured()
    runtime = Runtime.build(settings or Settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        cleanup = CleanupScheduler.from_settings(runtime.database, runtime.settings)
        if cleanup is not None:
            cleanup.start()
        stopping = asyncio.Event()
        flusher = asyncio.create_task(runtime.outcomes.run(runtime.database, stopping))
        try:
            yield
        finally:
            stopping.set()
            await flusher  # this worker's last counts reach the statistics
            if cleanup is not None:
                await cleanup.stop()  # after the batch in progress, never the whole run
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
    app.include_router(metrics.router)
    app.add_middleware(metrics.RequestObserver)
    return app
