"""`client.with_auth(auth)`: per-user views over one engine, each paced by its own budget."""

from __future__ import annotations

import asyncio

import pytest
from _util import client_for, eventually

import zapier_async as za
from zapier_async import errors
from zapier_async._pipeline import ACTIONS_API_RESULTS, GENERAL
from zapier_async.testing import FakeZapier

DONE = {"__fake__": {"results": [{"ok": True}]}}


@pytest.mark.asyncio
async def test_a_view_costs_no_task_and_no_request_and_sends_with_its_own_token():
    partner = za.BearerToken("partner")
    async with (
        FakeZapier(seed=1, tokens={"user-a", "user-b"}) as fake,
        client_for(fake, auth=partner) as client,
    ):
        tasks = len(asyncio.all_tasks())
        views = [client.with_auth(za.BearerToken(f"user-{c}")) for c in "ab" * 50]
        assert len(asyncio.all_tasks()) == tasks
        assert fake.stats.requests == 0
        # Accepted only with the view's token: the client's own ("partner") is refused.
        run = await (await views[0].run("core:x", authentication=None, inputs=DONE))
        assert run.status is za.RunStatus.SUCCESS
        handle = await views[1].run_action(
            selected_api="A@1", action_key="k", action_type="write", inputs=DONE
        )
        assert (await handle).status is za.RunStatus.SUCCESS
        assert (await views[1].get_run(run.id)).status is za.RunStatus.SUCCESS
        with pytest.raises(errors.AuthenticationError):
            await client.get_run(run.id)


@pytest.mark.asyncio
async def test_views_of_one_provider_share_a_bucket_id_and_never_show_the_token():
    async with FakeZapier(seed=1) as fake, client_for(fake) as client:
        token = za.BearerToken("secret-user-token")
        one, two = client.with_auth(token), client.with_auth(token)
        other = client.with_auth(za.BearerToken("secret-user-token"))
        assert one.bucket_id == two.bucket_id != other.bucket_id
        assert "secret-user-token" not in repr(one) + str(one.bucket_id)

        class Named(za.BearerToken):
            bucket_id = "tenant-42"

        assert client.with_auth(Named("t")).bucket_id == "tenant-42"
        with pytest.raises(errors.InvalidRequestError):
            client.with_auth("not a provider")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_closing_the_client_ends_every_view():
    async with FakeZapier(seed=1, durations=(30.0, 30.0)) as fake:
        client = client_for(fake)
        view = client.with_auth(za.BearerToken("user"))
        handle = await view.run("core:x", authentication=None)
        await client.aclose()
        assert view.closed
        with pytest.raises(za.RunDetachedError):
            await handle
        with pytest.raises(errors.InvalidRequestError):
            await view.run("core:x", authentication=None)
        with pytest.raises(errors.InvalidRequestError):
            await view.stored_actions.list()
        with pytest.raises(errors.InvalidRequestError):
            view.resume(handle.id)


@pytest.mark.asyncio
async def test_requests_are_keyed_by_credential_and_endpoint_family():
    seen: list[tuple[object, str]] = []

    def key(credential_id: object, family: str) -> object:
        seen.append((credential_id, family))
        return (credential_id, family)

    async with FakeZapier(seed=1) as fake, client_for(fake, bucket_key=key) as client:
        view = client.with_auth(za.BearerToken("user"))
        await (await view.run_action(selected_api="A@1", action_key="k", action_type="write"))
        await (await client.run("core:x", authentication=None))
    assert (view.bucket_id, GENERAL) in seen
    assert (view.bucket_id, ACTIONS_API_RESULTS) in seen
    assert (None, GENERAL) in seen  # the client's own credential
    assert all(cid in (None, view.bucket_id) for cid, _ in seen)


