"""RunJournal against a real redis-server started by the fixture (skipped without one).

The last test is issue #9's acceptance test: worker processes share a Redis work list and
one emulator process; one worker is SIGKILLed with runs in flight; the others take its
journalled runs over. Every item ends with exactly one outcome and nothing is sent twice.
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
from zapier_async.redis import (  # noqa: E402
    RETENTION,
    JournalClosedError,
    JournalEntry,
    KeyInFlightError,
    NotJournalledError,
    RunJournal,
    WorkerAliveError,
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


def _keys(worker: str, name: str = "j", prefix: str = "zapier_async:journal") -> dict[str, str]:
    base = f"{prefix}:{name}"
    return {
        "runs": f"{base}:runs:{worker}",
        "alive": f"{base}:alive:{worker}",
        "workers": f"{base}:workers",
    }


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
        ({"heartbeat_ttl": 0}, "heartbeat_ttl"),
        ({"ttl": 10.0, "heartbeat_ttl": 10.0}, "heartbeat_ttl"),
        ({"heartbeat_ttl": 1.0, "heartbeat_interval": 1.0}, "heartbeat_interval"),
        ({"heartbeat_interval": -1}, "heartbeat_interval"),
        ({"worker": ""}, "worker"),
        ({"worker": 3}, "worker"),
        ({"name": ""}, "name"),
        ({"prefix": ""}, "prefix"),
    ],
)
def test_bad_configuration_is_refused(unreachable, kwargs, field):
    with pytest.raises(za.InvalidRequestError) as info:
        RunJournal(unreachable, **kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_defaults_stay_under_zapiers_retention(unreachable):
    journal = RunJournal(unreachable)
    assert journal._ttl_ms == 6 * DAY * 1000 < RETENTION * 1000
    assert journal.worker.count("-") >= 2  # hostname-pid-random
    assert RunJournal(unreachable, ttl=RETENTION - 1)._ttl_ms < RETENTION * 1000


@pytest.mark.asyncio
@pytest.mark.parametrize("key", ["", None, 7, b"bytes", "k" * 1025])
async def test_bad_keys_are_refused_before_any_redis_call(unreachable, key):
    journal = RunJournal(unreachable, worker="w")
    for call in (journal.sending, journal.forget):
        with pytest.raises(za.InvalidRequestError) as info:
            await call(key)
        assert info.value.field == "key"
    with pytest.raises(za.InvalidRequestError):
        await journal.record(key, "run-1")


@pytest.mark.asyncio
@pytest.mark.parametrize("run", [None, 3, "", "zrt1.!!!", "has space"])
async def test_bad_runs_are_refused_before_any_redis_call(unreachable, run):
    journal = RunJournal(unreachable, worker="w")
    with pytest.raises(za.InvalidRequestError):
        await journal.record("k", run)


@pytest.mark.asyncio
async def test_claim_checks_its_worker_before_any_redis_call(unreachable):
    journal = RunJournal(unreachable, worker="me")
    with pytest.raises(za.InvalidRequestError, match="own worker"):
        await journal.claim("me")
    with pytest.raises(za.InvalidRequestError):
        await journal.claim("")


def test_reprs_carry_no_secret(unreachable):
    journal = RunJournal(unreachable, worker="w1", name="emails")
    text = repr(journal)
    assert "s3cret" not in text
    assert text == (
        "RunJournal(worker='w1', key='zapier_async:journal:emails:runs:w1', state='new')"
    )


def test_errors_pickle_and_copy():
    for exc in (
        JournalClosedError("closed!"),
        WorkerAliveError("w1"),
        NotJournalledError("no key", "key"),
        KeyInFlightError("in flight", "key", "row-1", "w2"),
    ):
        for clone in (pickle.loads(pickle.dumps(exc)), copy.copy(exc)):
            assert type(clone) is type(exc)
            assert str(clone) == str(exc)
    clone = pickle.loads(pickle.dumps(KeyInFlightError("in flight", "key", "row-1", "w2")))
    assert (clone.key, clone.worker) == ("row-1", "w2")
    assert isinstance(clone, za.InvalidRequestError)
    assert "w1" in str(WorkerAliveError("w1"))
    assert isinstance(JournalClosedError(), RuntimeError)


# --- journalling -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sending_record_forget_round_trip(rclient):
    keys = _keys("w1")
    async with RunJournal(rclient, name="j", worker="w1", ttl=3 * DAY) as journal:
        assert journal.is_open
        await journal.sending("row-1")
        [entry] = await journal.entries()
        assert entry.key == "row-1"
        assert entry.maybe_sent
        assert entry.run_id is None
        assert entry.token is None
        assert entry.worker == "w1"
        assert abs(entry.recorded_at - time.time()) < 60

        await journal.record("row-1", "run-abc")
        [entry] = await journal.entries()
        assert entry.run_id == "run-abc"
        assert not entry.maybe_sent
        assert entry.token is not None  # what client.resume() takes
        assert entry.token != "run-abc"

        # The hash and the set have whole-key TTLs: the configured ttl, under 7 days.
        for key in (keys["runs"], keys["workers"]):
            ttl_ms = await rclient.pttl(key)
            assert 3 * DAY * 1000 - 60_000 < ttl_ms <= 3 * DAY * 1000
        assert await rclient.smembers(keys["workers"]) == {b"w1"}
        assert 0 < await rclient.pttl(keys["alive"]) <= 15_000

        assert await journal.forget("row-1") is True
        assert await journal.forget("row-1") is False
        assert await journal.entries() == []
        # The last entry gone, the worker leaves the set and its hash is deleted.
        assert await rclient.exists(keys["runs"]) == 0
        assert await rclient.smembers(keys["workers"]) == set()
    assert not journal.is_open
    assert await rclient.exists(keys["alive"]) == 0  # a clean close deletes the heartbeat


@pytest.mark.asyncio
async def test_every_write_refreshes_the_ttl(rclient):
    keys = _keys("w1")
    async with RunJournal(rclient, name="j", worker="w1", ttl=DAY) as journal:
        await journal.sending("a")
        await rclient.pexpire(keys["runs"], 5_000)
        await journal.record("a", "run-1")
        assert await rclient.pttl(keys["runs"]) > 5_000
        await journal.sending("b")
        await rclient.pexpire(keys["runs"], 5_000)
        await journal.forget("a")  # b is left: the hash stays, with a fresh TTL
        assert await rclient.pttl(keys["runs"]) > 5_000


@pytest.mark.asyncio
async def test_sending_a_journalled_key_again_is_refused(rclient):
    async with RunJournal(rclient, name="j", worker="w1") as journal:
        await journal.sending("row-1")
        with pytest.raises(za.InvalidRequestError, match="maybe sent"):
            await journal.sending("row-1")
        await journal.record("row-1", "run-9")
        with pytest.raises(za.InvalidRequestError, match="run run-9"):
            await journal.sending("row-1")
        [entry] = await journal.entries()
        assert entry.run_id == "run-9"  # untouched by the refused writes
        await journal.forget("row-1")
        await journal.sending("row-1")  # forgotten: may be sent again


@pytest.mark.asyncio
async def test_a_journal_that_is_not_open_refuses_writes_and_claims(rclient):
    journal = RunJournal(rclient, name="j", worker="w1")
    for attempt in (
        journal.sending("k"),
        journal.record("k", "run-1"),
        journal.claim("other"),
    ):
        with pytest.raises(JournalClosedError):
            await attempt
    with pytest.raises(JournalClosedError):
        journal.run_many(None, [])  # type: ignore[arg-type]
    async with journal:
        await journal.sending("k")
    with pytest.raises(JournalClosedError):
        await journal.sending("k2")
    with pytest.raises(JournalClosedError, match="create a new"):
        await journal.open()
    assert await journal.forget("k") is True  # cleaning up stays possible
    await journal.aclose()  # idempotent


@pytest.mark.asyncio
async def test_concurrent_opens_start_one_heartbeat(rclient):
    journal = RunJournal(rclient, name="j", worker="w1")
    await asyncio.gather(journal.open(), journal.open(), journal.open())
    beats = [t for t in asyncio.all_tasks() if t.get_name() == "zapier_async.run_journal"]
    assert len(beats) == 1
    await journal.aclose()
    assert beats[0].done()


@pytest.mark.asyncio
async def test_opening_with_redis_down_raises_and_stays_closed(unreachable):
    journal = RunJournal(unreachable, worker="w")
    with pytest.raises((ConnectionError, OSError, aioredis.RedisError)):
        await journal.open()
    assert not journal.is_open
    await journal.aclose()


@pytest.mark.asyncio
async def test_record_takes_a_handle_and_resume_takes_its_token(rclient):
    async with FakeZapier(durations=0.05, seed=1) as fake, client_for(fake) as client:
        async with RunJournal(rclient, name="j", worker="w1") as journal:
            await journal.sending("row-1")
            handle = await client.run("core:x", authentication=None, inputs={"i": 1})
            await journal.record("row-1", handle)
            [entry] = await journal.entries()
            assert entry.run_id == handle.id
            assert entry.token == handle.continuation_token()
            run = await handle
            again = client.resume(entry.token)
            assert (await again).id == run.id
            await journal.forget("row-1")
        assert fake.stats.runs_created == 1


@pytest.mark.asyncio
async def test_the_heartbeat_is_refreshed_while_open(rclient):
    keys = _keys("w1")
    async with RunJournal(
        rclient, name="j", worker="w1", heartbeat_ttl=0.5, heartbeat_interval=0.05
    ):
        # Stretch the key's TTL; the next beat writes it back to at most 0.5 s.
        await rclient.pexpire(keys["alive"], 60_000)

        async def beaten() -> bool:
            return 0 < await rclient.pttl(keys["alive"]) <= 500

        await wait_for(beaten)
    assert await rclient.exists(keys["alive"]) == 0


@pytest.mark.asyncio
async def test_a_failing_heartbeat_is_logged_and_close_still_works(redis_server, caplog):
    client = aioredis.from_url(redis_server.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        journal = RunJournal(client, name="j", worker="w1", heartbeat_ttl=0.5)
        async with journal:
            await journal.sending("k")
            redis_server.stop()

            async def logged() -> bool:
                return "journal heartbeat failed" in caplog.text

            await wait_for(logged, timeout=20)
        assert not journal.is_open
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_works_with_a_client_that_decodes_responses(redis_server):
    client = aioredis.from_url(redis_server.url, socket_timeout=5, decode_responses=True)
    try:
        await _abandoned(client, "dead", 3)
        async with RunJournal(client, name="j", worker="me") as me:
            assert await me.orphans() == ["dead"]
            claimed = await me.claim("dead")
            assert [(e.key, e.run_id) for e in claimed] == [
                ("dead-item-0", None),
                ("dead-item-1", "run-dead-1"),
                ("dead-item-2", "run-dead-2"),
            ]
            with pytest.raises(za.InvalidRequestError, match="maybe sent"):
                await me.sending("dead-item-0")
            for entry in claimed:
                assert await me.forget(entry.key)
    finally:
        await client.aclose()


# --- orphans and claims ----------------------------------------------------------------------


def _start_holder(redis_url: str, worker: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(HELPER),
            "hold",
            "--redis-url",
            redis_url,
            "--name",
            "j",
            "--worker",
            worker,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.mark.asyncio
async def test_a_killed_worker_becomes_an_orphan_when_its_heartbeat_expires(redis_server, rclient):
    """A real process, SIGKILLed: nobody deletes its heartbeat; Redis expires it."""
    holder = _start_holder(redis_server.url, "doomed")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        async with RunJournal(rclient, name="j", worker="survivor") as journal:
            assert await journal.orphans() == []  # alive: not an orphan
            with pytest.raises(WorkerAliveError):
                await journal.claim("doomed")
            holder.kill()
            holder.wait()

            async def orphaned() -> bool:
                return await journal.orphans() == ["doomed"]

            await wait_for(orphaned)  # within the 0.5 s heartbeat TTL, by Redis's clock
            claimed = await journal.claim("doomed")
            assert [e.key for e in claimed] == ["maybe-sent", "submitted"]
            maybe, submitted = claimed
            # A maybe-sent entry comes back without a run id: never to be re-sent.
            assert maybe.maybe_sent
            assert maybe.run_id is None
            assert maybe.token is None
            assert submitted.run_id == "run-1"
            assert submitted.token is not None
            assert {maybe.worker, submitted.worker} == {"doomed"}
            # They are now this worker's; the dead one is gone from Redis.
            assert {e.key for e in await journal.entries()} == {"maybe-sent", "submitted"}
            assert await journal.entries("doomed") == []
            assert await journal.orphans() == []
            assert await rclient.smembers(_keys("x")["workers"]) == {b"survivor"}
    finally:
        _stop(holder)


@pytest.mark.asyncio
async def test_claim_refuses_a_live_worker(rclient):
    async with (
        RunJournal(rclient, name="j", worker="alive") as alive,
        RunJournal(rclient, name="j", worker="other") as other,
    ):
        await alive.sending("k1")
        await alive.record("k1", "run-1")
        assert await other.orphans() == []
        with pytest.raises(WorkerAliveError) as info:
            await other.claim("alive")
        assert info.value.worker == "alive"
        assert [e.key for e in await alive.entries()] == ["k1"]
        assert await other.entries() == []


@pytest.mark.asyncio
async def test_a_deleted_heartbeat_makes_an_orphan_and_a_fresh_one_refuses_the_claim(rclient):
    keys = _keys("w1")
    async with (
        RunJournal(rclient, name="j", worker="w1", heartbeat_ttl=60.0) as w1,
        RunJournal(rclient, name="j", worker="w2") as w2,
    ):
        await w1.sending("k")
        await rclient.delete(keys["alive"])  # simulates its expiry
        assert await w2.orphans() == ["w1"]
        await rclient.set(keys["alive"], "1", px=60_000)  # it came back
        with pytest.raises(WorkerAliveError):
            await w2.claim("w1")
        assert [e.key for e in await w1.entries()] == ["k"]


async def _abandoned(redis: aioredis.Redis, worker: str, count: int) -> list[str]:
    """A worker that journalled `count` runs (every third maybe sent), then vanished."""
    journal = RunJournal(redis, name="j", worker=worker)
    keys = [f"{worker}-item-{i}" for i in range(count)]
    async with journal:
        for i, key in enumerate(keys):
            await journal.sending(key)
            if i % 3:
                await journal.record(key, f"run-{worker}-{i}")
    # Closing deleted the heartbeat: the entries are orphans at once (a clean hand-over).
    return keys


@pytest.mark.asyncio
async def test_two_concurrent_claimers_never_share_an_entry(redis_server):
    clients = [aioredis.from_url(redis_server.url, socket_timeout=5) for _ in range(3)]
    try:
        async with (
            RunJournal(clients[1], name="j", worker="c1") as c1,
            RunJournal(clients[2], name="j", worker="c2") as c2,
        ):
            for round_ in range(30):
                dead = f"dead-{round_}"
                keys = await _abandoned(clients[0], dead, 20)
                # Both see the orphan, then both claim at once, over separate connections.
                assert dead in await c1.orphans()
                assert dead in await c2.orphans()
                got1, got2 = await asyncio.gather(c1.claim(dead), c2.claim(dead))
                assert sorted([len(got1), len(got2)]) == [0, 20]
                winner = c1 if got1 else c2
                assert {e.key for e in got1 + got2} == set(keys)
                held = {e.key for e in await winner.entries()}
                assert set(keys) <= held
                loser = c2 if winner is c1 else c1
                assert not set(keys) & {e.key for e in await loser.entries()}
                assert sum(e.maybe_sent for e in got1 + got2) == 7  # i = 0, 3, ..., 18
            for journal in (c1, c2):
                for entry in await journal.entries():
                    await journal.forget(entry.key)
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.asyncio
async def test_a_key_another_worker_journals_is_refused_until_claimed_and_forgotten(rclient):
    await _abandoned(rclient, "dead", 2)  # dead-item-0 maybe sent, dead-item-1 run-dead-1
    async with (
        RunJournal(rclient, name="j", worker="me") as me,
        RunJournal(rclient, name="j", worker="other") as other,
    ):
        # A queue delivered the item again: its run is in flight in dead's journal.
        with pytest.raises(KeyInFlightError) as info:
            await me.sending("dead-item-1")
        assert (info.value.key, info.value.worker) == ("dead-item-1", "dead")
        assert await me.entries() == []  # nothing written
        claimed = await me.claim("dead")
        assert [e.run_id for e in claimed] == [None, "run-dead-1"]
        with pytest.raises(KeyInFlightError) as info:
            await other.sending("dead-item-1")
        assert info.value.worker == "me"  # the claim moved the ownership
        assert await me.forget("dead-item-1")
        await other.sending("dead-item-1")  # its outcome was stored: free again
        assert [e.key for e in await other.entries()] == ["dead-item-1"]


@pytest.mark.asyncio
async def test_an_owner_whose_entry_is_gone_does_not_block_the_key(rclient):
    await _abandoned(rclient, "dead", 2)
    # The dead worker's journal expired (its TTL): the owners index still names it.
    await rclient.delete(_keys("dead")["runs"])
    async with RunJournal(rclient, name="j", worker="me") as me:
        await me.sending("dead-item-1")
        assert [e.key for e in await me.entries()] == ["dead-item-1"]


@pytest.mark.asyncio
async def test_orphans_drops_workers_whose_journal_expired(rclient):
    keys = _keys("ghost")
    await rclient.sadd(keys["workers"], "ghost")  # its hash expired long ago
    async with RunJournal(rclient, name="j", worker="me") as me:
        assert await me.orphans() == []
        assert await rclient.smembers(keys["workers"]) == set()


@pytest.mark.asyncio
async def test_an_unreadable_entry_comes_back_as_maybe_sent(rclient, caplog):
    await rclient.hset(_keys("dead")["runs"], "k", "{not json")
    await rclient.sadd(_keys("dead")["workers"], "dead")
    async with RunJournal(rclient, name="j", worker="me") as me:
        [entry] = await me.claim("dead")
        assert entry == JournalEntry(key="k", recorded_at=0.0, worker="")
        assert entry.maybe_sent
    assert "unreadable" in caplog.text


@pytest.mark.asyncio
async def test_resume_orphans_follows_accepted_runs_and_reports_maybe_sent(rclient):
    async with FakeZapier(durations=0.3, seed=2) as fake:
        async with client_for(fake) as dying_client:
            dying = RunJournal(rclient, name="j", worker="dying")
            async with dying:
                ids = {}
                for key in ("a", "b"):
                    await dying.sending(key)
                    handle = await dying_client.run(
                        "core:x", authentication=None, inputs={"key": key}
                    )
                    await dying.record(key, handle)
                    ids[key] = handle.id
                await dying.sending("c")  # the create never went out (or its answer was lost)
        async with (
            client_for(fake) as client,
            RunJournal(rclient, name="j", worker="heir") as heir,
        ):
            recovered = await heir.resume_orphans(client)
            assert recovered.workers == ("dying",)
            assert [e.key for e in recovered.entries] == ["a", "b", "c"]
            assert [e.key for e in recovered.unknown] == ["c"]
            assert set(recovered.handles) == {"a", "b"}
            for key, handle in recovered.handles.items():
                assert handle.id == ids[key]
                assert (await handle).succeeded
                await heir.forget(key)
            await heir.forget("c")  # after storing it as outcome unknown
            assert await heir.entries() == []
            again = await heir.resume_orphans(client)
            assert again.entries == ()
            assert again.workers == ()
        assert fake.stats.runs_created == 2
        assert fake.stats.duplicate_submissions == 0


# --- run_many --------------------------------------------------------------------------------


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
        RunJournal(rclient, name="j", worker="bulk") as journal,
    ):
        seen = []
        async with journal.run_many(client, iter(requests), concurrency=4) as outcomes:
            async for outcome in outcomes:
                if outcome.error is None:
                    entries = {e.key: e for e in await journal.entries()}
                    # Recorded as soon as Zapier accepted it (before the run ended).
                    assert entries[outcome.key].run_id == outcome.run_id
                    assert await journal.forget_outcome(outcome) is True
                else:
                    # Refused items own no entry: row-0's stays until row-0's outcome.
                    assert await journal.forget_outcome(outcome) is False
                seen.append(outcome)
        assert len(seen) == 10
        refused = {o.index: o.error for o in seen if o.error is not None}
        assert set(refused) == {1, 2, 3}
        assert isinstance(refused[1], NotJournalledError)
        assert "already journalled" in str(refused[1])
        assert isinstance(refused[3], NotJournalledError)
        assert "non-empty string" in str(refused[3])
        assert isinstance(refused[2], za.InvalidRequestError)
        assert not isinstance(refused[2], NotJournalledError)
        assert await journal.entries() == []
        assert journal._refused == {}
        assert fake.stats.runs_created == 7  # the refused items were never sent
        assert fake.stats.duplicate_submissions == 0


@pytest.mark.asyncio
async def test_run_many_stops_sending_when_journalling_fails(rclient):
    async with (
        FakeZapier(durations=0.05, seed=4) as fake,
        client_for(fake) as client,
    ):
        journal = RunJournal(rclient, name="j", worker="bulk")
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
        left = {e.key: e.run_id for e in await journal.entries()}
        assert left == {o.key: o.run_id for o in reported}


@pytest.mark.asyncio
async def test_run_many_refuses_a_non_iterable(rclient):
    async with RunJournal(rclient, name="j", worker="bulk") as journal:
        for bad in ("abc", {"action": "x"}, 3):
            with pytest.raises(za.InvalidRequestError):
                journal.run_many(None, bad)  # type: ignore[arg-type]


# --- the acceptance test: kill one worker mid-job --------------------------------------------


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
async def test_kill_one_worker_mid_job_the_others_resume_its_runs(redis_server, rclient):
    items = [f"item-{i:03d}" for i in range(48)]
    name = f"accept-{os.getpid()}"
    todo, outcomes_key = f"work:{name}:todo", f"work:{name}:outcomes"
    workers = ["w0", "w1", "w2"]
    victim = "w0"
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
                "--heartbeat-ttl",
                "1.0",
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

        observer = RunJournal(rclient, name=name, prefix="journal", worker="observer")

        async def victim_busy() -> bool:
            entries = await observer.entries(victim)
            return sum(not e.maybe_sent for e in entries) >= 5

        await wait_for(victim_busy, timeout=20)
        procs[victim].proc.send_signal(signal.SIGKILL)
        procs[victim].proc.wait()
        killed_at = time.monotonic()
        # Dead: its journal is frozen. Read it before its heartbeat expires (1 s) and the
        # survivors claim it.
        in_flight = await observer.entries(victim)
        assert await rclient.exists(f"journal:{name}:alive:{victim}") == 1, "read too late"
        maybe_sent = {e.key for e in in_flight if e.maybe_sent}

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
        "killed_in_flight": len(in_flight),
        "killed_maybe_sent": len(maybe_sent),
        "claimed": totals["claimed_entries"],
        "resumed": totals["resumed"],
        "taken_over_unsent": totals["taken_over_unsent"],
        "claims_lost": totals["claims_lost"],
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
    # The victim had at least 5 submitted runs in flight, and exactly one survivor claimed
    # all of its entries (the other lost the race or came later).
    assert sum(not e.maybe_sent for e in in_flight) >= 5
    assert totals["claimed_workers"] == 1
    assert totals["claimed_entries"] == len(in_flight)
    assert totals["resumed"] == len(in_flight) - len(maybe_sent)
    for entry in in_flight:
        if entry.maybe_sent:
            assert outcomes[entry.key]["status"] == "outcome_unknown"
        elif outcomes[entry.key]["how"] == "resumed":
            assert outcomes[entry.key]["run_id"] == entry.run_id
    # Only the victim's maybe-sent items are outcome unknown.
    assert {k for k, o in outcomes.items() if o["status"] == "outcome_unknown"} <= maybe_sent
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
    # Nothing left behind: no journal entries, no worker listed, no taken items.
    assert await rclient.smembers(f"journal:{name}:workers") == set()
    assert [k async for k in rclient.scan_iter(f"journal:{name}:runs:*")] == []
    assert [k async for k in rclient.scan_iter(f"work:{name}:taken:*")] == []
    assert await rclient.llen(todo) == 0
    assert all(report["left_in_journal"] == 0 for report in reports)
    assert wall < 30, summary
