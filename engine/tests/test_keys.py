"""Idempotency-Key header parsing and key validation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whatsorder_idempotency.keys import MAX_KEY_LENGTH, InvalidKey, parse_key_header, validate_key

visible_ascii = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
keys_with_spaces = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=MAX_KEY_LENGTH
).filter(lambda key: key.strip(" ") != "")


def sf_string(key: str) -> str:
    """Serialise ``key`` as an RFC 8941 structured-field String, as a client would."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rejection(raw: str) -> InvalidKey:
    with pytest.raises(InvalidKey) as caught:
        parse_key_header(raw)
    return caught.value


def test_structured_field_string_and_bare_token_give_the_same_key() -> None:
    assert parse_key_header('"abc-123"') == parse_key_header("abc-123") == "abc-123"


def test_surrounding_spaces_and_tabs_are_not_part_of_the_key() -> None:
    assert parse_key_header(' \t"abc"\t ') == parse_key_header("\t abc \t") == "abc"


def test_escaped_quote_and_backslash_are_unescaped() -> None:
    assert parse_key_header(r'"say \"hi\" \\o/"') == 'say "hi" \\o/'


def test_spaces_are_allowed_inside_a_structured_field_string_only() -> None:
    assert parse_key_header('"order 42"') == "order 42"
    assert rejection("order 42").rule == "not-visible-ascii"


def test_key_of_255_characters_is_accepted() -> None:
    assert validate_key("k" * 255) == "k" * 255


def test_key_of_256_characters_is_rejected_as_too_long() -> None:
    error = rejection("k" * 256)
    assert error.rule == "too-long"
    assert str(error) == "Idempotency key is 256 characters long; the limit is 255."


@pytest.mark.parametrize("raw", ["", "   ", '""', ' "" ', '"   "'])
def test_empty_key_is_rejected(raw: str) -> None:
    assert rejection(raw).rule == "empty"


@pytest.mark.parametrize("control", ["\x00", "\x07", "\n", "\r", "\x1b", "\x7f"])
@pytest.mark.parametrize("quoted", [False, True])
def test_control_characters_are_rejected_without_echoing_them(control: str, quoted: bool) -> None:
    key = f"abc{control}def"
    error = rejection(sf_string(key) if quoted else key)
    assert error.rule == "not-visible-ascii"
    assert control not in str(error)
    assert "character 4" in str(error)


def test_non_ascii_characters_are_rejected() -> None:
    error = rejection("clé")
    assert error.rule == "not-visible-ascii"
    assert "U+00E9 at character 3" in str(error)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (r'"a\nb"', "escapes neither"),
        ('"abc', "never closes"),
        (r'"abc\"', "never closes"),
        ('"abc\\', "inside a backslash escape"),
        ('"abc";foo=1', "after the closing quote"),
        ('"abc" "def"', "after the closing quote"),
    ],
)
def test_malformed_structured_field_strings_are_rejected(raw: str, problem: str) -> None:
    error = rejection(raw)
    assert error.rule == "malformed-structured-field"
    assert problem in str(error)


def test_invalid_key_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        validate_key("")


@given(keys_with_spaces)
def test_any_valid_key_round_trips_through_a_structured_field_string(key: str) -> None:
    assert parse_key_header(sf_string(key)) == key


@given(st.text(visible_ascii, min_size=1, max_size=MAX_KEY_LENGTH).filter(lambda k: k[0] != '"'))
def test_any_valid_bare_token_is_its_own_key(key: str) -> None:
    assert parse_key_header(key) == key


RULES = {"empty", "too-long", "not-visible-ascii", "malformed-structured-field"}


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