async def _heavy_then_light(bucket_key: object = None) -> tuple[FakeZapier, list[object]]:
    """One heavy user overspends its per-token budget; then 20 light users run once each
    with a 1 s cap on waiting for the budget."""
    options = {} if bucket_key is None else {"bucket_key": bucket_key}
    async with (
        FakeZapier(
            seed=5, durations=(0.0, 0.05), rate_limit=(8, 4.0), rate_limit_per_token=True
        ) as fake,
        client_for(fake, **options) as client,
    ):
        heavy = client.with_auth(za.BearerToken("heavy"))

        async def heavy_run() -> None:
            await heavy.run("core:x", authentication=None, max_rate_limit_wait=None)

        heavy_tasks = [asyncio.create_task(heavy_run()) for _ in range(12)]
        await eventually(lambda: fake.stats.requests >= 8)  # heavy's window is spent

        async def light(i: int) -> object:
            view = client.with_auth(za.BearerToken(f"light-{i}"))
            try:
                return await view.run(
                    "core:x", authentication=None, inputs=DONE, max_rate_limit_wait=1.0
                )
            except za.ZapierError as exc:
                return exc

        outcomes = await asyncio.gather(*(light(i) for i in range(20)))
        for task in heavy_tasks:
            task.cancel()
        await asyncio.gather(*heavy_tasks, return_exceptions=True)
    return fake, outcomes


@pytest.mark.asyncio
async def test_a_heavy_user_over_its_budget_does_not_delay_light_users():
    fake, outcomes = await _heavy_then_light()
    assert all(isinstance(o, za.RunHandle) for o in outcomes), outcomes
    light_429s = sum(n for t, n in fake.stats.rate_limited_by_token.items() if t != "heavy")
    assert light_429s == 0


@pytest.mark.asyncio
async def test_a_declared_shared_bucket_paces_every_user_together():
    _fake, outcomes = await _heavy_then_light(bucket_key=lambda credential_id, family: "partner")
    assert any(isinstance(o, za.RateLimitedError) for o in outcomes)


@pytest.mark.asyncio
async def test_run_many_and_stored_actions_on_a_view_use_its_token():
    partner = za.BearerToken("partner")
    async with (
        FakeZapier(seed=1, tokens={"user"}) as fake,
        client_for(fake, auth=partner) as client,
    ):
        view = client.with_auth(za.BearerToken("user"))
        outcomes = await view.gather(
            [{"action": "core:x", "authentication": None, "inputs": DONE}] * 3
        )
        assert [o.error for o in outcomes] == [None, None, None]
        created = await view.stored_actions.create(
            connection_id="c1", selected_api="A@1", action_key="k", action_type="write"
        )
        run = await (await view.stored_actions.run(created.id, inputs=DONE))
        assert run.status is za.RunStatus.SUCCESS


@pytest.mark.asyncio
async def test_a_view_reads_its_own_figures_when_the_client_tracks_credentials():
    async with FakeZapier(seed=1) as fake:
        async with client_for(fake) as untracked:
            view = untracked.with_auth(za.BearerToken("user-a"))
            await (await view.run("core:x", authentication=None, inputs=DONE))
            assert view.metrics() is None  # off by default: nothing labelled per user
        with pytest.raises(errors.InvalidRequestError) as bad:
            client_for(fake, track_credentials=-1)
        assert bad.value.field == "track_credentials"
        async with client_for(fake, track_credentials=2) as client:
            a, b, c = (client.with_auth(za.BearerToken(f"user-{n}")) for n in "abc")
            for view in (a, a, b):
                await (await view.run("core:x", authentication=None, inputs=DONE))
            figures = a.metrics()
            assert figures is not None
            assert (figures.bucket_id, figures.runs_started, figures.runs_succeeded) == (
                a.bucket_id,
                2,
                2,
            )
            assert figures.latency_mean is not None
            b_figures = b.metrics()
            assert b_figures is not None
            assert b_figures.runs_started == 1
            await (await c.run("core:x", authentication=None, inputs=DONE))  # evicts a
            evicted = a.metrics()
            assert evicted is not None
            assert (evicted.runs_started, evicted.tracked, evicted.evicted) == (0, 2, 1)
