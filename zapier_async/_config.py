"""Client configuration from the environment: the pure part of `ZapierClient.from_env()`.

Variable names follow Zapier's own SDK where it has one (``ZAPIER_CREDENTIALS``,
``ZAPIER_CREDENTIALS_CLIENT_ID``, ``ZAPIER_CREDENTIALS_CLIENT_SECRET``; see
https://docs.zapier.com/sdk/deploy), and ours otherwise, all prefixed ``ZAPIER_``:

======================================  ====================================================
variable                                meaning
======================================  ====================================================
``ZAPIER_CREDENTIALS``                  an access token (Zapier SDK's name for it)
``ZAPIER_TOKEN``                        the same, the name our CLI has always read
``ZAPIER_CREDENTIALS_CLIENT_ID``        client credentials (with the secret below); a token
``ZAPIER_CREDENTIALS_CLIENT_SECRET``    and client credentials together are refused
``ZAPIER_CREDENTIALS_SCOPE``            the client-credentials scope (default ``external``)
``ZAPIER_TOKEN_URL``                    the token endpoint (default Zapier's)
``ZAPIER_BASE_URL``                     the API root (default ``https://api.zapier.com``)
``ZAPIER_REQUEST_TIMEOUT``              seconds one HTTP request may take
``ZAPIER_MAX_RETRIES``                  attempts per request after the first (``RetryPolicy``)
``ZAPIER_MAX_RATE_LIMIT_WAIT``          seconds a caller may wait for the budget, or ``none``
``ZAPIER_RATE_LIMIT``                   a budget known beforehand, ``REQUESTS/SECONDS``
``ZAPIER_RATE_WINDOW``                  seconds, the server's rate-limit window length
======================================  ====================================================

Nothing is read at import time, and the values are checked here, before any client exists:
a malformed value is an `InvalidRequestError` naming the variable (never its value when it
is a secret).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from . import errors
from ._auth import DEFAULT_TOKEN_URL, AuthProvider, BearerToken, ClientCredentials
from ._backoff import RetryPolicy

__all__ = ["ENV_PREFIX", "client_options_from_env"]

ENV_PREFIX = "ZAPIER_"


def client_options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The `ZapierClient` keyword arguments that `environ` configures.

    Args:
        environ: The environment (``os.environ``, or a mapping in tests).

    Returns:
        Keyword arguments for `ZapierClient`: always ``auth``; the others only when their
        variable is set (so the client's own defaults apply otherwise).

    Raises:
        InvalidRequestError: No credentials, both a token and client credentials, half of a
            client-credentials pair, or a malformed number.
    """

    def get(name: str) -> str | None:
        value = environ.get(ENV_PREFIX + name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    options: dict[str, Any] = {"auth": _auth(get)}
    base_url = get("BASE_URL")
    if base_url is not None:
        options["base_url"] = base_url
    timeout = get("REQUEST_TIMEOUT")
    if timeout is not None:
        options["request_timeout"] = _positive(timeout, "REQUEST_TIMEOUT")
    retries = get("MAX_RETRIES")
    if retries is not None:
        count = _whole(retries, "MAX_RETRIES")
        options["retry_policy"] = RetryPolicy(max_attempts=count + 1)
    wait = get("MAX_RATE_LIMIT_WAIT")
    if wait is not None:
        options["max_rate_limit_wait"] = (
            None if wait.lower() == "none" else _non_negative(wait, "MAX_RATE_LIMIT_WAIT")
        )
    rate = get("RATE_LIMIT")
    if rate is not None:
        options["rate_limit"] = _rate(rate)
    window = get("RATE_WINDOW")
    if window is not None:
        options["rate_window"] = _positive(window, "RATE_WINDOW")
    return options


def _auth(get: Callable[[str], str | None]) -> AuthProvider:
    token = get("CREDENTIALS") or get("TOKEN")
    client_id = get("CREDENTIALS_CLIENT_ID")
    client_secret = get("CREDENTIALS_CLIENT_SECRET")
    if token is not None and (client_id is not None or client_secret is not None):
        raise errors.InvalidRequestError(
            "set either an access token (ZAPIER_CREDENTIALS or ZAPIER_TOKEN) or client "
            "credentials (ZAPIER_CREDENTIALS_CLIENT_ID and _SECRET), not both",
            "environment",
        )
    if token is not None:
        return BearerToken(token)
    if client_id is not None and client_secret is not None:
        return ClientCredentials(
            client_id,
            client_secret,
            scope=get("CREDENTIALS_SCOPE") or "external",
            token_url=get("TOKEN_URL") or DEFAULT_TOKEN_URL,
        )
    if client_id is not None or client_secret is not None:
        missing = "SECRET" if client_id is not None else "ID"
        raise errors.InvalidRequestError(
            f"ZAPIER_CREDENTIALS_CLIENT_{missing} is not set (client credentials need both)",
            "environment",
        )
    raise errors.InvalidRequestError(
        "no credentials in the environment: set ZAPIER_CREDENTIALS (or ZAPIER_TOKEN) to an "
        "access token, or ZAPIER_CREDENTIALS_CLIENT_ID and ZAPIER_CREDENTIALS_CLIENT_SECRET",
        "environment",
    )


def _number(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise errors.InvalidRequestError(
            f"must be a number, got {raw!r}", ENV_PREFIX + name
        ) from None
    if not math.isfinite(value):
        raise errors.InvalidRequestError(f"must be finite, got {raw!r}", ENV_PREFIX + name)
    return value


def _positive(raw: str, name: str) -> float:
    value = _number(raw, name)
    if value <= 0:
        raise errors.InvalidRequestError(f"must be positive, got {raw!r}", ENV_PREFIX + name)
    return value


def _non_negative(raw: str, name: str) -> float:
    value = _number(raw, name)
    if value < 0:
        raise errors.InvalidRequestError(f"must be >= 0 or 'none', got {raw!r}", ENV_PREFIX + name)
    return value


def _whole(raw: str, name: str) -> int:
    if not raw.isdigit():
        raise errors.InvalidRequestError(
            f"must be a whole number >= 0, got {raw!r}", ENV_PREFIX + name
        )
    return int(raw)


def _rate(raw: str) -> tuple[int, float]:
    requests, sep, seconds = raw.partition("/")
    if not sep:
        raise errors.InvalidRequestError(
            f"must be REQUESTS/SECONDS, e.g. 150/60, got {raw!r}", ENV_PREFIX + "RATE_LIMIT"
        )
    count = _whole(requests.strip(), "RATE_LIMIT")
    if count < 1:
        raise errors.InvalidRequestError(
            "must allow at least one request", ENV_PREFIX + "RATE_LIMIT"
        )
    return count, _positive(seconds.strip(), "RATE_LIMIT")
