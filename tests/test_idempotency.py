"""`run(..., idempotency_key=...)` with `ZapierClient(run_store=...)`: one create per key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import pytest_asyncio
from _redis_fixtures import rclient, redis_server  # noqa: F401 (fixtures)
from _util import client_for, eventually

import zapier_async as za
from zapier_async import errors
from zapier_async._runstore import Claim, MemoryRunStore, RunStore
from zapier_async.testing import FakeClock, FakeZapier

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
        await assert_recorded(store, "k", first.id)
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


# --- the key is claimed only once the limiter granted the create its slot -----------------


async def assert_recorded(store: RunStore, key: str, run_id: str) -> None:
    """The store holds `key` as done: later calls resume run `run_id`."""
    claim = await store.get(key)
    assert claim is not None
    assert claim.state == "resume"
    assert claim.run_id == run_id


class SpyStore(MemoryRunStore):
    """A `MemoryRunStore` that lists the writes made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    async def begin(self, key: str) -> Claim:
        self.writes.append("begin")
        return await super().begin(key)

    async def fail(self, key: str) -> bool:
        self.writes.append("fail")
        return await super().fail(key)


@pytest_asyncio.fixture
async def spawn() -> AsyncIterator[Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]]:
    """Start calls as tasks; any still running when the test ends (it failed) is cancelled."""
    started: list[asyncio.Task[Any]] = []

    def start(call: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        started.append(asyncio.create_task(call))
        return started[-1]

    yield start
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)


def frozen_client(fake: FakeZapier, store: object, clock: FakeClock) -> za.ZapierClient:
    """A client on `clock` whose limiter holds every request back for 30 s."""
    client = client_for(fake, run_store=store, clock=clock, max_rate_limit_wait=None)
    client.limiter.freeze(30.0)
    return client


