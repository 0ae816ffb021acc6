"""The ASGI application: ``create_app()`` wires settings, database, engine and routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from whatsorder import observability
from whatsorder.outbox import OutboxSender
from whatsorder.scheduler import CleanupScheduler
from whatsorder.settings import Settings, secret
from whatsorder.web import meta, metrics, operations, payments, problems, twilio
from whatsorder.web.console.app import build_console
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
        background = [
            asyncio.create_task(runtime.outcomes.run(runtime.database, stopping)),
            asyncio.create_task(runtime.inbox.run(runtime.database, stopping)),
        ]
        sender = _outbox_sender(runtime)
        background.append(asyncio.create_task(sender.run(stopping, interval=2.0)))
        try:
            yield
        finally:
            stopping.set()
            await asyncio.gather(*background)  # the last counts flushed, the last send finished
            await sender.aclose()
            if cleanup is not None:
                await cleanup.stop()  # after the batch in progress, never the whole run
            await runtime.close()

    app = FastAPI(
        title="whatsorder",
        summary="WhatsApp orders for retailers; every webhook takes effect exactly once.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    problems.install(app)
    app.include_router(twilio.router)
    app.include_router(meta.router)
    app.include_router(payments.router)
    app.include_router(operations.router)
    app.include_router(metrics.router)
    app.mount("/console", build_console(runtime))
    app.add_middleware(metrics.RequestObserver)
    return app


def _outbox_sender(runtime: Runtime) -> OutboxSender:
    """The sender of replies to Meta users. Without Meta's sending credentials it sends nothing
    but still publishes the backlog: replies piling up unsent must show on the dashboard."""
    settings = runtime.settings
    return OutboxSender(
        runtime.database,
        settings.meta_graph_url,
        secret(settings.meta_access_token),
        settings.meta_phone_number_id,
    )
