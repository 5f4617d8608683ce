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
        _REGISTRY.changed()

    def add_recent(self, secret: str) -> None:
        """Remember a one-shot secret (a signed JWT, a header value) among the recent ones."""
        self._recent.append((secret, variants(secret)))
        _REGISTRY.changed()

    def forms(self) -> Iterator[str]:
        """Every registered secret in every encoding."""
        for _, forms in list(self._keyed.values()):
            yield from forms
        for _, forms in list(self._recent):
            yield from forms

    def __repr__(self) -> str:
        return f"SecretSet({len(self._keyed)} current, {len(self._recent)} recent)"


_PREFIX = 4  # <= MIN_SECRET_LENGTH: every form has a prefix this long
_FEW = 32  # up to this many forms, `in` per form beats scanning the text


class _Index:
    """Registered forms, longest first, and indexed by prefix for many secrets at once."""

    __slots__ = ("by_prefix", "forms")

    def __init__(self, forms: Iterable[str]) -> None:
        # Longest first: a form that contains another is replaced whole.
        self.forms = sorted(set(forms), key=len, reverse=True)
        self.by_prefix: dict[str, list[str]] = {}
        if len(self.forms) > _FEW:
            for form in self.forms:
                self.by_prefix.setdefault(form[:_PREFIX], []).append(form)

    def scrub(self, text: str) -> str:
        if not self.by_prefix:
            for form in self.forms:
                if form in text:
                    text = text.replace(form, REDACTED)
            return text
        # Many secrets (a token per end user): one pass over the text, whatever their number.
        by_prefix = self.by_prefix
        out: list[str] = []
        i = last = 0
        end = len(text) - _PREFIX
        while i <= end:
            candidates = by_prefix.get(text[i : i + _PREFIX])
            if candidates is not None:
                for form in candidates:
                    if text.startswith(form, i):
                        out.append(text[last:i])
                        out.append(REDACTED)
                        i = last = i + len(form)
                        break
                else:
                    i += 1
            else:
                i += 1
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)


class _Registry:
    """Every live `SecretSet`, held weakly, and the index of their forms (rebuilt on change)."""

    def __init__(self) -> None:
        self._owners: dict[int, weakref.ref[SecretSet]] = {}
        self._version = 0
        self._index: _Index | None = None
        self._index_version = -1

    def add(self, owner: SecretSet) -> None:
        key = id(owner)

        def gone(_ref: weakref.ref[SecretSet]) -> None:
            self._drop(key)

        self._owners[key] = weakref.ref(owner, gone)
        self.changed()

    def _drop(self, key: int) -> None:
        self._owners.pop(key, None)
        self.changed()

    def changed(self) -> None:
        self._version += 1

    def index(self) -> _Index:
        if self._index is None or self._index_version != self._version:
            version = self._version
            owners = [ref() for ref in list(self._owners.values())]
            self._index = _Index(form for o in owners if o is not None for form in o.forms())
            self._index_version = version
        return self._index


_REGISTRY = _Registry()


def _scrub(text: str, index: _Index, extra: list[str]) -> str:
    text = index.scrub(text)
    for form in extra:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def _extra_forms(extra: Iterable[str]) -> list[str]:
    forms = {form for secret in extra if secret for form in variants(secret)}
    return sorted(forms, key=len, reverse=True)


def redact(text: str, *, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret (and each of `extra`), in every encoding, replaced."""
    if not text:
        return text
    return _scrub(text, _REGISTRY.index(), _extra_forms(extra))


def redact_value(value: Any, *, extra: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with secrets redacted in its strings."""
    index, forms = _REGISTRY.index(), _extra_forms(extra)
    if not index.forms and not forms:
        return value
    return _walk(value, index, forms, 0)


def _walk(value: Any, index: _Index, extra: list[str], depth: int) -> Any:
    if isinstance(value, str):
        return _scrub(value, index, extra)
    if depth > 64:
        return value if not isinstance(value, (dict, list, tuple)) else type(value)()
    if isinstance(value, dict):
        return {
            _scrub(k, index, extra) if isinstance(k, str) else k: _walk(v, index, extra, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_walk(v, index, extra, depth + 1) for v in value]
    return value


def redacted_excerpt(text: str, limit: int, *, extra: Iterable[str] = ()) -> str:
    """At most `limit` characters of `text` (plus an ellipsis), secrets redacted *before* the
    cut, so a secret straddling it cannot leave its first characters behind."""
    index, forms = _REGISTRY.index(), _extra_forms(extra)
    longest = max(len(index.forms[0]) if index.forms else 0, len(forms[0]) if forms else 0)
    whole = len(text) <= limit + longest
    window = text if whole else text[: limit + longest]
    window = _scrub(window, index, forms)
    return window if whole and len(window) <= limit else window[:limit] + "…"