@pytest.mark.asyncio
async def test_a_create_waiting_for_the_budget_leaves_its_key_unclaimed(fake, store, spawn):
    clock = FakeClock()
    async with frozen_client(fake, store, clock) as client:
        task = spawn(client.run("core:x", authentication=None, inputs=DONE, idempotency_key="k"))
        await eventually(lambda: client.limiter.waiting == 1)
        # A process killed now leaves nothing behind: a redelivery would send.
        assert await store.get("k") is None
        await clock.advance(30.0)
        handle = await task
        await assert_recorded(store, "k", handle.id)
    assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_a_create_cancelled_while_waiting_for_the_budget_never_writes_its_key(fake, spawn):
    store, clock = SpyStore(), FakeClock()
    async with frozen_client(fake, store, clock) as client:
        task = spawn(client.run("core:x", authentication=None, idempotency_key="k"))
        await eventually(lambda: client.limiter.waiting == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.limiter.waiting == 0
        assert store.writes == []  # nothing to undo, so nothing a SIGKILL could leave
        assert await store.get("k") is None
    assert fake.stats.requests == 0


@pytest.mark.asyncio
async def test_a_create_waiting_for_the_budget_does_not_block_another_process(fake, store, spawn):
    """A redelivery sends while the first delivery waits; the first then resumes its run."""
    clock = FakeClock()
    async with (
        frozen_client(fake, store, clock) as waiting,
        client_for(fake, run_store=store) as other,
    ):
        first = spawn(waiting.run("core:x", authentication=None, inputs=DONE, idempotency_key="k"))
        await eventually(lambda: waiting.limiter.waiting == 1)
        sent = await other.run("core:x", authentication=None, inputs=DONE, idempotency_key="k")
        await clock.advance(30.0)
        resumed = await first  # its claim found the run recorded: resumed, not sent
        assert resumed.id == sent.id
        # Nothing left in flight once the resumed run's first read (sent at once, over
        # loopback: it may still be on the wire here) has its answer: no grant leaked.
        await eventually(lambda: waiting.limiter.in_flight == 0)
        stats = waiting.limiter.snapshot()
        # The create waited, then gave its grant back unspent: any grant left is a read of
        # the resumed run, granted at once.
        assert stats.waits == 1
        assert stats.grants == stats.immediate
    assert fake.stats.requests_by_endpoint["create"] == 1


@pytest.mark.asyncio
async def test_two_processes_waiting_with_one_key_make_one_create(fake, store, spawn):
    clock = FakeClock()
    async with (
        frozen_client(fake, store, clock) as a,
        frozen_client(fake, store, clock) as b,
    ):
        calls = [
            spawn(c.run("core:x", authentication=None, inputs=DONE, idempotency_key="k"))
            for c in (a, b, a, b)
        ]
        await eventually(lambda: a.limiter.waiting == 1 and b.limiter.waiting == 1)
        assert await store.get("k") is None
        await clock.advance(30.0)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    handles = [o for o in outcomes if isinstance(o, za.RunHandle)]
    assert handles
    assert {h.id for h in handles} == {handles[0].id}
    # The loser's claim found the key held (or already recorded): never sent.
    assert all(isinstance(o, (za.RunHandle, errors.OutcomeUnknownError)) for o in outcomes)
    assert fake.stats.requests_by_endpoint["create"] == 1
    assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_a_create_refused_with_429_frees_its_key_while_it_waits_to_retry(spawn):
    store, clock = SpyStore(), FakeClock()
    async with FakeZapier(seed=1, clock=clock, rate_limit=(1, 60.0)) as fake:
        async with client_for(fake, clock=clock) as spender:
            await spender.run("core:x", authentication=None)  # the window's one request
        # A client whose limiter has not seen the window spent: its create gets a 429.
        async with client_for(fake, run_store=store, clock=clock, max_rate_limit_wait=None) as c:
            task = spawn(c.run("core:x", authentication=None, inputs=DONE, idempotency_key="k"))
            # The key is freed by a write the client's own task makes: wait for that write.
            await eventually(
                lambda: (
                    fake.stats.rate_limited == 1
                    and c.limiter.waiting == 1
                    and store.writes == ["begin", "fail"]
                )
            )
            assert await store.get("k") is None
            await clock.advance(60.0)
            handle = await task
            await assert_recorded(store, "k", handle.id)
        assert fake.stats.runs_created == 2


class GatedStore(SpyStore):
    """A `SpyStore` whose `begin` answers only once `gate` is set (a slow Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.claiming = asyncio.Event()

    async def begin(self, key: str) -> Claim:
        claim = await super().begin(key)
        self.claiming.set()
        await self.gate.wait()
        return claim


@pytest.mark.asyncio
async def test_a_caller_cancelled_while_its_key_is_claimed_sends_nothing_and_frees_it(fake, spawn):
    store = GatedStore()
    async with client_for(fake, run_store=store) as client:
        task = spawn(client.run("core:x", authentication=None, idempotency_key="k"))
        await store.claiming.wait()  # the slot is granted; the claim is on its way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.gate.set()
        await eventually(lambda: store.writes == ["begin", "fail"])
        assert await store.get("k") is None
        assert client.limiter.in_flight == 0
        assert client.limiter.snapshot().grants == 0  # the slot went back unspent
    assert fake.stats.requests_by_endpoint["create"] == 0


@pytest.mark.asyncio
async def test_a_keyed_create_counts_as_under_way_until_its_run_is_followed(fake, store):
    # The planner weighs a bucket's budget against its runs and the creates under way
    # (`creating_of`): a wave's answers arrive together and each run is planned as its caller
    # resumes. A create under a key is one of them while it is sent, and not once its run
    # is followed (its own plan would count it twice).
    async with client_for(fake, run_store=store) as client:
        engine = client._engine
        seen: list[tuple[str, int]] = []
        send, track = engine.send, engine.track

        async def sending(request: Any, **kwargs: Any) -> Any:
            if request.method == "POST":  # the create (reads go this way too)
                seen.append(("send", sum(engine._creating.values())))
            return await send(request, **kwargs)

        def following(*args: Any, **kwargs: Any) -> Any:
            seen.append(("track", sum(engine._creating.values())))
            return track(*args, **kwargs)

        engine.send, engine.track = sending, following  # type: ignore[method-assign]
        handle = await client.run("core:x", authentication=None, inputs=DONE, idempotency_key="w")
        await handle
        assert seen == [("send", 1), ("track", 0)]
        assert not engine._creating
