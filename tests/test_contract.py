"""Contract: what the real client sends, and what the emulator answers, match Zapier's spec.

The spec is Zapier's published Partner OpenAPI, vendored at
`tests/spec/zapier-partner-api.yml` (`tests/spec/README.md` says where and when it was
taken). It is checked in-process with `openapi-core`, which the `test` extra installs, so
these tests run wherever the README's test command runs and are never skipped for want of a
tool. They replace a Prism mock server from npm, which was skipped wherever node was missing:
one validator that always runs beats two where one is usually skipped.

How: `ContractProxy` is a reverse proxy on loopback between a real `ZapierClient` and a
`FakeZapier`. Every request it receives is validated against the spec (path, method,
parameters, body, and the bearer token of the spec's OAuth security), then forwarded to the
emulator unchanged; the emulator's answer is validated against the spec's response for that
operation and status, then handed back unchanged. A test asserts that no exchange broke the
contract. The negative tests send what the spec forbids (the flat `input` body some guides
show, no bearer token, a non-uuid app id, a path it does not have, a response without `data`)
and assert that each is reported, so a validator that passed everything would fail here.

The published spec has two defects that contradict its own descriptions and Zapier's real
answers; `ERRATA` corrects them when the spec is loaded (the vendored file stays verbatim),
and a test proves that each correction is still needed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp  # noqa: TID251 (the proxy and the raw requests are aiohttp on purpose)
import attrs
import pytest
import pytest_asyncio
import yaml
from aiohttp import web  # noqa: TID251
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.security.exceptions import SecurityProviderError
from openapi_core.security.factories import SecurityProviderFactory
from openapi_core.security.providers import BaseProvider
from werkzeug.datastructures import Headers, ImmutableMultiDict

import zapier_async as za
from zapier_async import _protocol as proto
from zapier_async import errors
from zapier_async.testing import FAKE_APP_ID, FakeZapier

SPEC = Path(__file__).resolve().parent / "spec" / "zapier-partner-api.yml"
SPEC_SERVER = "https://api.zapier.com"  # the spec's `servers[0]`: requests are matched there
ACTION_ID = "core:Vn7xbE60"
AUTH_ID = "example_QVaAreV1"
RUN_ID = "123e4567-e89b-12d3-a456-426614174000"
GOOD_CREATE = {"data": {"action": ACTION_ID, "authentication": AUTH_ID, "inputs": {"a": 1}}}
BEARER = {"Authorization": "Bearer contract-token", "Content-Type": "application/json"}


# --- the spec, with its errata ----------------------------------------------------------------


@attrs.frozen
class Erratum:
    """A correction of the published spec: wherever `pointer` leads (``*`` is any key),
    the spec holds `was`, and must hold `now`."""

    why: str
    pointer: tuple[str, ...]
    was: Any
    now: Any

    def apply(self, spec: dict[str, Any]) -> None:
        *parents, last = self.pointer
        nodes: list[Any] = [spec]
        for key in parents:
            nodes = [
                child
                for node in nodes
                if isinstance(node, dict)
                for child in (node.values() if key == "*" else [node.get(key)])
                if isinstance(child, dict)
            ]
        found = [node for node in nodes if last in node]
        assert found, f"erratum no longer applies, drop it: {self.why}"
        for node in found:
            assert node[last] == self.was, (
                f"the vendored spec changed where an erratum applies ({self.why}): "
                f"{node[last]!r} at {'/'.join(self.pointer)}; update or drop the erratum"
            )
            node[last] = json.loads(json.dumps(self.now))


ERRATA = (
    Erratum(
        why="Action.action_type reuses ActionTypeEnum (only 'action', the enum of `type`), "
        "while its own description lists READ, WRITE, SEARCH, ... and Zapier answers those",
        pointer=("components", "schemas", "Action", "properties", "action_type", "allOf"),
        was=[{"$ref": "#/components/schemas/ActionTypeEnum"}],
        now=[
            {
                "type": "string",
                "enum": [
                    "READ",
                    "READ_BULK",
                    "WRITE",
                    "SEARCH",
                    "FILTER",
                    "SEARCH_OR_WRITE",
                    "SEARCH_AND_WRITE",
                ],
            }
        ],
    ),
    Erratum(
        why="Fieldset.fields is typed as one field, while its own description says 'a list "
        "of either input fields or info fields' and Zapier answers a list",
        pointer=("components", "schemas", "Fieldset", "properties", "fields", "allOf"),
        was=[{"$ref": "#/components/schemas/FieldsetFieldsField"}],
        now=[{"type": "array", "items": {"$ref": "#/components/schemas/FieldsetFieldsField"}}],
    ),
    Erratum(
        why="Retry-After and X-RateLimit-* are typed as URIs, while their descriptions say "
        "seconds, counts and epoch seconds (`Retry-After: 60` is no URI)",
        pointer=("paths", "*", "*", "responses", "*", "headers", "*", "schema"),
        was={"type": "string", "format": "uri"},
        now={"type": "string"},
    ),
)


class _BearerProvider(BaseProvider):
    """The spec's `OAuth` scheme: the access token goes in `Authorization: Bearer <token>`.

    openapi-core does not check oauth2 schemes (it warns and lets the request pass).
    """

    def __call__(self, parameters: RequestParameters) -> Any:
        scheme, _, token = str(parameters.header.get("Authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise SecurityProviderError("no 'Authorization: Bearer <token>' header")
        return token


class _SecurityProviders(SecurityProviderFactory):
    PROVIDERS = {**SecurityProviderFactory.PROVIDERS, "oauth2": _BearerProvider}  # noqa: RUF012


@cache
def _spec_dict() -> dict[str, Any]:
    assert SPEC.is_file(), f"the vendored Partner OpenAPI is missing: {SPEC}"
    with SPEC.open(encoding="utf-8") as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


def _load(spec: dict[str, Any]) -> OpenAPI:
    return OpenAPI.from_dict(spec, config=Config(security_provider_factory=_SecurityProviders()))


def _corrected(spec: dict[str, Any]) -> dict[str, Any]:
    fixed: dict[str, Any] = json.loads(json.dumps(spec))  # a deep copy of plain JSON data
    for erratum in ERRATA:
        erratum.apply(fixed)
    return fixed


@cache
def partner_api() -> OpenAPI:
    """The vendored spec with `ERRATA` applied, parsed once per session (about a second)."""
    return _load(_corrected(_spec_dict()))


# --- requests and responses as openapi-core reads them ----------------------------------------


@attrs.frozen
class SpecRequest:
    """A request in the shape of openapi-core's `Request` protocol."""

    method: str
    path: str
    parameters: RequestParameters
    body: bytes | None
    content_type: str
    host_url: str = SPEC_SERVER

    @classmethod
    def build(
        cls,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> SpecRequest:
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        header = Headers(items)
        return cls(
            method=method.lower(),
            path=path,
            parameters=RequestParameters(query=ImmutableMultiDict(list(query)), header=header),
            body=body or None,
            content_type=str(header.get("Content-Type", "")).lower(),
        )


@attrs.frozen
class SpecResponse:
    """A response in the shape of openapi-core's `Response` protocol."""

    status_code: int
    headers: Headers
    data: bytes | None
    content_type: str

    @classmethod
    def build(
        cls, status: int, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> SpecResponse:
        header = Headers(list(headers))
        content_type = str(header.get("Content-Type", "")).lower()
        return cls(status, header, body or None, content_type)


def _describe(exc: BaseException) -> str:
    """An openapi-core error, down to the schema errors behind it (one line each)."""
    lines: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        schema_errors = list(getattr(current, "schema_errors", ()) or ())
        if schema_errors:
            for error in schema_errors:
                where = "/".join(str(p) for p in error.absolute_path)
                lines.append(f"{type(current).__name__} at /{where}: {error.message[:300]}")
            break
        lines.append(f"{type(current).__name__}: {str(current)[:300]}")
        current = current.__cause__
    return "; ".join(lines)


def request_errors(request: SpecRequest, api: OpenAPI | None = None) -> list[str]:
    """What is wrong with `request` according to the spec (empty when it conforms)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped check (openapi-core warns) is an error
        result = (api or partner_api()).unmarshal_request(request)
    return [_describe(e) for e in result.errors]


def response_errors(
    request: SpecRequest, response: SpecResponse, api: OpenAPI | None = None
) -> list[str]:
    """What is wrong with `response` to `request` according to the spec."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = (api or partner_api()).unmarshal_response(request, response)
    return [_describe(e) for e in result.errors]


# --- the checking proxy -----------------------------------------------------------------------


@attrs.frozen
class Exchange:
    method: str
    path_qs: str
    status: int
    request_errors: list[str]
    response_errors: list[str]

    @property
    def path(self) -> str:
        return self.path_qs.split("?", 1)[0]

    def describe(self) -> str:
        lines = [f"{self.method} {self.path_qs} -> {self.status}"]
        lines += [f"  request: {e}" for e in self.request_errors]
        lines += [f"  response: {e}" for e in self.response_errors]
        return "\n".join(lines)


_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade"}
)
_NOT_RETURNED = _HOP_BY_HOP | {"content-encoding", "date", "server"}


@attrs.define
class ContractProxy:
    """A loopback reverse proxy that checks every exchange with `upstream` against the spec."""

    upstream: str
    exchanges: list[Exchange] = attrs.Factory(list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw = await request.read() if request.body_exists else b""
        spec_request = SpecRequest.build(
            request.method,
            request.path,
            query=request.query.items(),
            headers=request.headers.items(),
            body=raw,
        )
        found_in_request = request_errors(spec_request)
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=[(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP],
            data=raw or None,
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            status = upstream.status
            returned = [
                (k, v) for k, v in upstream.headers.items() if k.lower() not in _NOT_RETURNED
            ]
        # The answer to a request the spec does not have cannot be checked; the request
        # errors already say what is wrong.
        found_in_response = (
            []
            if found_in_request
            else response_errors(spec_request, SpecResponse.build(status, returned, body))
        )
        self.exchanges.append(
            Exchange(request.method, request.path_qs, status, found_in_request, found_in_response)
        )
        response = web.Response(status=status, body=body)
        for key, value in returned:
            response.headers.add(key, value)
        return response

    def violations(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.request_errors or e.response_errors]

    def assert_conforms(self) -> None:
        """Fail on any exchange that broke the spec, in its request or its response."""
        assert self.exchanges, "no request reached the contract proxy"
        bad = self.violations()
        assert not bad, "exchanges do not conform to the Partner OpenAPI:\n" + "\n".join(
            e.describe() for e in bad
        )

    def saw(self, method: str, path_prefix: str) -> bool:
        return any(e.method == method and e.path.startswith(path_prefix) for e in self.exchanges)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {}


@pytest_asyncio.fixture
async def fake(fake_options: dict[str, Any]) -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=7, **fake_options) as emulator:
        emulator.actions.callback_loss_rate = 1.0  # no callback ever leaves the machine
        yield emulator


@pytest_asyncio.fixture
async def proxy(fake: FakeZapier) -> AsyncIterator[ContractProxy]:
    checked = ContractProxy(fake.url)
    await checked.start()
    try:
        yield checked
    finally:
        await checked.close()


@pytest_asyncio.fixture
async def client(proxy: ContractProxy) -> AsyncIterator[za.ZapierClient]:
    async with za.ZapierClient(
        auth=za.BearerToken("contract-token"),
        base_url=proxy.url,
        poll_policy=za.PollPolicy(initial=0.01, cap=0.05),
        max_rate_limit_wait=None,
    ) as zapier:
        yield zapier


async def _raw(
    proxy: ContractProxy, method: str, path: str, *, body: Any = None, headers: Any = None
) -> int:
    """Send one request through the proxy, not through the client; return its status."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            proxy.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers=BEARER if headers is None else headers,
        ) as response,
    ):
        await response.read()
        return response.status


# --- the run endpoints ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_create_and_poll_conform(client, proxy):
    handle = await client.run(
        ACTION_ID, authentication=AUTH_ID, inputs={"email": "me@example.com", "n": [1, {"a": None}]}
    )
    run = await handle.result(timeout=30)
    assert run.status is za.RunStatus.SUCCESS
    again = await client.get_run(handle.id)
    assert again.status is za.RunStatus.SUCCESS
    proxy.assert_conforms()
    assert proxy.saw("POST", "/v2/action-runs")
    assert proxy.saw("GET", f"/v2/action-runs/{handle.id}")


@pytest.mark.asyncio
async def test_create_without_authentication_and_with_a_callback_conforms(client, proxy):
    handle = await client.run(
        ACTION_ID, authentication=None, inputs={}, callback_url="https://example.com/zapier/cb"
    )
    # A run with a callback is polled only as a safety net (first poll after ~45 s): read it
    # once explicitly instead of awaiting it.
    await client.get_run(handle.id)
    handle.cancel()
    proxy.assert_conforms()
    assert proxy.saw("POST", "/v2/action-runs")


@pytest.mark.parametrize("fake_options", [{"pending_statuses": "waiting"}])
@pytest.mark.asyncio
async def test_waiting_and_failed_runs_conform(client, proxy):
    waiting = await client.run(
        ACTION_ID, authentication=AUTH_ID, inputs={"__fake__": {"duration": 3600}}
    )
    assert (await client.get_run(waiting.id)).status is za.RunStatus.WAITING
    waiting.cancel()
    error = {"code": "partner", "title": "Refused", "detail": "The app said no.", "meta": {}}
    failing = await client.run(
        ACTION_ID,
        authentication=AUTH_ID,
        inputs={"__fake__": {"status": "error", "duration": 0, "errors": [error]}},
    )
    with pytest.raises(za.RunFailedError) as failed:
        await failing.result(timeout=30)
    assert failed.value.run.errors
    proxy.assert_conforms()
    assert proxy.saw("GET", f"/v2/action-runs/{failing.id}")


@pytest.mark.parametrize("fake_options", [{"error_rate": 1.0}])
@pytest.mark.asyncio
async def test_the_emulators_default_run_error_conforms(client, proxy):
    handle = await client.run(ACTION_ID, authentication=AUTH_ID, inputs={})
    with pytest.raises(za.RunFailedError):
        await handle.result(timeout=30)
    proxy.assert_conforms()


@pytest.mark.parametrize("fake_options", [{"tokens": ["another-token"]}])
@pytest.mark.asyncio
async def test_the_emulators_401_conforms(client, proxy):
    with pytest.raises(errors.APIError) as refused:
        await client.get_run(RUN_ID)
    assert refused.value.status == 401
    proxy.assert_conforms()


@pytest.mark.asyncio
async def test_the_emulators_400_conforms(client, proxy):
    with pytest.raises(errors.BadRequestError):
        # `__fake__` must be an object: the emulator answers 400 (JSON:API errors).
        await client.run(ACTION_ID, authentication=AUTH_ID, inputs={"__fake__": "not an object"})
    proxy.assert_conforms()
    assert [e.status for e in proxy.exchanges] == [400]


@pytest.mark.parametrize("fake_options", [{"rate_limit": (1, 60.0)}])
@pytest.mark.asyncio
async def test_the_emulators_429_conforms(proxy):
    assert await _raw(proxy, "POST", "/v2/action-runs", body=GOOD_CREATE) == 200
    assert await _raw(proxy, "GET", f"/v2/action-runs/{RUN_ID}") == 429
    proxy.assert_conforms()


# --- discovery and connections ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_actions_list_conforms(client, proxy):
    actions = await client.list_actions(FAKE_APP_ID)
    assert {a.key for a in actions} >= {"send_message", "find_contact"}
    writes = await client.list_actions(FAKE_APP_ID, "WRITE")
    assert {a.action_type for a in writes} == {za.ActionType.WRITE}
    found = await client.find_action(FAKE_APP_ID, "send_message")
    assert found.key == "send_message"
    proxy.assert_conforms()
    assert proxy.saw("GET", "/v2/actions")


@pytest.mark.asyncio
async def test_inputs_choices_and_outputs_conform(client, proxy):
    action = await client.find_action(FAKE_APP_ID, "send_message")
    fields = await client.action_inputs(action.id, authentication="conn_ok", inputs={"a": 1})
    assert any(isinstance(f, za.Fieldset) for f in fields)  # a Fieldset: the second erratum
    first = await client.action_choices(action.id, "channel", authentication="conn_ok")
    assert first.next_page == 2
    second = await client.action_choices(
        action.id, "channel", authentication=None, inputs={"a": 1}, page=2
    )
    assert second.choices
    outputs = await client.action_outputs(action.id, authentication="conn_ok")
    assert outputs
    search = await client.find_action(FAKE_APP_ID, "find_contact", action_type="SEARCH")
    await client.action_outputs(search.id, authentication="conn_ok", fetch_live_samples=True)
    proxy.assert_conforms()
    for path in ("/inputs", "/choices", "/outputs"):
        assert any(e.path.endswith(path) for e in proxy.exchanges), path


@pytest.mark.asyncio
async def test_authentications_conform_page_by_page(client, proxy):
    connections = [c async for c in client.list_connections(FAKE_APP_ID, page_size=1)]
    assert len(connections) >= 2
    usable = await client.find_connection(FAKE_APP_ID)
    assert not usable.is_expired
    proxy.assert_conforms()
    offsets = {e.path_qs.rsplit("offset=", 1)[-1] for e in proxy.exchanges}
    assert {"0", "1"} <= offsets  # the paging parameters were sent, and checked


@pytest.mark.asyncio
async def test_apps_search_and_resolution_by_name_conform(proxy):
    """`/v2/apps`: the library's requests (search, category, ids, paging) and the emulator's
    answers conform, and the parsed answers resolve "Slack" and a slug to one app each."""
    from urllib.parse import urlencode

    from zapier_async import _discovery as disco

    async def send(request: proto.Request) -> proto.Response:
        # Built by the library, sent as the client would (the client gains list_apps later).
        url = proxy.url + request.path + ("?" + urlencode(request.query) if request.query else "")
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, url, headers=BEARER) as response,
        ):
            return proto.Response(status=response.status, body=await response.read())

    request = disco.find_app_request("slack")
    page = disco.parse_apps(await send(request), request)
    assert {a.title for a in page.apps} == {"Slack", "Slack Legacy"}
    slack = disco.pick_app(page.apps, "slack")
    assert (slack.id, slack.selected_api) == (FAKE_APP_ID, "SlackCLIAPI@1.21.1")
    request = disco.find_app_request("google-sheets")
    assert disco.pick_app(disco.parse_apps(await send(request), request).apps, "google-sheets")
    offset: int | None = 0
    seen: list[str] = []
    while offset is not None:
        request = disco.list_apps(limit=2, offset=offset)
        page = disco.parse_apps(await send(request), request, offset=offset)
        seen += [a.id for a in page.apps]
        offset = page.next_offset
    assert len(seen) == len(set(seen)) >= 5
    assert seen[0] == FAKE_APP_ID
    request = disco.list_apps(category="team-chat")
    assert len(disco.parse_apps(await send(request), request).apps) == 2
    request = disco.list_apps(ids=[FAKE_APP_ID])
    assert [a.id for a in disco.parse_apps(await send(request), request).apps] == [FAKE_APP_ID]
    proxy.assert_conforms()
    assert proxy.saw("GET", "/v2/apps")


# --- the validator bites ----------------------------------------------------------------------


def test_the_guides_flat_body_fails_validation():
    """Drift detection: the flat form (`input`, no `data`) must fail; the spec's form passes."""
    flat = {"action": ACTION_ID, "authentication": AUTH_ID, "input": {"email": "me@example.com"}}

    def check(body: Any) -> list[str]:
        return request_errors(
            SpecRequest.build(
                "POST", "/v2/action-runs", headers=BEARER, body=json.dumps(body).encode()
            )
        )

    assert check(GOOD_CREATE) == []
    found = check(flat)
    assert found
    assert any("'data' is a required property" in e for e in found), found


@pytest.mark.asyncio
async def test_the_proxy_reports_a_flat_body_sent_through_it(proxy):
    flat = {"action": ACTION_ID, "authentication": AUTH_ID, "input": {"email": "me@example.com"}}
    await _raw(proxy, "POST", "/v2/action-runs", body=flat)
    with pytest.raises(AssertionError, match="'data' is a required property"):
        proxy.assert_conforms()


def test_a_request_without_the_bearer_token_fails_validation():
    path = f"/v2/action-runs/{RUN_ID}"
    assert request_errors(SpecRequest.build("GET", path, headers=BEARER)) == []
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        found = request_errors(SpecRequest.build("GET", path, headers=headers))
        assert any("SecurityValidationError" in e for e in found), (headers, found)


def test_a_path_or_method_the_spec_does_not_have_fails_validation():
    assert request_errors(SpecRequest.build("GET", "/v2/action-run/x", headers=BEARER))
    assert request_errors(SpecRequest.build("DELETE", f"/v2/action-runs/{RUN_ID}", headers=BEARER))


def test_a_response_that_breaks_the_spec_fails_validation():
    request = SpecRequest.build(
        "POST", "/v2/action-runs", headers=BEARER, body=json.dumps(GOOD_CREATE).encode()
    )

    def check(status: int, body: Any) -> list[str]:
        payload = json.dumps(body).encode()
        response = SpecResponse.build(status, [("Content-Type", "application/json")], payload)
        return response_errors(request, response)

    assert check(200, {"data": {"type": "run", "id": RUN_ID}}) == []
    assert check(200, {"id": RUN_ID})  # no `data` envelope
    assert check(200, {"data": {"type": "zap", "id": RUN_ID}})  # `type` is "run"
    assert check(404, {"errors": []})  # a status the operation does not document


@pytest.mark.asyncio
async def test_a_bad_query_through_the_clients_session_is_reported(client, proxy):
    """The check sees what the client's own transport sends: a non-uuid `app` is reported."""
    await client._send(  # the one seam that sends an arbitrary Request value
        proto.Request(
            method="GET",
            path="/v2/authentications",
            endpoint="test",
            query=(("app", "not-a-uuid"),),
        ),
        priority=za.Priority.INTERACTIVE,
        max_wait=None,
    )
    with pytest.raises(AssertionError, match="uuid"):
        proxy.assert_conforms()


def test_each_erratum_is_still_needed():
    """The verbatim spec rejects what Zapier (and the emulator) answer; the corrected one not."""
    verbatim = _load(_spec_dict())
    action = {
        "id": "uag:1",
        "key": "send_message",
        "app": FAKE_APP_ID,
        "type": "action",
        "action_type": "WRITE",
        "is_instant": False,
        "title": "Send Message",
        "description": "Posts a message.",
    }
    field = {"type": "info_field", "id": "note", "description": "Public."}
    fieldset = {"type": "fieldset", "id": "set", "title": "Set", "fields": [field]}
    envelope = {"links": {"next": None, "prev": None}, "meta": {"count": 1, "limit": None}}
    fields_request = {"data": {"authentication": AUTH_ID, "inputs": {}}}
    limited = [("Retry-After", "60"), ("X-RateLimit-Limit", "60"), ("X-RateLimit-Reset", "9")]
    throttled = {"errors": [{"status": 429, "code": "throttled", "title": "Throttled"}]}
    cases = [  # (method, path, query, request body, status, response headers, response body)
        (
            "GET",
            "/v2/actions",
            [("app", FAKE_APP_ID)],
            None,
            200,
            [],
            [{**envelope, "data": [action]}],
        ),
        (
            "POST",
            "/v2/actions/uag:1/inputs",
            [],
            fields_request,
            200,
            [],
            {**envelope, "data": [fieldset]},
        ),
        ("GET", f"/v2/action-runs/{RUN_ID}", [], None, 429, limited, throttled),
    ]
    assert len(cases) == len(ERRATA)
    for method, path, query, body, status, headers, answer in cases:
        request = SpecRequest.build(
            method,
            path,
            query=query,
            headers=BEARER,
            body=None if body is None else json.dumps(body).encode(),
        )
        response = SpecResponse.build(
            status,
            [("Content-Type", "application/json"), *headers],
            json.dumps(answer).encode(),
        )
        assert request_errors(request) == []
        assert response_errors(request, response) == [], path
        assert response_errors(request, response, verbatim), f"erratum no longer needed: {path}"
