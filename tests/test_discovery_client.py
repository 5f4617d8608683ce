"""Discovery by name through the client: apps by name or slug, inputs checked before a run,
connections filtered by status (issue #19), end to end against FakeZapier."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import zapier_async as za
from zapier_async import errors
from zapier_async.testing import FakeZapier
from zapier_async.testing._fake_auth import FAKE_APP_ID


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=5) as server:
        yield server


def client_for(fake: FakeZapier) -> za.ZapierClient:
    return za.ZapierClient(
        auth=za.BearerToken("tok-discovery"),
        base_url=fake.url,
        poll_policy=za.PollPolicy(initial=0.01, factor=1.5, cap=0.05, jitter=0.1),
    )


def endpoints(fake: FakeZapier) -> list[str]:
    return [r.endpoint for r in fake.requests]


@pytest.mark.asyncio
async def test_an_app_is_found_by_name_or_slug_ignoring_case(fake):
    async with client_for(fake) as client:
        slack = await client.find_app("slack")  # not "Slack Legacy"
        sheets = await client.find_app("google-sheets")
        with pytest.raises(errors.AppNotFoundError) as info:
            await client.find_app("Slackk")
        listed = [app.title async for app in client.list_apps("slack")]
    assert slack.id == FAKE_APP_ID
    assert sheets.title == "Google Sheets"
    assert isinstance(info.value, LookupError)
    assert set(listed) == {"Slack", "Slack Legacy"}


@pytest.mark.asyncio
async def test_run_by_app_name_resolves_the_app_then_a_fresh_action_id(fake):
    async with client_for(fake) as client:
        handle = await client.run(
            app="Slack",
            action_key="send_message",
            authentication="conn_ok",
            inputs={"channel": "c1", "text": "hi"},
        )
        await handle
    assert fake.catalog.resolve(fake.run(handle.id).action) == (FAKE_APP_ID, "send_message")
    assert [e for e in endpoints(fake) if e != "poll"][:3] == ["apps", "actions", "create"]


@pytest.mark.asyncio
async def test_an_app_id_is_not_looked_up_by_name(fake):
    async with client_for(fake) as client:
        await client.run(
            app=FAKE_APP_ID, action_key="send_message", authentication="conn_ok", inputs={}
        )
    assert "apps" not in endpoints(fake)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("inputs", "missing", "unknown"),
    [
        ({"channel": "c1"}, ["text"], []),
        ({"channel": "c1", "text": "hi", "txet": "typo"}, [], ["txet"]),
        ({}, ["channel", "text"], []),
    ],
)
async def test_inputs_are_checked_before_anything_is_created(fake, inputs, missing, unknown):
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidInputsError) as info:
            await client.run(
                app="slack",
                action_key="send_message",
                authentication="conn_ok",
                inputs=inputs,
                validate_inputs=True,
            )
    assert isinstance(info.value, errors.InvalidRequestError)
    assert (info.value.missing, info.value.unknown) == (missing, unknown)
    for name in missing + unknown:
        assert repr(name) in str(info.value)
    assert fake.stats.runs_created == 0
    assert "create" not in endpoints(fake)


@pytest.mark.asyncio
async def test_valid_inputs_pass_the_check_and_run(fake):
    async with client_for(fake) as client:
        handle = await client.run(
            app="Slack",
            action_key="send_message",
            authentication="conn_ok",
            inputs={"channel": "c1", "text": "hi"},
            validate_inputs=True,
        )
        run = await handle
    assert run.succeeded
    assert "inputs" in endpoints(fake)
    assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_connections_are_filtered_by_status(fake):
    async with client_for(fake) as client:
        usable = [c.id async for c in client.list_connections(FAKE_APP_ID, expired=False)]
        stale = [c.id async for c in client.list_connections(FAKE_APP_ID, expired=True)]
        every = [c.id async for c in client.list_connections(FAKE_APP_ID)]
    assert usable == ["conn_ok"]
    assert stale == ["conn_expired"]
    assert sorted(every) == ["conn_expired", "conn_ok"]
