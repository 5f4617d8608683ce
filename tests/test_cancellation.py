"""Every public await, cancelled: no slot left counted, no handle hung, no task leaked, no run lost.

DESIGN.md: "a caller cancelled at any await (waiting for a slot, during a create, awaiting a
handle, during aclose()) leaves no slot counted, no handle hung, no run id lost". Each test
cancels one public awaitable of `ZapierClient` or `RunHandle` at a chosen moment and checks
those post-conditions.

The real client talks over loopback to `FakeZapier` through `Gate`, a small aiohttp.web proxy
whose routes can be held: a held request waits at the server until the test releases it, so
a cancel lands exactly while the request is on the wire (an event, not a sleep). The client
runs on a `FakeClock`, so nothing is polled unless the test moves time: when no request is in
flight, the limiter must count none, and a request with ``max_rate_limit_wait=0`` must be
granted at once (a slot left counted would make it fail with `RateLimitedError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp  # noqa: TID251 (the proxy forwards to the emulator)
import anyio
import attrs
import pytest
from _util import FAST_POLLS, FAST_RETRIES, eventually, until
from aiohttp import web  # noqa: TID251

import zapier_async as za
from zapier_async import errors
from zapier_async.testing import FAKE_APP_ID, FakeClock, FakeZapier

# --- the gate: a proxy whose routes can be held ----------------------------------------------


@attrs.define(eq=False)
class Hold:
    """Requests matching `method` and a path starting with `prefix` wait until `release()`."""

    method: str
    prefix: str
    arrived: asyncio.Event = attrs.field(factory=asyncio.Event)
    released: asyncio.Event = attrs.field(factory=asyncio.Event)
    count: int = 0

    def matches(self, request: web.Request) -> bool:
        return request.method == self.method and request.path.startswith(self.prefix)

    def release(self) -> None:
        self.released.set()


_FORWARDED = ("authorization", "content-type")


class Gate:
    """An aiohttp.web proxy on 127.0.0.1 in front of a `FakeZapier`, with holdable routes."""

    def __init__(self, fake: FakeZapier) -> None:
        self.fake = fake
        self.holds: list[Hold] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def hold(self, method: str, prefix: str) -> Hold:
        hold = Hold(method, prefix)
        self.holds.append(hold)
        return hold

    def release_all(self) -> None:
        for hold in self.holds:
            hold.release()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        for hold in self.holds:
            if hold.matches(request) and not hold.released.is_set():
                hold.count += 1
                hold.arrived.set()
                await hold.released.wait()
                break
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        async with self._session.request(
            request.method, self.fake.url + request.path_qs, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            kept = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() in ("content-type", "retry-after") or k.lower().startswith("x-")
            }
            return web.Response(status=answer.status, body=payload, headers=kept)

    async def __aenter__(self) -> Gate:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release_all()
        assert self._runner is not None
        assert self._session is not None
        await self._runner.cleanup()
        await self._session.close()


# --- the world: emulator, gate, client, and the post-conditions --------------------------------


@attrs.define(eq=False)
class World:
    fake: FakeZapier
    gate: Gate
    client: za.ZapierClient
    clock: FakeClock
    events: list[Any]

    def started(self) -> set[str]:
        """Run ids announced with a "started" RunEvent."""
        return {e.run_id for e in self.events if isinstance(e, za.RunEvent) and e.kind == "started"}

    def server_ids(self) -> set[str]:
        return {record.id for record in self.fake.runs()}

    def creates(self) -> int:
        return self.fake.stats.requests_by_endpoint.get("create", 0)

    async def quiet(self) -> None:
        """Wait until the limiter counts no slot in flight and no waiter (nothing is sent)."""
        await eventually(lambda: self._quiet(self.client.limiter.snapshot()))

    @staticmethod
    def _quiet(stats: za.LimiterStats) -> bool:
        return stats.in_flight == 0 and stats.waiting == 0

    async def assert_slots_free(self, run_id: str | None = None) -> None:
        """No slot left counted, and a request that may not wait is granted at once."""
        await self.quiet()
        stats = self.client.limiter.snapshot()
        assert stats.in_flight == 0, stats
        assert stats.waiting == 0, stats
        # Nor a create counted as under way (the planner would price runs that never come).
        assert not self.client._engine._creating
        if run_id is None:
            handle = await self.client.run(
                "core:later", authentication=None, inputs={}, max_rate_limit_wait=0
            )
            run_id = handle.id
        run = await self.client.get_run(run_id, max_rate_limit_wait=0)
        assert run.id == run_id
        await self.quiet()

    async def follow(self, predicate: Callable[[], bool]) -> None:
        """Move the client's clock (polls go out, over real loopback) until `predicate()`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError("condition not reached within 10s")
            await self.clock.advance(0.5)
            await asyncio.sleep(0.002)

    def all_runs_reachable(self) -> None:
        """Every run the server made is announced by id (no run id lost).

        Except, one each, creates whose outcome the client said it could not know
        (`OutcomeUnknownError` to the caller, or logged for a caller that left).
        """
        missing = self.server_ids() - self.started()
        unknown = self.client.metrics().outcome_unknown
        assert len(missing) <= unknown, f"runs on the server nobody was told about: {missing}"


