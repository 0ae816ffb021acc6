"""Request fingerprints: one per request, whatever the form's field order."""

from urllib.parse import urlencode

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from whatsorder_idempotency.fingerprint import fingerprint, form_fingerprint

FORM = "application/x-www-form-urlencoded"
pairs_lists = st.lists(st.tuples(st.text(), st.text()), max_size=8)


def form(body: str, content_type: str | None = FORM) -> str:
    return fingerprint("POST", "/api/v1/whatsapp/webhook", body.encode(), content_type)


def test_fingerprint_is_a_sha256_hex_digest() -> None:
    digest = form("Body=hi")
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_form_fields_in_any_order_give_one_fingerprint() -> None:
    assert form("MessageSid=SM1&Body=hi&From=x") == form("From=x&MessageSid=SM1&Body=hi")


def test_blank_form_value_changes_the_fingerprint() -> None:
    assert form("MessageSid=SM1&Body=") != form("MessageSid=SM1")


def test_a_blank_value_and_a_missing_value_are_both_empty() -> None:
    assert form("MessageSid=SM1&Body=") == form("MessageSid=SM1&Body")


def test_percent_encoding_variants_of_one_form_agree() -> None:
    assert form("Body=two+words&To=%2B1") == form("Body=two%20words&To=%2b1")


def test_undecodable_form_bytes_stay_distinct() -> None:
    assert form("Body=%FF") != form("Body=%FE")
    assert fingerprint("POST", "/", b"Body=\xff", FORM) == fingerprint(
        "POST", "/", b"Body=%FF", FORM
    )


def test_form_content_type_is_matched_without_case_or_parameters() -> None:
    assert form("a=1&b=2", "Application/X-WWW-Form-URLEncoded; charset=UTF-8") == form("b=2&a=1")


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
def test_other_bodies_are_compared_byte_for_byte(content_type: str | None) -> None:
    assert form('{"a":1,"b":2}', content_type) != form('{"b":2,"a":1}', content_type)
    assert form('{"a":1}', content_type) != form('{"a": 1}', content_type)


def test_a_form_never_matches_a_raw_body_that_spells_it() -> None:
    assert form("a=1", FORM) != form("a=1", "text/plain")


def test_method_case_does_not_matter_but_method_and_path_do() -> None:
    assert fingerprint("post", "/a", b"x", None) == fingerprint("POST", "/a", b"x", None)
    assert fingerprint("PATCH", "/a", b"x", None) != fingerprint("POST", "/a", b"x", None)
    assert fingerprint("POST", "/b", b"x", None) != fingerprint("POST", "/a", b"x", None)


@pytest.mark.parametrize("content_type", [None, FORM])
def test_method_path_and_body_cannot_collide_by_shifting_bytes(content_type: str | None) -> None:
    shifted = [
        ("POST", "/a", b"b"),
        ("POST", "/ab", b""),
        ("POS", "T/ab", b""),
        ("POST", "", b"/ab"),
        ("POST", "/a\n", b"b"),
    ]
    digests = {fingerprint(m, p, b, content_type) for m, p, b in shifted}
    assert len(digests) == len(shifted)


def test_form_body_and_parsed_pairs_give_the_same_fingerprint() -> None:
    pairs = [("Body", "2 x ATTA-5KG"), ("From", "whatsapp:+911234567890"), ("NumMedia", "")]
    body = urlencode(pairs).encode()
    assert fingerprint("POST", "/w", body, FORM) == form_fingerprint("POST", "/w", pairs)


@given(pairs_lists, st.data())
def test_any_permutation_of_form_pairs_gives_the_same_fingerprint(
    pairs: list[tuple[str, str]], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(pairs))
    assert form_fingerprint("POST", "/w", shuffled) == form_fingerprint("POST", "/w", pairs)
    body = urlencode(shuffled).encode()
    assert fingerprint("POST", "/w", body, FORM) == form_fingerprint("POST", "/w", pairs)


@given(pairs_lists.filter(bool), st.data())
def test_any_change_to_one_value_changes_the_fingerprint(
    pairs: list[tuple[str, str]], data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(pairs) - 1))
    name, value = pairs[index]
    new_value = data.draw(st.text().filter(lambda v: v != value))
    changed = [*pairs[:index], (name, new_value), *pairs[index + 1 :]]
    assert form_fingerprint("POST", "/w", changed) != form_fingerprint("POST", "/w", pairs)
    before, after = urlencode(pairs).encode(), urlencode(changed).encode()
    assert fingerprint("POST", "/w", after, FORM) != fingerprint("POST", "/w", before, FORM)


requests = st.tuples(st.text("GETPOSTAC"), st.text(), st.binary())


@given(requests, requests)
def test_distinct_raw_requests_get_distinct_fingerprints(
    first: tuple[str, str, bytes], second: tuple[str, str, bytes]
) -> None:
    assume(first != second)
    assert fingerprint(*first, None) != fingerprint(*second, None)
