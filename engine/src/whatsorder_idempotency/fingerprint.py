"""Request fingerprints: what "the same request" means when a client retries with a key.

A key names one request. If a client reuses a key for a different request, replaying the first
response would answer a question it did not ask, so the engine answers 422 instead
(docs/architecture.md §3). The fingerprint is SHA-256 over the method, the path and a canonical
body:

- form bodies (``application/x-www-form-urlencoded``) are compared as sorted pairs, so the same
  fields in another order or another percent-encoding match. Blank values are kept: ``Body=``
  is a field the provider signed, and differs from no ``Body`` at all;
- any other body is compared byte for byte. Re-serialising JSON could hide a difference that the
  provider's signature covers.

Each part is length-prefixed so no bytes can move from one part to the next unnoticed, and the
body's kind is hashed too, so a form never matches a raw body that happens to spell it.
"""

import hashlib
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode

_FORM = "application/x-www-form-urlencoded"


def fingerprint(method: str, path: str, body: bytes, content_type: str | None) -> str:
    """Return the hex SHA-256 fingerprint of a request as it arrived.

    ``path`` is whatever part of the target the caller wants compared (include the query string
    if it matters). Bytes that are not UTF-8 are kept distinct rather than replaced.
    """
    if content_type is not None and content_type.split(";", 1)[0].strip().lower() == _FORM:
        text = body.decode("utf-8", errors="surrogateescape")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="surrogateescape")
        return form_fingerprint(method, path, pairs)
    return _digest(method, path, b"bytes", body)


def form_fingerprint(method: str, path: str, pairs: Iterable[tuple[str, str]]) -> str:
    """Return the fingerprint of a form request from its already-parsed ``(name, value)`` pairs.

    Equal to `fingerprint` of the same form sent as a body.
    """
    # urlencode escapes "&", "=" and "+", so distinct pair lists never share an encoding;
    # surrogatepass keeps undecodable bytes (see fingerprint) distinct instead of raising.
    canonical = urlencode(sorted(pairs), encoding="utf-8", errors="surrogatepass")
    return _digest(method, path, b"form", canonical.encode("ascii"))


def _digest(method: str, path: str, kind: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (_utf8(method.upper()), _utf8(path), kind, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")