_PACKAGE_DIR = os.path.dirname(os.path.abspath(za.__file__)) + os.sep
_TESTING_DIR = os.path.join(_PACKAGE_DIR, "testing") + os.sep


def _our_tasks() -> list[asyncio.Task[Any]]:
    """Live tasks running the client's code (not the emulator's or the test's)."""
    out = []
    for task in asyncio.all_tasks():
        if task.done() or task is asyncio.current_task():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        filename = os.path.abspath(code.co_filename) if code is not None else ""
        # The package's own files, wherever the checkout lives (its path may itself contain
        # "zapier_async"), but not the emulator's.
        ours = filename.startswith(_PACKAGE_DIR) and not filename.startswith(_TESTING_DIR)
        if ours or task.get_name().startswith("zapier_async"):
            out.append(task)
    return out


@contextlib.asynccontextmanager
async def world(**client_options: Any) -> AsyncIterator[World]:
    clock = FakeClock()
    async with FakeZapier(durations=math.inf) as fake, Gate(fake) as gate:
        events: list[Any] = []
        options: dict[str, Any] = {
            "auth": za.BearerToken("cancel-test-token"),
            "base_url": gate.url,
            "clock": clock,
            "poll_policy": FAST_POLLS,
            "retry_policy": FAST_RETRIES,
            "rng": random.Random(3),
            "on_event": events.append,
        }
        options.update(client_options)
        client = za.ZapierClient(**options)
        w = World(fake, gate, client, clock, events)
        try:
            yield w
        finally:
            gate.release_all()
            await client.aclose()
        # No task leaked: the poller, polls and creates on the wire have all ended.
        await until(lambda: not _our_tasks())
        w.all_runs_reachable()


