"""Completion callbacks: verify Zapier's signature, parse the body, resolve the run's handle.

Zapier POSTs a run's outcome to the create's `callback_url` when the run ends: the read
shape plus ``id``, ``{"data": {"type": "run", "id", "status", "results", "errors"}}``, signed
with an RS256 JWT in the ``Zapier-Callback-Signature`` header, valid for 5 minutes and
verifiable against Zapier's JWKS. Zapier tries up to 3 times on 5xx and network errors (not
on 4xx), so the same run may arrive twice.
https://docs.zapier.com/powered-by-zapier/running-actions/action-run-callbacks

A library cannot listen by itself; you mount `CallbackReceiver` in your own aiohttp server
(or call `CallbackVerifier.verify` and `ZapierClient.deliver_callback` from any framework,
passing the request's ``zapier_async_token`` query parameter as ``token=``)::

    verifier = CallbackVerifier()
    receiver = CallbackReceiver(client, verifier)
    app.router.add_post("/zapier/callback", receiver.handle)

Handles of runs created with a `callback_url` resolve on the callback and are polled only as
a safety net (`CallbackPolling`), so a lost callback costs latency, never the run.

What is trusted, and why
------------------------
Zapier's JWT carries only ``iat`` and ``exp``: it names neither the run nor the body, so a
valid signature proves only that Zapier sent *a* callback within the last 5 minutes. Anyone
who sees one signed callback (a log, a proxy, a misrouted request) could replay its header
with a forged body for another run. So each callback is also bound to its run:

- the client appends an unguessable per-run token (`TOKEN_PARAM`, ``zapier_async_token``) to
  the `callback_url` it sends Zapier, and ``deliver_callback(run, token=...)`` resolves a
  handle only when the token is that run's own;
- the signature proves the sender is Zapier, the URL token proves the callback is for that
  run; the body (status, results, errors) is believed only after both checks pass;
- a refused callback gets the same 401 and body whichever check failed (the reason is
  logged, the token never), and it leaves no trace that would make the genuine callback
  look like a duplicate;
- what remains trusted: whoever holds a run's full callback URL (its token) and a fresh
  signature can forge that one run's outcome, and nothing else, and only until the run's
  handle has ended (later callbacks for it are refused). Treat callback URLs as secrets:
  web servers' access logs record query strings, so keep those logs private or strip the
  query. Where an outcome matters more than latency, confirm it by reading the run
  (`ZapierClient.get_run`): a read is answered by Zapier itself.

The JWT's ``aud``/``iss`` values are not documented, so they are not checked; the signature,
``kid``, ``iat`` and ``exp`` (at most 5 minutes apart) are.

Key rotation: an unknown ``kid`` makes the verifier fetch the JWKS again, one fetch shared
by every callback waiting on it and at most one per `min_refresh_interval`, so random
``kid`` values cannot make it fetch per request. While a fetch is not allowed yet, a
callback signed after the last fetch with an unknown key is answered 503 (Zapier retries
5xx, not 4xx), as is any callback while the JWKS cannot be fetched at all; an unknown key
after a fetch newer than the signature is refused with 401.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeGuard

import aiohttp
import attrs
import cattrs
import jwt
from aiohttp import web

from ._clock import Clock, SystemClock
from .errors import ZapierError
from .models import Run, converter

if TYPE_CHECKING:
    from ._client import ZapierClient

__all__ = [
    "DEFAULT_JWKS_URL",
    "SIGNATURE_HEADER",
    "TOKEN_PARAM",
    "CallbackBodyError",
    "CallbackKeysUnavailableError",
    "CallbackReceiver",
    "CallbackSignatureError",
    "CallbackStats",
    "CallbackVerifier",
    "parse_callback",
]

logger = logging.getLogger("zapier_async")

DEFAULT_JWKS_URL: Final = "https://zapier.com/.well-known/jwks.json"
"""Zapier's JWKS (named in the changelog of Zapier's SDK, 0.94.0)."""

SIGNATURE_HEADER: Final = "Zapier-Callback-Signature"
TOKEN_PARAM: Final = "zapier_async_token"
"""The `callback_url` query parameter that carries a run's callback token."""
MAX_VALIDITY: Final = 300.0
"""Zapier's callback signatures are valid for 5 minutes."""

_ALGORITHMS: Final = ["RS256"]
_MAX_BODY: Final = 6 * 1024 * 1024
_RETRY_FAILED_FETCH: Final = 1.0
"""Seconds after a failed JWKS fetch before the next may be tried (if sooner than the
refresh interval): callbacks are answered 503 meanwhile and Zapier retries them."""


