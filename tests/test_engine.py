"""The engine's follow-ups: from_env, token checks before a slot, polls told to wait past the
cap, limiter waits reported, token requests through the one retry loop."""

from __future__ import annotations

import pytest
from _util import client_for, eventually

import zapier_async as za
from zapier_async import errors
from zapier_async._metrics import RequestEvent
from zapier_async.testing import FakeZapier

DONE = {"__fake__": {"results": [{"ok": True}]}}


@pytest.mark.asyncio
async def test_from_env_builds_a_working_client_and_overrides_win():
    async with FakeZapier(seed=1, tokens={"env-token"}) as fake:
        environ = {"ZAPIER_CREDENTIALS": "env-token", "ZAPIER_BASE_URL": fake.url}
        async with za.ZapierClient.from_env(environ, request_timeout=7.0) as client:
            assert client._engine.pipeline._request_timeout == 7.0
            run = await (await client.run("core:x", authentication=None, inputs=DONE))
            assert run.status is za.RunStatus.SUCCESS
        with pytest.raises(errors.InvalidRequestError, match="no credentials"):
            za.ZapierClient.from_env({})


class _BadToken:
    async def token(self) -> str:
        return "two words"

    def invalidate(self, token: str) -> bool:
        return False


@pytest.mark.asyncio
async def test_an_unsendable_custom_token_is_refused_before_taking_a_slot():
    async with FakeZapier(seed=1) as fake, client_for(fake, auth=_BadToken()) as client:
        with pytest.raises(errors.UnexpectedError, match="space") as info:
            await client.run("core:x", authentication=None)
        assert "two words" not in str(info.value)
        assert client.limiter.snapshot().grants == 0
    assert fake.stats.requests == 0


@pytest.mark.asyncio
async def test_a_poll_told_to_wait_past_the_cap_is_rescheduled_without_a_failure():
    async with (
        FakeZapier(seed=1, durations=(60.0, 60.0)) as fake,
        client_for(fake, max_server_wait=1.0, max_poll_failures=1) as client,
    ):
        handle = await client.run("core:x", authentication=None, inputs=DONE)
        # Every read is now told to wait an hour: over max_server_wait (RateLimitedError).
        client.limiter.freeze(3600.0)
        await eventually(lambda: handle.reads.attempts >= 2, timeout=20.0)
        assert not handle.done()  # max_poll_failures=1 would have failed it
        assert handle.reads.failures == 0


@pytest.mark.asyncio
async def test_limiter_waits_reach_request_events():
    events: list[object] = []
    async with (
        FakeZapier(seed=1) as fake,
        client_for(fake, on_event=events.append) as client,
    ):
        client.limiter.freeze(0.2)
        await (await client.run("core:x", authentication=None, inputs=DONE))
    create = next(
        e for e in events if isinstance(e, RequestEvent) and e.endpoint.endswith("create")
    )
    assert create.limiter_wait is not None
    assert create.limiter_wait >= 0.1


@pytest.mark.asyncio
async def test_token_requests_are_retried_by_the_pipeline_alone():
    async with FakeZapier(seed=1) as fake:
        fake.inject("503", count=10)  # every token request of this test
        auth = za.ClientCredentials("partner", "secret", token_url=fake.token_url)
        policy = za.RetryPolicy(max_attempts=2, base=0.01, cap=0.02)
        async with client_for(fake, auth=auth, retry_policy=policy) as client:
            with pytest.raises(errors.APIError):
                await client.run("core:x", authentication=None)
    # Two attempts in all: the provider's own loop no longer retries on top (2 x 2).
    assert fake.stats.faults["503"] == 2
    assert fake.stats.runs_created == 0
