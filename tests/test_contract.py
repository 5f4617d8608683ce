"""Contract: the real client's requests validate against Zapier's published Partner OpenAPI.

Stoplight Prism (`prism mock`) serves `../shared/spec/zapier-partner-api.yml` on loopback and
validates every request it receives against the spec: an invalid one is answered 400/422 and
carries an `sl-violations` header listing what is wrong. The real `ZapierClient` talks to it
through a session whose trace hook records every response; a test fails on any 4xx or any
`sl-violations` entry. The flat body some guides show is sent raw and must be rejected: that
proves the check detects drift.

Prism is found at `.ci/node/node_modules/.bin/prism` (where `.ci/run` installs it) or on
PATH, or installed with npm into `.ci/node/`; the tests skip only when node or npm is absent.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp  # noqa: TID251 (a recording session and raw requests are what is tested)
import attrs
import pytest
import pytest_asyncio

import zapier_async as za
from zapier_async import _protocol as proto
from zapier_async import errors

REPO = Path(__file__).resolve().parents[1]
# Relative to the repository: CI runs in a fresh clone with shared/ beside it.
SPEC = Path("..") / "shared" / "spec" / "zapier-partner-api.yml"
PRISM_PACKAGE = "@stoplight/prism-cli@5.14.2"
NODE_PREFIX = REPO / ".ci" / "node"
START_DEADLINE = 90.0

APP_ID = "868f9d3c-2ea0-4f19-a32d-a61b276ab8de"  # any uuid: the spec types `app` as a uuid
ACTION_ID = "core:Vn7xbE60"
INPUT_ID = "email"
AUTH_ID = "example_QVaAreV1"


# --- finding and running Prism ------------------------------------------------------------------


def _prism_binary() -> str:
    local = NODE_PREFIX / "node_modules" / ".bin" / "prism"
    if local.exists():
        return str(local)
    on_path = shutil.which("prism")
    if on_path is not None:
        return on_path
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("Prism contract tests need node and npm (not found on PATH)")
    result = subprocess.run(
        [npm, "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund", PRISM_PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or not local.exists():
        pytest.fail(f"npm install {PRISM_PACKAGE} failed:\n{result.stdout}\n{result.stderr}")
    return str(local)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def prism_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prism mock` of the Partner OpenAPI on a free loopback port; stopped afterwards."""
    if not (REPO / SPEC).is_file():
        pytest.fail(f"the Partner OpenAPI is missing: expected {SPEC} relative to {REPO}")
    binary = _prism_binary()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("prism") / "prism.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            # --errors: a violation is an error answer, never a silently served example.
            [binary, "mock", str(SPEC), "-h", "127.0.0.1", "-p", str(port), "--errors"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        )
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not _answers(port):  # poll the port under a bounded deadline
            if process.poll() is not None:
                pytest.fail(f"prism exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prism did not listen within {START_DEADLINE}s:\n{log_path.read_text()}"
                )
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- recording what Prism said ------------------------------------------------------------------


@attrs.frozen
class Exchange:
    method: str
    url: str
    status: int
    violations: list[dict[str, Any]]


