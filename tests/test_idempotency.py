"""`run(..., idempotency_key=...)` with `ZapierClient(run_store=...)`: one create per key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from _redis_fixtures import rclient, redis_server  # noqa: F401 (fixtures)
from _util import client_for, eventually

import zapier_async as za
from zapier_async import errors
from zapier_async._runstore import MemoryRunStore
from zapier_async.testing import FakeZapier

DONE = {"__fake__": {"results": [{"ok": True}]}}


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=1, durations=(0.0, 0.05)) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> object:
    if request.param == "memory":
        return MemoryRunStore()
    from zapier_async.redis import RedisRunStore

    return RedisRunStore(request.getfixturevalue("rclient"))


@pytest.mark.asyncio
async def test_a_second_call_with_the_same_key_resumes_the_same_run(fake, store):
    async with client_for(fake, run_store=store) as client:
        first = await client.run("core:x", authentication=None, inputs=DONE, idempotency_key="k")
        await first
        again = await client.run("core:x", authentication=None, inputs=DONE, idempotency_key="k")
        assert again.id == first.id
        assert (await again).status is za.RunStatus.SUCCESS
        claim = await store.get("k")
        assert claim is not None
        assert claim.state == "resume"
        assert claim.run_id == first.id
    assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_concurrent_calls_with_one_key_create_one_run(fake, store):
    async with client_for(fake, run_store=store) as client:
        handles = await asyncio.gather(
            *(
                client.run("core:x", authentication=None, inputs=DONE, idempotency_key="one")
                for _ in range(10)
            )
        )
    assert {h.id for h in handles} == {handles[0].id}
    assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_a_key_left_sending_is_outcome_unknown_and_never_sent(fake, store):
    await store.begin("stuck")  # a process that died with its create on the wire
    async with client_for(fake, run_store=store) as client:
        with pytest.raises(errors.OutcomeUnknownError) as info:
            await client.run("core:x", authentication=None, idempotency_key="stuck")
        assert "stuck" in str(info.value)
        with pytest.raises(errors.OutcomeUnknownError):
            await client.run_action(
                selected_api="A@1", action_key="k", action_type="write", idempotency_key="stuck"
            )
    assert fake.stats.requests_by_endpoint["create"] == 0


@pytest.mark.asyncio
async def test_a_key_without_a_run_store_is_refused_before_anything_is_sent(fake):
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidRequestError, match="run store"):
            await client.run("core:x", authentication=None, idempotency_key="k")
        with pytest.raises(errors.InvalidRequestError, match="run store"):
            await client.run(app="app", action_key="send", authentication=None, idempotency_key="k")
        with pytest.raises(errors.InvalidRequestError, match="run store"):
            await client.stored_actions.run("sa_1", idempotency_key="k")
    assert fake.stats.requests == 0


@pytest.mark.asyncio
async def test_a_create_refused_before_the_wire_frees_the_key(fake):
    store = MemoryRunStore()
    async with client_for(fake, run_store=store) as client:
        client.limiter.freeze(60.0)
        with pytest.raises(errors.RateLimitedError):
            await client.run(
                "core:x", authentication=None, idempotency_key="k", max_rate_limit_wait=0.0
            )
        assert await store.get("k") is None  # fail(key): a later call may send
    assert fake.stats.requests == 0


@pytest.mark.asyncio
async def test_an_ambiguous_failure_keeps_the_key_sending(fake):
    store = MemoryRunStore()
    fake.inject("500", endpoint="create", after_create=True)
    async with client_for(fake, run_store=store) as client:
        with pytest.raises(errors.OutcomeUnknownError):
            await client.run("core:x", authentication=None, idempotency_key="k")
        claim = await store.get("k")
        assert claim is not None
        assert claim.state == "unknown"
        with pytest.raises(errors.OutcomeUnknownError):
            await client.run("core:x", authentication=None, idempotency_key="k")
    assert fake.stats.requests_by_endpoint["create"] == 1


@pytest.mark.asyncio
async def test_a_caller_cancelled_on_the_wire_still_records_its_run():
    store = MemoryRunStore()
    async with FakeZapier(seed=1, latency=0.3) as fake, client_for(fake, run_store=store) as client:
        task = asyncio.create_task(
            client.run("core:x", authentication=None, inputs=DONE, idempotency_key="k")
        )
        await eventually(lambda: fake.stats.requests_by_endpoint["create"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        claim = None

        async def recorded() -> bool:
            nonlocal claim
            claim = await store.get("k")
            return claim is not None and claim.state == "resume"

        for _ in range(200):
            if await recorded():
                break
            await asyncio.sleep(0.01)
        assert claim is not None
        assert claim.state == "resume"
        again = await client.run("core:x", authentication=None, idempotency_key="k")
        assert again.id == claim.run_id
    assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_views_and_stored_actions_take_idempotency_keys(fake):
    store = MemoryRunStore()
    async with client_for(fake, run_store=store) as client:
        view = client.with_auth(za.BearerToken("user"))
        one = await view.run("core:x", authentication=None, inputs=DONE, idempotency_key="v")
        two = await view.run("core:x", authentication=None, inputs=DONE, idempotency_key="v")
        assert one.id == two.id
        created = await client.stored_actions.create(
            connection_id="c1", selected_api="A@1", action_key="k", action_type="write"
        )
        a = await client.stored_actions.run(created.id, inputs=DONE, idempotency_key="s")
        b = await client.stored_actions.run(created.id, inputs=DONE, idempotency_key="s")
        assert a.id == b.id
    assert fake.stats.runs_created == 2
