"""Secrets echoed by a server never reach an error or a log (issue 14 item 10), and a token
that cannot be sent is refused with a typed error that does not quote it (item 12).

Every secret we send (a bearer token, a client secret, an issued token, a partner JWT, a
custom provider's token) is redacted, in every encoding we send it in, where errors are built
from server text: so `str`, `repr`, pickles, tracebacks and log lines only see the redacted
text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import pytest_asyncio
from aiohttp import web  # noqa: TID251 (an echoing loopback server)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import zapier_async as za
from zapier_async import errors
from zapier_async._auth import AuthContext, parse_token_response
from zapier_async._protocol import Request, Response, error_for_response, parse_run
from zapier_async._redact import REDACTED, redact
from zapier_async.testing import FakeClock

GET = Request(method="GET", path="/v2/action-runs/r1", endpoint="action_runs.get")
TOKEN_REQ = Request(method="POST", path="/oauth/token/", endpoint="oauth.token")

BEARER = "bearer.Tok-en_with+plus/slash=eq"  # printable ASCII, as a bearer token must be
CLIENT_SECRET = 'cs+secret/with "quote" & \\ and ü'  # form-encoded, anything goes
ISSUED = "issued-access-token/0123+456=="

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()


def _lower_hex(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "%":
            out.append(text[i : i + 3].lower())
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "form": lambda s: quote_plus(s, safe=""),
    "url": lambda s: quote(s, safe=""),
    "url-path": lambda s: quote(s),
    "url-lower-hex": lambda s: _lower_hex(quote(s, safe="")),
    "json-ascii": lambda s: json.dumps(s)[1:-1],
    "json-slash": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
}


def _forms(secret: str) -> set[str]:
    """Every encoding of `secret`, and its distinctive middle (a partial leak counts too)."""
    forms = {encode(secret) for encode in ENCODINGS.values()}
    return forms | {secret[2:-2]}


def _surfaces(exc: BaseException, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Everywhere an error's text shows: str, repr, a pickle round trip, a traceback, a log."""
    logger = logging.getLogger("zapier_async.test")
    with caplog.at_level(logging.WARNING, logger="zapier_async.test"):
        caplog.clear()
        logger.warning("request failed (%s)", exc)
        logger.error("request failed", exc_info=exc)
        logged = caplog.text
    again = pickle.loads(pickle.dumps(exc))
    return {
        "str": str(exc),
        "repr": repr(exc),
        "pickle": str(again) + repr(again),
        "traceback": "".join(traceback.format_exception(exc)),
        "log": logged,
    }


