"""The send-time decision, with no database: text inside the 24-hour window, the approved
template outside it (Meta's and Twilio's forms), held for consent or a missing template, and
replies always sent as text. Then the templates file: the example ships valid, and each mistake
is named."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from outbox_support import PARAMS, TEMPLATES
from support import free_port, server_env, whatsorder_command
from whatsorder.outbound.decision import Customer, Hold, Notice, Send, decide
from whatsorder.outbound.forms import MetaTemplate, Text, TwilioTemplate
from whatsorder.outbound.templates import TemplatesInvalid, load_templates, parse_templates

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
CATALOGUE = parse_templates(TEMPLATES)
EXAMPLE = Path(__file__).parents[1] / "deploy" / "notification-templates.example.json"


def notification(provider: str = "meta", **changes: object) -> Notice:
    fields: dict[str, object] = {
        "provider": provider,
        "body": "Your order ORD-000042 is on its way.",
        "proactive": True,
        "event": "dispatched",
        "language": "en",
        "params": PARAMS,
    }
    fields.update(changes)
    return Notice(**fields)  # type: ignore[arg-type]


def wrote(hours_ago: float) -> Customer:
    return Customer(opted_out_at=None, last_inbound_at=NOW - timedelta(hours=hours_ago))


@pytest.mark.parametrize("provider", ["meta", "twilio"])
def test_inside_the_window_a_notification_goes_as_text(provider: str) -> None:
    decided = decide(notification(provider), wrote(hours_ago=23), NOW, CATALOGUE)
    assert decided == Send(Text("Your order ORD-000042 is on its way."))


def test_outside_the_window_a_meta_notification_is_its_template_with_params_in_order() -> None:
    decided = decide(notification("meta"), wrote(hours_ago=25), NOW, CATALOGUE)
    assert decided == Send(MetaTemplate("order_dispatched", "en", ("ORD-000042", "₹690.00")))


def test_outside_the_window_a_twilio_notification_is_its_content_sid_and_variables() -> None:
    decided = decide(notification("twilio"), wrote(hours_ago=25), NOW, CATALOGUE)
    expected = TwilioTemplate("HX" + "a" * 32, {"1": "ORD-000042", "2": "₹690.00"})
    assert decided == Send(expected)


@pytest.mark.parametrize(
    "customer",
    [Customer(opted_out_at=None, last_inbound_at=None), None],
    ids=["never wrote", "unknown"],
)
def test_a_customer_with_no_message_on_record_gets_the_template(customer: Customer | None) -> None:
    decided = decide(notification(), customer, NOW, CATALOGUE)
    assert decided == Send(MetaTemplate("order_dispatched", "en", ("ORD-000042", "₹690.00")))


def test_the_last_minutes_of_the_window_already_take_the_template() -> None:
    decided = decide(notification(), wrote(hours_ago=23.95), NOW, CATALOGUE)
    assert isinstance(decided, Send)
    assert isinstance(decided.form, MetaTemplate)


def test_the_customers_language_is_used_and_english_is_the_fallback() -> None:
    hindi = decide(notification(language="hi"), wrote(hours_ago=30), NOW, CATALOGUE)
    assert isinstance(hindi, Send)
    assert isinstance(hindi.form, MetaTemplate)
    assert (hindi.form.name, hindi.form.language) == ("order_dispatched_hi", "hi")

    confirmed = notification(event="confirmed", language="hi")
    fallback = decide(confirmed, wrote(hours_ago=30), NOW, CATALOGUE)
    assert fallback == Send(MetaTemplate("order_confirmed", "en_US", ()))


@pytest.mark.parametrize(
    ("language", "reason"),
    [
        (
            "hi",
            "no approved template for 'packed' in 'hi' or 'en': add one to "
            "WHATSORDER_NOTIFICATION_TEMPLATES",
        ),
        (
            None,
            "no approved template for 'packed' in 'en': add one to "
            "WHATSORDER_NOTIFICATION_TEMPLATES",
        ),
    ],
)
def test_a_notification_without_a_template_is_held_naming_the_template_to_add(
    language: str | None, reason: str
) -> None:
    decided = decide(
        notification(event="packed", language=language), wrote(hours_ago=48), NOW, CATALOGUE
    )
    assert decided == Hold(reason)


def test_with_no_templates_configured_everything_outside_the_window_is_held() -> None:
    decided = decide(notification(), wrote(hours_ago=48), NOW, load_templates(None))
    assert isinstance(decided, Hold)
    assert "'dispatched'" in decided.reason


def test_a_template_missing_a_parameter_is_held_not_sent_half_filled() -> None:
    decided = decide(
        notification(params={"order_number": "ORD-1"}), wrote(hours_ago=48), NOW, CATALOGUE
    )
    assert decided == Hold(
        "the template for 'dispatched' in 'en' needs 'total', which the notification does not carry"
    )


def test_a_customer_who_opted_out_gets_no_notification_and_is_told_why() -> None:
    stopped = Customer(
        opted_out_at=datetime(2026, 12, 2, 9, 30, tzinfo=UTC),
        last_inbound_at=NOW - timedelta(hours=1),
    )
    decided = decide(notification(), stopped, NOW, CATALOGUE)
    assert decided == Hold("the customer opted out (STOP) at 2026-12-02 09:30 UTC")


@pytest.mark.parametrize(
    "customer",
    [
        Customer(opted_out_at=NOW - timedelta(days=1), last_inbound_at=NOW),
        Customer(opted_out_at=None, last_inbound_at=NOW - timedelta(days=3)),
        None,
    ],
    ids=["opted out", "outside the window", "unknown"],
)
def test_a_reply_is_always_sent_as_text(customer: Customer | None) -> None:
    reply = Notice("meta", "Order ORD-000042 placed", proactive=False)
    assert decide(reply, customer, NOW, CATALOGUE) == Send(Text("Order ORD-000042 placed"))


def test_the_shipped_example_templates_file_is_valid() -> None:
    catalogue = load_templates(EXAMPLE)
    for provider in ("meta", "twilio"):
        assert catalogue.find("dispatched", "hi", provider) is not None


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ([], "the file must be a JSON object"),
        ({"dispatched": {"en": {"sms": {}}}}, "dispatched.en names the provider 'sms'"),
        ({"dispatched": {"en": {"meta": {"parameters": []}}}}, "dispatched.en.meta.name"),
        (
            {"dispatched": {"en": {"meta": {"name": "x", "parameters": [1]}}}},
            "dispatched.en.meta.parameters must be a list of parameter names",
        ),
        (
            {"dispatched": {"en": {"twilio": {"content_sid": "order_dispatched"}}}},
            "dispatched.en.twilio.content_sid must be a Content SID (HX…)",
        ),
        (
            {"dispatched": {"en": {"twilio": {"content_sid": "HX1", "variables": {"a": "b"}}}}},
            'dispatched.en.twilio.variables must map variable numbers ("1")',
        ),
    ],
)
def test_each_mistake_in_the_templates_is_named(document: object, says: str) -> None:
    with pytest.raises(TemplatesInvalid, match="WHATSORDER_NOTIFICATION_TEMPLATES") as raised:
        parse_templates(document)
    assert says in str(raised.value)


def test_a_templates_file_that_is_missing_or_not_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TemplatesInvalid, match="cannot be read"):
        load_templates(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{'dispatched': ")
    with pytest.raises(TemplatesInvalid, match="is not valid JSON"):
        load_templates(broken)


def test_a_bad_templates_setting_stops_the_settings_with_its_reason(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from whatsorder.settings import Settings

    broken = tmp_path / "templates.json"
    broken.write_text(json.dumps({"dispatched": {"en": {"twilio": {"content_sid": "nope"}}}}))
    with pytest.raises(ValidationError, match="must be a Content SID"):
        Settings(notification_templates=str(broken))
    assert Settings(notification_templates=str(EXAMPLE)).notification_catalogue.find(
        "dispatched", "en", "twilio"
    )


def test_serve_with_a_broken_templates_file_stops_with_one_clear_line(tmp_path: Path) -> None:
    broken = tmp_path / "templates.json"
    broken.write_text(json.dumps({"dispatched": {"hi": {"whatsapp": {}}}}))
    env = server_env(
        f"sqlite:///{tmp_path / 'whatsorder.db'}",
        WHATSORDER_NOTIFICATION_TEMPLATES=str(broken),
    )
    finished = subprocess.run(
        whatsorder_command("serve", "--port", str(free_port())),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.startswith("error: WHATSORDER_NOTIFICATION_TEMPLATES: ")
    assert "dispatched.hi names the provider 'whatsapp'; use meta or twilio" in finished.stderr
    assert "Traceback" not in finished.stderr
