"""The retailer page in a real browser against a real server: a Hindi-speaking customer who
said STOP, reached from the orders list by a viewer, and axe-core on the page. (No screenshot:
Debian's chromium package brings no Devanagari font, so one would show the language as boxes.)"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from console.test_console_browser import (
    PASSWORD,
    SECRET,
    no_serious_violations,
    sign_in,
)
from console.test_console_browser import browser as browser  # chromium, found as there
from console.test_console_browser import page as page  # a fresh context per test
from support import (
    INBOUND_PATH,
    Server,
    encode,
    inbound_form,
    running_server,
    server_env,
    signed_headers,
    whatsorder_command,
)

pytestmark = pytest.mark.slow
SENDER = "whatsapp:+919811100044"


@pytest.fixture(scope="module")
def server(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("retailer")
    path = folder / "whatsorder.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    env = server_env(url, WHATSORDER_CONSOLE_SECRET=SECRET)
    command = whatsorder_command("operator", "add", "vik", "--role", "viewer")
    added = subprocess.run(
        [*command, "--password", PASSWORD], env=env, capture_output=True, text=True, timeout=60
    )
    assert added.returncode == 0, added.stderr
    with running_server(url, folder / "server.log", WHATSORDER_CONSOLE_SECRET=SECRET) as running:
        yield running


def customer_says(server: Server, text: str) -> str:
    form = inbound_form(text, name="Kiran Kirana", sender=SENDER)
    answer = httpx.post(
        server.base_url + INBOUND_PATH,
        content=encode(form),
        headers=signed_headers(INBOUND_PATH, form),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.text


def test_a_viewer_reaches_a_stopped_hindi_customer_from_the_orders_list(
    page: Page, server: Server
) -> None:
    assert "हिंदी" in customer_says(server, "भाषा हिंदी")
    assert "ORD-" in customer_says(server, "ORDER 1 x SUGAR-1KG")
    customer_says(server, "STOP")

    sign_in(page, server, "vik")
    row = page.get_by_role("row").filter(has_text="Kiran Kirana")
    row.get_by_role("link", name="profile of Kiran Kirana").click()
    page.wait_for_url("**/console/retailers/*")

    assert page.get_by_role("heading", name="Kiran Kirana").is_visible()
    facts = page.locator("dl.facts").inner_text()
    assert "whatsapp:+********0044" in facts
    assert "हिंदी (chosen by the customer)" in facts
    assert "stopped since" in facts
    assert page.get_by_role("row").filter(has_text="stop").filter(has_text="twilio").count() == 1
    no_serious_violations(page)
