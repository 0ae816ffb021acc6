"""The console in a real browser (Playwright driving Debian's chromium, headless) against a real
server: sign-in and out, refusals, an order placed through the Twilio webhook, a stale edit,
customer text that tries to be HTML, and axe-core on every page. Screenshots go to docs/console/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, sync_playwright

from support import (
    INBOUND_PATH,
    STRIPE_PATH,
    STRIPE_SECRET,
    Server,
    encode,
    inbound_form,
    running_server,
    server_env,
    signed_headers,
    stripe_body,
    stripe_event,
    stripe_headers,
    whatsorder_command,
)

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
SECRET = "a console secret for the browser tests, long enough"
PASSWORD = "correct horse battery"
ORDER_NUMBER = re.compile(r"^ORD-\d+$")  # the orders list's rows link their retailer too


@pytest.fixture(scope="module")
def server(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console")
    path = folder / "whatsorder.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    env = server_env(url, WHATSORDER_CONSOLE_SECRET=SECRET)
    for name, role in (("asha", "operator"), ("vik", "viewer"), ("ada", "admin")):
        command = whatsorder_command("operator", "add", name, "--role", role)
        command += ["--password", PASSWORD]
        added = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
    with running_server(
        url,
        folder / "server.log",
        WHATSORDER_CONSOLE_SECRET=SECRET,
        WHATSORDER_STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        message = "chromium is not installed (make test installs Debian's chromium package)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    yield opened
    context.close()


def sign_in(page: Page, server: Server, name: str) -> None:
    page.goto(f"{server.base_url}/console/login")
    page.get_by_label("Operator name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/orders")


def no_serious_violations(page: Page) -> None:
    results = Axe().run(page)
    serious = [
        f"{violation['id']}: {violation['help']}"
        for violation in results.response["violations"]
        if violation["impact"] in {"serious", "critical"}
    ]
    assert serious == [], serious


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def place_order(
    server: Server, text: str, name: str, sender: str = "whatsapp:+919876543210"
) -> None:
    form = inbound_form(text, name=name, sender=sender)
    headers = signed_headers(INBOUND_PATH, form)
    for _ in range(2):  # Twilio's retry: the same delivery again
        answer = httpx.post(server.base_url + INBOUND_PATH, content=encode(form), headers=headers)
        assert answer.status_code == 200, answer.text


def test_sign_in_shows_the_orders_and_sign_out_ends_the_session(page: Page, server: Server) -> None:
    page.goto(f"{server.base_url}/console/login")
    no_serious_violations(page)
    shoot(page, "login")
    sign_in(page, server, "asha")
    assert page.get_by_role("heading", name="Orders").is_visible()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/login")
    page.goto(f"{server.base_url}/console/orders")
    assert page.url.endswith("/console/login")  # the session is over


def test_an_order_from_the_webhook_shows_and_its_html_stays_text(
    page: Page, server: Server
) -> None:
    place_order(server, "ORDER 2 x ATTA-5KG", "<script>alert(1)</script>")
    sign_in(page, server, "asha")
    row = page.get_by_role("row").filter(has_text="<script>alert(1)</script>")
    assert row.count() == 1  # shown once, as text: the retry made no second order
    assert "placed" in row.inner_text()
    assert page.dialogs == []  # type: ignore[attr-defined]
    no_serious_violations(page)
    shoot(page, "orders")
    row.get_by_role("link", name=ORDER_NUMBER).click()
    page.wait_for_url("**/console/orders/ORD-*")
    deliveries = page.get_by_role("row").filter(has_text="twilio_inbound")
    deadline = time.monotonic() + 10  # the inbox is written every second, in batches
    while deliveries.count() < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
        page.reload()
    outcomes = sorted(deliveries.nth(i).inner_text().split("\t")[3] for i in range(2))
    assert outcomes == ["new", "replayed"]  # the delivery and Twilio's retry of it
    assert page.dialogs == []  # type: ignore[attr-defined]
    no_serious_violations(page)
    shoot(page, "order")
    page.goto(f"{server.base_url}/console/inbox?outcome=replayed")
    assert page.get_by_role("row").filter(has_text="twilio_inbound").count() >= 1
    no_serious_violations(page)
    shoot(page, "inbox")


def test_a_viewer_sees_no_forms_and_a_forged_change_is_refused(page: Page, server: Server) -> None:
    sign_in(page, server, "vik")
    page.goto(f"{server.base_url}/console/catalogue")
    assert page.get_by_role("button", name="Save ATTA-5KG").count() == 0
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    forged = page.request.post(
        f"{server.base_url}/console/catalogue/ATTA-5KG",
        form={
            "csrf_token": token or "",
            "seen_price": "1",
            "seen_stock": "1",
            "unit_price": "1",
            "stock": "0",
        },
    )
    assert forged.status == 403
    assert "viewer" in forged.text()


def test_a_change_without_its_csrf_token_is_refused(page: Page, server: Server) -> None:
    sign_in(page, server, "asha")
    refused = page.request.post(
        f"{server.base_url}/console/catalogue/ATTA-5KG",
        form={"seen_price": "1", "seen_stock": "1", "unit_price": "1", "stock": "0"},
    )
    assert refused.status == 403
    assert "CSRF" in refused.text()


def test_an_edit_made_on_a_stale_page_is_refused_not_lost(
    browser: Browser, page: Page, server: Server
) -> None:
    sign_in(page, server, "asha")
    page.goto(f"{server.base_url}/console/catalogue")
    no_serious_violations(page)
    shoot(page, "catalogue")
    other = page.context.new_page()  # the same operator in a second tab, loaded now
    other.goto(f"{server.base_url}/console/catalogue")
    page.get_by_label("Stock of RICE-5KG").fill("77")
    page.get_by_role("button", name="Save RICE-5KG").click()
    page.wait_for_load_state()
    assert page.get_by_label("Stock of RICE-5KG").input_value() == "77"
    other.get_by_label("Stock of RICE-5KG").fill("5")
    other.get_by_role("button", name="Save RICE-5KG").click()
    other.wait_for_load_state()
    assert "changed since this page was loaded" in other.get_by_role("alert").inner_text()
    assert other.get_by_label("Stock of RICE-5KG").input_value() == "77"  # the saved value
    page.goto(f"{server.base_url}/console/audit")
    assert page.get_by_role("row").filter(has_text="product.edit").count() == 1
    no_serious_violations(page)
    shoot(page, "audit")


def test_the_console_is_usable_360_px_wide(browser: Browser, server: Server) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740})
    narrow = context.new_page()
    sign_in(narrow, server, "asha")
    width = narrow.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the page is {width} px wide at 360 px"
    shoot(narrow, "orders-360px")
    context.close()


def test_a_payment_exception_is_resolved_once_and_stays_in_the_audit_trail(
    page: Page, server: Server
) -> None:
    place_order(server, "ORDER 1 x SUGAR-1KG", "Ravi Kumar", sender="whatsapp:+919812345678")
    sign_in(page, server, "asha")
    ravi = page.get_by_role("row").filter(has_text="Ravi Kumar")
    number = ravi.get_by_role("link", name=ORDER_NUMBER).inner_text()
    body = stripe_body(stripe_event(number, 1))  # one paisa: not what the order costs
    paid = httpx.post(server.base_url + STRIPE_PATH, content=body, headers=stripe_headers(body))
    assert paid.status_code == 200, paid.text
    page.goto(f"{server.base_url}/console/payments")
    row = page.get_by_role("row").filter(has_text=number).filter(has_text="amount_mismatch")
    assert row.count() == 1
    no_serious_violations(page)
    shoot(page, "payments")
    row.get_by_role("textbox").fill("refunded the one paisa; customer will pay again")
    row.get_by_role("button").click()
    page.wait_for_url("**/console/payments")
    resolved = page.get_by_role("row").filter(has_text="refunded the one paisa")
    assert resolved.count() == 1
    assert "asha" in resolved.inner_text()
    open_rows = page.get_by_role("row").filter(has_text=number).filter(has_text="Resolve")
    assert open_rows.count() == 0
    page.goto(f"{server.base_url}/console/audit")
    assert page.get_by_role("row").filter(has_text="payment_exception.resolve").count() == 1


def test_the_health_page_finds_a_key_and_an_admin_counts_then_cleans(
    page: Page, server: Server
) -> None:
    form = inbound_form("ORDER 1 x OIL-1L", name="Meena", sender="whatsapp:+919800011122")
    headers = signed_headers(INBOUND_PATH, form)
    sent = httpx.post(server.base_url + INBOUND_PATH, content=encode(form), headers=headers)
    assert sent.status_code == 200
    sid = dict(form)["MessageSid"]
    sign_in(page, server, "asha")
    page.goto(f"{server.base_url}/console/health")
    assert page.get_by_role("button", name="Count what a cleanup would delete").count() == 0
    page.get_by_label("Key").fill(sid)
    page.get_by_role("button", name="Look up").click()
    found = page.get_by_role("row").filter(has_text="twilio_inbound").filter(has_text="completed")
    assert found.count() == 1
    assert "ORD-" in found.get_by_role("link").inner_text()
    token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    forged = page.request.post(
        f"{server.base_url}/console/health/cleanup", form={"csrf_token": token, "dry_run": "true"}
    )
    assert forged.status == 403  # an operator, not an admin
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, server, "ada")
    page.goto(f"{server.base_url}/console/health")
    page.get_by_role("button", name="Count what a cleanup would delete").click()
    assert "A cleanup now would delete 0 expired records" in page.get_by_role("status").inner_text()
    page.get_by_role("button", name="Delete them now").click()
    assert "Cleanup completed" in page.get_by_role("status").inner_text()
    assert page.get_by_role("row").filter(has_text="console").count() >= 1
    no_serious_violations(page)
    shoot(page, "health")


def test_an_admin_reveals_a_phone_number_and_the_audit_trail_says_so(
    page: Page, server: Server
) -> None:
    place_order(server, "ORDER 1 x TOOR-1KG", "Farida", sender="whatsapp:+919833344455")
    sign_in(page, server, "ada")
    page.get_by_role("row").filter(has_text="Farida").get_by_role("link", name=ORDER_NUMBER).click()
    page.wait_for_url("**/console/orders/ORD-*")
    assert "9833344455" not in page.content()  # masked: only the last digits show
    assert "4455" in page.content()
    page.get_by_role("button", name="Reveal the number").click()
    assert "+919833344455" in page.content()
    page.goto(f"{server.base_url}/console/audit")
    assert page.get_by_role("row").filter(has_text="phone.reveal").count() == 1
