"""Idempotency-Key header parsing (RFC 9651 Items, legacy bare keys) and key validation."""

import re

import http_sf
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from whatsorder_idempotency import keys as keys_module
from whatsorder_idempotency.keys import (
    MAX_KEY_LENGTH,
    InvalidKey,
    key_from_headers,
    parse_key_header,
    validate_key,
)

visible_ascii = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
keys_with_spaces = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=MAX_KEY_LENGTH
).filter(lambda key: key.strip(" ") != "")
# What gives a header value structure: a bare key holding one of these is no legacy key.
STRUCTURE = '",;()'


def sf_string(key: str) -> str:
    """Quote ``key`` as a structured-field String would, even where http-sf refuses to."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rejection(raw: str) -> InvalidKey:
    with pytest.raises(InvalidKey) as caught:
        parse_key_header(raw)
    return caught.value


def test_structured_field_string_and_bare_token_give_the_same_key() -> None:
    assert parse_key_header('"abc-123"') == parse_key_header("abc-123") == "abc-123"


@pytest.mark.parametrize("token", ["abc-123", "*x", "a/b:c", "ABC.def_~!#$&'+^`|"])
def test_an_sf_token_is_its_own_key(token: str) -> None:
    assert parse_key_header(token) == token


def test_surrounding_spaces_and_tabs_are_not_part_of_the_key() -> None:
    assert parse_key_header(' \t"abc"\t ') == parse_key_header("\t abc \t") == "abc"


def test_escaped_quote_and_backslash_are_unescaped() -> None:
    assert parse_key_header(r'"say \"hi\" \\o/"') == 'say "hi" \\o/'


def test_spaces_are_allowed_inside_a_structured_field_string_only() -> None:
    assert parse_key_header('"order 42"') == "order 42"
    assert rejection("order 42").rule == "not-visible-ascii"


@pytest.mark.parametrize(
    "legacy",
    [
        "8e03978e-40d5-43e8-bc93-6894a57f9324",  # a UUID starting with a digit: no sf-Item
        "12345",  # an sf-Integer
        "007",  # an sf-Integer whose text is kept, leading zeros and all
        "-5",
        "1.50",  # an sf-Decimal, its text kept
        "1234567890123456789",  # too long for an sf-Integer
        "1e5",
        "dGVzdA==",  # base64
        "x'OR'1'='1",
        "?yes",
        "@noon",
        ":abc",
    ],
)
def test_a_legacy_bare_key_that_is_no_sf_token_is_still_its_own_key(legacy: str) -> None:
    assert parse_key_header(legacy) == legacy


def test_key_of_255_characters_is_accepted() -> None:
    assert validate_key("k" * 255) == "k" * 255


def test_key_of_256_characters_is_rejected_as_too_long() -> None:
    error = rejection("k" * 256)
    assert error.rule == "too-long"
    assert str(error) == "Idempotency key is 256 characters long; the limit is 255."


@pytest.mark.parametrize("raw", ["", "   ", '""', ' "" ', '"   "'])
def test_empty_key_is_rejected(raw: str) -> None:
    assert rejection(raw).rule == "empty"


@pytest.mark.parametrize("control", ["\x00", "\x07", "\n", "\r", "\x1b", "\x7f", "\t"])
@pytest.mark.parametrize("quoted", [False, True])
def test_control_characters_are_rejected_without_echoing_them(control: str, quoted: bool) -> None:
    key = f"abc{control}def"
    error = rejection(sf_string(key) if quoted else key)
    assert error.rule == "not-visible-ascii"
    assert control not in str(error)
    assert f"character {5 if quoted else 4}" in str(error)  # counted in the header's value


def test_non_ascii_characters_are_rejected() -> None:
    error = rejection("clé")
    assert error.rule == "not-visible-ascii"
    assert "U+00E9 at character 3" in str(error)


@pytest.mark.parametrize(
    ("raw", "stopped_at"),
    [
        (r'"a\nb"', 4),
        ('"abc', 5),
        (r'"abc\"', 7),
        ('"abc\\', 6),
        ('"abc" "def"', 7),
        ('a"b', 2),
    ],
)
def test_malformed_structured_field_strings_are_rejected(raw: str, stopped_at: int) -> None:
    error = rejection(raw)
    assert error.rule == "malformed-structured-field"
    assert f"stopped at character {stopped_at}" in str(error)
    assert 'send a string like "abc-123"' in str(error)


@pytest.mark.parametrize(
    "raw", ["abc;x=1", '"abc";v=1', "12345;a", "8e03978e-40d5;v=1", "abc;", "k;x;y"]
)
def test_parameters_are_refused_not_dropped(raw: str) -> None:
    error = rejection(raw)
    assert error.rule == "parameters-not-allowed"
    assert "send the key alone" in str(error)


@pytest.mark.parametrize("raw", ["a, b", "a,b", '"a", "b"', "(a b)", '("a" b);x=1', "a,", "8e0, x"])
def test_a_list_is_not_an_item(raw: str) -> None:
    error = rejection(raw)
    assert error.rule == "not-an-item"
    assert "send exactly one key" in str(error)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("?1", "a Boolean"),
        ("?0", "a Boolean"),
        (":aGk=:", "a Byte Sequence"),
        ("@1700000000", "a Date"),
        ('%"caf%c3%a9"', "a Display String"),
    ],
)
def test_items_that_are_no_string_token_or_number_are_the_wrong_type(raw: str, kind: str) -> None:
    error = rejection(raw)
    assert error.rule == "wrong-item-type"
    assert str(error).startswith(f"Idempotency-Key header is {kind}, not a String or a Token;")


def test_invalid_key_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        validate_key("")


def raw_headers(*pairs: tuple[str, str]) -> Headers:
    """Starlette's headers, as a web handler sees them; names repeat as the client sent them."""
    return Headers(raw=[(name.lower().encode(), value.encode()) for name, value in pairs])


