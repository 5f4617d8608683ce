"""Tests of `zapier_async.testing.FakeZapier`, over real loopback HTTP with plain aiohttp.

Time is driven with `FakeClock` wherever the emulator measures it (run durations, rate-limit
windows); the only real waits are the HTTP round trips themselves and the deliberately slow
responses of the `slow` fault and `latency`.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import Any, NamedTuple

import aiohttp  # noqa: TID251 - the emulator is tested with a plain HTTP client
import attrs
import pytest
import pytest_asyncio

from zapier_async.testing import FakeClock, FakeStats, FakeZapier, RecordedRequest, RunRecord

WALL_START = 1_700_000_000.0  # FakeClock's default time() at monotonic() == 0
AUTH = {"Authorization": "Bearer test-token"}


class Answer(NamedTuple):
    status: int
    headers: Mapping[str, str]
    content_type: str
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json: Any = None,
    data: bytes | io.BytesIO | None = None,
    headers: Mapping[str, str] = AUTH,
    timeout: float | None = None,
) -> Answer:
    kwargs: dict[str, Any] = {"headers": dict(headers)}
    if json is not None:
        kwargs["json"] = json
    if data is not None:
        kwargs["data"] = data
    if timeout is not None:
        kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
    async with http.request(method, url, **kwargs) as response:
        return Answer(
            response.status, response.headers, response.content_type, await response.text()
        )


def spec_body(n: int = 0, **inputs: Any) -> dict[str, Any]:
    return {"data": {"action": "core:abc", "authentication": None, "inputs": {"n": n, **inputs}}}


async def create(http: aiohttp.ClientSession, fake: FakeZapier, body: Any = None) -> Answer:
    return await call(
        http, "POST", f"{fake.url}/v2/action-runs", json=spec_body() if body is None else body
    )


async def create_id(http: aiohttp.ClientSession, fake: FakeZapier, body: Any = None) -> str:
    answer = await create(http, fake, body)
    assert answer.status == 200, answer.text
    run_id = answer.json()["data"]["id"]
    assert isinstance(run_id, str)
    return run_id


async def poll(http: aiohttp.ClientSession, fake: FakeZapier, run_id: str) -> Answer:
    return await call(http, "GET", f"{fake.url}/v2/action-runs/{run_id}")


def assert_jsonapi_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status
    assert answer.content_type == "application/json"
    body = answer.json()
    assert set(body) == {"errors"}
    [error] = body["errors"]
    assert set(error) == {"status", "code", "title", "detail", "source", "meta"}
    assert error["status"] == status
    assert error["code"] == code
    assert isinstance(error["title"], str)
    assert isinstance(error["detail"], str)
    assert error["meta"] is None
    return dict(error)


# ------------------------------------------------------------------------------ the contract


@pytest.mark.asyncio
async def test_create_then_poll_until_terminal_on_a_fake_clock(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, durations=10.0) as fake:
        created = await create(http, fake, spec_body(7))
        assert created.status == 200
        assert created.headers["Content-Type"] == "application/json"
        data = created.json()["data"]
        assert set(data) == {"type", "id"}
        assert data["type"] == "run"
        assert uuid.UUID(data["id"]).version == 4

        pending = await poll(http, fake, data["id"])
        assert pending.status == 200
        assert pending.json() == {
            "data": {"type": "run", "status": "waiting", "results": [], "errors": []}
        }

        await clock.advance(9.999)
        assert (await poll(http, fake, data["id"])).json()["data"]["status"] == "waiting"
        await clock.advance(0.001)
        done = await poll(http, fake, data["id"])
        assert done.status == 200
        body = done.json()["data"]
        assert "id" not in body  # the spec's GET body has no id
        assert body["status"] == "success"
        assert body["errors"] == []
        assert body["results"] == [{"id": data["id"], "inputs": {"n": 7}}]

        record = fake.run(data["id"])
        assert isinstance(record, RunRecord)
        assert record.action == "core:abc"
        assert record.authentication is None
        assert record.inputs == {"n": 7}
        assert (record.created_at, record.duration, record.ends_at) == (0.0, 10.0, 10.0)
        assert record.status == record.final_status == "success"
        assert record.is_terminal
        assert record.polls == 3
        assert record.first_terminal_poll_at == 10.0


@pytest.mark.asyncio
async def test_create_accepts_a_trailing_slash_and_a_callback_url(http):
    async with FakeZapier(clock=FakeClock()) as fake:
        body = spec_body()
        body["data"]["callback_url"] = "https://example.com/hook"
        body["data"]["authentication"] = "auth_1"
        answer = await call(http, "POST", f"{fake.url}/v2/action-runs/", json=body)
        assert answer.status == 200
        record = fake.run(answer.json()["data"]["id"])
        assert record.callback_url == "https://example.com/hook"
        assert record.authentication == "auth_1"


BAD_BODIES: list[tuple[str, Any, str, str | None]] = [
    # (name, body, code, pointer)
    (
        "guides' flat form",
        {"action": "core:abc", "authentication": None, "input": {"n": 1}},
        "invalid",
        "/data",
    ),
    (
        "flat form inside data",
        {"data": {"action": "core:abc", "authentication": None, "input": {}}},
        "invalid",
        "/data/inputs",
    ),
    (
        "extra key in data",
        {"data": {"action": "a", "authentication": None, "inputs": {}, "input": {}}},
        "invalid",
        "/data/input",
    ),
    (
        "extra top-level key",
        {"data": {"action": "a", "authentication": None, "inputs": {}}, "meta": {}},
        "invalid",
        "/meta",
    ),
    ("missing authentication", {"data": {"action": "a", "inputs": {}}}, "invalid", None),
    (
        "authentication not a string",
        {"data": {"action": "a", "authentication": 5, "inputs": {}}},
        "invalid",
        "/data/authentication",
    ),
    (
        "empty action",
        {"data": {"action": "", "authentication": None, "inputs": {}}},
        "invalid",
        "/data/action",
    ),
    (
        "action not a string",
        {"data": {"action": ["a"], "authentication": None, "inputs": {}}},
        "invalid",
        "/data/action",
    ),
    (
        "inputs not an object",
        {"data": {"action": "a", "authentication": None, "inputs": [1]}},
        "invalid",
        "/data/inputs",
    ),
    (
        "callback_url not a string",
        {"data": {"action": "a", "authentication": None, "inputs": {}, "callback_url": 1}},
        "invalid",
        "/data/callback_url",
    ),
    ("data not an object", {"data": "x"}, "invalid", "/data"),
    ("a JSON array", [spec_body()], "invalid", ""),
]


@pytest.mark.parametrize(
    ("body", "code", "pointer"),
    [pytest.param(body, code, pointer, id=name) for name, body, code, pointer in BAD_BODIES],
)
@pytest.mark.asyncio
async def test_create_rejects_anything_but_the_spec_form(http, body, code, pointer):
    async with FakeZapier() as fake:
        error = assert_jsonapi_error(await create(http, fake, body), 400, code)
        if pointer is None:
            assert error["source"]["pointer"].startswith("/data/")
        else:
            assert error["source"] == {"pointer": pointer}
        assert fake.stats.runs_created == 0


@pytest.mark.parametrize("raw", [b"", b"{not json", b"\xff\xfe"], ids=["empty", "broken", "binary"])
@pytest.mark.asyncio
async def test_create_rejects_a_body_that_is_not_json(http, raw):
    async with FakeZapier() as fake:
        answer = await call(
            http,
            "POST",
            f"{fake.url}/v2/action-runs",
            data=raw,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        error = assert_jsonapi_error(answer, 400, "parse_error")
        assert error["source"] is None
        assert fake.stats.runs_created == 0


@pytest.mark.asyncio
async def test_create_refuses_a_body_that_is_not_declared_json(http):
    async with FakeZapier() as fake:
        answer = await call(
            http,
            "POST",
            f"{fake.url}/v2/action-runs",
            data=b'{"data": {}}',
            headers={**AUTH, "Content-Type": "text/plain"},
        )
        assert_jsonapi_error(answer, 415, "unsupported_media_type")


@pytest.mark.asyncio
async def test_create_refuses_a_body_over_zapiers_input_limit(http):
    async with FakeZapier() as fake:
        body = json.dumps(spec_body(big="x" * (6 * 1024 * 1024))).encode()
        answer = await call(
            http,
            "POST",
            f"{fake.url}/v2/action-runs",
            data=io.BytesIO(body),  # raw bytes this big make aiohttp's client warn
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert_jsonapi_error(answer, 413, "request_too_large")
        assert fake.stats.runs_created == 0


@pytest.mark.asyncio
async def test_unknown_run_is_a_jsonapi_404(http):
    async with FakeZapier() as fake:
        assert_jsonapi_error(await poll(http, fake, str(uuid.uuid4())), 404, "not_found")
        assert fake.stats.polls == 0


@pytest.mark.asyncio
async def test_unknown_path_and_wrong_method(http):
    async with FakeZapier() as fake:
        assert_jsonapi_error(await call(http, "GET", f"{fake.url}/v2/nothing"), 404, "not_found")
        wrong = await call(http, "DELETE", f"{fake.url}/v2/action-runs/abc")
        assert_jsonapi_error(wrong, 405, "method_not_allowed")
        assert "GET" in wrong.headers["Allow"]
        get_create = await call(http, "GET", f"{fake.url}/v2/action-runs")
        assert_jsonapi_error(get_create, 405, "method_not_allowed")
        assert "POST" in get_create.headers["Allow"]
        stats = fake.stats
        assert stats.requests_by_endpoint == {"create": 0, "poll": 0, "other": 3}
        assert stats.responses_by_status == {404: 1, 405: 2}


# ------------------------------------------------------------------------------ auth


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "not_authenticated"),
        ({"Authorization": "Bearer "}, "not_authenticated"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "not_authenticated"),
        ({"Authorization": "Bearer wrong"}, "authentication_failed"),
    ],
    ids=["missing", "empty", "basic", "unknown-token"],
)
@pytest.mark.asyncio
async def test_requests_need_an_accepted_bearer_token(http, headers, code):
    async with FakeZapier(tokens=["good"]) as fake:
        url = f"{fake.url}/v2/action-runs"
        answer = await call(http, "POST", url, json=spec_body(), headers=headers)
        assert_jsonapi_error(answer, 401, code)
        assert fake.stats.runs_created == 0
        ok = await call(
            http, "POST", url, json=spec_body(), headers={"Authorization": "Bearer good"}
        )
        assert ok.status == 200


@pytest.mark.asyncio
async def test_any_non_empty_token_without_tokens(http):
    async with FakeZapier() as fake:
        answer = await call(
            http,
            "POST",
            f"{fake.url}/v2/action-runs",
            json=spec_body(),
            headers={"Authorization": "bearer whatever"},
        )
        assert answer.status == 200


# ------------------------------------------------------------------------------ run outcomes


@pytest.mark.asyncio
async def test_fake_override_decides_a_run(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, durations=100.0) as fake:
        errors = [
            {"code": "throttled", "title": "Slow down", "detail": "d", "delay": 30, "meta": None}
        ]
        failing = await create_id(
            http,
            fake,
            spec_body(1, __fake__={"status": "error", "duration": 2.5, "errors": errors}),
        )
        custom = await create_id(
            http, fake, spec_body(2, __fake__={"duration": 0, "results": [{"x": 1}]})
        )
        default_error = await create_id(http, fake, spec_body(3, __fake__={"status": "error"}))

        assert (await poll(http, fake, custom)).json()["data"] == {
            "type": "run",
            "status": "success",
            "results": [{"x": 1}],
            "errors": [],
        }
        assert (await poll(http, fake, failing)).json()["data"]["status"] == "waiting"
        await clock.advance(2.5)
        assert (await poll(http, fake, failing)).json()["data"] == {
            "type": "run",
            "status": "error",
            "results": [],
            "errors": errors,
        }
        assert fake.run(default_error).ends_at == 100.0
        await clock.advance(97.5)
        [entry] = (await poll(http, fake, default_error)).json()["data"]["errors"]
        assert entry["code"] == "user"
        # The spec types `delay` as an integer (throttled errors only): left out, not null.
        assert set(entry) == {"code", "title", "detail", "meta"}


@pytest.mark.parametrize(
    ("override", "pointer"),
    [
        ("error", "/data/inputs/__fake__"),
        ({"status": "waiting"}, "/data/inputs/__fake__/status"),
        ({"duration": -1}, "/data/inputs/__fake__/duration"),
        ({"duration": True}, "/data/inputs/__fake__/duration"),
        ({"results": {"a": 1}}, "/data/inputs/__fake__/results"),
        ({"errors": "x"}, "/data/inputs/__fake__/errors"),
        ({"stauts": "error"}, "/data/inputs/__fake__/stauts"),
    ],
)
@pytest.mark.asyncio
async def test_a_bad_fake_override_is_a_400(http, override, pointer):
    async with FakeZapier() as fake:
        error = assert_jsonapi_error(
            await create(http, fake, spec_body(__fake__=override)), 400, "invalid"
        )
        assert error["source"] == {"pointer": pointer}


@pytest.mark.asyncio
async def test_error_rate_is_seeded_and_deterministic(http):
    async def outcomes(seed: int) -> list[tuple[str, str]]:
        async with FakeZapier(clock=FakeClock(), seed=seed, error_rate=0.3, durations=0) as fake:
            ids = [await create_id(http, fake, spec_body(i)) for i in range(200)]
            return [(run_id, fake.run(run_id).final_status) for run_id in ids]

    first, again, other = await outcomes(1), await outcomes(1), await outcomes(2)
    assert first == again
    assert first != other
    errors = sum(status == "error" for _, status in first)
    assert 30 <= errors <= 90  # 60 expected; the seed makes this exact, not flaky
    assert len({run_id for run_id, _ in first}) == 200


@pytest.mark.asyncio
async def test_error_rate_run_answers_one_user_error(http):
    async with FakeZapier(clock=FakeClock(), error_rate=1.0, durations=0) as fake:
        run_id = await create_id(http, fake)
        data = (await poll(http, fake, run_id)).json()["data"]
        assert data["status"] == "error"
        assert data["results"] == []
        assert [e["code"] for e in data["errors"]] == ["user"]


@pytest.mark.asyncio
async def test_durations_range_and_callable(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, seed=3, durations=(1.0, 2.0)) as fake:
        records = [fake.run(await create_id(http, fake, spec_body(i))) for i in range(20)]
        durations = [r.duration for r in records]
        assert all(1.0 <= d <= 2.0 for d in durations)
        assert len(set(durations)) > 1
    async with FakeZapier(clock=clock, durations=lambda rng: 4.0 + rng.random()) as fake:
        record = fake.run(await create_id(http, fake))
        assert 4.0 <= record.duration < 5.0


@pytest.mark.asyncio
async def test_pending_statuses_walk_over_the_run_lifetime(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, durations=10.0, pending_statuses=("queued", "running")) as f:
        run_id = await create_id(http, f)
        seen = []
        for step in (0.0, 4.0, 2.0, 3.0, 1.0):
            await clock.advance(step)
            seen.append((await poll(http, f, run_id)).json()["data"]["status"])
        assert seen == ["queued", "queued", "running", "running", "success"]


@pytest.mark.asyncio
async def test_pending_http_status_202(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, durations=1.0, pending_http_status=202) as fake:
        run_id = await create_id(http, fake)
        pending = await poll(http, fake, run_id)
        assert pending.status == 202
        assert pending.json()["data"] == {
            "type": "run",
            "status": "waiting",
            "results": [],
            "errors": [],
        }
        await clock.advance(1.0)
        done = await poll(http, fake, run_id)
        assert done.status == 200
        assert done.json()["data"]["status"] == "success"


@pytest.mark.asyncio
async def test_complete_ends_a_pending_run_now(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, durations=math.inf) as fake:
        ok, bad = await create_id(http, fake), await create_id(http, fake, spec_body(1))
        await clock.advance(1_000.0)
        assert (await poll(http, fake, ok)).json()["data"]["status"] == "waiting"

        record = fake.complete(ok)
        assert (record.status, record.ends_at, record.duration) == ("success", 1_000.0, 1_000.0)
        assert (await poll(http, fake, ok)).json()["data"]["results"] == [
            {"id": ok, "inputs": {"n": 0}}
        ]
        errors = [{"code": "partner", "title": "t", "detail": "d", "delay": None, "meta": {}}]
        fake.complete(bad, status="error", errors=errors)
        assert (await poll(http, fake, bad)).json()["data"]["errors"] == errors

        with pytest.raises(ValueError, match="already ended"):
            fake.complete(ok)
        with pytest.raises(KeyError):
            fake.complete("nope")
        with pytest.raises(KeyError):
            fake.run("nope")
        assert [r.id for r in fake.runs()] == [ok, bad]


# ------------------------------------------------------------------------------ rate limits


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("reset_format", "at_start", "after_4s"),
    [
        ("epoch", str(int(WALL_START) + 10), str(int(WALL_START) + 10)),
        ("delta", "10", "6"),
        ("iso", iso(WALL_START + 10), iso(WALL_START + 10)),
    ],
)
@pytest.mark.asyncio
async def test_rate_limit_headers_in_every_reset_format(http, reset_format, at_start, after_4s):
    clock = FakeClock()
    async with FakeZapier(clock=clock, rate_limit=(3, 10.0), reset_format=reset_format) as fake:
        first = await create(http, fake)
        assert first.headers["X-RateLimit-Limit"] == "3"
        assert first.headers["X-RateLimit-Remaining"] == "2"
        assert first.headers["X-RateLimit-Reset"] == at_start
        await clock.advance(4.0)
        # Every request counts, whatever the endpoint and whatever the answer.
        second = await call(http, "GET", f"{fake.url}/nowhere")
        assert second.status == 404
        assert second.headers["X-RateLimit-Remaining"] == "1"
        assert second.headers["X-RateLimit-Reset"] == after_4s
        assert "Retry-After" not in second.headers


@pytest.mark.parametrize(
    ("retry_after_format", "expected"),
    [("seconds", "6"), ("http-date", email.utils.formatdate(WALL_START + 10, usegmt=True))],
)
@pytest.mark.asyncio
async def test_over_the_limit_is_429_and_not_processed(http, retry_after_format, expected):
    clock = FakeClock()
    async with FakeZapier(
        clock=clock, rate_limit=(2, 10.0), retry_after_format=retry_after_format
    ) as fake:
        await create_id(http, fake)
        await clock.advance(4.0)
        await create_id(http, fake, spec_body(1))
        refused = await create(http, fake, spec_body(2))
        assert_jsonapi_error(refused, 429, "throttled")
        assert refused.headers["Retry-After"] == expected
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert fake.stats.runs_created == 2
        assert fake.stats.rate_limited == 1

        await clock.advance(6.0)  # the window [0, 10) is over: a new one starts at 10
        again = await create(http, fake, spec_body(2))
        assert again.status == 200
        assert again.headers["X-RateLimit-Remaining"] == "1"
        assert again.headers["X-RateLimit-Reset"] == str(int(WALL_START) + 20)


@pytest.mark.asyncio
async def test_cooldown_after_429_refuses_everything_until_it_ends(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, rate_limit=(2, 10.0), cooldown_after_429=60.0) as fake:
        run_id = await create_id(http, fake)
        assert (await poll(http, fake, run_id)).status == 200
        first_429 = await poll(http, fake, run_id)
        assert first_429.status == 429
        assert first_429.headers["Retry-After"] == "60"
        assert first_429.headers["X-RateLimit-Reset"] == str(int(WALL_START) + 60)

        await clock.advance(30.0)  # a fresh window, but still cooling down
        during = await poll(http, fake, run_id)
        assert during.status == 429
        assert during.headers["Retry-After"] == "30"  # not extended by refused requests

        await clock.advance(30.0)
        after = await poll(http, fake, run_id)
        assert after.status == 200
        assert fake.stats.rate_limited == 2
        assert fake.run(run_id).polls == 2


@pytest.mark.asyncio
async def test_no_rate_limit_headers_without_a_rate_limit(http):
    async with FakeZapier() as fake:
        answer = await create(http, fake)
        assert not [h for h in answer.headers if h.lower().startswith("x-ratelimit")]


# ------------------------------------------------------------------------------ faults


@pytest.mark.parametrize("kind", ["500", "502", "504"])
@pytest.mark.asyncio
async def test_gateway_error_faults_refuse_the_create(http, kind):
    async with FakeZapier() as fake:
        fake.inject(kind)
        answer = await create(http, fake)
        assert_jsonapi_error(answer, int(kind), answer.json()["errors"][0]["code"])
        assert "Retry-After" not in answer.headers
        assert fake.stats.runs_created == 0
        assert fake.stats.faults[kind] == 1
        assert (await create(http, fake)).status == 200  # count=1: only one request hit


@pytest.mark.asyncio
async def test_503_before_create_has_retry_after_and_after_create_has_none(http):
    async with FakeZapier(fault_retry_after=7) as fake:
        fake.inject("503", endpoint="create")
        before = await create(http, fake)
        assert_jsonapi_error(before, 503, "service_unavailable")
        assert before.headers["Retry-After"] == "7"
        assert fake.stats.runs_created == 0

        fake.inject("503", endpoint="create", after_create=True)
        after = await create(http, fake, spec_body(1))
        assert after.status == 503
        assert "Retry-After" not in after.headers
        [run] = fake.runs()
        assert run.inputs == {"n": 1}


@pytest.mark.asyncio
async def test_reset_drops_the_connection_before_or_after_the_create(http):
    async with FakeZapier() as fake:
        fake.inject("reset", endpoint="create")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await create(http, fake)
        assert fake.stats.runs_created == 0

        fake.inject("reset", endpoint="create", after_create=True)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await create(http, fake, spec_body(1))
        assert [run.inputs for run in fake.runs()] == [{"n": 1}]  # it exists; its id was lost

        assert (await create(http, fake, spec_body(2))).status == 200  # server still fine
        stats = fake.stats
        assert stats.faults["reset"] == 2
        assert stats.requests == 3
        assert stats.responses_by_status == {200: 1}


@pytest.mark.asyncio
async def test_reset_on_a_poll(http):
    async with FakeZapier(clock=FakeClock()) as fake:
        run_id = await create_id(http, fake)
        # aiohttp's client silently retries a GET once after a disconnect: two resets show.
        fake.inject("reset", endpoint="poll", count=2)
        with pytest.raises(aiohttp.ClientConnectionError):
            await poll(http, fake, run_id)
        assert fake.run(run_id).polls == 0
        assert (await poll(http, fake, run_id)).status == 200


@pytest.mark.asyncio
async def test_non_json_fault(http):
    async with FakeZapier() as fake:
        fake.inject("non_json", endpoint="create", after_create=True)
        answer = await create(http, fake)
        assert answer.status == 200
        assert answer.content_type == "text/html"
        assert answer.text.startswith("<html>")
        assert fake.stats.runs_created == 1
    async with FakeZapier(non_json_status=502) as fake:
        fake.inject("non_json")
        answer = await create(http, fake)
        assert (answer.status, answer.content_type) == (502, "text/html")
        assert fake.stats.runs_created == 0


@pytest.mark.asyncio
async def test_slow_fault_after_create_the_run_exists_though_the_client_gave_up(http):
    async with FakeZapier(slow_delay=30.0) as fake:
        fake.inject("slow", endpoint="create", after_create=True)
        with pytest.raises(asyncio.TimeoutError):
            await call(http, "POST", f"{fake.url}/v2/action-runs", json=spec_body(), timeout=0.2)
        assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_slow_fault_before_create_is_dropped_if_the_client_is_gone(http):
    fake = FakeZapier(slow_delay=30.0)
    async with fake:
        fake.inject("slow", endpoint="create")
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await call(http, "POST", f"{fake.url}/v2/action-runs", json=spec_body(), timeout=0.2)
    # close() released the held request at once instead of waiting out slow_delay ...
    assert time.monotonic() - started < 10.0
    # ... and did not process it.
    assert fake.stats.runs_created == 0
    assert fake.stats.faults["slow"] == 1


@pytest.mark.asyncio
async def test_release_delayed_lets_a_held_request_go_on_now(http):
    async with FakeZapier(slow_delay=3600.0) as fake:
        assert fake.release_delayed() == 0
        fake.inject("slow", endpoint="create")
        answer = asyncio.ensure_future(create(http, fake))
        for _ in range(100_000):  # until the server holds it (event-loop turns, not time)
            if fake.stats.faults["slow"] == 1:
                break
            await asyncio.sleep(0)
        assert fake.stats.runs_created == 0  # held before processing
        assert not answer.done()
        assert fake.release_delayed() == 1
        assert (await asyncio.wait_for(answer, 10)).status == 200
        assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_slow_fault_delays_a_real_answer(http):
    async with FakeZapier(slow_delay=0.1) as fake:
        fake.inject("slow")
        started = time.monotonic()
        answer = await create(http, fake)
        assert answer.status == 200
        assert time.monotonic() - started >= 0.1


@pytest.mark.asyncio
async def test_latency_delays_every_answer(http):
    async with FakeZapier(latency=(0.05, 0.06)) as fake:
        started = time.monotonic()
        assert (await create(http, fake)).status == 200
        assert time.monotonic() - started >= 0.05


@pytest.mark.asyncio
async def test_rate_limited_fault_answers_429_unprocessed_with_the_budget_headers(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, rate_limit=(10, 60.0), fault_retry_after=7) as fake:
        fake.inject("rate_limited", endpoint="create")
        refused = await create(http, fake)
        assert_jsonapi_error(refused, 429, "throttled")
        assert refused.headers["Retry-After"] == "7"
        limit, remaining, reset = limit_headers(refused)
        assert (limit, remaining) == ("10", "0")  # the headers agree with the refusal
        assert int(reset) == WALL_START + 60
        stats = fake.stats
        assert stats.runs_created == 0
        assert stats.faults["rate_limited"] == 1
        assert stats.rate_limited == 0  # the limiter's own refusals only
        assert stats.responses_by_status == {429: 1}
        accepted = await create(http, fake)  # count=1: the next create goes through
        assert accepted.status == 200
        assert limit_headers(accepted)[:2] == ("10", "8")  # the refused one counted
        assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_rate_limited_fault_without_a_rate_limit_or_a_retry_after(http):
    async with FakeZapier(clock=FakeClock()) as fake:
        fake.inject("rate_limited")  # any endpoint
        refused = await create(http, fake)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"  # fault_retry_after's default
        assert not any(h.startswith("X-RateLimit") for h in refused.headers)
    async with FakeZapier(clock=FakeClock(), fault_retry_after=None) as fake:
        fake.inject("rate_limited", endpoint="create")
        refused = await create(http, fake)
        assert refused.status == 429
        assert "Retry-After" not in refused.headers


@pytest.mark.asyncio
async def test_rate_limited_is_drawn_only_when_asked_for_and_never_after_a_create(http):
    assert "rate_limited" not in FakeZapier().faults  # the default set is unchanged
    assert "slow" not in FakeZapier().faults
    async with FakeZapier(
        clock=FakeClock(), fault_rate=1.0, faults={"rate_limited"}, fault_after_create=1.0
    ) as fake:
        statuses = [(await create(http, fake, spec_body(i))).status for i in range(5)]
        assert statuses == [429] * 5
        assert fake.stats.runs_created == 0
        assert fake.stats.faults["rate_limited"] == 5


def limit_headers(answer: Answer) -> tuple[str, str, str]:
    h = answer.headers
    return h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"], h["X-RateLimit-Reset"]


@pytest.mark.parametrize(("after", "runs"), [(1.0, 10), (0.0, 0)])
@pytest.mark.asyncio
async def test_fault_after_create_decides_whether_the_run_exists(http, after, runs):
    async with FakeZapier(fault_rate=1.0, faults={"500"}, fault_after_create=after, seed=5) as fk:
        for i in range(10):
            assert (await create(http, fk, spec_body(i))).status == 500
        assert fk.stats.runs_created == runs
        assert fk.stats.faults["500"] == 10


@pytest.mark.asyncio
async def test_fault_rate_draws_from_the_given_kinds(http):
    async with FakeZapier(clock=FakeClock(), fault_rate=0.5, faults={"502", "504"}, seed=9) as fk:
        statuses = [(await create(http, fk, spec_body(i))).status for i in range(100)]
        assert set(statuses) == {200, 502, 504}
        stats = fk.stats
        assert stats.faults["502"] == statuses.count(502)
        assert stats.faults["504"] == statuses.count(504)
        assert sum(stats.faults.values()) == 100 - statuses.count(200)
        # fault_after_create=0.5 by default: some faulted creates still made a run.
        assert statuses.count(200) < stats.runs_created < 100


@pytest.mark.asyncio
async def test_injected_faults_match_endpoints_in_order(http):
    async with FakeZapier(clock=FakeClock()) as fake:
        fake.inject("500", endpoint="poll", count=2)
        fake.inject("504")  # any endpoint
        # The poll fault is first in the queue but does not match a create; the 504 does.
        assert (await create(http, fake)).status == 504
        run_id = await create_id(http, fake)
        assert [(await poll(http, fake, run_id)).status for _ in range(3)] == [500, 500, 200]
        assert fake.stats.faults["500"] == 2
        assert fake.stats.faults["504"] == 1
        assert fake.run(run_id).polls == 1


@pytest.mark.asyncio
async def test_inject_validates_its_arguments():
    fake = FakeZapier()
    with pytest.raises(ValueError, match="unknown fault kind"):
        fake.inject("418")
    with pytest.raises(ValueError, match="count"):
        fake.inject("500", count=0)
    with pytest.raises(ValueError, match="endpoint"):
        fake.inject("500", endpoint="token")
    with pytest.raises(ValueError, match="after_create"):
        fake.inject("500", endpoint="poll", after_create=True)
    with pytest.raises(ValueError, match="after_create"):  # a 429 promises nothing was done
        fake.inject("rate_limited", endpoint="create", after_create=True)


# ------------------------------------------------------------------------------ truth


@pytest.mark.asyncio
async def test_duplicate_submissions_count_identical_accepted_creates(http):
    async with FakeZapier() as fake:
        await create_id(http, fake, spec_body(1, email="a@example.com"))
        assert fake.stats.duplicate_submissions == 0
        # Same data, other key order: still the same create.
        same = {
            "data": {
                "inputs": {"email": "a@example.com", "n": 1},
                "authentication": None,
                "action": "core:abc",
            }
        }
        await create_id(http, fake, same)
        assert fake.stats.duplicate_submissions == 1
        await create_id(http, fake, spec_body(2, email="a@example.com"))
        # A refused create is not "accepted": resending it later is no duplicate.
        fake.inject("500", endpoint="create")
        assert (await create(http, fake, spec_body(3))).status == 500
        await create_id(http, fake, spec_body(3))
        stats = fake.stats
        assert (stats.duplicate_submissions, stats.runs_created) == (1, 4)


@pytest.mark.asyncio
async def test_stats_snapshot(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock, durations=1.0) as fake:
        run_id = await create_id(http, fake)
        await poll(http, fake, run_id)
        await clock.advance(1.0)
        await poll(http, fake, run_id)
        await poll(http, fake, "missing")
        fake.inject("502", endpoint="poll")
        await poll(http, fake, run_id)
        await call(http, "GET", f"{fake.url}/elsewhere")
        stats = fake.stats
        assert isinstance(stats, FakeStats)
        assert stats.requests == 6
        assert stats.requests_by_endpoint == {"create": 1, "poll": 4, "other": 1}
        assert stats.responses_by_status == {200: 3, 404: 2, 502: 1}
        assert stats.polls == 2
        assert stats.runs_created == 1
        assert stats.rate_limited == 0
        assert stats.faults["502"] == 1
        assert sum(stats.faults.values()) == 1
        assert set(stats.faults) == {
            *("500", "502", "503", "504", "reset", "non_json", "slow", "rate_limited")
        }
        # A snapshot: it does not move, and it cannot be changed.
        await poll(http, fake, run_id)
        assert stats.polls == 2
        assert fake.stats.polls == 3
        with pytest.raises(TypeError):
            stats.faults["502"] = 0
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.polls = 0


@pytest.mark.asyncio
async def test_requests_are_recorded_without_the_authorization_header(http):
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        run_id = await create_id(http, fake, spec_body(5))
        await clock.advance(2.0)
        await call(http, "GET", f"{fake.url}/v2/action-runs/{run_id}?a=1&b=2")
        first, second = fake.requests
        assert isinstance(first, RecordedRequest)
        assert (first.method, first.path, first.endpoint) == ("POST", "/v2/action-runs", "create")
        assert first.json == spec_body(5)
        assert first.received_at == 0.0
        assert not [h for h in first.headers if h.lower() == "authorization"]
        assert first.headers["Content-Type"] == "application/json"
        assert (second.method, second.endpoint, second.json) == ("GET", "poll", None)
        assert second.query == {"a": "1", "b": "2"}
        assert second.received_at == 2.0
    async with FakeZapier(record_requests=False) as fake:
        await create_id(http, fake)
        assert fake.requests == []
        assert fake.stats.requests == 1


# ------------------------------------------------------------------------------ lifecycle


@pytest.mark.asyncio
async def test_lifecycle(http):
    fake = FakeZapier()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.url
    await fake.start()
    try:
        assert fake.url.startswith("http://127.0.0.1:")
        assert int(fake.url.rsplit(":", 1)[1]) > 0
        with pytest.raises(RuntimeError):
            await fake.start()
        await create_id(http, fake)
        url = fake.url
    finally:
        await fake.close()
    await fake.close()  # idempotent
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, "POST", f"{url}/v2/action-runs", json=spec_body())
    with pytest.raises(RuntimeError):
        await fake.start()
    assert fake.stats.runs_created == 1  # readable after close


@pytest.mark.asyncio
async def test_close_without_start():
    await FakeZapier().close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": ""},
        {"port": -1},
        {"port": 70000},
        {"seed": "x"},
        {"clock": object()},
        {"tokens": []},
        {"tokens": [""]},
        {"durations": -1.0},
        {"durations": math.nan},
        {"durations": (2.0, 1.0)},
        {"durations": (0.0, math.inf)},
        {"durations": "fast"},
        {"error_rate": 1.5},
        {"error_rate": True},
        {"pending_statuses": ()},
        {"pending_statuses": ("waiting", "success")},
        {"pending_http_status": 204},
        {"latency": math.inf},
        {"latency": (1.0,)},
        {"rate_limit": (0, 60.0)},
        {"rate_limit": (10, 0.0)},
        {"rate_limit": 60},
        {"cooldown_after_429": -1.0},
        {"reset_format": "unix"},
        {"retry_after_format": "date"},
        {"fault_rate": -0.1},
        {"faults": {"404"}},
        {"fault_rate": 0.5, "faults": set()},
        {"fault_after_create": 2},
        {"fault_retry_after": -1},
        {"non_json_status": 99},
        {"slow_delay": math.inf},
        {"record_requests": 1},
    ],
    ids=repr,
)
def test_nonsense_knobs_are_refused(kwargs):
    with pytest.raises(ValueError, match=re.escape(next(iter(kwargs)))):  # names the knob
        FakeZapier(**kwargs)


def test_knobs_are_validated_when_changed_and_some_are_fixed():
    fake = FakeZapier()
    fake.error_rate = 0.25
    assert fake.error_rate == 0.25
    with pytest.raises(ValueError, match="error_rate must be a probability"):
        fake.error_rate = 2.0
    with pytest.raises(attrs.exceptions.FrozenAttributeError):
        fake.port = 8080
    assert "tokens" not in repr(FakeZapier(tokens=["secret-token"]))
    assert "secret-token" not in repr(FakeZapier(tokens=["secret-token"]))
    assert FakeZapier(pending_statuses="queued").pending_statuses == ("queued",)


# ------------------------------------------------------------------------------ pytest plugin

pytest_plugins = ["pytester"]

PLUGIN_ARGS = ("-p", "no:zapier_async", "-p", "zapier_async.testing._pytest_plugin")


def test_pytest_plugin_fixture(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import aiohttp
        import pytest

        from zapier_async.testing import FakeZapier

        @pytest.fixture
        def fake_zapier_options():
            return {"error_rate": 1.0, "durations": 0}

        @pytest.mark.asyncio
        async def test_it(fake_zapier):
            assert isinstance(fake_zapier, FakeZapier)
            assert fake_zapier.error_rate == 1.0
            async with aiohttp.ClientSession() as s:
                body = {"data": {"action": "a", "authentication": None, "inputs": {}}}
                headers = {"Authorization": "Bearer t"}
                async with s.post(fake_zapier.url + "/v2/action-runs", json=body,
                                  headers=headers) as r:
                    assert r.status == 200
            assert fake_zapier.stats.runs_created == 1
        """
    )
    result = pytester.runpytest_subprocess(
        *PLUGIN_ARGS, "-W", "error", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=1)


def test_pytest_plugin_without_pytest_asyncio(pytester: pytest.Pytester):
    # A stand-in that makes `import pytest_asyncio` fail, as in a project without it.
    pytester.makepyfile(pytest_asyncio="raise ImportError('not installed')")
    pytester.makepyfile(
        test_user="""
        def test_uses_it(fake_zapier):
            pass

        def test_unrelated():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, "-p", "no:asyncio")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fake_zapier fixture is async and needs pytest-asyncio*"])
