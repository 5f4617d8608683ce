"""RunJournal, rebuilt on the run store, against a real redis-server (skipped without one).

The last test is issue #18's kill-one-worker test on the new mechanism: worker processes
share a Redis work list (an at-least-once queue) and one emulator process; one worker is
SIGKILLed with runs in flight; the test, playing the broker, redelivers its items; the
survivors begin each with the same idempotency key and resume recorded runs by token. Every
item ends with exactly one outcome, nothing is created twice, the maybe-sent are reported.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import pytest
import pytest_asyncio

aioredis = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from _util import client_for  # noqa: E402

import zapier_async as za  # noqa: E402
from zapier_async._runstore import Claim, MemoryRunStore  # noqa: E402
from zapier_async.redis import (  # noqa: E402
    RETENTION,
    JournalClosedError,
    KeyInFlightError,
    NotJournalledError,
    RedisRunStore,
    RunJournal,
)
from zapier_async.testing import FakeZapier  # noqa: E402
from zapier_async.testing import _redis as launcher  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "_journal_worker.py"
DAY = 86_400


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, every: float = 0.01
) -> None:
    """Poll an async condition (a Redis read) until it holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(every)


# --- configuration and input checks (no Redis needed: they fail before any call) -----------


@pytest_asyncio.fixture
async def unreachable() -> AsyncIterator[aioredis.Redis]:
    """A client whose every command would fail: proves a check ran before any Redis call."""
    client = aioredis.from_url(
        f"redis://:s3cret-password@127.0.0.1:{launcher.free_port()}/0", socket_timeout=1
    )
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1.0}, "ttl"),
        ({"ttl": math.nan}, "ttl"),
        ({"ttl": math.inf}, "ttl"),
        ({"ttl": 7 * DAY}, "ttl"),  # must be under Zapier's retention, not equal
        ({"ttl": 30 * DAY}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": "6d"}, "ttl"),
        ({"name": ""}, "name"),
        ({"prefix": ""}, "prefix"),
    ],
)
def test_bad_configuration_is_refused(unreachable, kwargs, field):
    with pytest.raises(za.InvalidRequestError) as info:
        RunJournal(unreachable, **kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_the_journal_writes_to_a_run_store_under_zapiers_retention(unreachable):
    journal = RunJournal(unreachable, name="emails")
    assert isinstance(journal.store, RedisRunStore)
    assert journal.store.ttl == 6 * DAY < RETENTION
    assert journal.store.key_of("k") == "zapier_async:journal:emails:k:k"
    memory = MemoryRunStore()
    assert RunJournal(memory).store is memory
    with pytest.raises(za.InvalidRequestError):
        RunJournal(object())  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("key", ["", None, 7, b"bytes", "k" * 1025])
async def test_bad_keys_are_refused_before_any_redis_call(unreachable, key):
    journal = RunJournal(unreachable)
    for call in (journal.sending, journal.forget, journal.fail, journal.get):
        with pytest.raises(za.InvalidRequestError) as info:
            await call(key)
        assert info.value.field == "key"


@pytest.mark.asyncio
@pytest.mark.parametrize("run", [None, 3, "", "zrt1.!!!", "has space"])
async def test_bad_runs_are_refused_before_any_redis_call(unreachable, run):
    with pytest.raises(za.InvalidRequestError):
        await RunJournal(unreachable).record("k", run)


def test_reprs_carry_no_secret(unreachable):
    text = repr(RunJournal(unreachable, name="emails"))
    assert "s3cret" not in text
    assert text.startswith("RunJournal(store=RedisRunStore(prefix='zapier_async:journal:emails'")


def test_errors_pickle_and_copy():
    claim = Claim(key="row-1", state="unknown", owner="w2", since=1.0)
    for exc in (
        JournalClosedError("closed!"),
        NotJournalledError("no key", "key"),
        KeyInFlightError("in flight", "key", "row-1", "w2", claim),
    ):
        for clone in (pickle.loads(pickle.dumps(exc)), copy.copy(exc)):
            assert type(clone) is type(exc)
            assert str(clone) == str(exc)
    clone = pickle.loads(pickle.dumps(KeyInFlightError("in flight", "key", "row-1", "w2", claim)))
    assert (clone.key, clone.worker, clone.claim) == ("row-1", "w2", claim)
    assert isinstance(clone, za.InvalidRequestError)
    assert isinstance(JournalClosedError(), RuntimeError)


# --- journalling -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sending_record_forget_round_trip(rclient):
    async with RunJournal(rclient, name="j", ttl=3 * DAY) as journal:
        assert journal.is_open
        await journal.sending("row-1")
        claim = await journal.get("row-1")
        assert claim is not None
        assert claim.state == "unknown"  # maybe sent
        assert claim.run_id is None
        with pytest.raises(KeyInFlightError, match="may have reached Zapier") as info:
            await journal.sending("row-1")  # a redelivery while it is being sent
        assert info.value.claim == claim

        assert await journal.record("row-1", "run-abc") is True
        with pytest.raises(KeyInFlightError, match="has run run-abc") as info:
            await journal.sending("row-1")
        assert info.value.claim is not None
        assert info.value.claim.state == "resume"
        token = info.value.claim.continuation_token
        assert token is not None
        assert token != "run-abc"  # what client.resume() takes
        ttl_ms = await rclient.pttl("zapier_async:journal:j:k:row-1")
        assert 3 * DAY * 1000 - 60_000 < ttl_ms <= 3 * DAY * 1000

        assert await journal.fail("row-1") is False  # never frees a recorded run
        assert await journal.forget("row-1") is True
        assert await journal.forget("row-1") is False
        await journal.sending("row-1")  # forgotten: may be sent again
        assert await journal.fail("row-1") is True  # provably not sent: free again
        await journal.sending("row-1")
    assert not journal.is_open
    with pytest.raises(JournalClosedError):
        await journal.sending("k2")
    with pytest.raises(JournalClosedError):
        journal.run_many(None, [])  # type: ignore[arg-type]
    assert await journal.forget("row-1") is True  # cleaning up stays possible
    await journal.aclose()  # idempotent


@pytest.mark.asyncio
async def test_two_journals_share_the_keys_of_one_name(rclient):
    a, b = RunJournal(rclient, name="j"), RunJournal(rclient, name="j")
    await a.sending("row-1")
    with pytest.raises(KeyInFlightError):
        await b.sending("row-1")
    await RunJournal(rclient, name="other").sending("row-1")  # another name, other keys


@pytest.mark.asyncio
async def test_record_takes_a_handle_and_resume_takes_its_token(rclient):
    async with FakeZapier(durations=0.05, seed=1) as fake, client_for(fake) as client:
        async with RunJournal(rclient, name="j") as journal:
            await journal.sending("row-1")
            handle = await client.run("core:x", authentication=None, inputs={"i": 1})
            await journal.record("row-1", handle)
            claim = await journal.get("row-1")
            assert claim is not None
            assert claim.run_id == handle.id
            assert claim.continuation_token == handle.continuation_token()
            run = await handle
            again = client.resume(claim.continuation_token)
            assert (await again).id == run.id
            await journal.forget("row-1")
        assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_a_killed_process_leaves_unknown_and_resumable_keys(redis_server, rclient):
    with ExitStack() as stack:
        holder = _Proc(
            stack, "hold", "--redis-url", redis_server.url, "--prefix", "held", stdin=True
        )
        assert holder.readline() == "ready", holder.stderr()
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait()
    store = RedisRunStore(rclient, prefix="held", owner="survivor")
    unknown = await store.begin("maybe-sent")
    assert unknown.state == "unknown"  # never "send": it may have reached Zapier
    assert unknown.owner == "holder"
    resumed = await store.begin("submitted")
    assert (resumed.state, resumed.run_id) == ("resume", "run-1")
    assert (await store.begin("never-begun")).state == "send"


@pytest.mark.asyncio
async def test_run_many_journals_every_item_and_refuses_unjournalled_ones(rclient):
    def request(i: int, key: str | None) -> za.RunRequest:
        return za.RunRequest(action="core:x", authentication=None, inputs={"i": i}, key=key)

    requests: list[Any] = [
        request(0, "row-0"),
        request(1, "row-0"),  # its key is in flight (read long before row-0 ends): refused
        {"action": "", "authentication": None, "key": "row-0"},  # invalid: never sent
        {"action": "core:x", "authentication": None, "inputs": {"i": 3}},  # no key: refused
        {"action": "core:x", "authentication": None, "inputs": {"i": 4}, "key": "row-4"},
        *(request(i, f"row-{i}") for i in range(5, 10)),
    ]
    async with (
        FakeZapier(durations=(0.2, 0.3), seed=3) as fake,
        client_for(fake) as client,
        RunJournal(rclient, name="j") as journal,
    ):
        seen = []
        async with journal.run_many(client, iter(requests), concurrency=4) as outcomes:
            async for outcome in outcomes:
                if outcome.error is None:
                    # Recorded as soon as Zapier accepted it (before the run ended).
                    claim = await journal.get(outcome.key)
                    assert claim is not None
                    assert claim.run_id == outcome.run_id
                    assert await journal.forget_outcome(outcome) is True
                else:
                    # Refused items own no entry: row-0's stays until row-0's outcome.
                    assert await journal.forget_outcome(outcome) is False
                seen.append(outcome)
        assert len(seen) == 10
        refused = {o.index: o.error for o in seen if o.error is not None}
        assert set(refused) == {1, 2, 3}
        assert isinstance(refused[1], KeyInFlightError)
        assert refused[1].claim is not None
        assert refused[1].claim.state == "unknown"  # row-0 was being sent
        assert isinstance(refused[3], NotJournalledError)
        assert "non-empty string" in str(refused[3])
        assert isinstance(refused[2], za.InvalidRequestError)
        assert not isinstance(refused[2], NotJournalledError)
        assert [k async for k in rclient.scan_iter("zapier_async:journal:j:k:*")] == []
        assert journal._refused == {}
        assert fake.stats.runs_created == 7  # the refused items were never sent
        assert fake.stats.duplicate_submissions == 0


@pytest.mark.asyncio
async def test_run_many_stops_sending_when_journalling_fails(rclient):
    async with (
        FakeZapier(durations=0.05, seed=4) as fake,
        client_for(fake) as client,
    ):
        journal = RunJournal(rclient, name="j")
        await journal.open()
        requests = (
            za.RunRequest(action="core:x", authentication=None, inputs={"i": i}, key=f"k{i}")
            for i in range(100)
        )
        outcomes = journal.run_many(client, requests, concurrency=2)
        reported = [await anext(outcomes)]
        await journal.aclose()  # from now on nothing can be journalled: nothing new is sent

        async def drain() -> None:
            async for outcome in outcomes:
                reported.append(outcome)

        with pytest.raises(JournalClosedError):
            await drain()
        assert all(o.ok for o in reported)
        assert len(reported) < 100
        assert fake.stats.runs_created == len(reported)
        # Nothing was forgotten: every item sent is journalled, with its run id.
        for o in reported:
            claim = await journal.get(o.key)
            assert claim is not None
            assert claim.run_id == o.run_id


@pytest.mark.asyncio
async def test_run_many_refuses_a_non_iterable(rclient):
    async with RunJournal(rclient, name="j") as journal:
        for bad in ("abc", {"action": "x"}, 3):
            with pytest.raises(za.InvalidRequestError):
                journal.run_many(None, bad)  # type: ignore[arg-type]


# --- the acceptance test: kill one worker mid-job, the queue redelivers --------------------


class _Proc:
    """A helper process with its stderr in a file (never a pipe that could fill up)."""

    def __init__(self, stack: ExitStack, *args: str, stdin: bool = False) -> None:
        self.err: IO[str] = stack.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDEVMODE"}
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            cwd=ROOT,
            env=env,
        )
        stack.callback(self.stop)

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()[-3000:]

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the process to exit; its last stdout line, as JSON."""
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}:\n{self.stderr()}"
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.mark.asyncio
async def test_kill_one_worker_mid_job_the_queue_redelivers_and_nothing_is_sent_twice(
    redis_server, rclient
):
    items = [f"item-{i:03d}" for i in range(48)]
    name = f"accept-{os.getpid()}"
    todo, outcomes_key = f"work:{name}:todo", f"work:{name}:outcomes"
    workers = ["w0", "w1", "w2"]
    victim = "w0"
    store = RedisRunStore(rclient, prefix=f"journal:{name}", owner="observer")
    started = time.monotonic()
    with ExitStack() as stack:
        emulator = _Proc(stack, "serve", "--durations", "1,3", "--error-rate", "0.1", "--seed", "9")
        url = emulator.readline()
        assert url.startswith("http://127.0.0.1:"), emulator.stderr()
        await rclient.rpush(todo, *items)
        procs = {
            w: _Proc(
                stack,
                "work",
                "--url",
                url,
                "--redis-url",
                redis_server.url,
                "--name",
                name,
                "--worker",
                w,
                "--total",
                str(len(items)),
                "--concurrency",
                "6",
                stdin=True,
            )
            for w in workers
        }
        for proc in procs.values():
            assert proc.readline() == "ready", proc.stderr()
        for proc in procs.values():  # a barrier: every worker takes part from the start
            assert proc.proc.stdin is not None
            proc.proc.stdin.write("go\n")
            proc.proc.stdin.flush()

        taken = f"work:{name}:taken:{victim}"

        async def victim_claims() -> list[Claim]:
            keys = [k.decode() for k in await rclient.lrange(taken, 0, -1)]
            found = [await store.get(k) for k in keys]
            return [c for c in found if c is not None]

        async def victim_busy() -> bool:
            return sum(c.state == "resume" for c in await victim_claims()) >= 5

        await wait_for(victim_busy, timeout=20)
        procs[victim].proc.send_signal(signal.SIGKILL)
        procs[victim].proc.wait()
        killed_at = time.monotonic()
        # Dead: what it had taken and not acked is frozen. The test is the broker now: it
        # redelivers every unacked item (as Celery does with acks_late and
        # reject_on_worker_lost), and the survivors begin each with the same key.
        # (An item whose outcome it wrote but did not ack yet is skipped by its next worker.)
        done = {k.decode() for k in await rclient.hkeys(outcomes_key)}
        in_flight = [c for c in await victim_claims() if c.key not in done]
        unacked = [k.decode() for k in await rclient.lrange(taken, 0, -1)]
        maybe_sent = {c.key for c in in_flight if c.state == "unknown"}
        recorded = {c.key: c.run_id for c in in_flight if c.state == "resume"}
        while await rclient.lmove(taken, todo, "LEFT", "RIGHT") is not None:
            pass

        reports = [procs[w].finish(timeout=40) for w in workers if w != victim]
        emulator.proc.send_signal(signal.SIGTERM)
        server = emulator.finish(timeout=10)
    wall = time.monotonic() - started

    outcomes = {k.decode(): json.loads(v) for k, v in (await rclient.hgetall(outcomes_key)).items()}
    runs = server["runs"]
    submitted_items = Counter(run["item"] for run in runs)
    run_item = {run["id"]: run["item"] for run in runs}
    totals: Counter[str] = Counter()
    for report in reports:
        totals.update({k: v for k, v in report.items() if isinstance(v, int)})
    statuses = Counter(o["status"] for o in outcomes.values())
    summary = {
        "items": len(items),
        "runs_created": server["runs_created"],
        "killed_unacked": len(unacked),
        "killed_recorded": len(recorded),
        "killed_maybe_sent": len(maybe_sent),
        "resumed": totals["resumed"],
        "unknown": totals["unknown"],
        "outcome_collisions": totals["outcome_collisions"],
        "duplicates": server["duplicate_submissions"],
        "statuses": dict(statuses),
        "wall_s": round(wall, 2),
        "kill_to_end_s": round(time.monotonic() - killed_at, 2),
    }
    print("acceptance:", json.dumps(summary))

    # Every item has exactly one outcome (HSETNX: a second writer never overwrites).
    assert set(outcomes) == set(items)
    assert set(statuses) <= {"success", "failed", "outcome_unknown"}
    # The victim had at least 5 accepted runs in flight; each redelivered one was resumed
    # by its key, with the run the victim created (never a second create).
    assert len(recorded) >= 5
    assert totals["resumed"] == len(recorded)
    for key, run_id in recorded.items():
        assert outcomes[key]["run_id"] == run_id
        assert outcomes[key]["how"] == "resumed"
    # The victim's maybe-sent items are reported as outcome unknown, never re-sent; only
    # they are outcome unknown.
    assert totals["unknown"] == len(maybe_sent)
    for key in maybe_sent:
        assert outcomes[key]["status"] == "outcome_unknown"
    assert {k for k, o in outcomes.items() if o["status"] == "outcome_unknown"} == maybe_sent
    # Zero duplicate submissions, by the emulator's own count and by item.
    assert server["duplicate_submissions"] == 0
    assert max(submitted_items.values()) == 1
    assert server["runs_created"] == len(runs) == sum(submitted_items.values())
    # Every run the emulator accepted is accounted for: its item's outcome names it, or the
    # item is outcome unknown (a maybe-sent create that did reach Zapier).
    for run_id, item in run_item.items():
        outcome = outcomes[item]
        assert outcome["run_id"] == run_id or outcome["status"] == "outcome_unknown"
    for item, outcome in outcomes.items():
        if outcome["run_id"] is not None:
            assert run_item[outcome["run_id"]] == item
    # Nothing left unacked.
    assert [k async for k in rclient.scan_iter(f"work:{name}:taken:*")] == []
    assert await rclient.llen(todo) == 0
    assert wall < 30, summary
