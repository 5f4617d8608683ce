"""Completion callbacks: verify Zapier's signature, parse the body, resolve the run's handle.

Zapier POSTs a run's outcome to the create's `callback_url` when the run ends: the read
shape plus ``id``, ``{"data": {"type": "run", "id", "status", "results", "errors"}}``, signed
with an RS256 JWT in the ``Zapier-Callback-Signature`` header, valid for 5 minutes and
verifiable against Zapier's JWKS. Zapier tries up to 3 times on 5xx and network errors (not
on 4xx), so the same run may arrive twice.
https://docs.zapier.com/powered-by-zapier/running-actions/action-run-callbacks

A library cannot listen by itself; you mount `CallbackReceiver` in your own aiohttp server
(or call `CallbackVerifier.verify` and `ZapierClient.deliver_callback` from any framework)::

    verifier = CallbackVerifier()
    receiver = CallbackReceiver(client, verifier)
    app.router.add_post("/zapier/callback", receiver.handle)

Handles of runs created with a `callback_url` resolve on the callback and are polled only as
a safety net (`CallbackPolling`), so a lost callback costs latency, never the run.

The JWT's ``aud``/``iss`` values are not documented, so they are not checked; the signature,
``kid``, ``iat`` and ``exp`` (at most 5 minutes apart) are.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import attrs
import cattrs
import jwt
from aiohttp import web

from ._clock import Clock, SystemClock
from .errors import ZapierError
from .models import Run, _converter

if TYPE_CHECKING:
    from ._client import ZapierClient

__all__ = [
    "DEFAULT_JWKS_URL",
    "SIGNATURE_HEADER",
    "CallbackBodyError",
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
MAX_VALIDITY: Final = 300.0
"""Zapier's callback signatures are valid for 5 minutes."""

_ALGORITHMS: Final = ["RS256"]
_MAX_BODY: Final = 6 * 1024 * 1024


@attrs.define(auto_exc=True, eq=False)
class CallbackSignatureError(ZapierError, ValueError):
    """A callback's signature is missing, forged, expired or signed by an unknown key.

    Attributes:
        reason: What was wrong.
    """

    reason: str

    def __str__(self) -> str:
        return f"callback signature rejected: {self.reason}"


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


class CallbackVerifier:
    """Verifies ``Zapier-Callback-Signature`` JWTs against a JWKS, with cached keys.

    Keys are fetched on first use and kept. A token whose ``kid`` is not in the cache makes
    the verifier fetch the JWKS again (Zapier rotated its keys), at most once per
    `min_refresh_interval`, so forged tokens with random ``kid`` values cannot make it hammer
    the JWKS endpoint.

    Args:
        jwks_url: Where the keys are (``FakeZapier.jwks_url`` in tests).
        clock: Source of time for ``iat``/``exp`` checks (the client's `FakeClock` in tests).
        leeway: Seconds of clock skew tolerated.
        min_refresh_interval: Least seconds between two JWKS fetches.
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
        min_refresh_interval: float = 60.0,
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
        self._fetched_at: float | None = None
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
        if self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)
            return
        now = self._clock.monotonic()
        if self._fetched_at is not None and now - self._fetched_at < self._min_refresh:
            return
        self._fetched_at = now
        self._refreshing = asyncio.get_running_loop().create_task(self._do_refresh())
        await asyncio.shield(self._refreshing)

    async def _do_refresh(self) -> None:
        self.fetches += 1
        try:
            document = await self._fetch()
            key_set = jwt.PyJWKSet.from_dict(dict(document))
        except (aiohttp.ClientError, OSError, TimeoutError, jwt.PyJWTError, ValueError) as exc:
            logger.warning("zapier_async: fetching the callback JWKS failed: %s", exc)
            return
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id}

    async def verify(self, token: str | None) -> dict[str, Any]:
        """Check a signature header value; returns the JWT's claims.

        Raises:
            CallbackSignatureError: Missing, malformed, unknown key, bad signature, expired,
                issued in the future, or valid for longer than 5 minutes.
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
        key = self._keys.get(kid)
        if key is None:
            await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            raise CallbackSignatureError("signed with an unknown key")
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
        return _converter.structure(data, Run)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise CallbackBodyError(f"does not match the documented shape ({exc})") from None


@attrs.frozen(kw_only=True)
class CallbackStats:
    """A receiver's counters.

    Attributes:
        received: Requests received.
        delivered: Callbacks that resolved (or updated) a handle of the client.
        duplicates: Valid callbacks for a run already seen (ignored).
        unknown_runs: Valid callbacks for runs the client does not follow (answered 200).
        rejected_signatures: Requests refused with 401 (missing, forged, expired signature).
        bad_bodies: Signed requests refused with 400 (not the documented body).
    """

    received: int
    delivered: int
    duplicates: int
    unknown_runs: int
    rejected_signatures: int
    bad_bodies: int


class CallbackReceiver:
    """An aiohttp.web endpoint that turns Zapier's callbacks into resolved handles.

    Answers at once: 200 once the callback was handled (duplicates and unknown runs too, so
    Zapier does not retry them), 401 for a bad signature, 400 for a bad body.

    Args:
        client: The client whose handles the callbacks resolve.
        verifier: Checks the signatures.
        remember: How many run ids are remembered to recognise duplicate deliveries.
    """

    def __init__(
        self, client: ZapierClient, verifier: CallbackVerifier, *, remember: int = 100_000
    ) -> None:
        self._client = client
        self._verifier = verifier
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remember = remember
        self._received = self._delivered = self._duplicates = 0
        self._unknown = self._rejected = self._bad = 0

    def __repr__(self) -> str:
        return f"<CallbackReceiver received={self._received} rejected={self._rejected}>"

    @property
    def stats(self) -> CallbackStats:
        """A snapshot of the counters."""
        return CallbackStats(
            received=self._received,
            delivered=self._delivered,
            duplicates=self._duplicates,
            unknown_runs=self._unknown,
            rejected_signatures=self._rejected,
            bad_bodies=self._bad,
        )

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp.web handler: mount it with ``router.add_post(path, receiver.handle)``."""
        self._received += 1
        try:
            await self._verifier.verify(request.headers.get(SIGNATURE_HEADER))
        except CallbackSignatureError as exc:
            self._rejected += 1
            logger.warning("zapier_async: %s", exc)
            return web.json_response({"error": "invalid signature"}, status=401)
        try:
            body = await request.read()
            if len(body) > _MAX_BODY:
                raise CallbackBodyError("too large")
            run = parse_callback(body)
        except CallbackBodyError as exc:
            self._bad += 1
            return web.json_response({"error": str(exc)}, status=400)
        if run.id in self._seen:
            self._duplicates += 1
            return web.json_response({"ok": True, "duplicate": True})
        if run.status.is_terminal:
            self._seen[run.id] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        if self._client.deliver_callback(run):
            self._delivered += 1
        else:
            self._unknown += 1
        return web.json_response({"ok": True})

    def app(self, path: str = "/zapier/callback") -> web.Application:
        """A ready `aiohttp.web.Application` with the handler at `path` (POST)."""
        application = web.Application(client_max_size=_MAX_BODY)
        application.router.add_post(path, self.handle)
        return application