def key_rejection(*pairs: tuple[str, str]) -> InvalidKey:
    with pytest.raises(InvalidKey) as caught:
        key_from_headers(raw_headers(*pairs))
    return caught.value


def test_key_from_headers_reads_either_header_or_none() -> None:
    assert key_from_headers(raw_headers()) is None
    assert key_from_headers(raw_headers(("Idempotency-Key", '"a"'))) == "a"
    assert key_from_headers(raw_headers(("X-Idempotency-Key", "b"))) == "b"


def test_a_mapping_with_get_only_still_gives_the_key() -> None:
    assert key_from_headers({"idempotency-key": '"a b"'}) == "a b"
    assert key_from_headers({}) is None


@pytest.mark.parametrize("second", ["k-1", '"k-1"', " k-1 "])
def test_a_header_repeated_with_the_same_key_gives_that_key(second: str) -> None:
    headers = raw_headers(("Idempotency-Key", "k-1"), ("Idempotency-Key", second))
    assert key_from_headers(headers) == "k-1"


def test_a_header_repeated_with_different_keys_is_refused() -> None:
    error = key_rejection(("Idempotency-Key", "a"), ("Idempotency-Key", "b"))
    assert error.rule == "repeated-header"
    assert str(error) == (
        "Idempotency-Key header was sent more than once with different keys; send it once."
    )
    assert key_rejection(("X-Idempotency-Key", "a"), ("X-Idempotency-Key", "b")).rule == (
        "repeated-header"
    )


def test_a_repeated_header_with_a_broken_value_names_that_values_rule() -> None:
    assert key_rejection(("Idempotency-Key", "a"), ("Idempotency-Key", "?1")).rule == (
        "wrong-item-type"
    )


def test_both_header_names_must_name_the_same_key() -> None:
    same = raw_headers(("Idempotency-Key", '"k"'), ("X-Idempotency-Key", "k"))
    assert key_from_headers(same) == "k"
    error = key_rejection(("Idempotency-Key", "k"), ("X-Idempotency-Key", "other"))
    assert error.rule == "conflicting-headers"
    assert "send one of them, or the same key in both" in str(error)


