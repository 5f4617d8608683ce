"""One registry of the secrets this process sends, and the one function that removes them.

A server may echo what it received: a 401 whose ``detail`` quotes the bearer token, a token
endpoint whose ``error_description`` repeats the form it was sent. Anything built from server
text (an `APIError`'s code, title, detail, body excerpt and `errors` entries, a `DecodeError`'s
body, a run's error details, a token refusal) goes through `redact` *where the error is
built*, so its `str`, `repr`, pickle, traceback and every log line that quotes it only ever
hold the redacted text.

Theory of operation
-------------------
Whoever holds a secret registers it in a `SecretSet` it owns:

- auth providers, at construction: a `BearerToken`'s token, a client secret;
- a token cache, for each token it is issued (kept while it is the cached token of its key,
  then among the `recent` ones);
- a token exchange, for each JWT it signs (among the `recent` ones: it is sent once);
- the transport, for each ``Authorization`` value it sends (so a custom `AuthProvider` is
  covered too).

The registry holds each `SecretSet` weakly: secrets leave it with the object that owns them,
so a long-lived process does not accumulate every token it ever saw.

Each secret is matched in every encoding we send it in: raw (headers; JSON values once
decoded), form-encoded (``application/x-www-form-urlencoded``: ``quote_plus``), URL-encoded
(``quote``), both with upper- and lower-case hex escapes, and JSON-escaped (a body excerpt
is the raw JSON text, where ``"``, ``\\``, ``/`` and non-ASCII may be escaped). Basic auth is
not used by this library, so no base64 form is needed.

Strings shorter than `MIN_SECRET_LENGTH` are not treated as secrets: replacing a two-letter
"token" would mangle every message, and no real credential is that short.
"""

from __future__ import annotations

import collections
import json
import re
import weakref
from collections.abc import Hashable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "SecretSet", "redact", "redact_value", "variants"]

REDACTED = "<redacted>"
"""What a secret is replaced with."""

MIN_SECRET_LENGTH = 8
"""Shorter strings are never treated as secrets (see the module docstring)."""

_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def variants(secret: str) -> tuple[str, ...]:
    """Every form in which `secret` may come back in server text, longest first."""
    if len(secret) < MIN_SECRET_LENGTH:
        return ()
    forms = {
        secret,
        quote_plus(secret, safe=""),
        quote(secret, safe=""),
        quote(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    for form in list(forms):
        if "/" in form:
            forms.add(form.replace("/", "\\/"))  # JSON encoders that escape '/'
        if "%" in form:
            forms.add(_HEX_ESCAPE.sub(lambda m: m.group(0).lower(), form))
    return tuple(sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=len, reverse=True))


class SecretSet:
    """The secrets one owner sends; registered with the process-wide registry while it lives.

    Args:
        recent: How many retired or one-shot secrets (`add_recent`) are remembered.
    """

    __slots__ = ("__weakref__", "_keyed", "_recent")

    def __init__(self, *, recent: int = 64) -> None:
        self._keyed: dict[Hashable, tuple[str, tuple[str, ...]]] = {}
        self._recent: collections.deque[tuple[str, tuple[str, ...]]] = collections.deque(
            maxlen=recent
        )
        _REGISTRY.add(self)

    def set(self, key: Hashable, secret: str) -> None:
        """Remember `secret` as the current one of `key`; a value it replaces becomes recent."""
        old = self._keyed.get(key)
        if old is not None and old[0] == secret:
            return
        self._keyed[key] = (secret, variants(secret))
        if old is not None:
            self._recent.append(old)

    def add_recent(self, secret: str) -> None:
        """Remember a one-shot secret (a signed JWT, a header value) among the recent ones."""
        self._recent.append((secret, variants(secret)))

    def forms(self) -> Iterator[str]:
        """Every registered secret in every encoding."""
        for _, forms in list(self._keyed.values()):
            yield from forms
        for _, forms in list(self._recent):
            yield from forms

    def __repr__(self) -> str:
        return f"SecretSet({len(self._keyed)} current, {len(self._recent)} recent)"


_REGISTRY: weakref.WeakSet[SecretSet] = weakref.WeakSet()


def _all_forms(extra: Iterable[str]) -> list[str]:
    forms = {form for owner in list(_REGISTRY) for form in owner.forms()}
    for secret in extra:
        if secret:
            forms.update(variants(secret))
    # Longest first: a form that contains another is replaced whole.
    return sorted(forms, key=len, reverse=True)


def _scrub(text: str, forms: list[str]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def redact(text: str, *, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret (and each of `extra`), in every encoding, replaced."""
    if not text:
        return text
    return _scrub(text, _all_forms(extra))


def redact_value(value: Any, *, extra: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with secrets redacted in its strings."""
    forms = _all_forms(extra)
    if not forms:
        return value
    return _walk(value, forms, 0)


def _walk(value: Any, forms: list[str], depth: int) -> Any:
    if isinstance(value, str):
        return _scrub(value, forms)
    if depth > 64:
        return value if not isinstance(value, (dict, list)) else type(value)()
    if isinstance(value, dict):
        return {
            _scrub(k, forms) if isinstance(k, str) else k: _walk(v, forms, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_walk(v, forms, depth + 1) for v in value]
    return value


def redacted_excerpt(text: str, limit: int, *, extra: Iterable[str] = ()) -> str:
    """At most `limit` characters of `text` (plus an ellipsis), secrets redacted *before* the
    cut, so a secret straddling it cannot leave its first characters behind."""
    forms = _all_forms(extra)
    longest = len(forms[0]) if forms else 0
    whole = len(text) <= limit + longest
    window = text if whole else text[: limit + longest]
    if forms:
        window = _scrub(window, forms)
    return window if whole and len(window) <= limit else window[:limit] + "…"