@attrs.define
class Recorder:
    """Every response of a session, with Prism's `sl-violations`."""

    exchanges: list[Exchange] = attrs.Factory(list)

    def trace_config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_request_end(
            session: aiohttp.ClientSession,
            ctx: Any,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            raw = params.response.headers.get("sl-violations")
            violations = json.loads(raw) if raw else []
            self.exchanges.append(
                Exchange(params.method, str(params.url), params.response.status, violations)
            )

        config.on_request_end.append(on_request_end)
        return config

    def assert_conforms(self) -> None:
        """Fail on any 4xx or any request violation Prism reported."""
        assert self.exchanges, "no request reached Prism"
        bad = [
            e
            for e in self.exchanges
            if 400 <= e.status < 500
            or any(v.get("location", [""])[0] == "request" for v in e.violations)
            or any(v.get("severity") == "Error" for v in e.violations)
        ]
        assert not bad, "requests do not conform to the Partner OpenAPI:\n" + "\n".join(
            f"  {e.method} {e.url} -> {e.status} {e.violations}" for e in bad
        )


@pytest_asyncio.fixture
async def recorded(prism_url: str) -> AsyncIterator[tuple[za.ZapierClient, Recorder]]:
    recorder = Recorder()
    session = aiohttp.ClientSession(trace_configs=[recorder.trace_config()])
    async with (
        session,
        za.ZapierClient(
            auth=za.BearerToken("x"),  # the spec's security is OAuth: a bearer token
            base_url=prism_url,
            session=session,
            poll_policy=za.PollPolicy(initial=0.01, cap=0.05),
            max_rate_limit_wait=None,
        ) as client,
    ):
        yield client, recorder


# --- the run endpoints --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_create_and_poll_validate_against_the_spec(recorded):
    client, recorder = recorded
    handle = await client.run(
        ACTION_ID, authentication=AUTH_ID, inputs={"email": "me@example.com", "n": [1, {"a": None}]}
    )
    # Prism answers the spec's example: a uuid id, and a retrieve with status success.
    assert handle.id == "123e4567-e89b-12d3-a456-426614174000"
    run = await handle.result(timeout=30)
    assert run.status is za.RunStatus.SUCCESS
    assert run.results == [{"id": 123}]
    again = await client.get_run(handle.id)
    assert again.status is za.RunStatus.SUCCESS
    recorder.assert_conforms()
    methods = [(e.method, e.url.split("?")[0].rsplit("/v2/", 1)[1]) for e in recorder.exchanges]
    assert ("POST", "action-runs") in methods
    assert ("GET", f"action-runs/{handle.id}") in methods


@pytest.mark.asyncio
async def test_create_without_authentication_and_with_a_callback_validates(recorded):
    client, recorder = recorded
    handle = await client.run(
        ACTION_ID, authentication=None, inputs={}, callback_url="https://example.com/zapier/cb"
    )
    # A run with a callback is polled only as a safety net (first poll after ~45 s), so read
    # it once explicitly instead of awaiting it.
    await client.get_run(handle.id)
    handle.cancel()
    recorder.assert_conforms()


@pytest.mark.asyncio
async def test_the_guides_flat_body_is_rejected_by_the_spec(prism_url):
    """Drift detection: the flat form (`input`, no `data`) must fail validation."""
    flat = {"action": ACTION_ID, "authentication": AUTH_ID, "input": {"email": "me@example.com"}}
    recorder = Recorder()
    async with (
        aiohttp.ClientSession(trace_configs=[recorder.trace_config()]) as session,
        session.post(
            f"{prism_url}/v2/action-runs",
            json=flat,
            headers={"Authorization": "Bearer x"},
        ) as resp,
    ):
        assert resp.status in (400, 422), await resp.text()
        violations = json.loads(resp.headers["sl-violations"])
    assert any("data" in v["message"] for v in violations), violations
    # ... and the check the client tests rely on catches it.
    with pytest.raises(AssertionError, match="do not conform"):
        recorder.assert_conforms()


@pytest.mark.asyncio
async def test_a_request_without_the_bearer_token_is_rejected(prism_url):
    """Prism enforces the spec's security too, so a missing Authorization would show."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prism_url}/v2/action-runs/123e4567-e89b-12d3-a456-426614174000") as resp,
    ):
        assert resp.status == 401
        assert "sl-violations" in resp.headers


# --- discovery and connections: light up when the methods land ------------------------------

# Values for parameters by name; a method's own signature decides which are passed.
_ARGUMENTS: dict[str, Any] = {
    "app": APP_ID,
    "app_id": APP_ID,
    "action_type": "WRITE",
    "action": ACTION_ID,
    "action_id": ACTION_ID,
    "input_id": INPUT_ID,
    "input": INPUT_ID,
    "field": INPUT_ID,
    "authentication": AUTH_ID,
    "authentication_id": AUTH_ID,
    "inputs": {"email": "me@example.com"},
    "limit": 10,
    "offset": 0,
    "page": None,
}


def _method(client: za.ZapierClient, name: str) -> Any:
    method = getattr(client, name, None)
    if method is None:
        pytest.skip(f"ZapierClient.{name} does not exist yet (discovery is in progress)")
    return method


def _arguments(method: Any) -> tuple[list[Any], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for param in inspect.signature(method).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in _ARGUMENTS:
            if param.default is param.empty:
                pytest.fail(f"{method.__name__}: no contract value for parameter {param.name!r}")
            continue
        if param.default is not param.empty and param.name in ("page", "limit", "offset"):
            continue  # leave paging to the method's defaults
        if param.kind is param.POSITIONAL_ONLY:
            args.append(_ARGUMENTS[param.name])
        else:
            kwargs[param.name] = _ARGUMENTS[param.name]
    return args, kwargs


async def _call(method: Any) -> Any:
    args, kwargs = _arguments(method)
    result = method(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    if hasattr(result, "__aiter__"):
        items = []
        async for item in result:
            items.append(item)
            if len(items) >= 25:  # Prism serves the same page forever; a few items suffice
                break
        with contextlib.suppress(AttributeError):
            await result.aclose()
        return items
    return result


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("list_actions", "/v2/actions"),
        ("action_inputs", "/v2/actions/"),
        ("action_choices", "/choices"),
        ("action_outputs", "/outputs"),
        ("list_connections", "/v2/authentications"),
    ],
)
async def test_discovery_calls_validate_against_the_spec(recorded, name, path):
    client, recorder = recorded
    method = _method(client, name)
    result = await _call(method)
    assert result is not None
    recorder.assert_conforms()
    assert any(path in e.url for e in recorder.exchanges), [e.url for e in recorder.exchanges]


@pytest.mark.asyncio
async def test_the_recorder_sees_every_request(recorded):
    """The hook behind every check above is live: a bad request through it is caught."""
    client, recorder = recorded
    with pytest.raises(errors.BadRequestError):
        # Prism validates `app` as a uuid; a request through the client's session that breaks
        # the spec must be reported, not swallowed.
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
    with pytest.raises(AssertionError, match="do not conform"):
        recorder.assert_conforms()