def test_a_broken_x_idempotency_key_is_named_in_the_message() -> None:
    error = key_rejection(("X-Idempotency-Key", "a;b=1"))
    assert error.rule == "parameters-not-allowed"
    assert str(error).startswith("X-Idempotency-Key header has parameters")


@given(keys_with_spaces)
def test_any_key_serialised_as_an_sf_string_by_http_sf_round_trips(key: str) -> None:
    assert parse_key_header(http_sf.ser(key)) == key


@given(keys_with_spaces, st.sampled_from([1, True, "v", http_sf.Token("t")]))
def test_any_sf_string_with_a_parameter_is_refused(key: str, parameter: object) -> None:
    assert rejection(http_sf.ser((key, {"p": parameter}))).rule == "parameters-not-allowed"


@given(st.text(visible_ascii, min_size=1, max_size=MAX_KEY_LENGTH).filter(lambda k: k[0] != '"'))
def test_a_bare_key_without_structure_is_its_own_key_unless_a_typed_item(key: str) -> None:
    outcome = key_or_rejection(key)
    if any(char in key for char in STRUCTURE):
        assert isinstance(outcome, InvalidKey)
        assert outcome.rule in RULES - {"empty", "too-long", "not-visible-ascii"}
    elif isinstance(outcome, InvalidKey):  # a Boolean, Byte Sequence or Date, as RFC 9651 reads it
        assert outcome.rule == "wrong-item-type"
        assert key[0] in "?:@"
    else:
        assert outcome == key


RULES = {
    "empty",
    "too-long",
    "not-visible-ascii",
    "malformed-structured-field",
    "not-an-item",
    "parameters-not-allowed",
    "wrong-item-type",
}


def key_or_rejection(raw: str) -> str | InvalidKey:
    try:
        return parse_key_header(raw)
    except InvalidKey as error:
        return error


@given(st.one_of(st.text(), st.text().map(lambda s: '"' + s), keys_with_spaces.map(sf_string)))
def test_any_text_gives_a_valid_key_or_invalid_key_with_a_printable_message(raw: str) -> None:
    outcome = key_or_rejection(raw)
    if isinstance(outcome, InvalidKey):
        assert outcome.rule in RULES
        assert all(" " <= char <= "~" for char in str(outcome))
    else:
        assert 1 <= len(outcome) <= MAX_KEY_LENGTH
        assert all(" " <= char <= "~" for char in outcome)


def _the_long_way(raw: str) -> str:
    """``parse_key_header`` with its shortcut for plain keys switched off: the full rules."""
    saved = keys_module._PLAIN_KEY
    keys_module._PLAIN_KEY = re.compile(r"(?!)")  # matches nothing
    try:
        return parse_key_header(raw)
    except InvalidKey as error:
        return f"refused: {error.rule}"
    finally:
        keys_module._PLAIN_KEY = saved


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,254}", fullmatch=True))
@example("8e03978e-40d5-43e8-bc93-6894a57f9324")  # a UUID: no sf-Item, a legacy bare key
@example("007")  # an sf-Integer, kept as written
@example("1.5")  # an sf-Decimal
@example("12345678901234567")  # too long for an sf-Integer
@example("a:b/c")  # a Token with ":" and "/"
@example("01HZX3J5Q8D2K4M6N8P0R2T4V6")  # a ULID
def test_a_plain_key_taken_without_parsing_is_what_the_full_rules_give(raw: str) -> None:
    assert parse_key_header(raw) == _the_long_way(raw) == raw


@pytest.mark.parametrize("raw", [":aGk=:", "?1", "@1700000000", '"a b"', "-5", "*x", "a;b"])
def test_values_that_are_not_plain_keys_still_take_the_full_rules(raw: str) -> None:
    assert keys_module._PLAIN_KEY.fullmatch(raw) is None
