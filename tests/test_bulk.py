"""run_many / gather: lazy, bounded fan-out against the real FakeZapier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from _util import client_for, eventually, until

import zapier_async as za
from zapier_async import errors
from zapier_async._bulk import WORKER_TASK_NAME
from zapier_async.callbacks import CallbackReceiver, CallbackVerifier
from zapier_async.journal import JournalState
from zapier_async.testing import FakeClock, FakeZapier


def request(i: int, **inputs: Any) -> za.RunRequest:
    return za.RunRequest(action="core:x", authentication=None, inputs={"i": i, **inputs}, key=i)


def live_workers() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == WORKER_TASK_NAME and not t.done())


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=1, record_requests=False) as server:
        yield server


@pytest.mark.asyncio
async def test_a_lazy_input_is_read_as_needed_and_live_runs_stay_bounded(fake):
    concurrency = 4
    produced = 0

    def requests() -> Iterator[za.RunRequest]:
        nonlocal produced
        for i in range(200):
            produced += 1
            yield request(i)

    seen: set[int] = set()
    async with client_for(fake) as client:
        async with client.run_many(requests(), concurrency=concurrency) as outcomes:
            async for outcome in outcomes:
                assert outcome.ok, outcome.error
                assert outcome.run is not None
                assert outcome.run.succeeded
                assert outcome.run_id == outcome.run.id
                assert outcome.key == outcome.index
                seen.add(outcome.index)
                # Never more than `concurrency` runs followed at once, and the input is read
                # at most 2 * concurrency items ahead of what was consumed.
                assert client.in_flight <= concurrency
                assert produced - len(seen) <= 2 * concurrency
        assert client.metrics().runs_started == 200
    assert seen == set(range(200))
    assert fake.stats.runs_created == 200
    assert fake.stats.duplicate_submissions == 0
    assert live_workers() == 0


@pytest.mark.asyncio
async def test_failing_items_become_error_outcomes_and_the_rest_finish(fake):
    items: list[Any] = [
        request(0),
        {"action": "core:x", "authentication": None, "inputs": {"i": 1}},  # a mapping: fine
        {"action": "core:x", "inputs": {}},  # no authentication key
        {"action": "core:x", "authentication": None, "bogus": 1},  # unknown key
        "not a request",
        request(5, bad=object()),  # inputs that cannot be serialised
        request(6, __fake__={"status": "error"}),  # the run ends with status error
        request(7),
    ]
    async with client_for(fake) as client:
        outcomes = await client.gather(items, concurrency=3)
    assert [o.index for o in outcomes] == list(range(len(items)))
    ok = {o.index for o in outcomes if o.ok}
    assert ok == {0, 1, 7}
    for index in (2, 3, 4, 5):
        assert isinstance(outcomes[index].error, errors.InvalidRequestError)
        assert outcomes[index].run_id is None
    failed = outcomes[6]
    assert isinstance(failed.error, errors.RunFailedError)
    assert failed.run is not None
    assert failed.run.status is za.RunStatus.ERROR
    assert failed.run_id == failed.run.id
    assert isinstance(outcomes[1].request, za.RunRequest)  # mappings are converted
    assert outcomes[4].request == "not a request"  # kept as given when not convertible
    assert fake.stats.runs_created == 4  # invalid items were never sent


@pytest.mark.asyncio
async def test_an_api_error_on_one_create_does_not_stop_the_others(fake):
    fake.inject("500", endpoint="create", count=1)  # before processing: nothing created
    async with client_for(fake) as client:
        outcomes = await client.gather([request(i) for i in range(6)], concurrency=1)
    failures = [o for o in outcomes if not o.ok]
    assert len(failures) == 1
    assert isinstance(failures[0].error, errors.OutcomeUnknownError)
    assert sum(o.ok for o in outcomes) == 5


@pytest.mark.asyncio
async def test_async_iterables_are_accepted(fake):
    async def requests() -> AsyncIterator[dict[str, Any]]:
        for i in range(12):
            await asyncio.sleep(0)
            yield {"action": "core:x", "authentication": "a", "inputs": {"i": i}, "key": f"k{i}"}

    async with client_for(fake) as client:
        outcomes = await client.gather(requests(), concurrency=5)
    assert [o.key for o in outcomes] == [f"k{i}" for i in range(12)]
    assert all(o.ok for o in outcomes)


@pytest.mark.asyncio
async def test_breaking_out_stops_submitting_and_leaves_no_task(fake):
    taken = 0

    def endless() -> Iterator[za.RunRequest]:
        nonlocal taken
        for i in range(10**9):
            taken += 1
            yield request(i)

    async with client_for(fake) as client:
        async for outcome in client.run_many(endless(), concurrency=5):
            assert outcome.ok
            break
        await until(lambda: live_workers() == 0)
        created = fake.stats.runs_created
        assert taken <= 2 * 5 + 1
        assert created <= taken
        # No more submissions after the job stopped.
        await asyncio.sleep(0)
        assert fake.stats.runs_created == created


@pytest.mark.asyncio
async def test_cancelling_the_consumer_keeps_accepted_runs_reachable(fake):
    never_ends = {"__fake__": {"duration": 3600}}  # until fake.complete()
    async with client_for(fake) as client:
        job = client.run_many((request(i, **never_ends) for i in range(10)), concurrency=3)

        async def consume() -> None:
            async for _ in job:
                pass

        consumer = asyncio.create_task(consume())
        await until(lambda: fake.stats.runs_created == 3)
        await until(lambda: client.in_flight == 3)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await job.aclose()
        assert live_workers() == 0
        unfinished = job.unfinished()
        accepted = [o for o in unfinished if o.run_id is not None]
        assert len(accepted) == 3
        assert {o.run_id for o in accepted} == {r.id for r in fake.runs()}
        for outcome in accepted:
            assert isinstance(outcome.error, errors.RunDetachedError)
            handle = client.resume(outcome.run_id)  # still followed by the client
            assert not handle.done()
            fake.complete(outcome.run_id)
            assert (await handle).succeeded
        # Items taken but never sent say so; nothing else was created.
        for outcome in unfinished:
            if outcome.run_id is None:
                assert isinstance(outcome.error, errors.InvalidRequestError)
        assert fake.stats.runs_created == 3
        # A closed job yields nothing more.
        assert [o async for o in job] == []


@pytest.mark.asyncio
async def test_submissions_wait_for_the_budget_instead_of_raising():
    # With max_rate_limit_wait=0, client.run() would raise RateLimitedError as soon as the
    # budget runs out; run_many's bulk submissions wait for it instead.
    async with (
        FakeZapier(seed=2, rate_limit=(5, 0.2), record_requests=False) as fake,
        client_for(fake, max_rate_limit_wait=0.0) as client,
    ):
        outcomes = await client.gather([request(i) for i in range(15)], concurrency=5)
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert fake.stats.runs_created == 15
    assert fake.stats.duplicate_submissions == 0


@pytest.mark.asyncio
async def test_journal_hooks_run_before_the_send_and_after_acceptance(fake):
    calls: list[tuple[str, int, Any]] = []

    def on_sending(index: int, req: za.RunRequest) -> None:
        # The create has not reached the emulator yet.
        calls.append(("sending", index, fake.stats.runs_created))

    def on_submitted(index: int, req: za.RunRequest, run_id: str) -> None:
        assert fake.run(run_id).inputs["i"] == index
        calls.append(("submitted", index, run_id))

    async with client_for(fake) as client:
        outcomes = [
            o
            async for o in client.run_many(
                (request(i) for i in range(4)),
                concurrency=1,
                on_sending=on_sending,
                on_submitted=on_submitted,
            )
        ]
    assert [c[:2] for c in calls] == [
        (kind, i) for i in range(4) for kind in ("sending", "submitted")
    ]
    assert [c[2] for c in calls if c[0] == "sending"] == [0, 1, 2, 3]
    assert [c[2] for c in calls if c[0] == "submitted"] == [o.run_id for o in outcomes]


@pytest.mark.asyncio
async def test_a_raising_on_sending_hook_sends_nothing(fake):
    def on_sending(index: int, req: za.RunRequest) -> None:
        if index == 1:
            raise OSError("disk full")

    async with client_for(fake) as client:
        outcomes = [
            o
            async for o in client.run_many(
                (request(i) for i in range(3)), concurrency=1, on_sending=on_sending
            )
        ]
    by_index = {o.index: o for o in outcomes}
    assert isinstance(by_index[1].error, OSError)
    assert by_index[0].ok
    assert by_index[2].ok
    assert fake.stats.runs_created == 2


@pytest.mark.asyncio
async def test_an_input_iterator_that_raises_is_reported_after_the_runs_in_flight(fake):
    def broken() -> Iterator[za.RunRequest]:
        yield request(0)
        yield request(1)
        raise RuntimeError("bad input source")

    got: list[za.Outcome] = []

    async def consume(client: za.ZapierClient) -> None:
        async for outcome in client.run_many(broken(), concurrency=4):
            got.append(outcome)

    async with client_for(fake) as client:
        with pytest.raises(RuntimeError, match="bad input source"):
            await consume(client)
    assert sorted(o.index for o in got) == [0, 1]
    assert live_workers() == 0


def test_run_request_validates_at_construction():
    with pytest.raises(errors.InvalidRequestError, match="action"):
        za.RunRequest(action="", authentication=None)
    with pytest.raises(errors.InvalidRequestError, match="authentication"):
        za.RunRequest(action="core:x", authentication=5)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequestError, match="inputs"):
        za.RunRequest(action="core:x", authentication=None, inputs=[1])  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequestError, match="required"):
        za.RunRequest.from_mapping({"action": "core:x"})
    req = za.RunRequest.from_mapping({"action": "core:x", "authentication": None, "key": 3})
    assert req.inputs == {}
    assert req.key == 3
    assert req.callback_url is None


@pytest.mark.asyncio
async def test_concurrency_must_be_positive(fake):
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidRequestError, match="concurrency"):
            client.run_many([], concurrency=0)
        assert await client.gather([]) == []


@pytest.mark.asyncio
async def test_run_many_built_on_a_view_sends_with_its_credential_and_resumes_with_it():
    from zapier_async._bulk import RunMany

    async with (
        FakeZapier(seed=1, tokens={"user"}) as server,
        client_for(server, auth=za.BearerToken("partner")) as client,
    ):
        view = client.with_auth(za.BearerToken("user"))
        # The client's own token is refused: every create and read must carry the view's.
        async with RunMany(view, [request(i) for i in range(3)], concurrency=2) as job:
            outcomes = [o async for o in job]
        assert sorted(o.index for o in outcomes) == [0, 1, 2]
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]


def test_run_many_refuses_an_object_that_is_not_a_client_or_view():
    from zapier_async._bulk import RunMany

    with pytest.raises(errors.InvalidRequestError) as caught:
        RunMany(object(), [])  # type: ignore[arg-type]
    assert caught.value.field == "client"


class RecordingJournal:
    """A `Journal` that keeps in memory what `run_many` told it."""

    def __init__(self) -> None:
        self.sent: set[Any] = set()
        self.accepted: dict[Any, str] = {}
        self.tokens: dict[Any, str | None] = {}

    def load(self) -> JournalState:
        return JournalState()

    def sending(self, key: Any) -> None:
        self.sent.add(key)

    def submitted(self, key: Any, run_id: str, token: str | None) -> None:
        self.accepted[key] = run_id
        self.tokens[key] = token

    def finished(self, key: Any, *, ok: bool, run_id: str | None, error: str | None) -> None:
        raise AssertionError("no outcome was handed over")


@pytest.mark.asyncio
async def test_creates_on_the_wire_when_the_job_stops_are_reported_by_run_id_once_accepted():
    # Three creates are held at the emulator (a long "slow" fault, released by the test),
    # two are accepted at once, two items wait for a slot the client's budget does not give:
    # the job is closed then. The held creates finish in the client's tasks (orphaned runs);
    # `unfinished()` must say "outcome unknown" while they are on the wire and give their run
    # ids once accepted, so a retry of what it calls "not sent" duplicates nothing.
    items = [request(i, __fake__={"duration": 3600}) for i in range(12)]
    clock = FakeClock()  # no poll is due unless the test moves it
    async with FakeZapier(seed=3, slow_delay=3600.0, record_requests=False) as fake:
        fake.inject("slow", endpoint="create", count=3)  # held before processing
        limiter = za.Limiter(
            clock=clock, rate=(5, 3600.0), spend_window=True, interactive_reserve=0
        )
        async with client_for(fake, clock=clock, limiter=limiter) as client:
            submitted: list[str] = []
            journal = RecordingJournal()
            job = client.run_many(
                iter(items),
                concurrency=7,
                on_submitted=lambda i, r, run_id: submitted.append(run_id),
                journal=journal,
            )
            consumer = asyncio.create_task(anext(job))
            await until(lambda: fake.stats.faults["slow"] == 3 and len(submitted) == 2)
            await until(lambda: job.taken == 7)
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
            await job.aclose()
            assert live_workers() == 0

            on_the_wire = job.unfinished()
            assert len(on_the_wire) == 7
            unknown = [o for o in on_the_wire if isinstance(o.error, errors.OutcomeUnknownError)]
            assert len(unknown) == 3
            assert all(o.run_id is None for o in unknown)
            accepted = {o.run_id for o in on_the_wire if o.run_id is not None}
            assert accepted == {r.id for r in fake.runs()}
            assert len(accepted) == 2

            assert fake.release_delayed() == 3
            await eventually(lambda: len(client.orphaned_runs) == 3)
            assert fake.stats.runs_created == 5
            unfinished = job.unfinished()
            assert [o.index for o in unfinished] == [o.index for o in on_the_wire]
            by_id = {o.run_id: o for o in unfinished if o.run_id is not None}
            # Every run Zapier accepted is reported by its id, the orphaned ones included.
            assert set(by_id) == {r.id for r in fake.runs()}
            assert {h.id for h in client.orphaned_runs} <= set(by_id)
            for run_id, outcome in by_id.items():
                assert isinstance(outcome.error, errors.RunDetachedError)
                assert fake.run(run_id).inputs["i"] == outcome.key  # the right item's run
                assert client.resume(run_id) is not None  # still followed by the client
            # The hook and the journal learnt the late ids too (a resumed job follows them).
            assert sorted(submitted) == sorted(by_id)
            assert journal.accepted == {o.key: o.run_id for o in by_id.values()}
            assert journal.sent == set(journal.accepted)  # the five creates that went out
            for key, token in journal.tokens.items():  # resumable from the journal
                assert token is not None
                assert client.resume(token).id == journal.accepted[key]
            not_sent = [o for o in unfinished if o.run_id is None]
            assert len(not_sent) == 2
            assert all(isinstance(o.error, errors.InvalidRequestError) for o in not_sent)
        # A later invocation retries what was never sent: the unfinished items not sent,
        # and the items never taken from the input. Nothing is created twice.
        retry = [o.request for o in not_sent] + items[job.taken :]
        async with client_for(fake) as client:
            outcomes = [
                o
                async for o in client.run_many(
                    retry, concurrency=4, on_submitted=lambda i, r, run_id: fake.complete(run_id)
                )
            ]
            assert len(outcomes) == 7
            assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert fake.stats.runs_created == 12
    assert fake.stats.duplicate_submissions == 0
    assert sorted(r.inputs["i"] for r in fake.runs()) == list(range(12))


@pytest.mark.asyncio
async def test_a_jobs_last_reads_are_not_held_back_until_its_window_ends():
    # 40 requests per 300 s (Zapier's per-user budget has this shape), of which background
    # work leaves 4 to awaited calls until the window may end. 19 runs of 1 s, each read
    # once at 2 s, need 38: the last two reads would wait for the reserve's release, just
    # before the window ends, 298 s later (36 requests sent by 60 s before the fix). Once
    # the input is exhausted they are what the job's caller waits for: interactive priority.
    clock = FakeClock()
    policy = za.PollPolicy(initial=2.0, factor=1.5, cap=60.0, jitter=0.0)
    fake = FakeZapier(seed=1, clock=clock, rate_limit=(40, 300.0), durations=1.0)
    async with fake, client_for(fake, clock=clock, poll_policy=policy) as client:
        requests = [request(i) for i in range(19)]
        job = asyncio.ensure_future(_collect(client.run_many(requests, concurrency=50)))
        while not job.done() and clock.monotonic() < 60.0:
            await clock.advance(0.25)
        assert job.done(), f"{fake.stats.requests} requests sent; the rest held back"
        outcomes = job.result()
        assert [o.ok for o in outcomes] == [True] * 19, [o.error for o in outcomes]
        assert fake.stats.runs_created == 19
        assert fake.stats.rate_limited == 0


async def _collect(job: za.RunMany) -> list[za.Outcome]:
    async with job as outcomes:
        return [outcome async for outcome in outcomes]


@pytest.mark.asyncio
async def test_a_jobs_last_creates_are_not_held_back_until_its_window_ends(served):
    # 40 requests per 300 s, of which background work leaves 4 to awaited calls until the
    # window may end. 38 runs resolved by callback need 38 creates and no read: the input is
    # exhausted at once (concurrency 50), so every create waits at BULK, and the last ones
    # would wait for the reserve's release, just before the window ends (37 requests sent by
    # 60 s before the fix). Once the input is exhausted they are what the job's caller waits
    # for: the job's lane raises them, while they wait, to interactive priority.
    clock = FakeClock()
    fake = FakeZapier(seed=1, clock=clock, rate_limit=(40, 300.0), durations=1.0)
    polling = za.CallbackPolling(first_delay=240.0, interval=60.0)  # no read before 60 s
    options = {"allow_insecure_callback_url_for_testing": True, "callback_polling": polling}
    async with fake, client_for(fake, clock=clock, **options) as client:
        receiver = CallbackReceiver(client, CallbackVerifier(jwks_url=fake.jwks_url, clock=clock))
        url = await served(receiver.app()) + "/zapier/callback"
        requests = [
            za.RunRequest(action="core:x", authentication=None, inputs={"i": i}, callback_url=url)
            for i in range(38)
        ]
        job = asyncio.ensure_future(_collect(client.run_many(requests, concurrency=50)))
        while not job.done() and clock.monotonic() < 60.0:
            await until(lambda: fake.actions.callbacks_in_flight == 0)
            await clock.advance(0.25)
        await until(lambda: job.done() or fake.actions.callbacks_in_flight == 0)
        assert job.done(), f"{fake.stats.requests} requests sent; the rest held back"
        outcomes = job.result()
        assert [o.ok for o in outcomes] == [True] * 38, [o.error for o in outcomes]
        assert fake.stats.runs_created == 38
        assert fake.stats.polls == 0  # resolved by callbacks: the creates were the tail
        assert fake.stats.rate_limited == 0
        assert receiver.stats.delivered == 38


@pytest.mark.asyncio
async def test_an_awaited_run_goes_before_a_drained_jobs_queued_requests():
    # 10 requests per 10 s. A job of 30 runs takes its whole list at once (concurrency 50),
    # so its lane is raised at once: after the first window its other 20 creates (and its
    # first reads) wait at interactive priority for the windows to come. A web call's run()
    # arriving at 5 s is sent first in the next window (11 s): a raised lane goes after the
    # requests natively at its priority. Before, it queued behind the whole lane (28 s
    # away): run() failed fast with RateLimitedError (the default max_rate_limit_wait of
    # 10 s), and without the cap it was sent at 33 s, two windows late.
    clock = FakeClock()
    fake = FakeZapier(seed=1, clock=clock, rate_limit=(10, 10.0), durations=1.0)
    async with fake, client_for(fake, clock=clock) as client:
        requests = [request(i) for i in range(30)]
        job = asyncio.ensure_future(_collect(client.run_many(requests, concurrency=50)))
        while clock.monotonic() < 5.0:
            await clock.advance(0.25)
        assert fake.stats.requests == 10  # the first window is spent
        assert _waiting(client)[0] >= 20  # the job's lane, raised
        web = asyncio.ensure_future(client.run("core:web", authentication=None, inputs={}))
        while not job.done() and clock.monotonic() < 120.0:
            await clock.advance(0.25)
        assert job.done()
        handle = web.result()  # admitted: not refused as behind the lane
        assert [o.ok for o in job.result()] == [True] * 30
        second_window = [r for r in fake.requests if r.received_at > 5.0]
        first = second_window[0]
        assert first.endpoint == "create"
        assert first.json["data"]["action"] == "core:web"
        assert first.received_at < 12.0
        assert (await handle).status is za.RunStatus.SUCCESS
        assert fake.stats.rate_limited == 0


def _waiting(client: za.ZapierClient) -> tuple[int, int, int]:
    """Requests waiting at the client's limiter: (interactive, poll, bulk)."""
    return client.limiter.pressure().waiting_by_priority