async def cancelled_on(hold: Hold, work: Awaitable[Any]) -> asyncio.Task[Any]:
    """Run `work` as a task, cancel it once `hold` has a request, return the cancelled task.

    The task must end with CancelledError at once, while the held request is still held:
    a cancelled caller does not wait for its POST.
    """
    task: asyncio.Task[Any] = asyncio.ensure_future(work)
    await asyncio.wait_for(hold.arrived.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert not hold.released.is_set()
    return task


# --- run(): waiting for the limiter, and during the create -------------------------------------


@pytest.mark.asyncio
async def test_run_cancelled_waiting_for_a_slot_sends_nothing_and_holds_no_slot():
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        first = asyncio.ensure_future(w.client.run("core:a", authentication=None, inputs={}))
        await asyncio.wait_for(hold.arrived.wait(), 10)
        # A cold client probes the budget with one request at a time: the second waits (with
        # no cap it waits at the limiter; with one, admission waits for the probe's answer:
        # see tests/test_admission.py).
        second = asyncio.ensure_future(
            w.client.run("core:b", authentication=None, inputs={}, max_rate_limit_wait=None)
        )
        await until(lambda: w.client.limiter.snapshot().waiting == 1)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert w.client.limiter.snapshot().waiting == 0
        hold.release()
        handle = await asyncio.wait_for(first, 10)
        assert w.server_ids() == {handle.id}  # the cancelled one sent nothing
        assert hold.count == 1
        await w.assert_slots_free(handle.id)
        assert w.client.orphaned_runs == ()


async def _cancel_by_task(client: za.ZapierClient, hold: Hold) -> None:
    await cancelled_on(hold, client.run("core:x", authentication=None, inputs={"k": 1}))


async def _cancel_by_wait_for(client: za.ZapierClient, hold: Hold) -> None:
    # The deadline is the thing under test: wait_for gives up while the POST is held.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.run("core:x", authentication=None, inputs={"k": 1}), 0.2)
    assert hold.count == 1
    assert not hold.released.is_set()


async def _cancel_by_anyio_scope(client: za.ZapierClient, hold: Hold) -> None:
    reached = False
    with anyio.CancelScope() as scope:

        async def cancel_when_held() -> None:
            await hold.arrived.wait()
            scope.cancel()

        watcher = asyncio.ensure_future(cancel_when_held())
        await client.run("core:x", authentication=None, inputs={"k": 1})
        reached = True
    await watcher
    assert scope.cancelled_caught
    assert not reached
    assert not hold.released.is_set()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "cancel",
    [_cancel_by_task, _cancel_by_wait_for, _cancel_by_anyio_scope],
    ids=lambda f: f.__name__,
)
async def test_run_cancelled_during_its_create_keeps_the_run(cancel, caplog):
    caplog.set_level(logging.WARNING, logger="zapier_async")
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        await cancel(w.client, hold)
        # The caller is gone; the POST is still held at the server. Let it through.
        hold.release()
        await eventually(lambda: len(w.client.orphaned_runs) == 1)
        (orphan,) = w.client.orphaned_runs
        assert w.server_ids() == {orphan.id}
        assert orphan.id in w.started()  # a listener (a journal) learnt the id
        assert w.creates() == 1  # not re-sent
        (record,) = [r for r in caplog.records if "created for a caller that was" in r.message]
        assert record.levelno == logging.WARNING
        assert record.run_id == orphan.id  # type: ignore[attr-defined]
        # The run is followed to its end like any other.
        assert not orphan.done()
        w.fake.complete(orphan.id)
        await w.follow(orphan.done)
        run = await orphan
        assert run.id == orphan.id
        await w.assert_slots_free(orphan.id)


@pytest.mark.asyncio
async def test_run_cancelled_as_its_answer_arrives_keeps_the_run():
    # The answer is in and the caller's wake-up is scheduled, but the caller is cancelled
    # before it resumes: asyncio then raises CancelledError in it, and the handle it would
    # have returned must not be lost.
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        caller = asyncio.ensure_future(w.client.run("core:x", authentication=None, inputs={}))
        await asyncio.wait_for(hold.arrived.wait(), 10)
        (exchange,) = w.client._pipeline.wire_tasks
        # Runs right after the pipeline handed the answer to the caller's waiter.
        exchange.add_done_callback(lambda _: caller.cancel())
        hold.release()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, 10)
        (orphan,) = w.client.orphaned_runs
        assert w.server_ids() == {orphan.id}
        await w.assert_slots_free(orphan.id)


@pytest.mark.asyncio
async def test_run_cancelled_during_the_action_lookup_creates_nothing():
    async with world() as w:
        hold = w.gate.hold("GET", "/v2/actions")
        await cancelled_on(
            hold,
            w.client.run(app=FAKE_APP_ID, action_key="send_message", authentication=None),
        )
        hold.release()
        await w.assert_slots_free()
        assert w.creates() == 1  # only assert_slots_free's own run