def _assert_clean(exc: BaseException, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    for surface, text in _surfaces(exc, caplog).items():
        for form in _forms(secret):
            assert form not in text, f"{form!r} shows in {surface}: {text[:500]}"


def _echo_body(echo: str) -> bytes:
    return json.dumps(
        {
            "errors": [
                {
                    "status": "401",
                    "code": "bad_token",
                    "title": f"token {echo} refused",
                    "detail": f"the token {echo} is not valid",
                    "meta": {"received": [echo]},
                }
            ]
        }
    ).encode()


def _exchange(**kwargs: Any) -> za.PartnerTokenExchange:
    options: dict[str, Any] = {
        "private_key": RSA_PEM,
        "key_id": "k1",
        "issuer": "https://partner.example",
        "subject": "user-1",
        "tenant": "acme",
        "client_id": "cid",
        "client_secret": CLIENT_SECRET,
        "token_url": "http://127.0.0.1:1/oauth/token/",
    }
    options.update(kwargs)
    return za.PartnerTokenExchange(**options)


# --- the bearer token, in every encoding, on every surface -----------------------------------


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_bearer_token_echoed_in_an_error_is_redacted_everywhere(encoding, caplog):
    auth = za.BearerToken(BEARER)  # registers its token while it lives
    echo = ENCODINGS[encoding](BEARER)
    err = error_for_response(Response(status=401, body=_echo_body(echo)), GET)
    assert isinstance(err, errors.AuthenticationError)
    _assert_clean(err, BEARER, caplog)
    assert REDACTED in str(err)
    assert err.errors[0]["meta"]["received"] == [REDACTED]
    del auth


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_client_secret_echoed_in_an_error_is_redacted_everywhere(encoding, caplog):
    auth = za.ClientCredentials("cid", CLIENT_SECRET)
    echo = ENCODINGS[encoding](CLIENT_SECRET)
    err = error_for_response(Response(status=400, body=_echo_body(echo)), GET)
    assert err is not None
    _assert_clean(err, CLIENT_SECRET, caplog)
    del auth


def test_a_secret_in_a_plain_text_body_is_redacted_before_the_excerpt_is_cut(caplog):
    auth = za.BearerToken(BEARER)
    # The token straddles the 2048-character cut: its first half must not be left behind.
    body = ("x" * (2048 - len(BEARER) // 2) + BEARER + "y" * 100).encode()
    err = error_for_response(Response(status=500, body=body), GET)
    assert err is not None
    _assert_clean(err, BEARER, caplog)
    assert BEARER[: len(BEARER) // 2] not in err.body
    del auth


def test_a_secret_echoed_in_a_run_error_is_redacted(caplog):
    auth = za.BearerToken(BEARER)
    body = {
        "data": {
            "status": "error",
            "errors": [{"code": "user", "title": "no", "detail": f"echo {BEARER}"}],
        }
    }
    run = parse_run(Response(status=200, body=json.dumps(body).encode()), GET, run_id="r1")
    failed = errors.RunFailedError(run)
    _assert_clean(failed, BEARER, caplog)
    assert run.errors[0].detail == f"echo {REDACTED}"
    del auth


def test_a_provider_that_is_gone_no_longer_redacts():
    # The registry holds secrets weakly: it does not grow with every token a process has seen.
    auth = za.BearerToken("a-short-lived-token-0042")
    assert redact("x a-short-lived-token-0042 y") == f"x {REDACTED} y"
    del auth
    assert redact("x a-short-lived-token-0042 y") == "x a-short-lived-token-0042 y"


def test_short_strings_are_not_treated_as_secrets():
    auth = za.BearerToken("abc")
    assert redact("abc is fine") == "abc is fine"
    del auth


# --- the token endpoint: a client secret and a JWT echoed form-encoded -----------------------


def _echoing_token_endpoint(status: int) -> Callable[[Request, str], Any]:
    async def send(request: Request, base_url: str) -> Response:
        assert request.body is not None
        # The form exactly as sent (form-encoded), echoed in the description and the title.
        sent = request.body.decode()
        body = {"error": "invalid_client", "error_description": f"bad request: {sent}"}
        body["title"] = sent
        return Response(status=status, body=json.dumps(body).encode())

    return send


@pytest.mark.asyncio
async def test_a_client_secret_echoed_form_encoded_by_the_token_endpoint_is_redacted(caplog):
    auth = za.ClientCredentials("cid", CLIENT_SECRET, token_url="http://127.0.0.1:1/t")
    auth.bind(AuthContext(clock=FakeClock(), send=_echoing_token_endpoint(401)))
    with pytest.raises(errors.TokenRequestError) as info:
        await auth.token()
    _assert_clean(info.value, CLIENT_SECRET, caplog)
    assert "bad request" in str(info.value)


@pytest.mark.asyncio
async def test_the_partner_jwt_and_secret_echoed_by_the_token_endpoint_are_redacted(caplog):
    auth = _exchange()
    sent_jwts: list[str] = []
    echo = _echoing_token_endpoint(400)

    async def send(request: Request, base_url: str) -> Response:
        assert request.body is not None
        form = dict(pair.split("=", 1) for pair in request.body.decode().split("&"))
        sent_jwts.append(form["subject_token"])
        response: Response = await echo(request, base_url)
        return response

    auth.bind(AuthContext(clock=FakeClock(), send=send))
    with pytest.raises(errors.TokenRequestError) as info:
        await auth.token()
    assert len(sent_jwts) == 1
    _assert_clean(info.value, sent_jwts[0], caplog)
    _assert_clean(info.value, CLIENT_SECRET, caplog)


def test_an_issued_token_echoed_later_is_redacted(caplog):
    async def scenario() -> errors.APIError | None:
        async def send(request: Request, base_url: str) -> Response:
            body = {"access_token": ISSUED, "expires_in": 600}
            return Response(status=200, body=json.dumps(body).encode())

        auth = za.ClientCredentials("cid", CLIENT_SECRET, token_url="http://127.0.0.1:1/t")
        auth.bind(AuthContext(clock=FakeClock(), send=send))
        assert await auth.token() == ISSUED
        err = error_for_response(Response(status=403, body=_echo_body(quote(ISSUED))), GET)
        _assert_clean(err, ISSUED, caplog)  # type: ignore[arg-type]
        return err

    assert asyncio.run(scenario()) is not None


# --- end to end: a custom provider's token echoed by the API, in errors and the WARNING line --


class FixedCustomAuth:
    """A user-written provider: nothing in the library knows its token but the transport."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> bool:
        return False


CUSTOM = "custom-provider-token-0123456789"


@pytest_asyncio.fixture
async def echo_server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.StreamResponse:
        seen = request.headers.get("Authorization", "")
        return web.json_response(
            {"errors": [{"status": "500", "code": "oops", "detail": f"got header {seen}"}]},
            status=500,
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_a_custom_providers_token_echoed_by_the_api_is_redacted_everywhere(
    echo_server, caplog
):
    caplog.set_level(logging.DEBUG, logger="zapier_async")
    async with za.ZapierClient(
        auth=FixedCustomAuth(CUSTOM),
        base_url=echo_server,
        retry_policy=za.RetryPolicy(max_attempts=2, base=0.001, cap=0.002),
        poll_policy=za.PollPolicy(initial=0.001, cap=0.002),
        max_poll_failures=2,
    ) as client:
        with pytest.raises(errors.ServerError) as info:
            await client.get_run("r1")
        handle = client.resume("r2")
        with pytest.raises(errors.ServerError):
            await asyncio.wait_for(handle.result(), 30)
    # The client's own log lines quoting the failures (the poll's retry and give-up lines).
    client_log = caplog.text
    assert "reading run r2 failed" in client_log
    for form in _forms(CUSTOM):
        assert form not in client_log
    _assert_clean(info.value, CUSTOM, caplog)
    assert "got header Bearer <redacted>" in str(info.value)


# --- item 12: tokens that cannot be sent -------------------------------------------------------

UNSENDABLE = ["a\x00b-token", "tok\r\nen-x", "tok\nen-x", "tok\x7fen", "tok en", "tök-en-x"]


@pytest.mark.parametrize("bad", UNSENDABLE)
def test_a_bearer_token_that_cannot_be_sent_is_refused_at_construction(bad):
    with pytest.raises(errors.InvalidRequestError) as info:
        za.BearerToken(bad)
    assert info.value.field == "token"
    for text in (str(info.value), repr(info.value)):
        assert bad not in text
        assert bad.replace("\x00", "\\x00") not in text


def test_surrounding_whitespace_is_still_dropped():
    auth = za.BearerToken("  fine-token-123\n")
    assert asyncio.run(auth.token()) == "fine-token-123"


@pytest.mark.parametrize("bad", UNSENDABLE)
def test_an_issued_token_that_cannot_be_sent_is_a_token_request_error(bad):
    body = json.dumps({"access_token": bad, "expires_in": 60}).encode()
    with pytest.raises(errors.TokenRequestError) as info:
        parse_token_response(Response(status=200, body=body), TOKEN_REQ)
    assert info.value.body == ""
    for text in (str(info.value), repr(info.value), str(pickle.loads(pickle.dumps(info.value)))):
        assert bad not in text
        assert json.dumps(bad)[1:-1] not in text


@pytest.mark.asyncio
async def test_a_provider_issued_an_unsendable_token_raises_typed_and_sends_no_api_request():
    calls: list[Request] = []

    async def send(request: Request, base_url: str) -> Response:
        calls.append(request)
        body = {"access_token": "a\x00b-issued", "expires_in": 600}
        return Response(status=200, body=json.dumps(body).encode())

    auth = za.ClientCredentials("cid", CLIENT_SECRET, token_url="http://127.0.0.1:1/t")
    auth.bind(AuthContext(clock=FakeClock(), send=send))
    with pytest.raises(errors.TokenRequestError):
        await auth.token()
    assert len(calls) == 1  # a refusal of its own: not retried


def test_many_live_secrets_are_all_redacted_in_one_pass(caplog):
    # A token per end user: thousands of secrets, some sharing long prefixes.
    auths = [za.BearerToken(f"user-token-{i:05d}-abcdef") for i in range(2000)]
    shared = za.BearerToken("user-token-00042-abcdef-and-longer")
    echoes = [
        "user-token-00042-abcdef-and-longer",
        quote_plus("user-token-01999-abcdef"),
        "user-token-00007-abcdef",
    ]
    err = error_for_response(Response(status=401, body=_echo_body(" / ".join(echoes))), GET)
    assert err is not None
    assert err.detail == f"the token {REDACTED} / {REDACTED} / {REDACTED} is not valid"
    for secret in ("user-token-00042-abcdef-and-longer", "user-token-01999-abcdef"):
        _assert_clean(err, secret, caplog)
    assert redact("user-token-1 is not a registered one") == "user-token-1 is not a registered one"
    del auths, shared
