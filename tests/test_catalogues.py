"""The gettext catalogues cannot fall behind the code: every string the customer can be sent is
extracted from the source exactly as ``make messages`` does, and must have a Hindi translation
that is neither missing nor fuzzy and fills the same placeholders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from whatsorder.ordering import replies
from whatsorder.ordering.i18n import LANGUAGES, Phrase, translator

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "whatsorder"
LOCALE = SOURCE / "locale"
DEVANAGARI = re.compile("[\u0900-\u097f]")
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")

Key = tuple[str | None, str]  # (context, message id)


def strings_in_code() -> dict[Key, str]:
    """Every marked string under src/whatsorder, as ``make messages`` extracts it (babel.cfg)."""
    with (ROOT / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)
    found: dict[Key, str] = {}
    for filename, _line, message, _comments, context in extract_from_dir(
        SOURCE, method_map, options_map
    ):
        assert isinstance(message, str), f"{filename}: plural forms are not used yet"
        found[(context, message)] = filename
    return found


def catalogue(language: str) -> Catalog:
    with (LOCALE / language / "LC_MESSAGES" / "messages.po").open("rb") as po_file:
        return read_po(po_file, locale=language)


def test_the_code_marks_the_customer_facing_strings() -> None:
    found = strings_in_code()
    assert (None, replies.HELP) in found
    assert ("order status", "placed") in found
    assert len(found) >= 30


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_string_in_the_code_is_in_each_catalogue(language: str) -> None:
    entries = catalogue(language)
    missing = [
        f"{filename}: {message!r}"
        for (context, message), filename in strings_in_code().items()
        if entries.get(message, context=context) is None
    ]
    assert missing == [], f"run `make messages`, then translate; missing in {language}: {missing}"


def test_every_string_in_the_code_has_a_hindi_translation_that_is_not_fuzzy() -> None:
    hindi = catalogue("hi")
    untranslated = []
    for context, message in strings_in_code():
        entry = hindi.get(message, context=context)
        if entry is None or not entry.string or entry.fuzzy:
            untranslated.append(message)
        elif not DEVANAGARI.search(str(entry.string)):
            untranslated.append(f"{message} (translated as {entry.string!r}: not Hindi)")
    assert untranslated == []


@pytest.mark.parametrize("language", LANGUAGES)
def test_translations_fill_the_same_placeholders_as_the_english(language: str) -> None:
    entries = catalogue(language)
    problems = [f"{message.id!r}: {errors}" for message, errors in entries.check()]
    for message in entries:
        if message.id and message.string:
            english = sorted(PLACEHOLDER.findall(str(message.id)))
            translated = sorted(PLACEHOLDER.findall(str(message.string)))
            if sorted(set(english)) != sorted(set(translated)):
                problems.append(f"{message.id!r}: {english} became {translated}")
    assert problems == []


def test_english_is_the_fallback_for_an_unknown_language_and_a_missing_entry() -> None:
    assert translator("fr").gettext(replies.HELP) == replies.HELP
    assert translator(None).gettext(replies.HELP) == replies.HELP
    assert translator("hi").gettext("a sentence no catalogue has") == "a sentence no catalogue has"
    assert translator("hi").gettext(replies.HELP).startswith("whatsorder में आपका स्वागत है!")


def test_a_phrase_is_said_in_the_language_asked_with_its_values() -> None:
    phrase = Phrase.of("%(sku)s is not in our catalogue", sku="RICE-5KG")
    assert str(phrase) == "RICE-5KG is not in our catalogue"
    assert phrase.said_in("hi") == "RICE-5KG हमारी सूची में नहीं है"
    assert phrase.said_in("xx") == "RICE-5KG is not in our catalogue"