@pytest.mark.asyncio
async def test_a_create_refused_after_its_caller_left_is_not_sent_again():
    # A 503 + Retry-After answer (a refusal) to a create whose caller was cancelled: no run
    # was made, and none is made for nobody by a retry.
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        w.fake.inject("503", endpoint="create", count=1)  # refused, with Retry-After
        await cancelled_on(hold, w.client.run("core:x", authentication=None, inputs={}))
        hold.release()
        await w.quiet()
        assert w.creates() == 1
        assert w.server_ids() == set()
        assert w.client.orphaned_runs == ()


@pytest.mark.asyncio
async def test_a_create_of_unknown_outcome_after_its_caller_left_is_reported(caplog):
    caplog.set_level(logging.WARNING, logger="zapier_async")
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        w.fake.inject("502", endpoint="create", after_create=True, count=1)
        await cancelled_on(hold, w.client.run("core:x", authentication=None, inputs={}))
        hold.release()
        await eventually(lambda: w.client.metrics().outcome_unknown == 1)
        assert w.creates() == 1  # never re-sent
        assert any("caller was cancelled" in r.message for r in caplog.records)
        assert len(w.server_ids()) == 1  # the run exists; its id is unknown, and said so
        assert w.client.orphaned_runs == ()
        await w.assert_slots_free()


# --- the other creates: run_action, stored_actions.run -------------------------------------------


@pytest.mark.asyncio
async def test_run_action_cancelled_during_its_create_keeps_the_run():
    async with world() as w:
        hold = w.gate.hold("POST", "/actions/v1/runs")
        await cancelled_on(
            hold,
            w.client.run_action(
                selected_api="SlackCLIAPI@1.0.0", action_key="send", action_type="write"
            ),
        )
        hold.release()
        await eventually(lambda: len(w.client.orphaned_runs) == 1)
        (orphan,) = w.client.orphaned_runs
        assert orphan.locator.kind == "actions_v1"
        assert orphan.id in w.started()
        await w.assert_slots_free()


@pytest.mark.asyncio
async def test_stored_actions_cancelled_mid_request_leave_no_slot_and_keep_runs():
    async with world() as w:
        stored = await w.client.stored_actions.create(
            connection_id="c", selected_api="A@1", action_key="k", action_type="write"
        )
        # Reads and updates cancelled on the wire.
        for method, call in [
            ("GET", lambda: w.client.stored_actions.get(stored.id)),
            ("GET", w.client.stored_actions.list),
            ("PATCH", lambda: w.client.stored_actions.update(stored.id, inputs={"a": 1})),
        ]:
            hold = w.gate.hold(method, "/actions/v1/stored-actions")
            await cancelled_on(hold, call())
            hold.release()
            await w.quiet()
        # Its run, cancelled during the create: the run is kept.
        hold = w.gate.hold("POST", f"/actions/v1/stored-actions/{stored.id}/run")
        await cancelled_on(hold, w.client.stored_actions.run(stored.id, inputs={"q": 1}))
        hold.release()
        await eventually(lambda: len(w.client.orphaned_runs) == 1)
        (orphan,) = w.client.orphaned_runs
        assert orphan.locator.stored_action_id == stored.id
        assert orphan.id in w.started()
        # A stored action created for a caller that left: the request completes (it is not
        # cut off mid-body) and holds no slot.
        hold = w.gate.hold("POST", "/actions/v1/stored-actions")
        await cancelled_on(
            hold,
            w.client.stored_actions.create(
                connection_id="c", selected_api="A@1", action_key="k2", action_type="write"
            ),
        )
        hold.release()
        await w.quiet()  # the exchange ended: its slot was answered
        assert len(await w.client.stored_actions.list()) == 2
        hold = w.gate.hold("DELETE", "/actions/v1/stored-actions")
        await cancelled_on(hold, w.client.stored_actions.delete(stored.id))
        hold.release()
        await w.assert_slots_free()