@pytest.mark.asyncio
async def test_a_list_is_known_done_when_its_last_item_is_taken(fake):
    # Three items, three workers, the budget frozen: every create waits for a slot. A list
    # says it is done when its last item is taken, so its creates wait at interactive
    # priority; a generator is known done only when a worker asks for a fourth item (here
    # none does before a run ends), so its creates stay bulk work.
    clock = FakeClock()
    async with client_for(fake, clock=clock) as client:
        client.limiter.freeze(30.0)
        as_list = asyncio.ensure_future(
            _collect(client.run_many([request(i) for i in range(3)], concurrency=3))
        )
        await eventually(lambda: _waiting(client) == (3, 0, 0))
        as_list.cancel()
        await asyncio.gather(as_list, return_exceptions=True)
        generated = asyncio.ensure_future(
            _collect(client.run_many((request(i) for i in range(3)), concurrency=3))
        )
        await eventually(lambda: sum(_waiting(client)) == 3)
        assert _waiting(client) == (0, 0, 3)
        generated.cancel()
        await asyncio.gather(generated, return_exceptions=True)
    assert fake.stats.requests == 0


@pytest.mark.asyncio
async def test_reads_waiting_when_the_input_runs_out_are_raised_with_it():
    # Two runs of 30 s; their reads wait at the frozen limiter as background work (POLL)
    # while the input may still bring more. When it runs out, the reads already waiting go
    # at interactive priority (they used to stay POLL, behind the interactive reserve,
    # until their window ended).
    clock = FakeClock()
    gate = asyncio.Event()

    async def source() -> AsyncIterator[za.RunRequest]:
        yield request(0)
        yield request(1)
        await gate.wait()

    async with (
        FakeZapier(seed=1, clock=clock, durations=30.0) as server,
        client_for(server, clock=clock) as client,
    ):
        job = asyncio.ensure_future(_collect(client.run_many(source(), concurrency=3)))
        await eventually(lambda: server.stats.runs_created == 2 and client.limiter.in_flight == 0)
        client.limiter.freeze(600.0)
        for _ in range(40):  # let the cadence's next reads come due: they wait for a slot
            await clock.advance(0.5)
            if _waiting(client) == (0, 2, 0):
                break
        assert _waiting(client) == (0, 2, 0)
        gate.set()
        await eventually(lambda: _waiting(client) == (2, 0, 0))
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_jobs_run_resumed_by_a_caller_is_read_as_the_callers():
    # A job's run is background work; `client.resume(run_id)` hands the same handle to a
    # caller who awaits it: its reads then go at interactive priority, as any awaited run's.
    clock = FakeClock()
    gate = asyncio.Event()

    async def source() -> AsyncIterator[za.RunRequest]:
        yield request(0)
        await gate.wait()

    async with (
        FakeZapier(seed=1, clock=clock, durations=30.0) as server,
        client_for(server, clock=clock) as client,
    ):
        ids: list[str] = []
        job = asyncio.ensure_future(
            _collect(
                client.run_many(
                    source(), concurrency=2, on_submitted=lambda _i, _r, run_id: ids.append(run_id)
                )
            )
        )
        await eventually(lambda: bool(ids) and client.limiter.in_flight == 0)
        client.limiter.freeze(600.0)
        mine = client.resume(ids[0])
        waiter = asyncio.ensure_future(mine.result())
        for _ in range(40):
            await clock.advance(0.5)
            if sum(_waiting(client)):
                break
        assert _waiting(client) == (1, 0, 0)
        for task in (waiter, job):
            task.cancel()
        await asyncio.gather(waiter, job, return_exceptions=True)


