"""whatsorder runs on the engine's own distribution; the engine's former name keeps working."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import whatsorder_idempotency
import whatsorder_idempotency.stores.sql


def test_the_former_name_is_the_same_engine_not_a_copy() -> None:
    import whatsorder.idempotency.stores.sql as former_sql

    import whatsorder.idempotency as former

    assert former.IdempotencyMiddleware is whatsorder_idempotency.IdempotencyMiddleware
    assert former_sql is whatsorder_idempotency.stores.sql
    assert set(former.__all__) == set(whatsorder_idempotency.__all__)


def test_a_fresh_interpreter_imports_submodules_by_the_former_name_first() -> None:
    program = (
        "from whatsorder.idempotency.stores.sql import SqlStore\n"
        "from whatsorder_idempotency.stores.sql import SqlStore as Same\n"
        "assert SqlStore is Same\n"
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)


def test_whatsorder_depends_on_the_engine_distribution() -> None:
    requires = importlib.metadata.requires("whatsorder") or []
    assert any(line.startswith("whatsorder-idempotency") for line in requires)
    engine_requires = importlib.metadata.requires("whatsorder-idempotency") or []
    core = [line for line in engine_requires if "extra ==" not in line]
    for framework in ("fastapi", "starlette", "twilio", "stripe", "razorpay", "whatsorder"):
        assert not any(line.lower().startswith(framework) for line in core), core