@attrs.define(auto_exc=True, eq=False)
class CallbackSignatureError(ZapierError, ValueError):
    """A callback's signature is missing, forged, expired or signed by an unknown key.

    Answer it with a 4xx: Zapier does not retry those.

    Attributes:
        reason: What was wrong.
    """

    reason: str

    def __str__(self) -> str:
        return f"callback signature rejected: {self.reason}"


@attrs.define(auto_exc=True, eq=False)
class CallbackKeysUnavailableError(CallbackSignatureError):
    """The signature could not be checked yet: the JWKS could not be fetched, or the key
    may be newer than the cached JWKS and fetching again is not allowed yet.

    Answer it with a 503 so that Zapier tries again (it retries 5xx, not 4xx). It subclasses
    `CallbackSignatureError`, so a handler written before it existed still refuses it.

    Attributes:
        reason: What was wrong.
    """

    def __str__(self) -> str:
        return f"callback signature not checked yet: {self.reason}"


@attrs.define(auto_exc=True, eq=False)
class CallbackBodyError(ZapierError, ValueError):
    """A callback's body is not the documented shape.

    Attributes:
        reason: What was wrong.
    """

    reason: str

    def __str__(self) -> str:
        return f"bad callback body: {self.reason}"


JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]
"""Returns a JWKS document (``{"keys": [...]}``)."""


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class CallbackVerifier:
    """Verifies ``Zapier-Callback-Signature`` JWTs against a JWKS, with cached keys.

    Keys are fetched on first use and kept. A token whose ``kid`` is not in the cache makes
    the verifier fetch the JWKS again (Zapier rotated its keys): one fetch at a time, shared
    by every token waiting on it, and at most one per `min_refresh_interval` (one per
    second after a failed fetch), so forged tokens with random ``kid`` values cannot make it
    hammer the JWKS endpoint. When the key is still unknown:

    - the last successful fetch started at or after the token's ``iat``: the key is not
      Zapier's, `CallbackSignatureError` (answer 401);
    - the token is newer than the cached keys and no fetch is allowed yet, or the JWKS
      could not be fetched: `CallbackKeysUnavailableError` (answer 503; Zapier retries).

    Args:
        jwks_url: Where the keys are (``FakeZapier.jwks_url`` in tests).
        clock: Source of time for ``iat``/``exp`` checks and refresh intervals (the
            client's `FakeClock` in tests).
        leeway: Seconds of clock skew tolerated.
        min_refresh_interval: Least seconds between two JWKS fetches caused by unknown keys.
        session: An `aiohttp.ClientSession` to fetch with (you own it); by default one is
            created per fetch.
        fetch: A custom fetcher instead of HTTP (then `jwks_url` and `session` are unused).
    """

    def __init__(
        self,
        *,
        jwks_url: str = DEFAULT_JWKS_URL,
        clock: Clock | None = None,
        leeway: float = 5.0,
        min_refresh_interval: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        fetch: JwksFetcher | None = None,
    ) -> None:
        self._jwks_url = jwks_url
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._leeway = float(leeway)
        self._min_refresh = float(min_refresh_interval)
        self._session = session
        self._fetch = fetch if fetch is not None else self._fetch_http
        self._keys: dict[str, jwt.PyJWK] = {}
        self._attempted_at: float | None = None  # monotonic start of the last fetch
        self._last_failed = False
        self._keys_as_of: float | None = None  # wall-clock start of the last good fetch
        self._refreshing: asyncio.Task[None] | None = None
        self.fetches = 0
        """JWKS fetches made so far."""

    def __repr__(self) -> str:
        return f"<CallbackVerifier {self._jwks_url} keys={len(self._keys)}>"

    async def _fetch_http(self) -> Mapping[str, Any]:
        timeout = aiohttp.ClientTimeout(total=10.0)
        if self._session is not None:
            async with self._session.get(self._jwks_url, timeout=timeout) as resp:
                resp.raise_for_status()
                data = await resp.json(content_type=None)
        else:
            async with (
                aiohttp.ClientSession() as session,
                session.get(self._jwks_url, timeout=timeout) as resp,
            ):
                resp.raise_for_status()
                data = await resp.json(content_type=None)
        if not isinstance(data, Mapping):
            raise CallbackSignatureError("the JWKS is not a JSON object")
        return data

    async def _refresh(self) -> None:
        # Concurrent callbacks with an unknown kid share one fetch (and its outcome).
        task = self._refreshing
        if task is None or task.done():
            now = self._clock.monotonic()
            wait = self._min_refresh
            if self._last_failed:
                wait = min(wait, _RETRY_FAILED_FETCH)
            if self._attempted_at is not None and now - self._attempted_at < wait:
                return
            self._attempted_at = now
            task = asyncio.get_running_loop().create_task(self._do_refresh())
            self._refreshing = task
        await asyncio.shield(task)

    async def _do_refresh(self) -> None:
        self.fetches += 1
        started = self._clock.time()
        try:
            document = await self._fetch()
            key_set = jwt.PyJWKSet.from_dict(dict(document))
        except Exception as exc:  # a fetcher's failure must not reach a caller untyped
            self._last_failed = True
            logger.warning(
                "fetching the callback JWKS failed (%s: %s); callbacks are answered 503 "
                "until it succeeds",
                type(exc).__name__,
                exc,
            )
            return
        self._last_failed = False
        self._keys_as_of = started
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id}

    async def _key(self, kid: str, token: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is None:
            await self._refresh()
            key = self._keys.get(kid)
        if key is not None:
            return key
        if self._keys_as_of is None:
            raise CallbackKeysUnavailableError("the JWKS could not be fetched")
        if self._last_failed:
            raise CallbackKeysUnavailableError("the JWKS could not be fetched again")
        try:
            iat = jwt.decode(token, options={"verify_signature": False}).get("iat")
        except jwt.PyJWTError:
            iat = None
        if _is_number(iat) and iat > self._keys_as_of:
            # Signed after our keys were fetched: maybe with a key published since.
            raise CallbackKeysUnavailableError("signed with a key newer than the cached JWKS")
        raise CallbackSignatureError("signed with an unknown key")

    async def verify(self, token: str | None) -> dict[str, Any]:
        """Check a signature header value; returns the JWT's claims.

        Raises:
            CallbackKeysUnavailableError: The key could not be checked yet (answer 503).
            CallbackSignatureError: Missing, malformed, unknown key, bad signature, expired,
                issued in the future, or valid for longer than 5 minutes (answer 401).
        """
        if not token:
            raise CallbackSignatureError(f"no {SIGNATURE_HEADER} header")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise CallbackSignatureError(f"malformed JWT ({exc})") from None
        if header.get("alg") not in _ALGORITHMS:
            raise CallbackSignatureError(f"algorithm {header.get('alg')!r} is not RS256")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise CallbackSignatureError("the JWT names no key (kid)")
        key = await self._key(kid, token)
        try:
            # Time claims are checked below on the injected clock, not PyJWT's time.time().
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=_ALGORITHMS,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "require": ["iat", "exp"],
                },
            )
        except jwt.PyJWTError as exc:
            raise CallbackSignatureError(f"invalid ({exc})") from None
        self._check_times(claims)
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        iat, exp = claims.get("iat"), claims.get("exp")
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise CallbackSignatureError("iat is not a number")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise CallbackSignatureError("exp is not a number")
        now = self._clock.time()
        if now >= exp + self._leeway:
            raise CallbackSignatureError("expired")
        if iat > now + self._leeway:
            raise CallbackSignatureError("issued in the future")
        if exp - iat > MAX_VALIDITY + self._leeway:
            raise CallbackSignatureError("valid for longer than Zapier's 5 minutes")


