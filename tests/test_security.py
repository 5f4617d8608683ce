"""Security: bad caller input refused before any request, secrets never shown, TLS always on."""

from __future__ import annotations

import base64
import datetime
import inspect
import ipaddress
import logging
import pickle
import ssl
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web  # noqa: TID251 (an in-test TLS server)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import zapier_async as za
from zapier_async import errors
from zapier_async.testing import FakeZapier

SECRET = "s3cr3t-T0KEN-do-not-show"
FAST = {
    "poll_policy": za.PollPolicy(initial=0.01, cap=0.05),
    "retry_policy": za.RetryPolicy(base=0.005, cap=0.02),
}


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=5) as server:
        yield server


def client_for(fake: FakeZapier, token: str = "t", **kwargs: object) -> za.ZapierClient:
    return za.ZapierClient(auth=za.BearerToken(token), base_url=fake.url, **FAST, **kwargs)


# --- bad input from callers: a clear InvalidRequestError, zero requests -----------------------

BAD_IDS = [
    "a/b",
    "../admin",
    "..",
    "run?x=1",
    "run#frag",
    "run id",
    " run",
    "run\n",
    "run%2Fx",
    "run\\x",
    "",
    "x" * 300,
    "ｒｕｎ",  # full-width lookalikes  # noqa: RUF001
    "run\x00",
]
WRONG_TYPES = [None, 123, 1.5, b"run", ["run"], {"id": "run"}, object()]


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", BAD_IDS + WRONG_TYPES)
async def test_run_refuses_a_bad_action_id_before_any_request(fake, bad):
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidRequestError) as info:
            await client.run(bad, authentication=None, inputs={})
    assert info.value.field == "action"
    assert fake.stats.requests == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", BAD_IDS + WRONG_TYPES)
async def test_get_run_refuses_a_bad_run_id_before_any_request(fake, bad):
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidRequestError) as info:
            await client.get_run(bad)
    assert info.value.field == "run_id"
    assert fake.stats.requests == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "bad",
    [
        *BAD_IDS,
        *WRONG_TYPES,
        "za1.!!!",
        "za1." + base64.urlsafe_b64encode(b'{"v":1,"k":"action_run","id":"../x"}').decode(),
        "za1." + base64.urlsafe_b64encode(b'{"v":2,"k":"action_run","id":"x"}').decode(),
        "za1." + base64.urlsafe_b64encode(b'{"v":1,"k":"other","id":"x"}').decode(),
        "za1." + base64.urlsafe_b64encode(b"[1,2]").decode(),
    ],
)
async def test_resume_refuses_bad_ids_and_tokens_before_any_request(fake, bad):
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidRequestError):
            client.resume(bad)
        assert client.in_flight == 0
    assert fake.stats.requests == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"authentication": 5}, "authentication"),
        ({"authentication": ["a"]}, "authentication"),
        ({"authentication": ""}, "authentication"),
        ({"inputs": ["a", "b"]}, "inputs"),
        ({"inputs": "email=a"}, "inputs"),
        ({"inputs": {1: "a"}}, "inputs"),
        ({"inputs": {"when": datetime.datetime(2024, 1, 1)}}, "inputs"),
        ({"inputs": {"n": float("nan")}}, "inputs"),
        ({"inputs": {"blob": "x" * (6 * 1024 * 1024 + 1)}}, "inputs"),
        ({"callback_url": "http://example.com/cb"}, "callback_url"),
        ({"callback_url": "ftp://example.com/cb"}, "callback_url"),
        ({"callback_url": "https://127.0.0.1/cb"}, "callback_url"),
        ({"callback_url": "https://10.1.2.3/cb"}, "callback_url"),
        ({"callback_url": "https://[::1]/cb"}, "callback_url"),
        ({"callback_url": "https://example.com/" + "a" * 2048}, "callback_url"),
        ({"callback_url": "not a url"}, "callback_url"),
        ({"callback_url": 42}, "callback_url"),
    ],
)
async def test_run_refuses_bad_inputs_and_callbacks_before_any_request(fake, kwargs, field):
    options = {"authentication": None, "inputs": {}, **kwargs}
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidRequestError) as info:
            await client.run("core:x", **options)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert fake.stats.requests == 0


@pytest.mark.asyncio
async def test_deeply_nested_inputs_are_refused_not_a_recursion_crash(fake):
    nested: object = "leaf"
    for _ in range(100_000):
        nested = [nested]
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidRequestError):
            await client.run("core:x", authentication=None, inputs={"n": nested})
    assert fake.stats.requests == 0


