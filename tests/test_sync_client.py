"""SyncZapierClient: the blocking client over one event-loop thread per process.

The emulator runs on loopback in its own thread and event loop (`FakeThread`), so the sync
client under test is used from plain threads, as a Django view or a Celery task would.
Waits are on observable conditions (a handle being awaited, a run existing), never sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

import zapier_async as za
from zapier_async._bulk import WORKER_TASK_NAME
from zapier_async._scheduler import POLLER_TASK_NAME
from zapier_async._sync import LOOP_THREAD_NAME, SyncClientOptions, SyncZapierClient
from zapier_async.testing import FAKE_APP_ID, FakeZapier

T = TypeVar("T")

FAST_POLLS = za.PollPolicy(initial=0.01, factor=1.5, cap=0.05, jitter=0.1)
FAST_RETRIES = za.RetryPolicy(base=0.01, cap=0.05)
FOREVER: dict[str, Any] = {"durations": float("inf")}


class FakeThread:
    """A `FakeZapier` on 127.0.0.1, served by its own event-loop thread."""

    def __init__(self, portal: BlockingPortal, fake: FakeZapier) -> None:
        self.portal = portal
        self.fake = fake

    @property
    def url(self) -> str:
        return self.fake.url

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the emulator's loop (its state belongs to that thread)."""
        return self.portal.call(fn)

    def complete(self, run_id: str, **kwargs: Any) -> None:
        self.on_loop(lambda: self.fake.complete(run_id, **kwargs))

    def runs_created(self) -> int:
        return self.on_loop(lambda: self.fake.stats.runs_created)

    def duplicates(self) -> int:
        return self.on_loop(lambda: self.fake.stats.duplicate_submissions)


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeThread]]:
    """Start emulators (with `FakeZapier` options) in one thread; closed after the test."""
    with start_blocking_portal(name="fake-zapier") as portal:
        started: list[FakeZapier] = []

        async def start(options: dict[str, Any]) -> FakeZapier:
            fake = FakeZapier(seed=7, **options)
            await fake.start()
            started.append(fake)
            return fake

        def factory(**options: Any) -> FakeThread:
            return FakeThread(portal, portal.call(start, options))

        try:
            yield factory
        finally:
            for fake in started:
                portal.call(fake.close)


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing goes wrong silently on the loop thread (unretrieved task errors, leaks)."""
    yield
    bad = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not bad, [r.getMessage() for r in bad]


def sync_client(fake: FakeThread, **options: Any) -> SyncZapierClient:
    defaults: dict[str, Any] = {
        "base_url": fake.url,
        "poll_policy": FAST_POLLS,
        "retry_policy": FAST_RETRIES,
        "rng": random.Random(7),
    }
    defaults.update(options)
    return SyncZapierClient(auth=za.BearerToken("test-token"), **defaults)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD_NAME]


def loop_task_names(client: SyncZapierClient) -> list[str]:
    return client._call_sync(lambda _: [task.get_name() for task in asyncio.all_tasks()])


def until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait for a condition other threads make true (checked every millisecond)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        time.sleep(0.001)


# --- basics ---------------------------------------------------------------------------------


def test_run_blocks_until_the_run_ends(serve):
    fake = serve()
    with sync_client(fake) as client:
        handle = client.run("core:x", authentication="conn", inputs={"email": "a@example.com"})
        run = handle.result(timeout=10)
        assert run.status is za.RunStatus.SUCCESS
        assert run.id == handle.id
        assert handle.done()
        assert handle.status is za.RunStatus.SUCCESS
        assert list(handle.updates()) == [za.RunStatus.SUCCESS]
        assert handle.wait(0) is True
        again = client.resume(handle.continuation_token())
        assert again.result(timeout=10).id == handle.id
        assert client.get_run(handle.id).status is za.RunStatus.SUCCESS
        assert client.metrics().runs_succeeded >= 1
    assert fake.runs_created() == 1


def test_updates_are_a_blocking_iterator(serve):
    fake = serve(**FOREVER)
    with sync_client(fake) as client:
        handle = client.run("core:x", authentication=None)
        updates = handle.updates()
        assert next(updates) is za.RunStatus.WAITING
        fake.complete(handle.id)
        assert list(updates) == [za.RunStatus.SUCCESS]
        assert handle.result().status is za.RunStatus.SUCCESS


def test_errors_keep_their_types_and_tracebacks(serve):
    fake = serve()
    with sync_client(fake) as client:
        failing = client.run(
            "core:x", authentication=None, inputs={"__fake__": {"status": "error"}}
        )
        with pytest.raises(za.RunFailedError) as failed:
            failing.result(timeout=10)
        assert failed.value.run.status is za.RunStatus.ERROR
        # The frames of the loop side are kept, followed by the caller's.
        files = [frame.filename for frame in traceback.extract_tb(failed.value.__traceback__)]
        assert any(name.endswith("_handle.py") for name in files)
        assert any(name.endswith("_sync_handles.py") for name in files)

        with pytest.raises(za.InvalidRequestError) as invalid:
            client.run(authentication=None)  # no action named
        assert invalid.value.field == "action"
        with pytest.raises(za.errors.NotFoundError) as missing:
            client.get_run("no-such-run")
        assert any(
            f.filename.endswith("_client.py")
            for f in traceback.extract_tb(missing.value.__traceback__)
        )
        with pytest.raises(za.ActionNotFoundError):
            client.find_action(FAKE_APP_ID, "no_such_action")
        with pytest.raises(za.NoConnectionError):
            client.find_connection("an-app-without-connections")


def test_discovery_stored_actions_and_actions_api(serve):
    fake = serve()
    with sync_client(fake) as client:
        action = client.find_action(FAKE_APP_ID, "send_message")
        assert action.key == "send_message"
        assert {a.key for a in client.list_actions(FAKE_APP_ID)} >= {"send_message"}
        assert client.action_inputs(action.id, authentication="conn_ok")
        assert isinstance(client.action_outputs(action.id, authentication="conn_ok"), list)
        with client.list_connections(FAKE_APP_ID) as connections:
            assert [c.id for c in connections] == ["conn_expired", "conn_ok"]
        assert client.find_connection(FAKE_APP_ID).id == "conn_ok"

        by_key = client.run(app=FAKE_APP_ID, action_key="send_message", authentication="conn_ok")
        assert by_key.result(timeout=10).status is za.RunStatus.SUCCESS

        stored = client.stored_actions.create(
            connection_id="conn-1",
            selected_api="SheetsCLIAPI@2.0.0",
            action_key="add_row",
            action_type="write",
        )
        assert [s.id for s in client.stored_actions.list()] == [stored.id]
        ran = client.stored_actions.run(stored.id, inputs={"row": 1})
        assert ran.result(timeout=10).status is za.RunStatus.SUCCESS
        client.stored_actions.delete(stored.id)
        assert client.stored_actions.list() == []

        one_off = client.run_action(
            selected_api="SlackCLIAPI@1.2.3", action_key="send_message", action_type="write"
        )
        assert one_off.result(timeout=10).status is za.RunStatus.SUCCESS


def test_run_many_and_gather(serve):
    fake = serve()
    requests = [{"action": "core:x", "authentication": None, "inputs": {"i": i}} for i in range(20)]
    with sync_client(fake) as client:
        with client.run_many(requests, concurrency=5) as outcomes:
            seen = sorted(o.index for o in outcomes if o.ok)
        assert seen == list(range(20))
        more = [{**r, "inputs": {"again": i}} for i, r in enumerate(requests[:7])]
        gathered = client.gather(more, concurrency=3)
        assert [o.index for o in gathered] == list(range(7))
        assert all(o.ok for o in gathered)
    assert fake.runs_created() == 27
    assert fake.duplicates() == 0


def test_run_many_left_early_stops_its_workers(serve):
    fake = serve()

    def requests(job: int) -> Iterator[dict[str, Any]]:
        for i in range(1000):
            yield {"action": "core:x", "authentication": None, "inputs": {"job": job, "i": i}}

    with sync_client(fake) as client:
        outcomes = client.run_many(requests(1), concurrency=4)
        assert next(outcomes).ok
        assert loop_task_names(client).count(WORKER_TASK_NAME) == 4
        outcomes.close()
        assert WORKER_TASK_NAME not in loop_task_names(client)
        assert next(outcomes, None) is None
        # Dropped without close(): the loop closes it in the background.
        dropped = client.run_many(requests(2), concurrency=4)
        assert next(dropped).ok
        del dropped
        gc.collect()
        until(lambda: WORKER_TASK_NAME not in loop_task_names(client))
    assert fake.runs_created() < 40
    assert fake.duplicates() == 0


def test_listeners_run_on_the_loop_thread(serve):
    fake = serve()
    seen: list[str] = []

    def listener(event: object) -> None:
        seen.append(threading.current_thread().name)

    with sync_client(fake) as client:
        client.add_listener(listener)
        client.run("core:x", authentication=None).result(timeout=10)
        assert client.remove_listener(listener) is True
        assert client.remove_listener(listener) is False
    assert seen
    assert set(seen) == {LOOP_THREAD_NAME}


# --- many threads ---------------------------------------------------------------------------


def test_32_threads_share_one_loop_thread_one_poller_and_all_succeed(serve):
    fake = serve(**FOREVER)
    threads = 32
    created = threading.Barrier(threads + 1)
    inspected = threading.Barrier(threads + 1)
    results: dict[int, list[za.Run]] = {}
    failures: list[BaseException] = []
    with sync_client(fake) as client:

        def worker(index: int) -> None:
            try:
                handle = client.run("core:x", authentication=None, inputs={"i": index})
                created.wait(timeout=60)
                inspected.wait(timeout=60)
                runs = [handle.result(timeout=60)]
                for extra in range(3):
                    more = client.run(
                        "core:x",
                        authentication=None,
                        inputs={"i": index, "extra": extra, "__fake__": {"duration": 0.01}},
                    )
                    runs.append(more.result(timeout=60))
                results[index] = runs
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)
                created.abort()
                inspected.abort()

        pool = [
            threading.Thread(target=worker, args=(i,), name=f"user-{i}") for i in range(threads)
        ]
        for thread in pool:
            thread.start()
        created.wait(timeout=60)
        # 32 runs in flight from 32 threads: one loop thread, one poller task.
        assert len(loop_threads()) == 1
        assert client.in_flight == threads
        assert loop_task_names(client).count(POLLER_TASK_NAME) == 1
        for record in fake.on_loop(fake.fake.runs):
            fake.complete(record.id)
        inspected.wait(timeout=60)
        for thread in pool:
            thread.join(timeout=120)
        assert not failures, failures
        assert sorted(results) == list(range(threads))
        assert all(run.status is za.RunStatus.SUCCESS for runs in results.values() for run in runs)
        assert len(loop_threads()) == 1
        assert loop_task_names(client).count(POLLER_TASK_NAME) <= 1
        assert client.metrics().runs_succeeded == threads * 4
    assert fake.runs_created() == threads * 4
    assert fake.duplicates() == 0
    assert loop_threads() == []


def test_clients_share_the_process_loop_thread_until_the_last_closes(serve):
    fake = serve()
    first = sync_client(fake)
    second = sync_client(fake)
    try:
        assert len(loop_threads()) == 1
        first.close()
        assert len(loop_threads()) == 1
        assert second.run("core:x", authentication=None).result(timeout=10)
    finally:
        second.close()
    assert loop_threads() == []


# --- lifecycle ------------------------------------------------------------------------------


def test_close_is_idempotent_stops_the_thread_and_refuses_later_use(serve):
    fake = serve(**FOREVER)
    client = sync_client(fake)
    ended = client.run("core:x", authentication=None)
    fake.complete(ended.id)
    assert ended.result(timeout=10).status is za.RunStatus.SUCCESS
    pending = client.run("core:x", authentication=None)
    assert len(loop_threads()) == 1
    client.close()
    assert client.closed
    assert loop_threads() == []
    client.close()
    for use in (
        lambda: client.run("core:x", authentication=None),
        lambda: client.in_flight,
        client.metrics,
        lambda: client.resume(ended.id),
        lambda: client.list_connections(FAKE_APP_ID),
        lambda: client.stored_actions.list(),
    ):
        with pytest.raises(za.InvalidRequestError, match="closed"):
            use()
    # Handles keep their outcome: the ended one its Run, the pending one is detached.
    assert ended.result().status is za.RunStatus.SUCCESS
    with pytest.raises(za.RunDetachedError):
        pending.result()
    gc.collect()  # no ResourceWarning from anything the client held (warnings are errors)


def test_entering_a_closed_client_is_refused(serve):
    fake = serve()
    client = sync_client(fake)
    client.close()
    with pytest.raises(za.InvalidRequestError, match="closed"), client:
        pass


def test_close_detaches_a_result_blocked_in_another_thread(serve):
    fake = serve(**FOREVER)
    client = sync_client(fake)
    handle = client.run("core:x", authentication=None)
    caught: list[BaseException] = []

    def wait() -> None:
        try:
            handle.result()
        except BaseException as exc:
            caught.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    until(lambda: handle.async_handle.awaited)
    client.close()
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert len(caught) == 1
    assert isinstance(caught[0], za.RunDetachedError)
    assert loop_threads() == []


def test_unclosed_client_is_closed_at_exit_without_warnings(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import zapier_async as za
            from anyio.from_thread import start_blocking_portal
            from zapier_async._sync import SyncZapierClient
            from zapier_async.testing import FakeZapier

            async def start():
                fake = FakeZapier()
                await fake.start()
                return fake

            portal_cm = start_blocking_portal(name="fake-zapier")
            portal = portal_cm.__enter__()
            fake = portal.call(start)
            client = SyncZapierClient(auth=za.BearerToken("t"), base_url=fake.url)
            print(client.run("core:x", authentication=None).result(timeout=30).status.value)
            # No close(): the atexit hook closes the client (registered before this one runs,
            # so it runs after: the emulator is still up).
            import atexit
            atexit.register(lambda: (portal.call(fake.close), portal_cm.__exit__(None, None, None)))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "success"
    assert done.stderr == ""


# --- refusals -------------------------------------------------------------------------------


def test_blocking_calls_from_a_running_loop_are_refused(serve):
    fake = serve()
    with sync_client(fake) as client:
        handle = client.run("core:x", authentication=None, inputs={"__fake__": {"duration": 60}})

        async def from_async_code() -> list[str]:
            refused = []
            for call in (
                lambda: client.run("core:x", authentication=None),
                lambda: handle.result(),
                lambda: handle.wait(),
                client.metrics,
                client.close,
            ):
                with pytest.raises(za.InvalidRequestError, match="running event loop") as exc:
                    call()
                refused.append(str(exc.value))
            return refused

        assert len(asyncio.run(from_async_code())) == 5
        assert not client.closed
        # From the client's own loop thread (e.g. in a listener): refused, not a deadlock.
        refusals: list[BaseException] = []

        def listener(event: object) -> None:
            try:
                client.metrics()
            except za.InvalidRequestError as exc:
                refusals.append(exc)

        client.add_listener(listener)
        client.run("core:x", authentication=None).result(timeout=10)
        client.remove_listener(listener)
        assert refusals
        assert "own event-loop thread" in str(refusals[0])
        handle.cancel()


def test_options_pass_through_and_loop_bound_ones_are_refused(serve):
    fake = serve()
    with pytest.raises(TypeError):
        SyncZapierClient(auth=za.BearerToken("t"), no_such_option=1)  # type: ignore[call-arg]
    with pytest.raises(za.InvalidRequestError) as session:
        SyncZapierClient(auth=za.BearerToken("t"), session=object())  # type: ignore[call-arg]
    assert session.value.field == "session"
    with pytest.raises(za.InvalidRequestError) as bad:
        sync_client(fake, request_timeout=0)
    assert bad.value.field == "request_timeout"
    assert loop_threads() == []  # a refused client leaves no thread behind
    # The pass-through list is ZapierClient's own: every keyword but auth and session.
    init = inspect.signature(za.ZapierClient).parameters
    assert set(SyncClientOptions.__annotations__) == set(init) - {
        "auth",
        "session",
    }


def test_idempotency_key_needs_a_run_store(serve):
    fake = serve()
    with sync_client(fake) as client:
        with pytest.raises(za.InvalidRequestError, match=r"run.store") as refused:
            client.run("core:x", authentication=None, idempotency_key="order-42")
        assert refused.value.field == "idempotency_key"
    assert fake.runs_created() == 0


def test_idempotency_key_is_passed_through(serve):
    if "idempotency_key" not in inspect.signature(za.ZapierClient.run).parameters:
        pytest.skip("this ZapierClient has no run store yet")
    from zapier_async._runstore import MemoryRunStore

    fake = serve()
    with sync_client(fake, run_store=MemoryRunStore()) as client:
        first = client.run("core:x", authentication=None, idempotency_key="order-42")
        again = client.run("core:x", authentication=None, idempotency_key="order-42")
        assert again.id == first.id
        assert again.result(timeout=10).status is za.RunStatus.SUCCESS
        other = client.run("core:x", authentication=None, idempotency_key="order-43")
        assert other.id != first.id
    assert fake.runs_created() == 2


# --- waits, interrupts, forks ---------------------------------------------------------------


def test_result_timeout_then_a_later_result_succeeds(serve):
    fake = serve(**FOREVER)
    with sync_client(fake) as client:
        handle = client.run("core:x", authentication=None)
        with pytest.raises(za.RunTimeoutError) as timed_out:
            handle.result(timeout=0.05)
        assert timed_out.value.run_id == handle.id
        assert not handle.done()
        assert handle.wait(timeout=0.01) is False
        assert client.in_flight == 1  # still followed; nothing was cancelled
        fake.complete(handle.id)
        assert handle.result(timeout=10).status is za.RunStatus.SUCCESS
        assert fake.on_loop(lambda: fake.fake.run(handle.id).status) == "success"


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="needs Python's default SIGINT handler",
)
def test_keyboard_interrupt_in_result_leaves_the_loop_thread_running(serve):
    assert threading.current_thread() is threading.main_thread()
    fake = serve(**FOREVER)
    with sync_client(fake) as client:
        handle = client.run("core:x", authentication=None)
        loop_thread = loop_threads()[0]

        def interrupt() -> None:
            until(lambda: handle.async_handle.awaited)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]

        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            handle.result()
        interrupter.join(timeout=30)
        # Only the interrupted wait was cancelled: the loop and the run's polling go on.
        until(lambda: not handle.async_handle.awaited)
        assert loop_threads() == [loop_thread]
        assert loop_thread.is_alive()
        assert not handle.done()
        fake.complete(handle.id)
        assert handle.result(timeout=10).status is za.RunStatus.SUCCESS
        assert client.run("core:x", authentication=None).wait(timeout=0) is False


def test_an_interrupt_while_the_call_is_being_handed_to_the_loop_still_cancels_it(serve):
    # The portal hands the task to the loop and only then returns its future: an interrupt
    # that lands in between (the task may already be running) must still cancel the call.
    # Before the fix the task went on forever (the handle stayed awaited) and nothing could
    # cancel it: CI hit this with a real SIGINT.
    fake = serve(**FOREVER)
    with sync_client(fake) as client:
        handle = client.run("core:x", authentication=None)
        session = client._session()
        portal = session.portal
        real = portal.start_task_soon

        def start_then_interrupt(*args: Any, **kwargs: Any) -> Any:
            real(*args, **kwargs)
            until(lambda: handle.async_handle.awaited)  # the task runs on the loop
            raise KeyboardInterrupt

        portal.start_task_soon = start_then_interrupt  # type: ignore[method-assign]
        try:
            with pytest.raises(KeyboardInterrupt):
                handle.result()
        finally:
            del portal.start_task_soon
        until(lambda: not handle.async_handle.awaited)
        assert not handle.done()
        assert session.futures == set()
        fake.complete(handle.id)
        assert handle.result(timeout=10).status is za.RunStatus.SUCCESS


def _child(client: SyncZapierClient, done_id: str) -> None:
    # Runs in the forked child: the parent's loop thread does not exist here.
    assert loop_threads() == []
    assert client._state is None  # the inherited session was dropped by the fork hook
    run = client.run("core:x", authentication=None, inputs={"from": "child"}).result(timeout=30)
    assert run.status is za.RunStatus.SUCCESS
    threads = loop_threads()
    assert len(threads) == 1
    assert threads[0].is_alive()
    resumed = client.resume(done_id)
    assert resumed.result(timeout=30).id == done_id
    client.close()
    assert loop_threads() == []


def test_forked_child_gets_its_own_loop_thread(serve):
    fake = serve()
    with sync_client(fake) as client:
        done = client.run("core:x", authentication=None)
        assert done.result(timeout=10)
        pending = client.run("core:x", authentication=None, inputs={"__fake__": {"duration": 600}})
        parent_loop = loop_threads()[0].ident
        assert parent_loop is not None
        context = multiprocessing.get_context("fork")
        with warnings.catch_warnings():
            # 3.12+ warns on fork() from a process with threads; that is the very case.
            warnings.simplefilter("ignore", DeprecationWarning)
            child = context.Process(target=_child, args=(client, done.id))
            child.start()
        child.join(timeout=60)
        if child.is_alive():  # hung on the parent's loop: fail, leaving no process behind
            child.kill()
            child.join()
        assert child.exitcode == 0
        # The parent's client and loop are untouched by the child.
        assert loop_threads()[0].ident == parent_loop
        assert not pending.done()
        assert client.run("core:x", authentication=None, inputs={"after": "fork"}).result(
            timeout=10
        )
        pending.cancel()
    assert fake.runs_created() == 4
    assert fake.duplicates() == 0


def test_handles_inherited_by_a_forked_child_are_detached(serve):
    fake = serve(**FOREVER)
    with sync_client(fake) as client:
        pending = client.run("core:x", authentication=None)
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                try:
                    pending.result()
                except za.RunDetachedError as exc:
                    if "forked" in exc.reason:
                        again = client.resume(pending.continuation_token())
                        code = 0 if again.wait(timeout=0) is False else 2
            finally:
                os.write(write, bytes([code]))
                os._exit(code)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            answer = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert answer == b"\x00"
        assert os.waitstatus_to_exitcode(status) == 0
        fake.complete(pending.id)
        assert pending.result(timeout=10).status is za.RunStatus.SUCCESS


# --- with_auth ------------------------------------------------------------------------------


def test_with_auth_returns_a_blocking_view_that_sends_with_its_own_token(serve):
    fake = serve(tokens={"user-a", "user-b"})
    done = {"__fake__": {"results": [{"ok": True}]}}
    options = {"base_url": fake.url, "poll_policy": FAST_POLLS, "retry_policy": FAST_RETRIES}
    with SyncZapierClient(auth=za.BearerToken("partner"), **options) as client:
        threads = len(threading.enumerate())
        tasks = len(loop_task_names(client))
        a = client.with_auth(za.BearerToken("user-a"))
        b = a.with_auth(za.BearerToken("user-b"))
        assert isinstance(a, za.SyncAuthView)
        assert (len(threading.enumerate()), len(loop_task_names(client))) == (threads, tasks)
        assert "user-a" not in repr(a)
        run = a.run("core:x", authentication=None, inputs=done).result()
        assert run.status is za.RunStatus.SUCCESS
        assert b.get_run(run.id).status is za.RunStatus.SUCCESS
        assert b.resume(run.id).result().status is za.RunStatus.SUCCESS
        outcomes = b.gather([{"action": "core:x", "authentication": None, "inputs": done}])
        assert [o.ok for o in outcomes] == [True]
        with pytest.raises(za.errors.AuthenticationError):
            client.get_run(run.id)  # the client's own token is refused by this emulator
        with pytest.raises(za.InvalidRequestError):
            client.with_auth("not a provider")  # type: ignore[arg-type]
    assert a.closed
    with pytest.raises(za.InvalidRequestError):
        a.get_run(run.id)


def test_discovery_by_name_deadline_and_inputs_check_block_too(serve):
    fake = serve()
    with sync_client(fake) as client:
        assert client.find_app("slack").id == FAKE_APP_ID
        with client.list_apps("slack") as apps:
            assert {a.title for a in apps} == {"Slack", "Slack Legacy"}
        with client.list_connections(FAKE_APP_ID, expired=False) as connections:
            assert [c.id for c in connections] == ["conn_ok"]
        with pytest.raises(za.errors.InvalidInputsError) as info:
            client.run(
                app="Slack",
                action_key="send_message",
                authentication="conn_ok",
                inputs={"channel": "c1"},
                validate_inputs=True,
            )
        assert info.value.missing == ["text"]
        handle = client.run(
            app="Slack",
            action_key="send_message",
            authentication="conn_ok",
            inputs={"channel": "c1", "text": "hi"},
            validate_inputs=True,
            timeout=10.0,
        )
        assert handle.result().status is za.RunStatus.SUCCESS  # waits until the deadline
        one_off = client.run_action(
            selected_api="SlackCLIAPI@1.2.3",
            action_key="send_message",
            action_type="write",
            timeout=10.0,
        )
        assert one_off.result().status is za.RunStatus.SUCCESS
