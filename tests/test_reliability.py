"""Faults at scale: never a duplicate run, every request ends in a Run or a typed error."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

import zapier_async as za
from zapier_async import errors
from zapier_async.testing import FakeZapier

FAULTS = {"500", "502", "503", "504", "reset"}


@pytest.mark.asyncio
async def test_a_thousand_runs_at_ten_percent_faults_no_duplicates_all_typed():
    async with FakeZapier(
        seed=11,
        durations=(0.0, 0.1),
        fault_rate=0.10,
        faults=FAULTS,
        fault_after_create=0.5,
        record_requests=False,
    ) as fake:
        async with za.ZapierClient(
            auth=za.BearerToken("t"),
            base_url=fake.url,
            poll_policy=za.PollPolicy(initial=0.02, cap=0.1),
            retry_policy=za.RetryPolicy(base=0.01, cap=0.05),
            max_rate_limit_wait=None,
            max_poll_failures=20,
            rng=random.Random(11),
        ) as client:
            known_ids: set[str] = set()

            async def one(i: int) -> str:
                try:
                    handle = await client.run("core:x", authentication=None, inputs={"i": i})
                except errors.OutcomeUnknownError:
                    return "outcome unknown"
                known_ids.add(handle.id)
                try:
                    await handle
                except errors.ZapierError as exc:
                    return type(exc).__name__
                return "success"

            outcomes = await asyncio.gather(*(one(i) for i in range(1000)), return_exceptions=True)
        stats = fake.stats
        runs = fake.runs()

    # Every request ended in a Run or one of our typed errors: nothing else escaped.
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    tally = Counter(outcomes)
    print("outcomes:", dict(tally), "faults:", dict(stats.faults))
    assert sum(tally.values()) == 1000
    assert tally["success"] >= 900, tally
    # The emulator saw faults, on creates and on polls.
    assert sum(stats.faults.values()) >= 100
    # Never a duplicate: no create was re-sent after it may have reached the server.
    assert stats.duplicate_submissions == 0
    # Nothing lost: every run the server created is known to the caller by id, except runs
    # whose create answer was lost, and the caller was told so for exactly those requests.
    unknown = {i for i, o in enumerate(outcomes) if o == "outcome unknown"}
    for record in runs:
        if record.id not in known_ids:
            assert record.inputs["i"] in unknown, record
    assert len(runs) == stats.runs_created
