"""zapier_async.journal: FileJournal on its own, and run_many jobs resumed through it."""

from __future__ import annotations

import asyncio
import json
import random
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _util import eventually

import zapier_async as za
from zapier_async import errors
from zapier_async.callbacks import CallbackReceiver, CallbackVerifier
from zapier_async.journal import (
    FileJournal,
    Journal,
    JournalExistsError,
    JournalLockedError,
    JournalState,
)
from zapier_async.testing import FakeClock, FakeZapier


def requests(n: int, **extra: Any) -> Iterator[za.RunRequest]:
    for i in range(n):
        yield za.RunRequest(action="core:x", authentication=None, inputs={"i": i}, key=i, **extra)


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def clocked_client(fake: FakeZapier, clock: FakeClock, **kwargs: Any) -> za.ZapierClient:
    return za.ZapierClient(
        auth=za.BearerToken("t"),
        base_url=fake.url,
        clock=clock,
        rng=random.Random(3),
        poll_policy=za.PollPolicy(),
        **kwargs,
    )


async def drive(clock: FakeClock, done: Callable[[], bool], *, below: float = 1e9) -> None:
    """Let real loopback I/O settle, then move the fake clock to its next deadline (never to
    `below` or later), until `done()`."""
    for _ in range(5_000):
        for _ in range(20):
            if done():
                return
            await asyncio.sleep(0.001)
        deadline = clock.next_deadline()
        if deadline is not None and deadline < below:
            await clock.advance_to(deadline)
    raise AssertionError("condition not reached")


# --- FileJournal alone ----------------------------------------------------------------------


