"""Payment links at Stripe and Razorpay through their SDKs, against fake APIs on 127.0.0.1:
each request names one link at the provider, however often it is repeated (issue #17)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from fake_graph import serving
from fake_payment_apis import RAZORPAY_KEY, STRIPE_KEY, FakePaymentApis
from whatsorder.ordering.payment_model import link_reference
from whatsorder.providers.links import CreatedLink, LinkFailed, LinkRequest, PaymentLinks
from whatsorder.providers.links.razorpay_links import RazorpayLinks
from whatsorder.providers.links.stripe_links import StripeLinks

REQUEST = LinkRequest(
    "ORD-000007", 53_000, "INR", "whatsorder ORD-000007", link_reference(7, 53_000, "inr")
)


@pytest.fixture
def fake() -> Iterator[tuple[FakePaymentApis, str]]:
    apis = FakePaymentApis()
    with serving(apis.app) as base:
        yield apis, base


def _stripe(base: str, key: str = STRIPE_KEY) -> StripeLinks:
    return StripeLinks(key, success_url="https://shop.test/paid", api_base=base, timeout=5)


def _razorpay(base: str, secret: str = RAZORPAY_KEY[1]) -> RazorpayLinks:
    return RazorpayLinks(RAZORPAY_KEY[0], secret, api_base=base, timeout=5, first_delay=0.05)


def _both(base: str) -> list[PaymentLinks]:
    return [_stripe(base), _razorpay(base)]


def test_the_reference_names_order_amount_and_currency_and_is_refused_when_unusable() -> None:
    assert REQUEST.reference == "ORD-000007-53000-INR"
    with pytest.raises(ValueError, match="positive amount"):
        LinkRequest("ORD-000007", 0, "INR", "nothing to pay", "ORD-000007-0-INR")
    with pytest.raises(ValueError, match="1-40 letters"):
        LinkRequest("ORD 7", 100, "INR", "a space in the reference", "ORD 7-100-INR")


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
def test_a_repeated_request_gets_the_first_link_and_creates_nothing(
    fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    links = _stripe(base) if provider == "stripe" else _razorpay(base)

    async def twice() -> tuple[CreatedLink, CreatedLink]:
        return await links.create(REQUEST), await links.create(REQUEST)

    first, second = asyncio.run(twice())
    assert first == second
    assert first.provider == provider
    assert first.url.startswith("https://")
    (created,) = apis.links(provider)
    assert created["id"] == first.link_id
    assert created["metadata" if provider == "stripe" else "notes"]["order_id"] == "ORD-000007"


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
def test_two_requests_at_the_same_moment_get_one_link(
    fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    apis.delay = 0.3  # the first is still being answered when the second arrives

    async def together() -> list[CreatedLink]:
        links = _stripe(base) if provider == "stripe" else _razorpay(base)
        return list(await asyncio.gather(links.create(REQUEST), links.create(REQUEST)))

    first, second = asyncio.run(together())
    assert first == second
    assert len(apis.links(provider)) == 1


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
def test_a_link_created_but_its_answer_lost_is_found_by_the_retry(
    fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    apis.lose_answers = 1  # created at the provider, then a 502 instead of the answer
    links = _stripe(base) if provider == "stripe" else _razorpay(base)
    link = asyncio.run(links.create(REQUEST))
    (created,) = apis.links(provider)
    assert link.link_id == created["id"]


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
def test_server_errors_are_retried_with_backoff_then_the_link_is_made_once(
    fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    apis.failures = [500, 503]
    links = _stripe(base) if provider == "stripe" else _razorpay(base)
    link = asyncio.run(links.create(REQUEST))
    assert [created["id"] for created in apis.links(provider)] == [link.link_id]
    assert len([call for call in apis.requests if call[0] == provider]) >= 3


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
def test_server_errors_that_do_not_stop_are_a_failure_to_retry_later(
    fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    apis.failures = [500] * 10
    links = _stripe(base) if provider == "stripe" else _razorpay(base)
    with pytest.raises(LinkFailed) as failure:
        asyncio.run(links.create(REQUEST))
    assert not failure.value.permanent
    assert apis.created == []


def test_a_refusal_is_permanent_and_carries_the_providers_message(
    fake: tuple[FakePaymentApis, str],
) -> None:
    apis, base = fake
    with pytest.raises(LinkFailed) as stripe_failure:
        asyncio.run(_stripe(base, key="sk_test_wrong").create(REQUEST))
    assert stripe_failure.value.permanent
    assert "Invalid API Key provided" in str(stripe_failure.value)
    assert "401" in str(stripe_failure.value)
    with pytest.raises(LinkFailed) as razorpay_failure:
        asyncio.run(_razorpay(base, secret="wrong").create(REQUEST))
    assert razorpay_failure.value.permanent
    assert "Authentication failed" in str(razorpay_failure.value)
    assert apis.created == []


def test_an_unreachable_provider_is_a_failure_to_retry_later() -> None:
    from support import free_port

    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for links in _both(base):
        with pytest.raises(LinkFailed) as failure:
            asyncio.run(links.create(REQUEST))
        assert not failure.value.permanent, links.provider
