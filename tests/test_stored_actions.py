"""Stored actions (client.stored_actions) end to end against FakeZapier, with pagination."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from _util import eventually

import zapier_async as za
from zapier_async.testing import FakeZapier


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=4, durations=(0.01, 0.03), pending_http_status=202) as server:
        yield server


def client_for(fake: FakeZapier) -> za.ZapierClient:
    return za.ZapierClient(
        auth=za.BearerToken("t"),
        base_url=fake.url,
        poll_policy=za.PollPolicy(initial=0.01, factor=1.5, cap=0.05),
        rng=random.Random(1),
    )


@pytest.mark.asyncio
async def test_crud_round_trip(fake):
    async with client_for(fake) as client:
        created = await client.stored_actions.create(
            connection_id="conn-1",
            selected_api="SheetsCLIAPI@2.0.0",
            action_key="add_row",
            action_type="WRITE",
            inputs={"sheet": "a"},
        )
        assert created.action_type == "write"
        assert fake.actions.stored_action(created.id)["inputs"] == {"sheet": "a"}
        got = await client.stored_actions.get(created.id)
        assert got == created
        updated = await client.stored_actions.update(created.id, inputs={"sheet": "b"})
        assert updated.inputs == {"sheet": "b"}
        assert [s.id for s in await client.stored_actions.list()] == [created.id]
        await client.stored_actions.delete(created.id)
        assert await client.stored_actions.list() == []
        with pytest.raises(za.errors.NotFoundError):
            await client.stored_actions.get(created.id)
    create = next(r for r in fake.requests if r.method == "POST")
    assert create.json == {
        "data": {
            "connection_id": "conn-1",
            "selected_api": "SheetsCLIAPI@2.0.0",
            "action_key": "add_row",
            "action_type": "write",
            "inputs": {"sheet": "a"},
        }
    }
    patch = next(r for r in fake.requests if r.method == "PATCH")
    assert patch.json == {"data": {"inputs": {"sheet": "b"}}}


@pytest.mark.asyncio
async def test_a_stored_run_is_polled_at_its_flat_read_and_resumes_from_a_token(fake):
    fake.durations = math.inf  # pending until the test completes it: the 202 is certain
    async with client_for(fake) as client:
        stored = await client.stored_actions.create(
            connection_id="c", selected_api="A@1", action_key="k", action_type="read"
        )
        handle = await client.stored_actions.run(stored.id, inputs={"q": 1})
        assert handle.locator.stored_action_id == stored.id
        token = handle.continuation_token()
        await eventually(lambda: fake.stats.responses_by_status.get(202, 0) >= 1)
        assert not handle.done()
        fake.complete(handle.id)
        run = await handle.result(timeout=5)
        assert run.status is za.RunStatus.SUCCESS
        again = client.resume(token)
        assert (await again.result(timeout=5)).id == run.id
    run_post = next(r for r in fake.requests if r.path.endswith("/run"))
    assert run_post.json == {"data": {"inputs": {"q": 1}}}
    reads = {r.path for r in fake.requests if r.method == "GET" and "/runs/" in r.path}
    assert reads == {f"/actions/v1/stored-actions/{stored.id}/runs/{run.id}"}
    assert fake.stats.responses_by_status.get(202, 0) >= 1


@pytest.mark.asyncio
async def test_pages_follow_next_page_until_it_is_absent(fake):
    async with client_for(fake) as client:
        stored = await client.stored_actions.create(
            connection_id="c", selected_api="A@1", action_key="rows", action_type="read"
        )
        fake.actions.set_records(stored.id, [{"row": i} for i in range(5)], page_size=2)
        pages = [run async for run in client.stored_actions.pages(stored.id, inputs={"t": 1})]
    assert [p.results for p in pages] == [
        [{"row": 0}, {"row": 1}],
        [{"row": 2}, {"row": 3}],
        [{"row": 4}],
    ]
    assert [p.next_page for p in pages] == ["1", "2", None]
    sent_pages = [r.json["data"].get("page") for r in fake.requests if r.path.endswith("/run")]
    assert sent_pages == [None, "1", "2"]


@pytest.mark.asyncio
async def test_running_a_missing_stored_action_is_a_not_found(fake):
    async with client_for(fake) as client:
        with pytest.raises(za.errors.NotFoundError):
            await client.stored_actions.run("0000-missing")
        with pytest.raises(za.InvalidRequestError, match="nothing to update"):
            await client.stored_actions.update("x")
    assert fake.stats.runs_created == 0
