"""Development payment links, for ``make run`` with no provider account: a link to this
service's own page (``/dev/pay/<reference>``), which says what a real link would show and how
to send the payment's webhook by hand (``whatsorder pay``). Nothing leaves the machine.
"""

from __future__ import annotations

from whatsorder.ordering.link_ports import CreatedLink, LinkRequest

PROVIDER = "development"
PAGE_PATH = "/dev/pay"


class DevelopmentLinks:
    """Links to ``public_url`` + ``/dev/pay/<reference>``: the same link for every repeat."""

    provider = PROVIDER

    def __init__(self, public_url: str) -> None:
        self._base = public_url.rstrip("/") + PAGE_PATH

    async def create(self, request: LinkRequest) -> CreatedLink:
        return CreatedLink(
            PROVIDER, f"dev_{request.reference}", f"{self._base}/{request.reference}"
        )
