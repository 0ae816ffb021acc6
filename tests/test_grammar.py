"""The message grammar (README, "The messages customers can send") and order pricing, as pure
functions: no database."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whatsorder.ordering.demo import DEMO_CATALOGUE
from whatsorder.ordering.grammar import (
    CancelOrder,
    PlaceOrder,
    ShowCatalogue,
    ShowHelp,
    ShowStatus,
    Unreadable,
    parse_message,
)
from whatsorder.ordering.model import (
    MAX_QUANTITY_PER_LINE,
    Catalogue,
    OrderRejected,
    RequestedLine,
    merge_lines,
    order_id_from_number,
    price_order,
)
from whatsorder.ordering.replies import money

CATALOGUE = Catalogue.of(DEMO_CATALOGUE)
ATTA_AND_TOOR = PlaceOrder((RequestedLine("ATTA-5KG", 2), RequestedLine("TOOR-1KG", 1)))


def order_of(*lines: tuple[str, int]) -> PlaceOrder:
    return PlaceOrder(tuple(RequestedLine(sku, quantity) for sku, quantity in lines))


def unreadable_reason(text: str) -> str:
    command = parse_message(text)
    assert isinstance(command, Unreadable), command
    return command.reason


@pytest.mark.parametrize("text", ["MENU", "menu", "Catalog", "CATALOGUE", "  catalogue \n"])
def test_menu_and_catalog_in_any_case_show_the_catalogue(text: str) -> None:
    assert parse_message(text) == ShowCatalogue()


@pytest.mark.parametrize(
    "text",
    [
        "ORDER 2 x ATTA-5KG, 1 TOOR-1KG",
        "order 2 x atta-5kg, 1 toor-1kg",
        "2 x ATTA-5KG, 1 TOOR-1KG",
        "ORDER\n2 x ATTA-5KG\n1 TOOR-1KG",
        "2 x ATTA-5KG\r\n1 x TOOR-1KG",
        "2x ATTA-5KG; 1x TOOR-1KG",
        "2xATTA-5KG, 1 TOOR-1KG",
        "2 ATTA-5KG, 1 TOOR-1KG",
        "ATTA-5KG x 2, TOOR-1KG x 1",
        "ATTA-5KG x2, TOOR-1KG X 1",
        "2 × ATTA-5KG, 1 × TOOR-1KG",
        "2 * ATTA-5KG, 1 TOOR-1KG",
    ],
)
def test_every_written_form_of_an_order_reads_the_same(text: str) -> None:
    assert parse_message(text) == ATTA_AND_TOOR


def test_a_code_starting_with_x_is_not_read_as_the_times_sign() -> None:
    assert parse_message("2 XL-SHIRT") == order_of(("XL-SHIRT", 2))
    assert parse_message("2 x XL-SHIRT") == order_of(("XL-SHIRT", 2))


def test_status_asks_for_that_order_or_the_latest() -> None:
    assert parse_message("STATUS") == parse_message(" status ") == ShowStatus(None)
    assert parse_message("STATUS ORD-000123") == ShowStatus("ORD-000123")
    assert parse_message("status ord-7") == ShowStatus("ORD-000007")  # as we write it


def test_cancel_names_the_order_and_without_a_number_asks_which() -> None:
    assert parse_message("cancel ORD-000123") == CancelOrder("ORD-000123")
    assert "CANCEL ORD-000123" in unreadable_reason("CANCEL")


@pytest.mark.parametrize(
    "text", ["STATUS my order", "CANCEL ORD-²", "CANCEL ORD-12x", "STATUS \x01"]
)
def test_something_that_is_not_an_order_number_is_answered_with_what_one_looks_like(
    text: str,
) -> None:
    reason = unreadable_reason(text)
    assert "ORD-000123" in reason
    assert "\x01" not in reason


@pytest.mark.parametrize("text", ["HELP", "help", "hi", "Thanks! 🙏", "when will it come?", "42"])
def test_help_and_chatter_get_the_help(text: str) -> None:
    assert parse_message(text) == ShowHelp()


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_body_is_a_media_message_we_cannot_read(text: str) -> None:
    assert "only read text messages" in unreadable_reason(text)


def test_a_ten_kilobyte_message_is_too_long() -> None:
    reason = unreadable_reason("ORDER " + "2 x ATTA-5KG; " * 730)
    assert "too long (10225 characters; the limit is 2000)" in reason


@pytest.mark.parametrize("quantity", ["99999999999999999999", "1234567890", "+" + "9" * 1900])
def test_a_huge_quantity_is_far_too_large(quantity: str) -> None:
    assert "ATTA-5KG is far too large" in unreadable_reason(f"{quantity} x ATTA-5KG")
    assert "ATTA-5KG is far too large" in unreadable_reason(f"ATTA-5KG x {quantity}")


def test_a_five_thousand_digit_quantity_does_not_raise() -> None:
    assert "too long" in unreadable_reason("ORDER " + "7" * 5000 + " x ATTA-5KG")
    assert parse_message("0" * 1990 + "3 ATTA-5KG") == order_of(("ATTA-5KG", 3))


def test_zero_and_negative_quantities_are_read_and_refused_when_priced() -> None:
    command = parse_message("ORDER 0 x ATTA-5KG, -2 x TOOR-1KG")
    assert command == order_of(("ATTA-5KG", 0), ("TOOR-1KG", -2))
    with pytest.raises(OrderRejected) as rejected:
        price_order(command.lines, CATALOGUE)
    message = str(rejected.value)
    assert f"ATTA-5KG: quantity must be between 1 and {MAX_QUANTITY_PER_LINE}" in message
    assert "TOOR-1KG: quantity must be between 1" in message


def test_a_negative_line_cannot_take_back_part_of_another() -> None:
    with pytest.raises(OrderRejected, match="ATTA-5KG: quantity must be between 1"):
        price_order([RequestedLine("ATTA-5KG", 5), RequestedLine("ATTA-5KG", -3)], CATALOGUE)


def test_an_unreadable_item_after_a_good_one_is_quoted_back() -> None:
    reason = unreadable_reason("2 x ATTA-5KG, two bags of rice\x07")
    assert '"two bags of rice?"' in reason


def test_a_code_longer_than_any_of_ours_is_not_read_or_echoed_in_full() -> None:
    assert parse_message("2 x " + "A" * 64) == order_of(("A" * 64, 2))
    reason = unreadable_reason("ORDER 2 x " + "A" * 65)
    assert "A" * 41 not in reason


def test_a_typo_in_a_code_is_named_and_every_problem_is_reported_at_once() -> None:
    with pytest.raises(OrderRejected) as rejected:
        price_order([RequestedLine("ATTA-5GK", 2), RequestedLine("RICE-5KG", 151)], CATALOGUE)
    assert str(rejected.value) == "ATTA-5GK is not in our catalogue; RICE-5KG: only 150 in stock."


def test_duplicate_codes_are_merged_and_priced_from_the_catalogue() -> None:
    command = parse_message("1 TOOR-1KG, 2 atta-5kg, 3 x toor-1kg")
    assert isinstance(command, PlaceOrder)
    assert merge_lines(command.lines) == order_of(("TOOR-1KG", 4), ("ATTA-5KG", 2)).lines
    order = price_order(command.lines, CATALOGUE)
    assert [(line.sku, line.unit_price, line.total) for line in order.lines] == [
        ("TOOR-1KG", 16_000, 64_000),
        ("ATTA-5KG", 26_500, 53_000),
    ]
    assert (order.total, order.currency) == (117_000, "INR")


def test_non_ascii_text_is_help_or_a_clear_reason_never_an_error() -> None:
    assert parse_message("नमस्ते, आटा चाहिए") == ShowHelp()
    assert '"दो किलो चावल"' in unreadable_reason("ORDER 2 x ATTA-5KG, दो किलो चावल")
    assert parse_message("٣ x ATTA-5KG") == order_of(("ATTA-5KG", 3))  # Arabic-Indic digits


def test_order_numbers_are_read_strictly() -> None:
    assert order_id_from_number("ORD-000123") == 123
    assert order_id_from_number(" ord-7 ") == 7
    assert order_id_from_number("ORD-١٢") == 12  # decimal digits of any script, as int() reads
    for number in ("ORD-", "ORD-²", "123", "ORD-1234567890123", "ORD--5", "ORD-1 2"):
        assert order_id_from_number(number) is None, number


@given(st.text())
def test_parse_message_never_raises_on_any_text(text: str) -> None:
    parse_message(text)


@given(
    st.lists(
        st.sampled_from(["2", "x", " ", "-", "ATTA-5KG", ",", "\n", "ORD-", "×", "9" * 12])
    ).map("".join)
)
def test_parse_message_never_raises_on_order_like_text(text: str) -> None:
    parse_message("ORDER " + text)
    parse_message("CANCEL " + text)


def test_money_is_shown_in_major_units_with_the_symbol() -> None:
    assert money(26_500, "INR") == "₹265.00"
    assert money(5, "INR") == "₹0.05"
    assert money(-125_000, "INR") == "-₹1,250.00"
    assert money(10**18 + 1, "INR") == "₹10,000,000,000,000,000.01"
    assert money(199, "USD") == "USD 1.99"


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_money_is_exact_for_any_integer_amount(amount: int) -> None:
    shown = money(amount, "INR")
    assert re.fullmatch(r"-?₹\d{1,3}(,\d{3})*\.\d\d", shown)
    assert int(re.sub(r"[₹,.]", "", shown)) == amount