# --- reads: get_run, discovery ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_run_cancelled_mid_request_leaves_no_slot():
    async with world() as w:
        handle = await w.client.run("core:x", authentication=None, inputs={})
        hold = w.gate.hold("GET", f"/v2/action-runs/{handle.id}")
        await cancelled_on(hold, w.client.get_run(handle.id))
        hold.release()
        await w.assert_slots_free(handle.id)


def _discovery_calls(client: za.ZapierClient) -> list[tuple[str, str, Callable[[], Any]]]:
    async def first_connection() -> None:
        async for _ in client.list_connections(FAKE_APP_ID):
            break

    async def first_app() -> None:
        async for _ in client.list_apps("slack"):
            break

    return [
        ("GET", "/v2/apps", lambda: client.find_app("Slack")),
        ("GET", "/v2/apps", first_app),
        ("GET", "/v2/actions", lambda: client.list_actions(FAKE_APP_ID)),
        ("GET", "/v2/actions", lambda: client.find_action(FAKE_APP_ID, "send_message")),
        ("GET", "/v2/authentications", lambda: client.find_connection(FAKE_APP_ID)),
        ("GET", "/v2/authentications", first_connection),
        (
            "POST",
            "/v2/actions/",
            lambda: client.action_inputs("core:send_message", authentication=None),
        ),
        (
            "POST",
            "/v2/actions/",
            lambda: client.action_choices("core:send_message", "channel", authentication=None),
        ),
        (
            "POST",
            "/v2/actions/",
            lambda: client.action_outputs("core:send_message", authentication=None),
        ),
    ]


@pytest.mark.asyncio
async def test_discovery_cancelled_mid_request_leaves_no_slot():
    async with world() as w:
        for method, prefix, call in _discovery_calls(w.client):
            hold = w.gate.hold(method, prefix)
            await cancelled_on(hold, call())
            hold.release()
            await w.quiet()
        await w.assert_slots_free()
        assert w.creates() == 1  # assert_slots_free's own run only


# --- handles: await, result(timeout=), updates() -------------------------------------------------


async def _await(handle: za.RunHandle) -> None:
    await handle


async def _result_with_timeout(handle: za.RunHandle) -> None:
    await handle.result(timeout=3600)


async def _iterate_updates(handle: za.RunHandle) -> None:
    async for _ in handle.updates():
        pass


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "wait", [_await, _result_with_timeout, _iterate_updates], ids=lambda f: f.__name__
)
async def test_awaiting_a_handle_cancelled_hangs_nothing(wait):
    async with world() as w:
        handle = await w.client.run("core:x", authentication=None, inputs={})
        other = await w.client.run("core:y", authentication=None, inputs={})
        patient = asyncio.ensure_future(handle.result())
        gone = asyncio.ensure_future(wait(handle))
        gone_other = asyncio.ensure_future(wait(other))
        await until(lambda: handle.awaited and other.awaited)
        scheduled = w.client._poller.scheduled
        gone.cancel()
        gone_other.cancel()
        for task in (gone, gone_other):
            with pytest.raises(asyncio.CancelledError):
                await task
        # The cancelled waiter is gone (no listener, no deadline timer left behind) ...
        assert not other.awaited
        assert w.client._poller.scheduled <= scheduled
        # ... the handles are still followed, and the patient awaiter gets its run.
        assert not handle.done()
        assert not other.done()
        w.fake.complete(handle.id)
        w.fake.complete(other.id, status="error")
        await w.follow(lambda: handle.done() and other.done())
        assert (await patient).id == handle.id
        with pytest.raises(errors.RunFailedError):
            await other
        await w.assert_slots_free(handle.id)