def parse_callback(body: bytes) -> Run:
    """The `Run` of a callback body ``{"data": {"type": "run", "id", "status", ...}}``.

    A flat body (the stored-action read shape) is accepted too.

    Raises:
        CallbackBodyError: Not JSON, no ``id`` or ``status``, or fields of the wrong type.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CallbackBodyError("not JSON") from None
    if not isinstance(payload, dict):
        raise CallbackBodyError("not a JSON object")
    data = payload.get("data", payload)
    if not isinstance(data, dict):
        raise CallbackBodyError("`data` is not an object")
    data = dict(data)
    data.pop("type", None)
    run_id = data.get("id")
    if not isinstance(run_id, str) or not run_id:
        raise CallbackBodyError("no run id")
    if not isinstance(data.get("status"), str):
        raise CallbackBodyError("no status")
    data.setdefault("errors", [])
    try:
        return converter.structure(data, Run)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise CallbackBodyError(f"does not match the documented shape ({exc})") from None


@attrs.frozen(kw_only=True)
class CallbackStats:
    """A receiver's counters.

    Attributes:
        received: Requests received.
        delivered: Callbacks that resolved (or updated) a handle of the client.
        duplicates: Repeated deliveries of a callback already delivered, with the same URL
            token (answered 200 and ignored).
        not_accepted: Signed callbacks the client did not take (answered 401): a run it does
            not follow or that already ended, or a URL token that is not the run's own.
        rejected_signatures: Requests refused with 401 (missing, forged, expired signature).
        deferred: Requests answered 503 because the signature could not be checked yet (the
            JWKS could not be fetched, or a key newer than the cached JWKS); Zapier retries.
        bad_bodies: Signed requests refused with 400 (not the documented body).
    """

    received: int
    delivered: int
    duplicates: int
    not_accepted: int
    rejected_signatures: int
    deferred: int
    bad_bodies: int


def _refused() -> web.Response:
    # One answer for every failed check (signature, run, URL token), so that a sender cannot
    # tell which one failed; the reason is logged.
    return web.json_response({"error": "callback not accepted"}, status=401)


def _same_token(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a.encode(), b.encode())


class CallbackReceiver:
    """An aiohttp.web endpoint that turns Zapier's callbacks into resolved handles.

    A callback resolves a handle only when its signature is valid and the URL's
    `TOKEN_PARAM` is that run's token (``ZapierClient.deliver_callback(run, token=...)``).
    Answers at once: 200 when the callback was delivered (and for repeated deliveries of
    it, so Zapier does not retry them); 401, the same status and body whichever check
    failed, for a bad signature and for a callback the client did not take (a run it does
    not follow or that already ended, or the wrong token); 400 for a signed request whose
    body is not a callback; 503 when the signature cannot be checked yet (Zapier retries).

    Args:
        client: The client whose handles the callbacks resolve.
        verifier: Checks the signatures.
        remember: How many delivered runs are remembered to recognise repeated deliveries.
    """

    def __init__(
        self, client: ZapierClient, verifier: CallbackVerifier, *, remember: int = 100_000
    ) -> None:
        self._client = client
        self._verifier = verifier
        # run id -> the URL token its delivered callback carried
        self._seen: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._remember = remember
        self._received = self._delivered = self._duplicates = 0
        self._not_accepted = self._rejected = self._deferred = self._bad = 0

    def __repr__(self) -> str:
        return f"<CallbackReceiver received={self._received} rejected={self._rejected}>"

    @property
    def stats(self) -> CallbackStats:
        """A snapshot of the counters."""
        return CallbackStats(
            received=self._received,
            delivered=self._delivered,
            duplicates=self._duplicates,
            not_accepted=self._not_accepted,
            rejected_signatures=self._rejected,
            deferred=self._deferred,
            bad_bodies=self._bad,
        )

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp.web handler: mount it with ``router.add_post(path, receiver.handle)``."""
        self._received += 1
        try:
            await self._verifier.verify(request.headers.get(SIGNATURE_HEADER))
        except CallbackKeysUnavailableError as exc:
            self._deferred += 1
            logger.warning("callback answered 503 (Zapier retries): %s", exc)
            return web.json_response({"error": "try again later"}, status=503)
        except CallbackSignatureError as exc:
            self._rejected += 1
            logger.warning("callback refused: %s", exc)
            return _refused()
        try:
            body = await request.read()
            if len(body) > _MAX_BODY:
                raise CallbackBodyError("too large")
            run = parse_callback(body)
        except CallbackBodyError as exc:
            self._bad += 1
            return web.json_response({"error": str(exc)}, status=400)
        token = request.query.get(TOKEN_PARAM)
        if run.id in self._seen and _same_token(self._seen[run.id], token):
            self._duplicates += 1
            return web.json_response({"ok": True, "duplicate": True})
        if not self._client.deliver_callback(run, token=token):
            # The body is not believed: it may be a replayed signature with a forged body.
            # INFO: the client already warns about a wrong token for a run it follows; the
            # other cases (a run it does not follow or that already ended) are routine.
            self._not_accepted += 1
            logger.info(
                "callback for run %s not accepted (answered 401): the client does not follow "
                "that run, it already ended, or the callback URL's token is not the run's own",
                run.id,
                extra={"run_id": run.id},
            )
            return _refused()
        self._delivered += 1
        if run.status.is_terminal:
            # Remembered only once delivered: a refused forgery cannot make the genuine
            # callback look like a duplicate.
            self._seen[run.id] = token
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        return web.json_response({"ok": True})

    def app(self, path: str = "/zapier/callback") -> web.Application:
        """A ready `aiohttp.web.Application` with the handler at `path` (POST)."""
        application = web.Application(client_max_size=_MAX_BODY)
        application.router.add_post(path, self.handle)
        return application
