"""Fuzzing every parser: whatever Zapier (or a proxy in front of it) sends, only our typed
errors escape.

tests/test_protocol.py already fuzzes `parse_run`, `parse_created_run` and
`error_for_response` with loosely shaped bodies. This file covers what is missing: bodies
shaped like the real ones with every field of the wrong type, the rate-limit header parsers
(`_ratelimit`), continuation tokens, the discovery parsers, and the whole client pipeline
(limiter, retries, parsing) behind a transport that answers anything at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import pickle
from collections.abc import Mapping

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

import zapier_async as za
from zapier_async import _protocol as proto
from zapier_async import _ratelimit as rl
from zapier_async import errors

NOW = 1_700_000_000.0
GET = proto.get_action_run("r")
CREATE = proto.create_action_run(action="core:x", authentication=None, inputs={})

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
anything = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def _maybe(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return strategy | anything


run_error = st.fixed_dictionaries(
    {},
    optional={
        "code": _maybe(
            st.sampled_from(["user", "authentication", "throttled", "system_throttled", "new"])
        ),
        "title": _maybe(st.text(max_size=10)),
        "detail": _maybe(st.text(max_size=10)),
        "delay": _maybe(st.floats(allow_nan=True, allow_infinity=True) | st.integers()),
        "meta": anything,
    },
)
run_data = st.fixed_dictionaries(
    {},
    optional={
        "type": _maybe(st.just("run")),
        "id": anything,
        "status": _maybe(st.sampled_from(["waiting", "queued", "running", "success", "error"])),
        "results": _maybe(st.lists(st.dictionaries(st.text(max_size=5), anything, max_size=3))),
        "errors": _maybe(st.lists(_maybe(run_error), max_size=3)),
        "next_page": anything,
    },
)
run_bodies = st.one_of(
    run_data.map(lambda d: {"data": d}),
    run_data,
    run_data.map(lambda d: [{"data": d}]),
    run_data.map(lambda d: {"data": [d]}),
)
error_entry = st.fixed_dictionaries(
    {},
    optional={
        "status": _maybe(st.integers(100, 599) | st.integers(100, 599).map(str)),
        "code": anything,
        "title": anything,
        "detail": anything,
        "message": anything,
        "source": anything,
        "meta": anything,
    },
)
error_bodies = st.one_of(
    st.lists(_maybe(error_entry), max_size=3).map(lambda e: {"errors": e}),
    error_entry,
    anything,
)


def _encode(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


# --- run and error bodies shaped like the real ones --------------------------------------------


@given(status=st.sampled_from([200, 202]), body=run_bodies)
def test_run_bodies_with_wrong_field_types_only_raise_decode_error(status, body):
    try:
        run = proto.parse_run(proto.Response(status=status, body=_encode(body)), GET, run_id="r")
    except errors.DecodeError as exc:
        refusal = str(exc)
    else:
        refusal = None
    if refusal is not None:
        assert "GET /v2/action-runs/r" in refusal
        return
    assert run.id == "r"
    assert isinstance(run.status, za.RunStatus)
    assert all(isinstance(r, dict) for r in run.results)
    for detail in run.errors:
        assert detail.delay is None or isinstance(detail.delay, float)
    if status == 202:
        assert not run.status.is_terminal
    str(run)


@given(body=run_bodies)
def test_create_bodies_with_wrong_field_types_only_raise_decode_error(body):
    try:
        run_id = proto.parse_created_run(proto.Response(status=200, body=_encode(body)), CREATE)
    except errors.DecodeError:
        return
    assert isinstance(run_id, str)
    assert run_id


@given(status=st.integers(min_value=300, max_value=599), body=error_bodies)
def test_error_bodies_always_map_to_a_typed_error_that_prints_and_pickles(status, body):
    err = proto.error_for_response(proto.Response(status=status, body=_encode(body)), GET)
    assert isinstance(err, errors.APIError)
    assert err.status == status
    for value in (err.code, err.title, err.detail):
        assert value is None or isinstance(value, str)
    assert len(err.body) <= errors.BODY_EXCERPT_LIMIT + 1
    text = str(err)
    assert text.startswith(f"HTTP {status}")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err)
    assert str(again) == text


# --- rate-limit headers -------------------------------------------------------------------------

header_values = st.one_of(
    st.text(max_size=40),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2099 07:28:00 GMT",
            "2024-01-01T00:00:00Z",
            "2099-01-01T00:00:00+05:00",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "1e400",
            "-0",
            " 60 ",
            "60, 30",
            "NaN",
            "inf",
            "１２",  # full-width digits  # noqa: RUF001
        ]
    ),
)
header_names = st.sampled_from(
    [
        "X-RateLimit-Limit",
        "x-ratelimit-remaining",
        "X-RATELIMIT-RESET",
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "Other",
    ]
)


def _finite_or_none(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value >= 0)


@given(headers=st.dictionaries(header_names, header_values, max_size=8), now=st.floats(0, 4e9))
def test_rate_limit_headers_never_raise_and_stay_sane(headers: Mapping[str, str], now: float):
    state = rl.RateLimitState.from_headers(headers, now=now)
    assert state.limit is None or state.limit > 0
    assert state.remaining is None or state.remaining >= 0
    assert _finite_or_none(state.reset_after)
    assert _finite_or_none(state.retry_after)
    assert math.isfinite(state.reset_precision)
    assert state.reset_precision >= 0
    for status in (200, 429, 503):
        assert _finite_or_none(rl.pause_after(status, state))
    if state.remaining is not None and state.reset_after is not None:
        gap = rl.pace_interval(state.remaining, state.reset_after)
        assert math.isfinite(gap)
        assert gap >= 0


@given(value=st.none() | header_values, now=st.floats(0, 4e9))
def test_retry_after_and_reset_parsers_never_raise(value, now):
    assert _finite_or_none(rl.parse_retry_after(value, now=now))
    assert _finite_or_none(rl.parse_reset(value, now=now))
    precision = rl.reset_precision(value)
    assert math.isfinite(precision)
    assert precision >= 0


# --- continuation tokens ------------------------------------------------------------------------

token_payloads = st.one_of(
    anything,
    st.fixed_dictionaries(
        {"v": _maybe(st.just(1)), "k": _maybe(st.just("action_run")), "id": anything}
    ),
)


@given(payload=token_payloads)
def test_continuation_tokens_with_any_payload_only_raise_invalid_request(payload):
    raw = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    _decode_or_refuse("za1." + raw)


@given(text=st.text(max_size=80) | st.binary(max_size=60).map(lambda b: "za1." + b.hex()))
def test_any_string_as_a_token_only_raises_invalid_request(text):
    _decode_or_refuse(text)
    _decode_or_refuse("za1." + text)


@given(run_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_:.\-]{0,80}", fullmatch=True))
def test_tokens_round_trip_for_every_valid_id(run_id):
    locator = proto.RunLocator(kind="action_run", run_id=run_id)
    token = proto.encode_continuation_token(locator)
    assert proto.decode_continuation_token(token) == locator


def _decode_or_refuse(value: str) -> None:
    try:
        locator = proto.decode_continuation_token(value)
    except errors.InvalidRequestError as exc:
        field: str | None = exc.field
    else:
        field = None
    if field is not None:
        assert field in ("token", "run_id")
        return
    # Whatever was accepted is a safe single path segment.
    assert proto.validate_id(locator.run_id, field="run_id") == locator.run_id
    assert "/" not in proto.poll_request(locator).path.removeprefix("/v2/action-runs/")


# --- discovery parsers (when they exist) --------------------------------------------------------

try:
    from zapier_async import _discovery as disco
except ImportError:  # discovery not merged yet
    disco = None

discovery_bodies = st.one_of(
    anything,
    st.fixed_dictionaries(
        {},
        optional={
            "links": _maybe(st.fixed_dictionaries({"next": anything, "prev": anything})),
            "meta": _maybe(st.fixed_dictionaries({}, optional={"count": anything})),
            "data": _maybe(st.lists(st.dictionaries(st.text(max_size=12), anything), max_size=3)),
        },
    ),
)


@given(status=st.sampled_from([200, 400, 404, 500]), body=discovery_bodies)
def test_discovery_parsers_only_raise_typed_errors(status, body):
    if disco is None:
        return
    response = proto.Response(status=status, body=_encode(body))
    request = proto.Request(method="GET", path="/v2/actions", endpoint="fuzz")
    for parse in (
        disco.parse_actions,
        disco.parse_input_fields,
        disco.parse_output_fields,
        disco.parse_choices,
        lambda r, q: disco.parse_connections(r, q, offset=0),
    ):
        with contextlib.suppress(errors.DecodeError, errors.APIError):
            parse(response, request)


# --- the whole client behind a transport that answers anything ---------------------------------

responses = st.builds(
    proto.Response,
    status=st.sampled_from([200, 201, 202, 204, 301, 400, 401, 404, 409, 429, 500, 502, 503]),
    headers=st.dictionaries(
        header_names.map(str.lower) | st.sampled_from(["content-type"]), header_values, max_size=4
    ),
    body=st.one_of(
        st.binary(max_size=80),
        run_bodies.map(_encode),
        error_bodies.map(_encode),
        st.just(b'{"data": {"type": "run", "id": "r-1"}}'),
        st.just(b'{"data": {"type": "run", "status": "success", "results": [], "errors": []}}'),
    ),
)


class ScriptedTransport:
    """Answers each request with the next scripted response (the last one repeats)."""

    def __init__(self, script: list[proto.Response]) -> None:
        self.script = script
        self.sent = 0

    async def send(self, request, *, base_url, headers, timeout):
        response = self.script[min(self.sent, len(self.script) - 1)]
        self.sent += 1
        return response

    async def aclose(self) -> None:
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(responses, min_size=1, max_size=4))
def test_the_client_pipeline_only_raises_typed_errors(script):
    asyncio.run(_drive_client(script))


async def _drive_client(script: list[proto.Response]) -> None:
    transport = ScriptedTransport(script)
    async with za.ZapierClient(
        auth=za.BearerToken("t"),
        transport=transport,
        base_url="https://api.zapier.com",
        retry_policy=za.RetryPolicy(base=0.0001, cap=0.0002, max_attempts=3),
        max_rate_limit_wait=0.0,  # never sleep on a fuzzed Retry-After: raise instead
    ) as client:
        try:
            handle = await client.run("core:x", authentication=None, inputs={})
        except errors.ZapierError:
            pass
        else:
            assert handle.id
        try:
            run = await client.get_run("r-1")
        except errors.ZapierError:
            pass
        else:
            assert run.id == "r-1"
    assert transport.sent <= 2 * 3 + 2  # bounded retries, a re-auth at most
