"""Re-drives in a real browser against a real server: a Meta dead letter re-driven once although
two operators in two browsers press Re-drive at the same moment, a previewed batch, and
axe-core on each page. Screenshots go to docs/console/.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page
from sqlalchemy import create_engine, func, select, update

from console.test_console_browser import (
    PASSWORD,
    SECRET,
    no_serious_violations,
    shoot,
    sign_in,
)
from console.test_console_browser import browser as browser  # chromium, found as there
from support import (
    META_APP_SECRET,
    META_PATH,
    Server,
    meta_delivery,
    meta_headers,
    meta_text_message,
    new_wamid,
    running_server,
    server_env,
    whatsorder_command,
)
from whatsorder.db.tables import dead_letters, orders, webhook_idempotency

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def database(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("redrive") / "whatsorder.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(database, WHATSORDER_CONSOLE_SECRET=SECRET)
    for name, role in (("asha", "operator"), ("bo", "operator")):
        command = whatsorder_command("operator", "add", name, "--role", role)
        added = subprocess.run(
            [*command, "--password", PASSWORD], env=env, capture_output=True, text=True, timeout=60
        )
        assert added.returncode == 0, added.stderr
    log = tmp_path_factory.mktemp("redrive-server") / "server.log"
    with running_server(
        database,
        log,
        WHATSORDER_CONSOLE_SECRET=SECRET,
        WHATSORDER_META_APP_SECRET=META_APP_SECRET,
    ) as running:
        yield running


def deliver(server: Server, body: bytes) -> dict[str, int]:
    answer = httpx.post(server.base_url + META_PATH, content=body, headers=meta_headers(body))
    assert answer.status_code == 200, answer.text
    result: dict[str, int] = answer.json()
    return result


def kept_order(server: Server, database: str, text: str = "ORDER 1 x ATTA-5KG") -> None:
    """A dead letter whose cause is gone: its wamid came first as a HELP (whose record then
    expired), then as an ORDER, which was kept."""
    wamid = new_wamid()
    deliver(server, meta_delivery([meta_text_message("HELP", wamid=wamid)]))
    body = meta_delivery([meta_text_message(text, wamid=wamid)])
    assert deliver(server, body)["dead_lettered"] == 1
    engine = create_engine(database)
    with engine.begin() as connection:
        connection.execute(
            update(webhook_idempotency)
            .where(webhook_idempotency.c.idempotency_key == wamid)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    engine.dispose()


def counted(database: str, table: object) -> int:
    engine = create_engine(database)
    with engine.connect() as connection:
        found = connection.scalar(select(func.count()).select_from(table))  # type: ignore[arg-type]
    engine.dispose()
    return int(found or 0)


def newest_letter(database: str) -> int:
    engine = create_engine(database)
    with engine.connect() as connection:
        found = connection.scalar(select(func.max(dead_letters.c.id)))
    engine.dispose()
    return int(found)


def test_two_browsers_pressing_redrive_at_once_place_one_order(
    browser: Browser, server: Server, database: str
) -> None:
    kept_order(server, database)
    letter = newest_letter(database)
    before = counted(database, orders)
    pages: list[Page] = []
    for name in ("asha", "bo"):
        context = browser.new_context(viewport={"width": 1100, "height": 800})
        page = context.new_page()
        sign_in(page, server, name)
        page.goto(f"{server.base_url}/console/dead-letters")
        pages.append(page)
    no_serious_violations(pages[0])
    shoot(pages[0], "dead-letters")
    buttons = [page.get_by_role("button", name=f"Re-drive {letter}") for page in pages]
    for button in buttons:  # both forms go before either answer comes back
        button.click(no_wait_after=True)
    for page in pages:
        page.wait_for_load_state()
        page.get_by_role("heading", name="Dead letters").wait_for()
    texts = [page.locator("main").inner_text() for page in pages]
    done = [text for text in texts if f"Dead letter {letter} re-driven: order ORD-" in text]
    told = [
        text
        for text in texts
        if "right now" in text or f"Dead letter {letter} was re-driven already by" in text
    ]
    assert (len(done), len(told)) == (1, 1), texts
    assert counted(database, orders) == before + 1
    shoot(pages[1] if told[0] == texts[1] else pages[0], "dead-letter-redriven-twice")
    for page in pages:
        page.context.close()


def test_a_previewed_batch_is_redriven_and_summed_up(
    browser: Browser, server: Server, database: str
) -> None:
    for _ in range(2):
        kept_order(server, database, "ORDER 1 x OIL-1L")
    before = counted(database, orders)
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    sign_in(page, server, "asha")
    page.goto(f"{server.base_url}/console/dead-letters")
    page.get_by_label("Re-drive", exact=True).select_option("never")
    page.get_by_role("button", name="Preview a re-drive of these").click()
    page.get_by_role("heading", name="Re-drive preview").wait_for()
    assert "These 2 will be re-driven." in page.locator("main").inner_text()
    no_serious_violations(page)
    shoot(page, "redrive-preview")
    page.get_by_role("button", name="Re-drive these 2").click()
    page.get_by_role("heading", name="Re-drive results").wait_for()
    assert "2 re-driven: 2 done, 0 failed, 0 skipped." in page.locator("main").inner_text()
    no_serious_violations(page)
    shoot(page, "redrive-summary")
    assert counted(database, orders) == before + 2
    for _ in range(50):  # each worker writes its inbox every second
        page.goto(f"{server.base_url}/console/inbox")
        if "re-drive done (order ORD-" in page.locator("main").inner_text():
            break
        time.sleep(0.1)
    assert "re-drive done (order ORD-" in page.locator("main").inner_text()
    no_serious_violations(page)
    context.close()
