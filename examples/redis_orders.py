"""A FastAPI app whose POST /orders runs once per Idempotency-Key; the keys live in Redis."""

from fastapi import FastAPI

from whatsorder_idempotency import IdempotencyMiddleware, open_store

app = FastAPI()
orders: list[dict[str, object]] = []


@app.post("/orders", status_code=201)
async def create_order(order: dict[str, object]) -> dict[str, object]:
    orders.append(order)
    return {"id": len(orders), **order}


app.add_middleware(IdempotencyMiddleware, store=open_store("redis://127.0.0.1:6379/0"))
