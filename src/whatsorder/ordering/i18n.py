"""The customer's language: gettext catalogues (Babel's ``.po`` files) and sentences to fill.

The catalogues are ``whatsorder/locale/<language>/LC_MESSAGES/messages.po``; English is the
source language (the message ids are the English text), so English, an unknown language and a
missing or fuzzy translation all read as the English text. ``make messages`` extracts the
strings marked in ``whatsorder.ordering`` and updates the catalogues (docs/architecture.md,
"Languages").

The ``.po`` files are compiled in memory, once per process and language, rather than shipped
as ``.mo`` files built at install time: the ``.po`` is then the only copy, so a fresh clone, an
editable install and a wheel all read the same text, and no compiled file can be missing or
older than its source.
"""

from __future__ import annotations

import gettext
import io
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

ENGLISH = "en"
HINDI = "hi"
LANGUAGES = (ENGLISH, HINDI)
DEFAULT_LANGUAGE = ENGLISH
DOMAIN = "messages"

# What a customer may write after LANGUAGE (or भाषा), compared after `language_word`.
_LANGUAGE_WORDS = {
    ENGLISH: ("en", "eng", "english", "अंग्रेज़ी", "अंग्रेजी", "इंग्लिश"),
    HINDI: ("hi", "hin", "hindi", "हिंदी", "हिन्दी"),
}
# Each language in its own words, as the list of choices shows it.
ENDONYMS = {ENGLISH: "English", HINDI: "हिंदी"}


def N_(message: str) -> str:
    """Mark ``message`` for extraction (gettext's name for it); it is translated where it is
    shown."""
    return message


def language_word(text: str) -> str:
    """``text`` as words are compared: NFC (so ``ज़`` typed either way is one spelling), case
    folded, spaces collapsed."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


_WORD_TO_LANGUAGE = {
    language_word(word): language for language, words in _LANGUAGE_WORDS.items() for word in words
}


def language_named(word: str) -> str | None:
    """The language a customer named (``HI``, ``Hindi``, ``हिंदी``…); None if none of ours."""
    return _WORD_TO_LANGUAGE.get(language_word(word))


def supported(language: str | None) -> str:
    """``language`` if we have it, else English (the fallback)."""
    return language if language is not None and language in LANGUAGES else DEFAULT_LANGUAGE


@cache
def translator(language: str | None) -> gettext.NullTranslations:
    """``gettext``, ``ngettext`` and ``pgettext`` in ``language``; English for any other."""
    chosen = supported(language)
    catalogue = resources.files("whatsorder") / "locale" / chosen / "LC_MESSAGES" / "messages.po"
    with catalogue.open("rb") as po_file:
        parsed = read_po(po_file, locale=chosen, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, parsed, use_fuzzy=False)  # a fuzzy entry is a guess: English instead
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


@dataclass(frozen=True, slots=True)
class Phrase:
    """A sentence for the customer, not yet in a language: its English (the message id,
    ``%(name)s`` placeholders) and the values that fill it. The domain raises and returns
    these; whoever answers the customer says them in the customer's language."""

    message: str
    values: tuple[tuple[str, str | int], ...] = ()

    @classmethod
    def of(cls, message: str, **values: str | int) -> Phrase:
        return cls(message, tuple(values.items()))

    def said_in(self, language: str | None) -> str:
        return translator(language).gettext(self.message) % dict(self.values)

    def __str__(self) -> str:
        return self.said_in(ENGLISH)
