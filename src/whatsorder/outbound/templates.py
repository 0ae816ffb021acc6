"""The approved templates a notification is sent as outside WhatsApp's 24-hour window.

Configured in a JSON file named by ``WHATSORDER_NOTIFICATION_TEMPLATES``, per event, then per
language, then per provider (deploy/notification-templates.example.json)::

    {"dispatched": {"en": {
        "meta": {"name": "order_dispatched", "language": "en", "parameters": ["order_number"]},
        "twilio": {"content_sid": "HX…", "variables": {"1": "order_number"}}}}}

Meta's ``parameters`` name, in order, the notification's ``params`` that fill the template's
body ``{{1}}``, ``{{2}}``…; ``language`` is Meta's code (default: the language's key).
Twilio's ``variables`` map the Content template's variable numbers to ``params`` names.
The file is read once, at start-up; a mistake in it stops the service with its place named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whatsorder.outbound.forms import MetaTemplate, TwilioTemplate

SETTING = "WHATSORDER_NOTIFICATION_TEMPLATES"
FALLBACK_LANGUAGE = "en"
PROVIDERS = ("meta", "twilio")


class TemplatesInvalid(ValueError):
    """The templates file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Approved:
    """A template as configured: its form with ``params`` names where the values go."""

    template: MetaTemplate | TwilioTemplate
    language: str  # the language it was found in (the row's, or the fallback)

    def param_names(self) -> tuple[str, ...]:
        if isinstance(self.template, MetaTemplate):
            return self.template.parameters
        return tuple(self.template.variables.values())


@dataclass(frozen=True, slots=True)
class TemplateCatalogue:
    """Templates by event, language and provider; empty when nothing is configured."""

    by_event: Mapping[str, Mapping[str, Mapping[str, MetaTemplate | TwilioTemplate]]] = field(
        default_factory=dict
    )

    def find(self, event: str, language: str, provider: str) -> Approved | None:
        """The template for ``event`` in ``language``, else in English; None if neither."""
        languages = self.by_event.get(event, {})
        for candidate in dict.fromkeys((language, FALLBACK_LANGUAGE)):
            template = languages.get(candidate, {}).get(provider)
            if template is not None:
                return Approved(template, candidate)
        return None


def load_templates(path: str | Path | None) -> TemplateCatalogue:
    """The catalogue in the file at ``path``; an empty one for None. Raises `TemplatesInvalid`."""
    if path is None or str(path).strip() == "":
        return TemplateCatalogue()
    where = f"{SETTING} ({path})"
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise TemplatesInvalid(f"{where} cannot be read: {error.strerror or error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TemplatesInvalid(f"{where} is not valid JSON: {error}") from error
    return parse_templates(document, where)


def parse_templates(document: Any, where: str = SETTING) -> TemplateCatalogue:
    """The catalogue in a decoded JSON document. Raises `TemplatesInvalid` naming the place."""
    events = _object(document, where, "the file")
    by_event: dict[str, dict[str, dict[str, MetaTemplate | TwilioTemplate]]] = {}
    for event, languages in events.items():
        by_event[event] = {}
        for language, providers in _object(languages, where, event).items():
            place = f"{event}.{language}"
            templates: dict[str, MetaTemplate | TwilioTemplate] = {}
            for provider, spec in _object(providers, where, place).items():
                if provider == "meta":
                    templates[provider] = _meta(spec, language, where, f"{place}.meta")
                elif provider == "twilio":
                    templates[provider] = _twilio(spec, where, f"{place}.twilio")
                else:
                    raise TemplatesInvalid(
                        f"{where}: {place} names the provider {provider!r}; "
                        f"use {' or '.join(PROVIDERS)}"
                    )
            by_event[event][language] = templates
    return TemplateCatalogue(by_event)


def _meta(spec: Any, language: str, where: str, place: str) -> MetaTemplate:
    fields = _object(spec, where, place)
    parameters = fields.get("parameters", [])
    if not isinstance(parameters, list) or not all(_name(item) for item in parameters):
        raise TemplatesInvalid(
            f"{where}: {place}.parameters must be a list of parameter names (strings)"
        )
    return MetaTemplate(
        name=_text(fields, "name", where, place),
        language=_text(fields, "language", where, place, default=language),
        parameters=tuple(parameters),
    )


def _twilio(spec: Any, where: str, place: str) -> TwilioTemplate:
    fields = _object(spec, where, place)
    content_sid = _text(fields, "content_sid", where, place)
    if not content_sid.startswith("HX"):
        raise TemplatesInvalid(
            f"{where}: {place}.content_sid must be a Content SID (HX…), not {content_sid!r}"
        )
    variables = fields.get("variables", {})
    if not isinstance(variables, dict) or not all(
        key.isdigit() and _name(value) for key, value in variables.items()
    ):
        raise TemplatesInvalid(
            f'{where}: {place}.variables must map variable numbers ("1") to parameter names'
        )
    return TwilioTemplate(content_sid=content_sid, variables=dict(variables))


def _object(value: Any, where: str, place: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TemplatesInvalid(f"{where}: {place} must be a JSON object")
    return value


def _text(
    fields: dict[str, Any], name: str, where: str, place: str, default: str | None = None
) -> str:
    value = fields.get(name, default)
    if not _name(value):
        raise TemplatesInvalid(f"{where}: {place}.{name} must be a non-empty string")
    assert isinstance(value, str)
    return value


def _name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""
