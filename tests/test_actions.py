"""Actions API v1 one-off runs, run locators and continuation tokens, end to end."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import zapier_async as za
from zapier_async import _actions, _protocol
from zapier_async.testing import FakeZapier

FAST_POLLS = za.PollPolicy(initial=0.01, factor=1.5, cap=0.05, jitter=0.1)


def client_for(fake: FakeZapier, **kwargs: Any) -> za.ZapierClient:
    options: dict[str, Any] = {
        "auth": za.BearerToken("test-token"),
        "base_url": fake.url,
        "poll_policy": FAST_POLLS,
        "retry_policy": za.RetryPolicy(base=0.01, cap=0.05),
        "rng": random.Random(7),
    }
    options.update(kwargs)
    return za.ZapierClient(**options)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=3, durations=(0.02, 0.06)) as server:
        yield server


@pytest.mark.asyncio
async def test_run_action_sends_the_sdk_body_and_resolves_through_202s(fake):
    async with client_for(fake) as client:
        handle = await client.run_action(
            selected_api="SlackCLIAPI@1.2.3",
            action_key="send_message",
            action_type="WRITE",
            inputs={"text": "hi"},
            connection_id="conn_1",
        )
        assert handle.locator.kind == "actions_v1"
        run = await handle.result(timeout=5)
    assert run.status is za.RunStatus.SUCCESS
    assert run.id == handle.id
    create = next(r for r in fake.requests if r.method == "POST")
    assert create.path == "/actions/v1/runs"
    assert create.json == {
        "data": {
            "selected_api": "SlackCLIAPI@1.2.3",
            "action_key": "send_message",
            "action_type": "write",
            "inputs": {"text": "hi"},
            "authentication_id": "conn_1",
        }
    }
    reads = [r for r in fake.requests if r.method == "GET"]
    assert reads
    assert all(r.path == f"/actions/v1/runs/{handle.id}" for r in reads)
    assert fake.stats.responses_by_status.get(202, 0) >= 1  # pending reads were 202s
    assert fake.stats.duplicate_submissions == 0


@pytest.mark.asyncio
async def test_a_failed_actions_run_raises_run_failed_error(fake):
    async with client_for(fake) as client:
        handle = await client.run_action(
            selected_api="App@1",
            action_key="k",
            action_type="search",
            inputs={"__fake__": {"status": "error"}},
        )
        with pytest.raises(za.RunFailedError) as info:
            await handle.result(timeout=5)
    assert info.value.run.errors[0].code is za.RunErrorCode.USER


@pytest.mark.asyncio
async def test_a_create_that_may_have_reached_zapier_is_not_resent(fake):
    fake.inject("500", endpoint="create", after_create=True)
    async with client_for(fake) as client:
        with pytest.raises(za.OutcomeUnknownError):
            await client.run_action(
                selected_api="App@1", action_key="k", action_type="write", inputs={"n": 1}
            )
    assert fake.stats.runs_created == 1
    assert sum(1 for r in fake.requests if r.method == "POST") == 1


@pytest.mark.asyncio
async def test_actions_runs_resume_from_their_token_in_another_client(fake):
    fake_run: dict[str, Any] = {"__fake__": {"duration": 0.1}}
    async with client_for(fake) as first:
        handle = await first.run_action(
            selected_api="App@1", action_key="k", action_type="read", inputs=fake_run
        )
        token = handle.continuation_token()
    async with client_for(fake) as second:
        again = second.resume(token)
        assert again.locator == handle.locator
        run = await again.result(timeout=5)
    assert run.id == handle.id


def test_bad_inputs_are_refused_before_sending():
    with pytest.raises(za.InvalidRequestError, match="action_type"):
        _actions.create_run(selected_api="A@1", action_key="k", action_type="delete", inputs={})
    with pytest.raises(za.InvalidRequestError, match="selected_api"):
        _actions.create_run(selected_api="", action_key="k", action_type="read", inputs={})
    with pytest.raises(za.InvalidRequestError, match="https"):
        _actions.create_run(
            selected_api="A@1",
            action_key="k",
            action_type="read",
            inputs={},
            callback_url="http://127.0.0.1:9/cb",
        )
    request = _actions.create_run(
        selected_api="A@1",
        action_key="k",
        action_type="read",
        inputs={},
        page=3,
        callback_url="http://127.0.0.1:9/cb",
        allow_loopback_callback=True,
    )
    assert json.loads(request.body or b"")["data"]["page"] == "3"
    assert request.creates_run
    assert not request.idempotent


LOCATORS = [
    _protocol.RunLocator(kind="action_run", run_id="arun_1"),
    _protocol.RunLocator(kind="actions_v1", run_id="0f0e"),
    _protocol.RunLocator(kind="stored_action", run_id="r-1", stored_action_id="sa-9"),
]


@pytest.mark.parametrize("locator", LOCATORS, ids=lambda loc: loc.kind)
def test_continuation_tokens_round_trip_every_kind(locator):
    token = _protocol.encode_continuation_token(locator)
    assert _protocol.decode_continuation_token(token) == locator
    assert "Bearer" not in token


def test_poll_requests_per_kind():
    paths = [_protocol.poll_request(loc).path for loc in LOCATORS]
    assert paths == [
        "/v2/action-runs/arun_1",
        "/actions/v1/runs/0f0e",
        "/actions/v1/stored-actions/sa-9/runs/r-1",
    ]
    wait = _actions.poll_request(LOCATORS[1], long_poll=za.LongPoll(wait_seconds=20))
    assert (wait.path, wait.query, wait.long_poll) == (
        "/actions/v2/runs/0f0e",
        (("wait_seconds", "20"),),
        20.0,
    )


def _token(payload: dict[str, Any]) -> str:
    raw = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return "za1." + raw


def test_old_version_1_tokens_still_decode_and_bad_ones_are_refused():
    old = _token({"v": 1, "k": "action_run", "id": "arun_7"})
    assert _protocol.decode_continuation_token(old) == LOCATORS[0].__class__(
        kind="action_run", run_id="arun_7"
    )
    # Version 1 only ever named /v2/action-runs runs.
    with pytest.raises(za.InvalidRequestError, match="unknown kind"):
        _protocol.decode_continuation_token(_token({"v": 1, "k": "actions_v1", "id": "x"}))
    with pytest.raises(za.InvalidRequestError, match="stored_action_id"):
        _protocol.decode_continuation_token(_token({"v": 2, "k": "stored_action", "id": "x"}))
    with pytest.raises(za.InvalidRequestError, match="unknown version"):
        _protocol.decode_continuation_token(_token({"v": 3, "k": "actions_v1", "id": "x"}))