async def _knife_edge_job(rate_window: float | None) -> tuple[float, int, int]:
    """20 runs of 1 s against 20 requests per 5 s (windows from their first request): 40
    requests, exactly two windows. When the job ended, its runs, and the 429s."""
    clock = FakeClock()
    fake = FakeZapier(seed=1, clock=clock, rate_limit=(20, 5.0), durations=1.0)
    async with fake, client_for(fake, clock=clock, rate_window=rate_window) as client:
        requests = [request(i) for i in range(20)]
        job = asyncio.ensure_future(_collect(client.run_many(requests, concurrency=50)))
        while not job.done() and clock.monotonic() < 30.0:
            await clock.advance(0.05)
        assert job.done()
        assert all(o.ok for o in job.result())
        return clock.monotonic(), fake.stats.runs_created, fake.stats.rate_limited


async def _short_jobs(jobs: int, durations: Any = (0.2, 1.5)) -> list[tuple[float, int, int]]:
    """`jobs` short jobs one after another on one client told the windows' length, each
    from a fresh window: 100 runs of 0.2-1.5 s (or `durations`) against 100 requests per
    5 s, concurrency 50, the default cadence. Per job: its wall time, its requests and its
    429s."""
    clock = FakeClock()
    fake = FakeZapier(seed=1, clock=clock, rate_limit=(100, 5.0), durations=durations)
    out: list[tuple[float, int, int]] = []
    async with (
        fake,
        client_for(fake, clock=clock, rate_window=5.0, poll_policy=za.PollPolicy()) as client,
    ):
        for k in range(jobs):
            before, started = fake.stats, clock.monotonic()
            requests = [request(1000 * k + i) for i in range(100)]
            job = asyncio.ensure_future(_collect(client.run_many(requests, concurrency=50)))
            while not job.done() and clock.monotonic() < started + 30.0:
                await clock.advance(0.01)
            assert job.done()
            assert all(o.ok for o in job.result())
            after = fake.stats
            out.append(
                (
                    clock.monotonic() - started,
                    after.requests - before.requests,
                    after.rate_limited - before.rate_limited,
                )
            )
            await clock.advance(6.0)  # the next job starts a window of its own
        assert not client._engine._creating  # every create counted is one done
    return out


