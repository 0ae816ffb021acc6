"""The one refusal every provider's parser makes: a signed webhook we cannot use."""

from __future__ import annotations


class MalformedWebhook(ValueError):
    """A signed request (or a part of one) not shaped like its provider's webhooks.

    Its message names what is wrong; the web layer answers it 400 ``malformed-webhook``
    (Meta's route keeps the part as a dead letter instead).
    """
