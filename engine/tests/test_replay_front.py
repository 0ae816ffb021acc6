"""``ReplayFront``: replays of a transactional endpoint answered before the app runs.

What a user checks: a retried request gets the first answer, with one order in the table and
the endpoint not run again; everything the front does not answer (a new key, another body
under the key, a bad key header, no key, a body too large to read) reaches the endpoint as it
was sent and is answered as it would be without the front; copies arriving at once through a
real server still make one order; a first request reads the record once, not twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from front_app import Front, create
from pg_wire import Wire, counting_relay
from served import free_port, served
from whatsorder_idempotency import IdempotentRequest, Outcome
from whatsorder_idempotency.front_reads import note_found_none, take_found_none

ORDER = b'{"sku": "rice-5kg", "qty": 2}'


@pytest.fixture
async def front(sql_url: str) -> AsyncIterator[Front]:
    built = create(sql_url, max_request_bytes=1_000)
    await built.prepare()
    yield built
    await built.close()


def client_of(front: Front) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=front.app), base_url="http://t")


def keyed(key: str, **more: str) -> dict[str, str]:
    return {"idempotency-key": key, "content-type": "application/json", **more}


async def test_a_replay_is_answered_by_the_front_and_the_endpoint_does_not_run(
    front: Front,
) -> None:
    async with client_of(front) as client:
        first = await client.post("/orders", content=ORDER, headers=keyed("k-1"))
        again = [await client.post("/orders", content=ORDER, headers=keyed("k-1")) for _ in "abc"]

    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    for replay in again:
        assert (replay.status_code, replay.content) == (201, first.content)
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["content-type"] == "application/json"
    assert front.entered == ["k-1"]  # the endpoint ran once: the replays never reached it
    assert await front.orders() == 1
    # The engine's listeners hear of the front's replays as of any other (metrics, statistics).
    assert [event.outcome for event in front.events] == [Outcome.NEW] + [Outcome.REPLAYED] * 3


async def test_what_the_front_does_not_answer_reaches_the_endpoint_as_it_was_sent(
    front: Front,
) -> None:
    big = json.dumps({"sku": "x" * 4_000, "qty": 1}).encode()  # over the front's 1,000 bytes

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    async with client_of(front) as client:
        first = await client.post("/orders", content=ORDER, headers=keyed("k-2"))
        # A provider's retry with one more field is another request under the key: refused by
        # the endpoint's own decision, not replayed.
        other = await client.post(
            "/orders", content=b'{"sku": "rice-5kg", "qty": 2, "note": ""}', headers=keyed("k-2")
        )
        bad_key = await client.post("/orders", content=ORDER, headers=keyed('"a\\"b'))
        unkeyed = [await client.post("/orders", content=ORDER) for _ in "ab"]
        large = [await client.post("/orders", content=big, headers=keyed("k-3")) for _ in "ab"]
        streamed = await client.post("/orders", content=chunks(), headers=keyed("k-4"))

    assert first.status_code == 201
    assert other.status_code == 422, other.text
    assert other.json()["type"].endswith("key-reused")
    assert bad_key.status_code == 400, bad_key.text
    assert [response.status_code for response in unkeyed] == [201, 201]
    # The large body reached the endpoint whole, both times; its retry was replayed there.
    assert [response.status_code for response in large] == [201, 201]
    assert large[0].json()["size"] == len(big)
    assert large[1].content == large[0].content
    assert large[1].headers.get("idempotent-replayed") is None  # the endpoint's replay
    assert streamed.status_code == 201
    assert streamed.json()["size"] == len(big)
    assert front.entered == ["k-2", "k-2", '"a\\"b', "", "", "k-3", "k-3", "k-4"]
    assert await front.orders() == 1 + 2 + 1 + 1  # k-2, the two unkeyed, k-3, k-4


@pytest.fixture
def wire(postgres_url: str) -> Iterator[Wire]:
    with counting_relay(postgres_url) as wire:
        yield wire


@pytest.mark.postgres
async def test_a_first_request_reads_the_record_once_and_a_replay_is_that_read_alone(
    wire: Wire,
) -> None:
    front = create(wire.url)
    await front.prepare()
    try:
        async with client_of(front) as client:
            for warm in range(6):  # every pooled connection has prepared its statements
                await client.post("/orders", content=ORDER, headers=keyed(f"warm-{warm}"))
            wire.clear()
            first = await client.post("/orders", content=ORDER, headers=keyed("k-5"))
            first_trips = list(wire.statements)
            wire.clear()
            replay = await client.post("/orders", content=ORDER, headers=keyed("k-5"))
            replay_trips = list(wire.statements)
    finally:
        await front.close()

    assert (first.status_code, replay.status_code) == (201, 201)
    reads = [trip for trip in first_trips if trip.startswith("SELECT") and "idempotency" in trip]
    assert len(reads) == 1, first_trips  # the front's; the endpoint claimed without reading
    kinds = [trip.split()[0].rstrip(";") for trip in first_trips]
    assert kinds == ["SELECT", "BEGIN", "INSERT", "INSERT", "UPDATE", "COMMIT"], first_trips
    assert len(replay_trips) == 1, replay_trips
    assert replay_trips[0].startswith("SELECT"), replay_trips


def test_the_front_s_note_serves_only_the_key_it_was_read_for() -> None:
    store = object()
    read = IdempotentRequest("POST /orders", "k-6", "f")
    note_found_none(store, read)
    assert not take_found_none(store, IdempotentRequest("POST /orders", "k-7", "f"))
    assert not take_found_none(store, IdempotentRequest("POST /other", "k-6", "f"))
    assert not take_found_none(object(), read)  # another store was not read
    assert take_found_none(store, read)
    assert not take_found_none(store, read)  # used up


@pytest.mark.slow
async def test_copies_at_once_through_a_real_server_make_one_order(
    sql_url: str, tmp_path: Path
) -> None:
    """Twenty copies of a new key and one copy with another body, all while the first holds
    its claim for 0.3 s: the front finds no committed record for any of them, and the claims
    behind it decide: one order, twenty identical answers, one 422."""
    env = {"FRONT_DB_URL": sql_url, "FRONT_SLEEP": "0.3"}
    with served("front_app:app", env, tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def post(body: bytes, key: str) -> httpx.Response:
                return await client.post("/orders", content=body, headers=keyed(key))

            copies = [post(ORDER, "k-8") for _ in range(20)]
            answers = await asyncio.gather(*copies, post(ORDER + b" ", "k-8"), post(ORDER, "k-9"))
            later = await post(ORDER, "k-8")

    same, mismatch, other_key = answers[:20], answers[20], answers[21]
    assert {response.status_code for response in same} == {201}, [r.text for r in same]
    assert len({response.content for response in same}) == 1
    assert mismatch.status_code == 422, mismatch.text
    assert other_key.status_code == 201
    assert other_key.content != same[0].content
    assert later.headers["idempotent-replayed"] == "true"
    assert later.content == same[0].content
    check = create(sql_url)
    try:
        assert await check.orders() == 2  # k-8 once, k-9 once
    finally:
        await check.close()


async def test_with_the_database_unreachable_the_endpoint_answers_503(tmp_path: Path) -> None:
    """The front's read fails; it says nothing and lets the endpoint meet the same failure."""
    front = create(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        async with client_of(front) as client:
            response = await client.post("/orders", content=ORDER, headers=keyed("k-10"))
    finally:
        await front.close()
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert front.entered == ["k-10"]


async def test_a_body_cut_short_by_a_disconnect_never_reaches_the_endpoint(front: Front) -> None:
    sent: list[dict[str, object]] = []
    messages = iter(
        [
            {"type": "http.request", "body": ORDER[:12], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/orders",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"idempotency-key", b"k-11"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(ORDER)).encode()),
        ],
        "client": ("127.0.0.1", 4321),
    }
    await front.app(scope, receive, send)
    assert (sent, front.entered) == ([], [])
    assert await front.orders() == 0