# --- secrets: never in reprs, logs, errors or continuation tokens -----------------------------


def _texts_of(exc: BaseException) -> list[str]:
    texts = [str(exc), repr(exc)]
    texts.append(repr(pickle.loads(pickle.dumps(exc))))
    return texts


@pytest.mark.asyncio
async def test_the_token_never_shows_in_reprs_logs_errors_or_tokens(caplog):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with FakeZapier(seed=9) as fake:
        fake.inject("502", endpoint="create", after_create=True)  # OutcomeUnknownError
        fake.inject("500", endpoint="poll", count=2)  # poll failures: logged at WARNING
        async with client_for(fake, SECRET) as client:
            seen.append(repr(client))
            with pytest.raises(errors.ZapierError) as first:
                await client.run("core:x", authentication="conn_1", inputs={"a": 1})
            seen += _texts_of(first.value)
            handle = await client.run("core:x", authentication="conn_1", inputs={"a": 2})
            seen += [repr(handle), handle.continuation_token()]
            raw = handle.continuation_token().removeprefix("za1.")
            seen.append(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode())
            run = await handle
            seen += [repr(run), str(run)]
            failed = await client.run(
                "core:x", authentication=None, inputs={"__fake__": {"status": "error"}}
            )
            with pytest.raises(errors.RunFailedError) as info:
                await failed
            seen += _texts_of(info.value)
            with pytest.raises(errors.NotFoundError) as missing:
                await client.get_run("no-such-run")
            seen += _texts_of(missing.value)
        seen.append(repr(client))
        fake.tokens = frozenset({"only-this"})
        async with client_for(fake, SECRET) as client:
            with pytest.raises(errors.AuthenticationError) as refused:
                await client.run("core:x", authentication=None, inputs={})
            seen += _texts_of(refused.value)
    seen.append(caplog.text)
    seen += [repr(r.args) for r in caplog.records]
    assert any("failed" in r.getMessage() for r in caplog.records), "no failure was logged"
    leaks = [text for text in seen if SECRET in text or SECRET.lower() in text.lower()]
    assert not leaks, leaks


def test_auth_providers_never_show_their_secrets():
    texts = [repr(za.BearerToken(SECRET)), str(za.BearerToken(SECRET))]
    credentials = getattr(za, "ClientCredentials", None)
    if credentials is not None:
        provider = credentials(client_id="cid", client_secret=SECRET)
        texts += [repr(provider), str(provider)]
    assert not [t for t in texts if SECRET in t]


# --- TLS: verification is on, and there is no switch to turn it off ---------------------------


def _self_signed(tmp_path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest_asyncio.fixture
async def self_signed_server(tmp_path) -> AsyncIterator[tuple[str, list[str]]]:
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"data": {"type": "run", "id": "r1"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_self_signed(tmp_path))
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_a_self_signed_certificate_is_refused_with_a_tls_error(self_signed_server):
    url, hits = self_signed_server
    async with za.ZapierClient(auth=za.BearerToken(SECRET), base_url=url, **FAST) as client:
        with pytest.raises(errors.TransportError) as info:
            await client.run("core:x", authentication=None, inputs={})
        with pytest.raises(errors.TransportError) as read:
            await client.get_run("r1")
    for exc in (info.value, read.value):
        assert exc.kind == "tls", exc
        assert exc.sent is False
        assert SECRET not in repr(exc)
    assert hits == []  # nothing reached the server: no token crossed an unverified channel


def test_there_is_no_switch_to_turn_tls_verification_off():
    knobs = {"verify", "verify_ssl", "ssl", "ssl_context", "insecure", "tls", "verify_tls"}
    for target in (za.ZapierClient.__init__, za.AiohttpTransport.__init__):
        assert not knobs & set(inspect.signature(target).parameters), target


# --- http:// only on loopback ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://api.zapier.com",
        "http://10.0.0.1:8080",
        "http://192.168.1.1",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://[fe80::1]",
        "http://0.0.0.0:4010",
    ],
)
def test_http_is_refused_off_loopback(url):
    with pytest.raises(errors.InvalidRequestError) as info:
        za.ZapierClient(auth=za.BearerToken("t"), base_url=url)
    assert info.value.field == "base_url"
    assert "https" in str(info.value)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4010", "http://localhost:1", "http://[::1]:8080", "http://127.9.9.9"]
)
def test_http_is_allowed_on_loopback(url):
    za.ZapierClient(auth=za.BearerToken("t"), base_url=url)
