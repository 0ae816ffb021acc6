"""The ASGI application: ``create_app()`` wires settings, database, engine and routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from whatsorder import observability, routes
from whatsorder.outbox import ChannelSender
from whatsorder.providers.meta.outbound import MetaChannel
from whatsorder.providers.twilio_outbound import TwilioChannel
from whatsorder.reconciliation import ReconcileScheduler
from whatsorder.scheduler import CleanupScheduler
from whatsorder.settings import Settings, secret
from whatsorder.web import (
    meta,
    metrics,
    operations,
    payment_pages,
    payments,
    problems,
    twilio,
)
from whatsorder.web.console.app import build_console
from whatsorder.web.runtime import Runtime


def create_app(settings: Settings | None = None) -> FastAPI:
    """The whatsorder service; settings from the environment unless given."""
    observability.configure_logging_unless_configured()
    runtime = Runtime.build(settings or Settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        jobs = [
            job
            for job in (
                CleanupScheduler.from_settings(runtime.database, runtime.settings),
                ReconcileScheduler.from_settings(runtime.database, runtime.settings),
            )
            if job is not None
        ]
        for job in jobs:
            job.start()
        stopping = asyncio.Event()
        background = [
            asyncio.create_task(runtime.outcomes.run(runtime.database, stopping)),
            asyncio.create_task(runtime.inbox.run(runtime.database, stopping)),
        ]
        senders = _outbox_senders(runtime)
        background += [asyncio.create_task(sender.run(stopping, 2.0)) for sender in senders]
        try:
            yield
        finally:
            stopping.set()
            await asyncio.gather(*background)  # the last counts flushed, the last send finished
            for sender in senders:
                await sender.aclose()
            for job in jobs:
                await job.stop()  # after the batch or payment in progress, never the whole run
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
    app.include_router(payment_pages.router)
    if runtime.settings.payment_link_provider == "development":
        app.include_router(payment_pages.development_router)
    app.mount("/console", build_console(runtime))
    app.add_middleware(metrics.RequestObserver)
    return app


def _outbox_senders(runtime: Runtime) -> list[ChannelSender]:
    """A sender per provider: Meta's Graph API and Twilio's Messages API. Without a provider's
    sending credentials its sender sends nothing but still publishes the backlog: messages
    piling up unsent must show on the dashboard."""
    settings = runtime.settings
    meta_channel = MetaChannel(
        settings.meta_graph_url, secret(settings.meta_access_token), settings.meta_phone_number_id
    )
    twilio_channel = TwilioChannel(
        settings.twilio_account_sid,
        secret(settings.twilio_auth_token),
        settings.twilio_whatsapp_from,
        status_callback=settings.public_url_for(routes.TWILIO_STATUS),
        api_url=settings.twilio_api_url,
    )
    templates = settings.notification_catalogue
    return [
        ChannelSender(runtime.database, channel, templates=templates)
        for channel in (meta_channel, twilio_channel)
    ]
