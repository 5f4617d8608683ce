"""Auth providers: pure token requests/responses, the single-flight cache, and end to end
against FakeZapier's token endpoint (client credentials and White Label token exchange)."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import aiohttp  # noqa: TID251 (posts hand-made JWTs straight to the emulator)
import jwt
import pytest
from _util import drive
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import zapier_async as za
from zapier_async import errors
from zapier_async._auth import (
    DEFAULT_TOKEN_URL,
    AuthContext,
    parse_token_response,
    parse_token_url,
    token_request,
)
from zapier_async._protocol import Request, Response
from zapier_async.testing import FakeClock, FakeZapier
from zapier_async.testing._clock import settle
from zapier_async.testing._fake_auth import FAKE_APP_ID, FakeAuthServer

CLIENT_SECRET = "cs_very_secret_value_123"
ISSUER = "https://partner.example"


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PEM = _pem(RSA_KEY)
# A line from the middle of the key: what a leak in a log would contain.
KEY_FRAGMENT = RSA_PEM.splitlines()[5]


def exchange_provider(token_url: str, **kwargs: Any) -> za.PartnerTokenExchange:
    options: dict[str, Any] = {
        "private_key": RSA_PEM,
        "key_id": "k1",
        "issuer": ISSUER,
        "subject": "user-1",
        "tenant": "acme",
        "client_id": "partner",
        "client_secret": CLIENT_SECRET,
        "token_url": token_url,
    }
    options.update(kwargs)
    return za.PartnerTokenExchange(**options)


def auth_server(**kwargs: Any) -> FakeAuthServer:
    options: dict[str, Any] = {
        "client_credentials": {"partner": CLIENT_SECRET},
        "partner_keys": {"k1": _public_pem(RSA_KEY), "k2": _public_pem(EC_KEY)},
        "partner_issuer": ISSUER,
        "require_issued_tokens": True,
    }
    options.update(kwargs)
    return FakeAuthServer(**options)


# --- pure: requests, responses, URLs ----------------------------------------------------------


def test_token_request_is_form_encoded_and_keeps_secrets_out_of_repr():
    endpoint = parse_token_url(DEFAULT_TOKEN_URL)
    request = token_request(endpoint, {"grant_type": "client_credentials", "client_secret": "s&x"})
    assert endpoint.base_url == "https://zapier.com"
    assert request.path == "/oauth/token/"
    assert request.method == "POST"
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.body is not None
    assert dict(parse_qsl(request.body.decode())) == {
        "grant_type": "client_credentials",
        "client_secret": "s&x",
    }
    assert "s&x" not in repr(request)
    assert request.describe() == "POST /oauth/token/"


@pytest.mark.parametrize(
    "url",
    ["http://zapier.com/oauth/token/", "ftp://x/", "/oauth/token", "", "https://u:p@host/t"],
)
def test_token_url_must_be_https_except_loopback(url):
    with pytest.raises(za.InvalidRequestError):
        parse_token_url(url)


def test_token_url_allows_http_on_loopback():
    assert parse_token_url("http://127.0.0.1:8080/oauth/token/").base_url == "http://127.0.0.1:8080"


def _token_response(status: int, body: Any) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status=status, body=raw)


REQ = Request(method="POST", path="/oauth/token/", endpoint="oauth.token")


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [(120, 120.0), ("90", 90.0), (None, 3600.0), (0, 3600.0), (-5, 3600.0), (True, 3600.0)],
)
def test_token_response_lifetime_defaults_to_an_hour(expires_in, expected):
    body: dict[str, Any] = {"access_token": "at", "token_type": "Bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    issued = parse_token_response(_token_response(200, body), REQ)
    assert issued.access_token == "at"
    assert issued.expires_in == expected
    assert "at" not in repr(issued).replace("access_token", "")


def test_token_refusal_is_a_token_request_error_without_secrets():
    body = {"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"}
    with pytest.raises(errors.TokenRequestError) as info:
        parse_token_response(_token_response(401, body), REQ, secrets=(CLIENT_SECRET,))
    err = info.value
    assert isinstance(err, errors.AuthenticationError)
    assert err.code == "invalid_client"
    assert CLIENT_SECRET not in str(err)
    assert CLIENT_SECRET not in repr(err)
    assert err.body == ""
    assert str(err).startswith("token request refused: HTTP 401 invalid_client")
    copied = pickle.loads(pickle.dumps(err))
    assert str(copied) == str(err)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (500, errors.ServerError),
        (503, errors.ServiceUnavailableError),
        (429, errors.TooManyRequestsError),
    ],
)
def test_transient_token_endpoint_errors_keep_their_status_class(status, cls):
    with pytest.raises(cls) as info:
        parse_token_response(_token_response(status, b"<html>oops</html>"), REQ)
    assert not isinstance(info.value, errors.TokenRequestError)


@pytest.mark.parametrize(
    "body",
    [b"not json", {"token_type": "Bearer"}, {"access_token": ""}, []],
)
def test_malformed_token_responses_are_decode_errors_without_the_body(body):
    with pytest.raises(errors.DecodeError) as info:
        parse_token_response(_token_response(200, body), REQ)
    assert info.value.body == ""


# --- construction -----------------------------------------------------------------------------


def test_client_credentials_repr_hides_the_secret():
    auth = za.ClientCredentials("cid", CLIENT_SECRET, scope=["external", "zap"])
    assert CLIENT_SECRET not in repr(auth)
    assert "cid" in repr(auth)
    assert "'external zap'" in repr(auth)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "hs256"])
def test_hmac_algorithms_are_refused_at_construction(alg):
    with pytest.raises(za.InvalidRequestError, match="HMAC") as info:
        exchange_provider(DEFAULT_TOKEN_URL, algorithm=alg)
    assert info.value.field == "algorithm"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algorithm": "none"}, "not accepted"),
        ({"algorithm": "ES256"}, "EC private key"),
        ({"algorithm": "RS256", "private_key": _pem(EC_KEY)}, "RSA private key"),
        ({"algorithm": "ES384", "private_key": EC_KEY}, "secp384r1"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n"}, "PEM-encoded"),
        ({"private_key": _public_pem(RSA_KEY)}, "PEM-encoded"),
        ({"jwt_lifetime": 301}, "300"),
        ({"jwt_lifetime": 0}, "between"),
        ({"rate_limit": {"limit_override": 0}}, "1..1000"),
        ({"rate_limit": {"limit_override": 1001}}, "1..1000"),
        ({"rate_limit": {"exempt": "yes"}}, "bool"),
        ({"rate_limit": {"burst": 3}}, "unknown"),
        ({"billing": "not json"}, "JSON object"),
        ({"tenant_claim": "sub"}, "reserved"),
        ({"extra_params": {"client_secret": "x"}}, "named arguments"),
        ({"token_url": "http://zapier.com/oauth/token/"}, "loopback"),
    ],
)
def test_bad_exchange_settings_fail_at_construction_without_quoting_the_key(kwargs, match):
    with pytest.raises(za.InvalidRequestError, match=match) as info:
        exchange_provider(kwargs.pop("token_url", DEFAULT_TOKEN_URL), **kwargs)
    assert KEY_FRAGMENT not in str(info.value)


def test_the_signed_jwt_carries_the_documented_header_and_claims():
    auth = exchange_provider(
        DEFAULT_TOKEN_URL,
        tenant_claim="org_id",
        rate_limit={"exempt": False, "limit_override": 500},
        billing={"is_billable": True, "usage_type": "action_run"},
        jwt_lifetime=240,
    )
    token = auth.signed_jwt(1_700_000_000.5)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] == "k1"
    claims = jwt.decode(
        token,
        RSA_KEY.public_key(),
        algorithms=["RS256"],
        audience="connect.zapier.com",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["sub"] == "user-1"
    assert claims["org_id"] == "acme"
    assert claims["iss"] == ISSUER
    assert claims["iat"] == claims["nbf"] == 1_700_000_000
    assert claims["exp"] - claims["iat"] == 240
    assert claims["rate_limit"] == {"exempt": False, "limit_override": 500}
    assert json.loads(claims["billing"]) == {"is_billable": True, "usage_type": "action_run"}


def test_es256_keys_sign_too():
    auth = exchange_provider(DEFAULT_TOKEN_URL, algorithm="ES256", private_key=_pem(EC_KEY))
    token = auth.signed_jwt(1_700_000_000)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    jwt.decode(
        token,
        EC_KEY.public_key(),
        algorithms=["ES256"],
        audience="connect.zapier.com",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )


def test_the_exchange_request_uses_rfc_8693_names_and_they_are_configurable():
    auth = exchange_provider(DEFAULT_TOKEN_URL)
    request = auth.exchange_request(1_700_000_000)
    assert request.body is not None
    form = dict(parse_qsl(request.body.decode()))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert form["subject_token"] == auth.signed_jwt(1_700_000_000)
    assert form["client_id"] == "partner"
    assert form["client_secret"] == CLIENT_SECRET
    assert form["subject_token"] not in repr(request)

    custom = exchange_provider(
        DEFAULT_TOKEN_URL,
        grant_type="urn:example:jwt",
        subject_token_param="assertion",
        subject_token_type=None,
        extra_params={"scope": "zap action:run"},
    )
    assert custom.exchange_request(1_700_000_000).body is not None
    body = custom.exchange_request(1_700_000_000).body
    assert body is not None
    form = dict(parse_qsl(body.decode()))
    assert form["grant_type"] == "urn:example:jwt"
    assert "assertion" in form
    assert "subject_token_type" not in form
    assert form["scope"] == "zap action:run"


def test_for_subject_shares_settings_but_not_the_user():
    auth = exchange_provider(DEFAULT_TOKEN_URL)
    other = auth.for_subject("user-2", "globex")
    assert (other.subject, other.tenant) == ("user-2", "globex")
    claims = jwt.decode(
        other.signed_jwt(1_700_000_000),
        options={"verify_signature": False},
    )
    assert claims["sub"] == "user-2"
    assert claims["tenant_id"] == "globex"
    assert KEY_FRAGMENT not in repr(other)


# --- the cache: single flight, refresh ahead, invalidation -----------------------------------


class TokenEndpointStub:
    """An in-memory token endpoint: counts requests, answers when `gate` is set."""

    def __init__(self, *, expires_in: float = 600.0) -> None:
        self.calls = 0
        self.expires_in = expires_in
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Callable[[], BaseException] | None = None

    async def send(self, request: Request, base_url: str) -> Response:
        self.calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail()
        body = {"access_token": f"tok{self.calls}", "expires_in": self.expires_in}
        return Response(status=200, body=json.dumps(body).encode())


class _MostJitter:
    """An rng whose full-jitter backoffs are their ceilings: 0.5 s, then 1 s, ..."""

    def random(self) -> float:
        return 1.0


# A context allowing three attempts: the providers must not use it (the send retries).
TOKEN_RETRIES = {"retry_policy": za.RetryPolicy(max_attempts=3, base=0.5), "rng": _MostJitter()}


def bound_credentials(clock: FakeClock, stub: TokenEndpointStub) -> za.ClientCredentials:
    auth = za.ClientCredentials("cid", CLIENT_SECRET, refresh_margin=60.0)
    auth.bind(AuthContext(clock=clock, send=stub.send, **TOKEN_RETRIES))
    return auth


@pytest.mark.asyncio
async def test_a_hundred_concurrent_callers_cause_one_token_request():
    clock, stub = FakeClock(), TokenEndpointStub()
    stub.gate.clear()
    auth = bound_credentials(clock, stub)
    tasks = [asyncio.ensure_future(auth.token()) for _ in range(100)]
    await asyncio.sleep(0)
    stub.gate.set()
    tokens = await asyncio.gather(*tasks)
    assert set(tokens) == {"tok1"}
    assert stub.calls == 1


@pytest.mark.asyncio
async def test_tokens_are_refreshed_ahead_of_expiry_once():
    clock, stub = FakeClock(), TokenEndpointStub(expires_in=600)
    auth = bound_credentials(clock, stub)
    assert await auth.token() == "tok1"
    await clock.advance(539)
    assert await auth.token() == "tok1"
    await clock.advance(1)  # 60 s before expiry: replaced
    assert await asyncio.gather(*(auth.token() for _ in range(50))) == ["tok2"] * 50
    assert stub.calls == 2


@pytest.mark.asyncio
async def test_a_short_lived_token_is_kept_for_half_its_life():
    clock, stub = FakeClock(), TokenEndpointStub(expires_in=10)
    auth = bound_credentials(clock, stub)
    await auth.token()
    await clock.advance(4.9)
    await auth.token()
    assert stub.calls == 1
    await clock.advance(0.1)
    await auth.token()
    assert stub.calls == 2


@pytest.mark.asyncio
async def test_a_failed_refresh_fails_every_waiter_once_and_the_next_call_tries_again():
    clock, stub = FakeClock(), TokenEndpointStub()
    stub.gate.clear()
    stub.fail = lambda: errors.TransportError(
        "cannot connect", "POST /oauth/token/", False, "connect"
    )
    auth = bound_credentials(clock, stub)
    tasks = [asyncio.ensure_future(auth.token()) for _ in range(20)]
    await asyncio.sleep(0)
    stub.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, errors.TransportError) for r in results)
    assert stub.calls == 1  # one flight for all 20 waiters
    stub.fail = None
    assert await auth.token() == "tok2"


@pytest.mark.asyncio
async def test_the_provider_makes_one_call_per_refresh_the_send_is_the_retry_loop():
    """Token requests are retried by the client's send (the pipeline), never a second time
    by the provider: a policy in the context allowing three attempts changes nothing."""
    clock, gate = FakeClock(), asyncio.Event()
    calls = 0

    async def send(request: Request, base_url: str) -> Response:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise errors.ServerError(503, None, None, None, "POST /oauth/token/", "")

    auth = za.ClientCredentials("cid", CLIENT_SECRET)
    auth.bind(AuthContext(clock=clock, send=send, **TOKEN_RETRIES))
    tasks = [asyncio.ensure_future(auth.token()) for _ in range(10)]
    await settle()
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, errors.ServerError) for r in results)
    assert calls == 1
    await clock.advance(5.0)
    assert calls == 1  # nothing scheduled behind the caller's back


@pytest.mark.asyncio
async def test_for_subject_copies_of_one_user_share_a_bucket_id_and_it_holds_no_secret():
    auth = exchange_provider(DEFAULT_TOKEN_URL)
    assert auth.bucket_id == "acme/user-1"
    assert auth.for_subject("user-2", "globex").bucket_id == "globex/user-2"
    assert auth.for_subject("user-1", "acme").bucket_id == auth.bucket_id
    assert auth.for_subject("u", "acme").bucket_id != auth.for_subject("u", "other").bucket_id
    assert CLIENT_SECRET not in str(auth.bucket_id)
    assert KEY_FRAGMENT not in str(auth.bucket_id)


class ExchangeStub:
    """A token-exchange endpoint: one token per exchange, counted per subject."""

    def __init__(self, expires_in: float = 600.0) -> None:
        self.expires_in = expires_in
        self.calls: dict[str, int] = {}
        self.issued = 0

    async def send(self, request: Request, base_url: str) -> Response:
        form = dict(parse_qsl(request.body.decode()))
        claims = jwt.decode(form["subject_token"], options={"verify_signature": False})
        self.calls[claims["sub"]] = self.calls.get(claims["sub"], 0) + 1
        self.issued += 1
        body = {"access_token": f"token-{claims['sub']}-{self.issued:06d}", "expires_in": 600}
        body["expires_in"] = self.expires_in
        return Response(status=200, body=json.dumps(body).encode())


@pytest.mark.asyncio
async def test_the_token_cache_keeps_at_most_max_cached_tokens_least_recently_used_first():
    clock, stub = FakeClock(), ExchangeStub()
    auth = exchange_provider(DEFAULT_TOKEN_URL, max_cached_tokens=3)
    auth.bind(AuthContext(clock=clock, send=stub.send))
    users = [auth.for_subject(f"u{i}", "acme") for i in range(5)]
    for user in users[:3]:
        await user.token()
    await users[0].token()  # u0 is now the most recently used: u1 goes first
    await users[3].token()
    await users[4].token()
    assert (auth.cached_tokens, auth.evicted_tokens) == (3, 2)
    await users[0].token()
    assert stub.calls["u0"] == 1  # kept
    await users[1].token()
    assert stub.calls["u1"] == 2  # evicted, fetched again (single-flight as ever)
    assert auth.cached_tokens == 3


@pytest.mark.asyncio
async def test_expired_tokens_of_idle_users_are_dropped_and_memory_stays_flat():
    clock, stub = FakeClock(), ExchangeStub(expires_in=600)
    auth = exchange_provider(DEFAULT_TOKEN_URL)  # the default cap (10,000) is never reached
    auth.bind(AuthContext(clock=clock, send=stub.send))
    sizes = []
    for hour in range(6):
        # 500 users an hour, each new: a token lives 10 minutes, so only ~the last 10
        # minutes' users may still be cached.
        for i in range(500):
            await auth.for_subject(f"h{hour}-u{i}", "acme").token()
            await clock.advance(7.2)
        sizes.append(auth.cached_tokens)
    assert max(sizes) <= 90, sizes
    assert auth.evicted_tokens >= 3000 - 90


@pytest.mark.asyncio
async def test_an_evicted_token_leaves_the_redaction_registry_but_a_cached_one_is_redacted():
    from zapier_async._redact import redact

    clock, stub = FakeClock(), ExchangeStub()
    auth = exchange_provider(DEFAULT_TOKEN_URL, max_cached_tokens=1)
    auth.bind(AuthContext(clock=clock, send=stub.send))
    first = await auth.for_subject("a", "acme").token()
    assert redact(f"echo {first}") == "echo <redacted>"
    second = await auth.for_subject("b", "acme").token()  # evicts a's token
    assert auth.cached_tokens == 1
    assert redact(f"{first} {second}") == f"{first} <redacted>"  # the registry does not grow


@pytest.mark.asyncio
async def test_a_refused_token_request_is_not_retried():
    clock, stub = FakeClock(), TokenEndpointStub()
    stub.fail = lambda: errors.TokenRequestError(
        401, "invalid_client", None, None, "POST /oauth/token/", ""
    )
    auth = bound_credentials(clock, stub)
    with pytest.raises(errors.TokenRequestError):
        await auth.token()
    assert stub.calls == 1


@pytest.mark.asyncio
async def test_a_cancelled_leader_hands_the_refresh_to_a_waiter():
    clock, stub = FakeClock(), TokenEndpointStub()
    stub.gate.clear()
    auth = bound_credentials(clock, stub)
    leader = asyncio.ensure_future(auth.token())
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(auth.token()) for _ in range(5)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    stub.gate.set()
    assert await asyncio.gather(*waiters) == ["tok2"] * 5
    assert leader.cancelled()
    assert stub.calls == 2


@pytest.mark.asyncio
async def test_invalidate_drops_the_refused_token_once():
    clock, stub = FakeClock(), TokenEndpointStub()
    auth = bound_credentials(clock, stub)
    assert await auth.token() == "tok1"
    assert auth.invalidate("tok1") is True
    assert auth.invalidate("tok1") is True  # a late 401 for the same token: no second drop
    assert await auth.token() == "tok2"
    assert auth.invalidate("tok1") is True  # already replaced: retry with the new one
    assert await auth.token() == "tok2"
    assert stub.calls == 2


@pytest.mark.asyncio
async def test_an_unbound_provider_says_how_to_bind_it():
    with pytest.raises(za.InvalidRequestError, match="ZapierClient"):
        await za.ClientCredentials("cid", CLIENT_SECRET).token()


@pytest.mark.asyncio
async def test_bearer_token_binds_as_a_no_op():
    auth = za.BearerToken("t")
    auth.bind(AuthContext(clock=FakeClock(), send=TokenEndpointStub().send))
    assert await auth.token() == "t"


# --- end to end against FakeZapier ------------------------------------------------------------


@pytest.mark.asyncio
async def test_client_credentials_send_the_documented_form_and_the_token_is_used():
    server = auth_server()
    async with FakeZapier(seed=1, auth_server=server, record_requests=True) as fake:
        auth = za.ClientCredentials("partner", CLIENT_SECRET, token_url=fake.token_url)
        async with za.ZapierClient(auth=auth, base_url=fake.url) as client:
            actions = await client.list_actions(FAKE_APP_ID)
    assert actions
    token_req = next(r for r in fake.requests if r.endpoint == "token")
    assert token_req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in token_req.headers
    assert fake.stats.token_requests == 1
    assert fake.stats.tokens_issued == 1


@pytest.mark.asyncio
async def test_a_token_endpoint_outage_of_one_answer_does_not_fail_the_run():
    server = auth_server()
    async with FakeZapier(seed=1, auth_server=server, durations=0.05) as fake:
        fake.inject("503")  # the first request of all: the token request
        auth = za.ClientCredentials("partner", CLIENT_SECRET, token_url=fake.token_url)
        async with za.ZapierClient(auth=auth, base_url=fake.url) as client:
            run = await (await client.run("core:x", authentication=None, inputs={"i": 1}))
    assert run.succeeded
    assert fake.stats.faults["503"] == 1
    assert fake.stats.tokens_issued == 1
    assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_a_hundred_requests_with_an_expired_token_cause_one_token_request():
    clock = FakeClock()
    # The server lets tokens lapse after 100 s but says they last an hour: the client only
    # learns from the 401s.
    server = auth_server(token_lifetime=100, reported_lifetime=3600)
    async with FakeZapier(seed=2, clock=clock, auth_server=server) as fake:
        auth = za.ClientCredentials("partner", CLIENT_SECRET, token_url=fake.token_url)
        async with za.ZapierClient(auth=auth, base_url=fake.url, clock=clock) as client:
            await client.list_actions(FAKE_APP_ID)
            await clock.advance(150)
            results = await asyncio.gather(*(client.list_actions(FAKE_APP_ID) for _ in range(100)))
    assert all(results)
    assert fake.stats.token_requests == 2
    assert fake.stats.expired_token_refusals >= 1


@pytest.mark.asyncio
async def test_client_credentials_refresh_before_the_server_would_refuse():
    clock = FakeClock()
    server = auth_server(token_lifetime=300)
    async with FakeZapier(seed=2, clock=clock, auth_server=server) as fake:
        auth = za.ClientCredentials("partner", CLIENT_SECRET, token_url=fake.token_url)
        async with za.ZapierClient(auth=auth, base_url=fake.url, clock=clock) as client:
            await client.list_actions(FAKE_APP_ID)
            await clock.advance(239)
            await client.list_actions(FAKE_APP_ID)
            assert fake.stats.token_requests == 1
            await clock.advance(2)
            await client.list_actions(FAKE_APP_ID)
    assert fake.stats.token_requests == 2
    assert fake.stats.expired_token_refusals == 0


@pytest.mark.asyncio
async def test_wrong_client_secret_is_a_clear_error_without_the_secret(caplog):
    caplog.set_level(logging.DEBUG)
    async with FakeZapier(seed=1, auth_server=auth_server()) as fake:
        auth = za.ClientCredentials("partner", "wrong-" + CLIENT_SECRET, token_url=fake.token_url)
        async with za.ZapierClient(auth=auth, base_url=fake.url) as client:
            with pytest.raises(errors.TokenRequestError, match="invalid_client") as info:
                await client.list_actions(FAKE_APP_ID)
    assert CLIENT_SECRET not in str(info.value)
    assert CLIENT_SECRET not in repr(info.value)
    assert CLIENT_SECRET not in caplog.text
    assert fake.stats.requests_by_endpoint.get("actions", 0) == 0


@pytest.mark.asyncio
async def test_a_forged_jwt_is_refused_with_a_clear_error():
    async with FakeZapier(seed=1, auth_server=auth_server()) as fake:
        auth = exchange_provider(fake.token_url, private_key=_pem(OTHER_RSA_KEY))
        async with za.ZapierClient(auth=auth, base_url=fake.url) as client:
            with pytest.raises(errors.TokenRequestError, match="signature verification failed"):
                await client.list_actions(FAKE_APP_ID)
    assert fake.stats.token_refusals == 1
    assert fake.stats.tokens_issued == 0


@pytest.mark.asyncio
async def test_an_expired_jwt_is_refused_with_a_clear_error():
    client_clock = FakeClock()
    server_clock = FakeClock(wall_start=1_700_000_000 + 600)  # ten minutes ahead of the client
    async with FakeZapier(seed=1, auth_server=auth_server(), clock=server_clock) as fake:
        auth = exchange_provider(fake.token_url)
        async with za.ZapierClient(auth=auth, base_url=fake.url, clock=client_clock) as client:
            with pytest.raises(errors.TokenRequestError, match="JWT has expired"):
                await client.list_actions(FAKE_APP_ID)


@pytest.mark.asyncio
async def test_an_unknown_kid_is_refused():
    async with FakeZapier(seed=1, auth_server=auth_server()) as fake:
        auth = exchange_provider(fake.token_url, key_id="rotated-away")
        async with za.ZapierClient(auth=auth, base_url=fake.url) as client:
            with pytest.raises(errors.TokenRequestError, match="kid"):
                await client.list_actions(FAKE_APP_ID)


@pytest.mark.parametrize("alg", ["HS256", "none"])
@pytest.mark.asyncio
async def test_the_emulator_refuses_hmac_and_unsigned_jwts(alg):
    now = 1_700_000_000
    claims = {
        "sub": "u",
        "tenant_id": "t",
        "iss": ISSUER,
        "aud": "connect.zapier.com",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
    }
    key = "shared-secret-of-32-bytes-at-least!" if alg == "HS256" else None
    forged = jwt.encode(claims, key, algorithm=alg, headers={"kid": "k1"})
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": forged,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "client_id": "partner",
        "client_secret": CLIENT_SECRET,
    }
    async with (
        FakeZapier(seed=1, clock=FakeClock(), auth_server=auth_server()) as fake,
        aiohttp.ClientSession() as session,
        session.post(fake.token_url, data=form) as resp,
    ):
        body = await resp.json()
    assert resp.status == 400
    assert body["error"] == "invalid_grant"
    assert "not allowed" in body["error_description"]


@pytest.mark.asyncio
async def test_secrets_never_reach_logs_reprs_or_errors(caplog):
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    server = auth_server(token_lifetime=100, reported_lifetime=3600)
    async with FakeZapier(seed=4, clock=clock, auth_server=server) as fake:
        auth = exchange_provider(fake.token_url)
        jwts = {auth.signed_jwt(clock.time())}
        texts: list[str] = [repr(auth)]
        async with za.ZapierClient(auth=auth, base_url=fake.url, clock=clock) as client:
            texts.append(repr(client))
            handle = await client.run(
                app=FAKE_APP_ID, action_key="send_message", authentication="conn_ok", inputs={}
            )
            texts.append(handle.continuation_token())
            await clock.advance(150)  # the token lapses; the next request re-exchanges
            jwts.add(auth.signed_jwt(clock.time()))
            await client.list_actions(FAKE_APP_ID)
            forged = exchange_provider(fake.token_url, private_key=_pem(OTHER_RSA_KEY))
            async with za.ZapierClient(auth=forged, base_url=fake.url, clock=clock) as bad:
                with pytest.raises(errors.TokenRequestError) as info:
                    await bad.list_actions(FAKE_APP_ID)
            texts += [str(info.value), repr(info.value), repr(forged)]
    issued = list(server._issued)
    assert len(issued) == 2
    texts.append(caplog.text)
    secrets = [CLIENT_SECRET, KEY_FRAGMENT, *issued, *jwts]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- acceptance: a worker across two token expiries -------------------------------------------


@pytest.mark.asyncio
async def test_a_worker_exchanges_a_jwt_and_runs_500_actions_across_two_token_expiries():
    clock = FakeClock()
    # Tokens really last 300 s, but the server says an hour: the worker finds out from 401s
    # in the middle of the job, twice.
    server = auth_server(token_lifetime=300, reported_lifetime=3600)
    async with FakeZapier(
        seed=5, clock=clock, auth_server=server, durations=(0.0, 700.0), record_requests=False
    ) as fake:
        auth = exchange_provider(fake.token_url)
        async with za.ZapierClient(
            auth=auth,
            base_url=fake.url,
            clock=clock,
            poll_policy=za.PollPolicy(initial=5.0, factor=2.0, cap=120.0, jitter=0.1),
            retry_policy=za.RetryPolicy(base=0.01, cap=0.05),
            rng=random.Random(5),
            max_rate_limit_wait=None,
        ) as client:
            connection = await client.find_connection(FAKE_APP_ID)
            handles = await asyncio.gather(
                *(
                    client.run(
                        app=FAKE_APP_ID,
                        action_key="send_message",
                        authentication=connection.id,
                        inputs={"n": i},
                    )
                    for i in range(500)
                )
            )
            await drive(clock, lambda: all(h.done() for h in handles))
            runs = [await h for h in handles]
            ended_at = clock.monotonic()
    assert len(runs) == 500
    assert all(run.succeeded for run in runs)
    assert 600 < ended_at < 900  # the job spanned two expiries (t=300, t=600) and no third
    stats = fake.stats
    assert stats.token_requests == 3  # the first exchange + one per expiry
    assert stats.tokens_issued == 3
    assert stats.token_refusals == 0
    assert stats.expired_token_refusals >= 2
    assert stats.runs_created == 500
    assert stats.duplicate_submissions == 0
    assert stats.action_lookups == 500  # a fresh action id before every run
    assert {fake.catalog.resolve(fake.run(h.id).action) for h in handles} == {
        (FAKE_APP_ID, "send_message")
    }
    assert len({fake.run(h.id).action for h in handles}) == 500
    assert len(server.exchanges) == 3
    assert {(c["sub"], c["tenant_id"]) for c in server.exchanges} == {("user-1", "acme")}
