"""The ten-line example of docs/idempotency.md works as the docs say, against the real Redis."""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path
from types import ModuleType

import httpx

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "redis_orders.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("redis_orders", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_app_creates_one_order_per_key(redis_url: str) -> None:
    example = load_example()
    transport = httpx.ASGITransport(app=example.app)
    key = f'"example-{secrets.token_hex(6)}"'
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        first = await client.post(
            "/orders", json={"sku": "ATTA-5KG"}, headers={"Idempotency-Key": key}
        )
        again = await client.post(
            "/orders", json={"sku": "ATTA-5KG"}, headers={"Idempotency-Key": key}
        )
        other = await client.post(
            "/orders", json={"sku": "RICE-5KG"}, headers={"Idempotency-Key": key}
        )
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() == {"id": 1, "sku": "ATTA-5KG"}
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert example.orders == [{"sku": "ATTA-5KG"}]
