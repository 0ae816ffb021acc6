"""Round trips to PostgreSQL, counted on the wire: a TCP relay on 127.0.0.1 that reads what
the client sends.

A client waits for the server once per Sync message (the extended protocol: Parse, Bind,
Execute… then Sync) and once per simple Query: those are the round trips. Counting there sees
everything, whichever way the store talks to its driver (SQLAlchemy or asyncpg's own calls,
which SQLAlchemy's events never see). Each round trip is noted with the SQL it ran: the text
of the Query, or of the statement its Bind names (asyncpg prepares a statement once per
connection, and runs it afterwards by name); a Sync after a Parse alone is a "prepare".
No library parses the frontend side of the protocol, hence these few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104


@dataclass
class Wire:
    """What crossed the relay: one entry per round trip, each the statements it carried."""

    trips: list[list[str]] = field(default_factory=list)
    url: str = ""
    latency: float = 0.0  # seconds the server's answers are held: a slow database, not a dead one
    connections: int = 0  # opened through the relay, by any pool

    def clear(self) -> None:
        self.trips.clear()

    @property
    def statements(self) -> list[str]:
        """The SQL of every round trip that ran one (prepares left out)."""
        return [text for trip in self.trips for text in trip if text != "prepare"]


@contextlib.contextmanager
def counting_relay(postgres_url: str) -> Iterator[Wire]:
    """A relay to ``postgres_url``'s server; ``Wire.url`` is the same URL through it.

    It runs on an event loop of its own, in a thread: a test that blocks its own loop (to let
    a server end a session before the driver can notice) does not stop the relay, which
    passes the server's close on at once, as a direct connection would.
    """
    target = make_url(postgres_url)
    wire = Wire()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    servers: list[asyncio.Server] = []

    async def serve(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        wire.connections += 1
        try:
            server_in, server_out = await asyncio.open_connection(
                target.host or "127.0.0.1", target.port or 5432
            )
        except OSError:
            client_out.close()
            return
        upstream = asyncio.create_task(_client_to_server(client_in, server_out, wire))
        downstream = asyncio.create_task(_pipe(server_in, client_out, wire))
        await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for writer in (client_out, server_out):
            writer.close()

    async def listen() -> None:
        servers.append(await asyncio.start_server(serve, "127.0.0.1", 0))
        started.set()

    def run() -> None:
        loop.run_until_complete(listen())
        loop.run_forever()

    thread = threading.Thread(target=run, name="pg-wire-relay", daemon=True)
    thread.start()
    assert started.wait(10), "the relay did not start"
    port = servers[0].sockets[0].getsockname()[1]
    wire.url = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    try:
        yield wire
    finally:
        loop.call_soon_threadsafe(servers[0].close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            if wire.latency:
                await asyncio.sleep(wire.latency)
            writer.write(chunk)
            await writer.drain()


async def _client_to_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
) -> None:
    prepared: dict[str, str] = {}  # statement name → its SQL, on this connection
    pending: list[str] = []  # what the messages since the last Sync will run
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while True:  # the start-up messages carry no type byte
            head = await reader.readexactly(8)
            length, code = struct.unpack("!II", head)
            rest = await reader.readexactly(length - 8)
            writer.write(head + rest)
            await writer.drain()
            if code not in (_SSL_REQUEST, _GSS_REQUEST):
                break
        while True:
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            writer.write(kind + struct.pack("!I", length) + body)
            await writer.drain()
            if kind == b"P":  # Parse: name, SQL
                name, sql = body.split(b"\0")[:2]
                prepared[name.decode()] = " ".join(sql.decode().split())
                pending.append("prepare")
            elif kind == b"B":  # Bind: portal, statement name
                statement = body.split(b"\0")[1].decode()
                pending = [p for p in pending if p != "prepare"]
                pending.append(prepared.get(statement, "?"))
            elif kind == b"S":  # Sync: the client now waits for the server
                wire.trips.append(pending or ["sync"])
                pending = []
            elif kind == b"Q":  # a simple query: sent and waited for at once
                wire.trips.append([" ".join(body.rstrip(b"\0").decode().split())])
            elif kind == b"C" and body[:1] == b"S":  # Close of a prepared statement
                prepared.pop(body[1:].split(b"\0")[0].decode(), None)
