"""``python -m faults.outbox_worker URL PROVIDER API_URL TIMINGS``: an outbox sender of one
provider, alone in its process, for the fault suite to SIGKILL around its sends.

It sends with short leases so that a row a killed sender held is sent again within seconds.
Each acceptance's record (the commit that marks the row sent: the crash window) is timed, and
the times appended to ``TIMINGS`` as ``window_seconds cycle_seconds`` lines, the cycle being
the whole claim, send and record of that row. With ``WHATSORDER_TEST_KILL_AFTER_ACCEPT`` set,
the process kills itself right after the first acceptance, before recording it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import timedelta
from typing import Any

from fake_twilio import ACCOUNT_SID, AUTH_TOKEN, WHATSAPP_FROM
from whatsorder.db.engine import open_database
from whatsorder.outbox import ChannelSender
from whatsorder.providers.meta.outbound import MetaChannel
from whatsorder.providers.twilio_outbound import TwilioChannel

TIMEOUT = 1.0
LEASE = timedelta(seconds=1.5)


class TimedSender(ChannelSender):
    """A sender that notes how long each acceptance takes to be recorded."""

    timings_path = ""

    async def _send(self, connection: Any, message: Any, outbound: Any, *args: Any) -> int:
        self._cycle_start = time.monotonic()
        return await super()._send(connection, message, outbound, *args)

    async def _record_sent(self, *args: Any) -> None:
        if os.environ.get("WHATSORDER_TEST_KILL_AFTER_ACCEPT"):
            os.kill(os.getpid(), signal.SIGKILL)
        accepted = time.monotonic()
        await super()._record_sent(*args)
        recorded = time.monotonic()
        with open(self.timings_path, "a") as timings:  # noqa: ASYNC230 (a line, then closed)
            timings.write(f"{recorded - accepted:.6f} {recorded - self._cycle_start:.6f}\n")


async def main(url: str, provider: str, api_url: str, timings: str) -> None:
    database = open_database(url)
    TimedSender.timings_path = timings
    if provider == "twilio":
        channel: Any = TwilioChannel(ACCOUNT_SID, AUTH_TOKEN, WHATSAPP_FROM, None, api_url)
    else:
        channel = MetaChannel(api_url, "token", "1065", timeout=TIMEOUT)
    sender = TimedSender(database, channel, claim_lease=LEASE, timeout=TIMEOUT)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await sender.run(stop, interval=0.02)
    finally:
        await database.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
