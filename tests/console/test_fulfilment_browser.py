"""Fulfilment in a real browser against a real server: an operator confirms and packs an order
with the order page's buttons, a double click on Pack packs it once, and axe-core checks the
page. The screenshot goes to docs/console/fulfilment.png.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from console.test_console_browser import browser as browser  # chromium, found as there
from console.test_console_browser import (
    no_serious_violations,
    place_order,
    shoot,
    sign_in,
)
from console.test_console_browser import page as page  # a fresh browser context per test
from console.test_console_browser import server as server  # the server and its operators
from support import Server

pytestmark = pytest.mark.slow


def test_an_operator_confirms_then_a_double_click_packs_the_order_once(
    page: Page, server: Server
) -> None:
    place_order(server, "ORDER 1 x OIL-1L", "Fulfilment Stores", sender="whatsapp:+919811111111")
    sign_in(page, server, "asha")
    page.get_by_role("row").filter(has_text="Fulfilment Stores").get_by_role("link").first.click()
    page.wait_for_url("**/console/orders/ORD-*")

    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("status").filter(has_text="confirmed (it was placed)").wait_for()
    page.get_by_role("button", name="Pack").dblclick()
    page.wait_for_load_state()

    transitions = page.get_by_role("row").filter(has_text="asha")
    assert [transitions.nth(i).inner_text().split("\t")[2] for i in range(2)] == [
        "confirmed",
        "packed",
    ]
    notifications = page.get_by_role("row").filter(has_text="pending")
    assert notifications.count() == 2  # one per change, the double click's included
    assert page.get_by_role("button", name="Dispatch").is_visible()
    assert page.dialogs == []  # type: ignore[attr-defined]
    no_serious_violations(page)
    shoot(page, "fulfilment")