@pytest.mark.asyncio
async def test_a_short_job_fills_two_windows_on_a_fresh_and_on_a_warm_client():
    # N = L: 200 requests fill two windows exactly, so a read that finds its run still
    # going costs a third window. The answers of a wave of creates arrive together and
    # each run is planned as its caller's task resumes: the runs not followed yet were not
    # counted (nor on the wire), so the first runs of the wave read as a job of a few runs
    # and got the slack plan, an early read each: 10.0 s and 215-229 requests per job here.
    for wall, requests, refused in await _short_jobs(3):
        assert (requests, refused) == (200, 0)
        assert wall <= 7.5


@pytest.mark.asyncio
async def test_one_slow_run_does_not_slow_the_jobs_after_it():
    # A worker's client lives for days. One run of its action took 20 s (the 50th; the
    # others 0.2-1.5 s). Learnt as the longest seen for the client's life, it put the one
    # poll of a bound budget's plan at 20 s, which no job takes: every later short job
    # fell back to trimmed plans and took a third window (10.0 s and 209-228 requests per
    # job, for 1,300 runs after it). Now such a stray is not learnt from.
    made = 0

    def durations(rng: Any) -> float:
        nonlocal made
        made += 1
        return 20.0 if made == 50 else float(rng.uniform(0.2, 1.5))

    jobs = await _short_jobs(4, durations=durations)
    assert jobs[0][0] >= 20.0  # the job that waited for its slow run
    for wall, requests, refused in jobs[1:]:
        assert (requests, refused) == (200, 0)
        assert wall <= 7.5


@pytest.mark.asyncio
async def test_a_known_window_length_turns_the_window_on_time():
    # The emulator writes Reset in whole epoch seconds: from the headers the end of the
    # first window is known to a second, so requests are held back for the turn (boundary
    # probes: a create and reads wait for them, one lands in a third window). Told the
    # windows' length, the client knows the end to the round trip and holds nothing back:
    # 20 creates in the first window, 20 reads as the second opens (11.5 s before).
    known_at, runs, refused = await _knife_edge_job(rate_window=5.0)
    assert (runs, refused) == (20, 0)
    assert known_at <= 5.3
    learnt_at, runs, refused = await _knife_edge_job(rate_window=None)
    assert (runs, refused) == (20, 0)
    assert learnt_at >= known_at + 0.5