# --- aclose() ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aclose_cancelled_while_a_create_is_on_the_wire_still_closes():
    async with world() as w:
        handle = await w.client.run("core:x", authentication=None, inputs={})
        hold = w.gate.hold("POST", "/v2/action-runs")
        creating = asyncio.ensure_future(w.client.run("core:y", authentication=None, inputs={}))
        await asyncio.wait_for(hold.arrived.wait(), 10)
        closing = asyncio.ensure_future(w.client.aclose())
        await until(lambda: w.client.closed)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert w.client.closed
        # Closing went on: handles detached (not hung), no poller.
        assert handle.done()
        with pytest.raises(errors.RunDetachedError):
            await handle
        assert not w.client._poller.running
        hold.release()
        # The create was cut off by the closed connection: its caller is told so, typed.
        with pytest.raises(errors.ZapierError):
            await asyncio.wait_for(creating, 10)
        # Its run (if the server made it) has no id anyone knows: its caller was told so.
        assert len(w.server_ids() - w.started()) <= w.client.metrics().outcome_unknown


@pytest.mark.asyncio
async def test_a_create_on_the_wire_when_aclose_starts_keeps_its_orphaned_run():
    # The caller left during the create, then the client is closed: aclose() waits for the
    # create, and the run is announced (on a detached handle) rather than lost.
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        await cancelled_on(hold, w.client.run("core:x", authentication=None, inputs={}))
        closing = asyncio.ensure_future(w.client.aclose())
        await until(lambda: w.client.closed)
        assert not closing.done()  # waiting for the create on the wire
        hold.release()
        await asyncio.wait_for(closing, 10)
        (orphan,) = w.client.orphaned_runs
        assert w.server_ids() == {orphan.id}
        assert orphan.id in w.started()
        with pytest.raises(errors.RunDetachedError):
            await orphan


# --- run_many and gather -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_run_many_consumer_cancelled_mid_create_loses_no_run():
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        requests = [
            {"action": "core:x", "authentication": None, "inputs": {"i": i}} for i in range(3)
        ]

        async def consume() -> None:
            async with w.client.run_many(requests, concurrency=3) as outcomes:
                async for _ in outcomes:
                    pass

        await cancelled_on(hold, consume())
        hold.release()
        # Every create that reached the server made a run that is announced and followed.
        await w.quiet()
        assert w.server_ids() == {h.id for h in w.client.orphaned_runs}
        assert w.server_ids() <= w.started()
        assert len(w.server_ids()) >= 1
        await w.assert_slots_free()


@pytest.mark.asyncio
async def test_gather_cancelled_mid_create_loses_no_run():
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        requests = [
            {"action": "core:x", "authentication": None, "inputs": {"i": i}} for i in range(2)
        ]
        await cancelled_on(hold, w.client.gather(requests, concurrency=2))
        hold.release()
        await w.quiet()
        assert len(w.server_ids()) >= 1
        assert w.server_ids() == {h.id for h in w.client.orphaned_runs}
        await w.assert_slots_free()


# --- a web app whose visitor gives up ---------------------------------------------------------


@pytest.mark.asyncio
async def test_web_handler_cancelled_by_a_disconnect_keeps_the_run():
    # aiohttp.web with handler_cancellation=True cancels the handler when the visitor goes
    # away: an ordinary client disconnect, mid-create.
    async with world() as w:
        hold = w.gate.hold("POST", "/v2/action-runs")
        cancelled = asyncio.Event()

        async def view(request: web.Request) -> web.Response:
            try:
                handle = await w.client.run("core:web", authentication=None, inputs={})
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return web.json_response({"run": handle.id})

        app = web.Application()
        app.router.add_post("/order", view)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession() as visitor:
                request = asyncio.ensure_future(visitor.post(f"http://{host}:{port}/order"))
                await asyncio.wait_for(hold.arrived.wait(), 10)
                request.cancel()  # the visitor gives up: its connection closes
                with pytest.raises(asyncio.CancelledError):
                    await request
            await asyncio.wait_for(cancelled.wait(), 10)
            hold.release()
            await eventually(lambda: len(w.client.orphaned_runs) == 1)
            (orphan,) = w.client.orphaned_runs
            assert w.server_ids() == {orphan.id}
            await w.assert_slots_free(orphan.id)
        finally:
            await runner.cleanup()