def test_file_journal_is_a_journal_and_folds_events_into_a_state(tmp_path):
    path = tmp_path / "job.journal"
    with FileJournal(path) as journal:
        assert isinstance(journal, Journal)
        journal.sending(1)
        journal.submitted(1, "run-1", "tok-1")
        journal.sending("b")  # maybe sent
        journal.sending(3)
        journal.submitted(3, "run-3", None)  # followed by run id
        journal.sending(4)
        journal.submitted(4, "run-4", "tok-4")
        journal.finished(4, ok=True, run_id="run-4", error=None)
        journal.sending(5)
        journal.retry(5)  # forgotten: sent again
        state = journal.load()
    assert state == JournalState(
        done=frozenset({4}),
        in_flight={1: "tok-1", 3: "run-3"},
        maybe_sent=frozenset({"b"}),
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_file_journal_refuses_an_existing_file_for_a_new_job_and_a_second_holder(tmp_path):
    path = tmp_path / "job.journal"
    with FileJournal(path, resume=False) as first:
        first.sending(1)
        with pytest.raises(JournalLockedError) as locked:
            FileJournal(path).open()
        assert str(path) in str(locked.value)
    with pytest.raises(JournalExistsError):
        FileJournal(path, resume=False).open()
    with FileJournal(path) as again:  # resume=None: an existing file is resumed
        assert again.load().maybe_sent == {1}


def test_a_torn_last_line_is_cut_off_and_legacy_cli_lines_are_read(tmp_path):
    path = tmp_path / "job.journal"
    path.write_text('{"line": 7, "event": "submitted", "run_id": "r7"}\n{"key": 8, "event": "send')
    path.chmod(0o644)
    with FileJournal(path, resume=True) as journal:
        assert journal.load() == JournalState(in_flight={7: "r7"})
        journal.sending(9)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # narrowed to the owner
    assert [e.get("key", e.get("line")) for e in entries(path)] == [7, 9]


# --- run_many with a journal ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_job_stopped_midway_resumes_with_a_new_client_without_a_duplicate(tmp_path):
    n = 20
    path = tmp_path / "job.journal"
    clock = FakeClock()
    async with FakeZapier(clock=clock, durations=10.0, record_requests=False) as fake:
        # First invocation: 5 runs end and are handed over, 5 more are accepted, then the
        # job stops (as a Ctrl-C or a crash would stop it: nothing is handed over after that).
        first: list[za.Outcome] = []
        async with clocked_client(fake, clock) as client:
            with FileJournal(path) as journal:
                stream = za.RunMany(client, requests(n), concurrency=5, journal=journal)

                async def consume() -> None:
                    async for outcome in stream:
                        first.append(outcome)

                task = asyncio.create_task(consume())
                await eventually(lambda: fake.stats.runs_created == 5)
                await drive(clock, lambda: len(first) == 5, below=20.0)
                await eventually(lambda: fake.stats.runs_created == 10)
                await stream.aclose()
                await task
        assert sorted(o.key for o in first) == [0, 1, 2, 3, 4]
        assert all(o.ok for o in first)
        accepted = {e["key"]: e for e in entries(path) if e["event"] == "submitted"}
        assert sorted(accepted) == list(range(10))
        assert all(e["token"] for e in accepted.values())
        # What a crash while item 15's create was on the wire leaves behind.
        with path.open("a") as fh:
            fh.write('{"key": 15, "event": "sending"}\n')

        # Second invocation, a new client, the same input.
        second: list[za.Outcome] = []
        async with clocked_client(fake, clock) as client:
            with FileJournal(path) as journal:
                async with za.RunMany(
                    client, requests(n), concurrency=5, journal=journal
                ) as stream:
                    task = asyncio.create_task(_collect(stream, second))
                    await drive(clock, task.done)
                    await task
        by_key = {o.key: o for o in second}
        assert sorted(by_key) == list(range(5, n))  # items 0-4 were handed over before
        for key in range(5, 10):  # accepted before: followed by token, never re-sent
            assert by_key[key].ok
            assert by_key[key].run_id == accepted[key]["run_id"]
        assert isinstance(by_key[15].error, errors.OutcomeUnknownError)  # maybe sent
        assert by_key[15].run_id is None
        assert all(by_key[k].ok for k in range(10, n) if k != 15)
        stats = fake.stats
        assert stats.duplicate_submissions == 0
        assert stats.runs_created == n - 1  # item 15 "may have been sent": never sent here
        created_before = stats.runs_created

        # Third invocation: the whole job is done; nothing is sent or reported again.
        third: list[za.Outcome] = []
        async with clocked_client(fake, clock) as client:
            with FileJournal(path) as journal:
                async with za.RunMany(client, requests(n), journal=journal) as stream:
                    await _collect(stream, third)
        assert third == []
        assert fake.stats.runs_created == created_before


async def gather(stream: za.RunMany) -> list[za.Outcome]:
    """The outcomes of a job built as `RunMany` directly, in input order."""
    got: list[za.Outcome] = []
    async with stream:
        await _collect(stream, got)
    return sorted(got, key=lambda o: o.index)


async def _collect(stream: za.RunMany, into: list[za.Outcome]) -> None:
    async for outcome in stream:
        into.append(outcome)


@pytest.mark.asyncio
async def test_a_journaled_job_needs_a_key_per_item_and_refuses_a_held_journal(tmp_path):
    path = tmp_path / "job.journal"
    async with FakeZapier(record_requests=False) as fake:
        async with za.ZapierClient(auth=za.BearerToken("t"), base_url=fake.url) as client:
            items = [
                za.RunRequest(action="core:x", authentication=None, key=None),
                za.RunRequest(action="core:x", authentication=None, key=True),
                za.RunRequest(action="core:x", authentication=None, key="a"),
            ]
            with FileJournal(path) as journal:
                outcomes = await gather(za.RunMany(client, items, journal=journal))
                with pytest.raises(JournalLockedError):  # a second job on the same file
                    async for _ in za.RunMany(client, items, journal=FileJournal(path)):
                        pass
        assert [type(o.error) for o in outcomes[:2]] == [errors.InvalidRequestError] * 2
        assert outcomes[2].ok
        assert fake.stats.runs_created == 1
    assert [e["event"] for e in entries(path)] == ["sending", "submitted", "done"]


@pytest.mark.asyncio
async def test_a_journal_that_cannot_be_written_keeps_the_create_from_being_sent(tmp_path):
    class Broken(FileJournal):
        def sending(self, key: Any) -> None:
            raise OSError("disk full")

    async with FakeZapier(record_requests=False) as fake:
        async with za.ZapierClient(auth=za.BearerToken("t"), base_url=fake.url) as client:
            with Broken(tmp_path / "j") as journal:
                outcomes = await gather(za.RunMany(client, requests(3), journal=journal))
        assert [type(o.error) for o in outcomes] == [OSError] * 3
        assert fake.stats.runs_created == 0


@pytest.mark.asyncio
async def test_a_refusing_before_send_hook_gives_the_slot_back_and_counts_no_request(tmp_path):
    # The hook runs after the limiter granted the slot: the grant must be undone, not
    # completed as a send (which would spend the budget and count a request never sent).
    class Broken(FileJournal):
        def sending(self, key: Any) -> None:
            raise OSError("disk full")

    async with FakeZapier(record_requests=False) as fake:
        async with za.ZapierClient(auth=za.BearerToken("t"), base_url=fake.url) as client:
            limiter = client.limiter
            assert isinstance(limiter, za.Limiter)
            with Broken(tmp_path / "j") as journal:
                outcomes = await client.gather(requests(3), journal=journal)
            stats = limiter.snapshot()
            metrics = client.metrics()
        assert [type(o.error) for o in outcomes] == [OSError] * 3
        assert stats.in_flight == 0
        assert stats.grants == 0  # every grant was given back unused
        assert stats.responses == 0
        assert sum(metrics.requests_by_endpoint.values()) == 0
        assert fake.stats.runs_created == 0


# --- run_many with callback URLs ------------------------------------------------------------


@pytest.mark.asyncio
async def test_bulk_runs_with_a_callback_url_are_resolved_by_their_callbacks(served):
    n = 30
    clock = FakeClock()
    async with FakeZapier(clock=clock, seed=4, durations=1.0, record_requests=False) as fake:
        async with clocked_client(
            fake,
            clock,
            allow_insecure_callback_url_for_testing=True,
            callback_polling=za.CallbackPolling(first_delay=45.0, interval=60.0),
        ) as client:
            receiver = CallbackReceiver(
                client, CallbackVerifier(jwks_url=fake.jwks_url, clock=clock)
            )
            url = await served(receiver.app()) + "/zapier/callback"
            task = asyncio.create_task(client.gather(requests(n, callback_url=url), concurrency=n))
            await drive(clock, task.done, below=45.0)  # before any safety-net poll
            outcomes = task.result()
        stats = fake.stats
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:2]
    assert receiver.stats.delivered == n
    assert receiver.stats.rejected_signatures == 0
    assert stats.polls == 0  # every run resolved by its callback
    assert stats.duplicate_submissions == 0
