"""Chaos: the real client against a misbehaving FakeZapier; the invariants of harness.py hold.

Each scenario is short (a few hundred runs at most) so the default suite stays fast;
`python -m benchmarks.soak` runs the same harness for 10,000 runs.
"""

from __future__ import annotations

import asyncio
import importlib

import anyio
import pytest

import zapier_async as za
import zapier_async._pipeline as pipeline_module
from zapier_async import testing

from .harness import ChaosConfig, check, reproducible_seed, run_chaos

SEED = reproducible_seed()
ALL_BUT_SLOW = frozenset({"500", "502", "503", "504", "reset", "non_json"})


@pytest.mark.asyncio
async def test_mixed_faults_at_ten_percent_lose_and_duplicate_nothing():
    report = await run_chaos(ChaosConfig(runs=300, seed=SEED, fault_rate=0.10, faults=ALL_BUT_SLOW))
    check(report)
    # The test only proves something if the faults actually happened, on both endpoints.
    assert sum(report.faults.values()) >= 30, report.lines()
    assert report.unknown_outcome >= 1, report.lines()
    assert report.unknown_outcome_created >= 1, report.lines()
    assert report.outcomes["Run"] >= 200, report.lines()
    assert report.outcomes["RunFailedError"] >= 1, report.lines()


@pytest.mark.asyncio
async def test_connection_resets_only():
    report = await run_chaos(
        ChaosConfig(runs=200, seed=SEED, fault_rate=0.15, faults=frozenset({"reset"}))
    )
    check(report)
    assert report.faults["reset"] >= 20
    # A reset create that was processed is an unknown outcome; one that was not may be too.
    assert report.unknown_outcome >= 1


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [200, 502])
async def test_non_json_bodies(status):
    def configure(fake):
        fake.non_json_status = status

    report = await run_chaos(
        ChaosConfig(
            runs=150,
            seed=SEED,
            fault_rate=0.15,
            faults=frozenset({"non_json"}),
            on_fake=configure,
        )
    )
    check(report)
    assert report.faults["non_json"] >= 15
    assert report.unknown_outcome >= 1


@pytest.mark.asyncio
async def test_503_with_retry_after_is_a_refusal_the_create_is_resent_once():
    def configure(fake):
        fake.inject("503", endpoint="create", count=1)
        fake.inject("503", endpoint="poll", count=1)

    report = await run_chaos(
        ChaosConfig(
            runs=20,
            seed=SEED,
            fault_rate=0.0,
            fault_retry_after=1,
            error_rate=0.0,
            on_fake=configure,
        )
    )
    check(report)
    assert report.faults["503"] == 2
    # The refused create was re-sent after Retry-After and made exactly one run.
    assert report.outcomes == {"Run": 20}
    assert report.runs_created == 20
    assert report.requests_by_endpoint["create"] == 21
    # The whole bucket froze for the Retry-After second: the waits were honoured.
    assert report.wall_time >= 1.0


@pytest.mark.asyncio
async def test_slow_responses_beyond_the_request_timeout():
    report = await run_chaos(
        ChaosConfig(
            runs=120,
            seed=SEED,
            fault_rate=0.10,
            faults=frozenset({"slow"}),
            slow_delay=1.0,
            request_timeout=0.15,
        )
    )
    check(report)
    assert report.faults["slow"] >= 10
    # A create that timed out may or may not have been processed: never re-sent.
    assert report.unknown_outcome >= 1
    assert report.duplicate_submissions == 0


@pytest.mark.asyncio
async def test_429_storm_with_cooldown_waiting_callers_all_get_through():
    # Ten workers, each with its own limiter, overrun one server budget: a 429 storm. Their
    # first requests (one probe each, all at once) already overrun a budget of 7 per window.
    # Each create may be refused 8 times: with the default 4, the storm alone (a 0.1 s
    # cool-down, retries 5-50 ms apart) refused 0-3 creates 4 times in a row on a quiet
    # machine and 7 under `.ci/run`'s load; this test is about the callers that wait.
    report = await run_chaos(
        ChaosConfig(
            runs=60,
            clients=10,
            seed=SEED,
            fault_rate=0.0,
            rate_limit=(7, 0.1),
            cooldown_after_429=0.1,
            max_rate_limit_wait=None,
            max_attempts=8,
        )
    )
    check(report)
    assert report.rate_limited >= 3, report.lines()
    # A 429 is a refusal: nothing was created. A caller whose create was refused more times
    # than its retry policy allows gets TooManyRequestsError (check() proved it has no run);
    # every other caller got through, and nothing is ever outcome-unknown here.
    assert set(report.outcomes) <= {"Run", "RunFailedError", "TooManyRequestsError"}
    through = report.outcomes["Run"] + report.outcomes["RunFailedError"]
    assert report.runs_created == through >= 55, report.lines()
    assert report.unknown_outcome == 0


@pytest.mark.asyncio
async def test_429_storm_with_faults_and_impatient_callers():
    report = await run_chaos(
        ChaosConfig(
            runs=200,
            clients=10,
            seed=SEED,
            fault_rate=0.05,
            faults=ALL_BUT_SLOW,
            rate_limit=(10, 0.25),
            cooldown_after_429=0.2,
            max_rate_limit_wait=0.05,
        )
    )
    check(report)
    assert report.rate_limited >= 1, report.lines()
    # Impatient callers were told RateLimitedError (nothing was created for them: the
    # harness checked), the others got through.
    assert report.outcomes["RateLimitedError"] >= 1, report.lines()
    assert report.outcomes["Run"] >= 1, report.lines()


class RotatingToken:
    """An auth provider whose token expires: Zapier answers 401, the next one is fetched."""

    def __init__(self) -> None:
        self.generation = 0
        self.refreshes = 0

    async def token(self) -> str:
        return f"tok-{self.generation}"

    def invalidate(self, token: str) -> bool:
        if token == f"tok-{self.generation}":
            self.generation += 1
            self.refreshes += 1
        return True


@pytest.mark.asyncio
async def test_token_expiry_mid_run_refreshes_once_and_duplicates_nothing():
    auth = RotatingToken()
    assert isinstance(auth, za.AuthProvider)
    accepted = {"tok-0"}
    fake_ref = []

    def configure(fake):
        fake.tokens = frozenset(accepted)
        fake_ref.append(fake)

    async def expire_tokens():
        # Expire the current token three times while runs are in flight; each time, wait for
        # the client to have been refused and to have fetched the next one.
        # Expiries are spaced by 250 requests, as real ones are by an hour: a request is
        # refused once and re-sent with the new token. (The client re-authorises once per
        # request, so one that waited across two expiries would get AuthenticationError.)
        fake = fake_ref[0]
        for k in range(3):
            since = fake.stats.requests
            await _wait_for(lambda since=since: fake.stats.requests >= since + 250)
            fake.tokens = frozenset({f"tok-{k + 1}"})
            await _wait_for(lambda k=k: auth.generation == k + 1)

    config = ChaosConfig(
        runs=400,
        seed=SEED,
        fault_rate=0.05,
        faults=ALL_BUT_SLOW,
        auth=auth,
        tokens=frozenset(accepted),
        on_fake=configure,
        durations=(0.05, 0.3),
    )
    chaos = asyncio.create_task(run_chaos(config))
    await _wait_for(lambda: bool(fake_ref))
    expiring = asyncio.create_task(expire_tokens())
    report = await chaos
    await expiring
    check(report)
    assert auth.refreshes == 3
    assert report.responses_by_status.get(401, 0) >= 3
    assert "AuthenticationError" not in report.outcomes


@pytest.mark.asyncio
async def test_client_credentials_tokens_expiring_mid_run_are_refreshed():
    client_credentials = getattr(za, "ClientCredentials", None)
    fake_auth = getattr(testing, "FakeAuthServer", None)
    if fake_auth is None:  # not re-exported yet by the auth work in progress
        fake_auth = getattr(
            importlib.import_module("zapier_async.testing._fake_auth"), "FakeAuthServer", None
        )
    if client_credentials is None or fake_auth is None:
        pytest.skip("ClientCredentials / FakeAuthServer (token expiry) do not exist yet")
    seen = []

    def configure(fake):
        seen.append(fake)

    report = await run_chaos(
        ChaosConfig(
            runs=200,
            seed=SEED,
            fault_rate=0.05,
            faults=ALL_BUT_SLOW,
            durations=(0.05, 0.3),
            # Tokens lapse after 0.2 s although the server says an hour: the client only
            # learns from the 401s, mid-run, and must fetch a new token and re-send.
            fake_options={
                "auth_server": fake_auth(
                    client_credentials={"chaos-id": "chaos-secret"},
                    token_lifetime=0.2,
                    reported_lifetime=3600,
                    require_issued_tokens=True,
                )
            },
            auth_factory=lambda fake: client_credentials(
                client_id="chaos-id", client_secret="chaos-secret", token_url=fake.token_url
            ),
            on_fake=configure,
        )
    )
    check(report)
    stats = seen[0].stats
    assert stats.expired_token_refusals >= 1, report.lines()
    assert stats.tokens_issued >= 2
    assert "AuthenticationError" not in report.outcomes, report.lines()


@pytest.mark.asyncio
async def test_client_closed_while_runs_and_creates_are_in_flight():
    report = await run_chaos(
        ChaosConfig(
            runs=200,
            concurrency=200,
            seed=SEED,
            fault_rate=0.05,
            faults=ALL_BUT_SLOW,
            durations=(0.2, 0.6),
            latency=(0.0, 0.03),
            close_after_creates=100,
        )
    )
    check(report)
    # Runs still in flight were detached, not lost: their callers know the ids.
    assert report.outcomes["RunDetachedError"] >= 50, report.lines()


@pytest.mark.asyncio
async def test_the_harness_catches_a_duplicate(monkeypatch):
    """The invariants can fail: a client that re-sends an ambiguous create is caught."""
    original = pipeline_module.decide_retry

    def reckless(*, idempotent, status, failure, has_retry_after):
        return original(
            idempotent=True, status=status, failure=failure, has_retry_after=has_retry_after
        )

    def configure(fake):
        fake.inject("502", endpoint="create", after_create=True, count=5)

    monkeypatch.setattr(pipeline_module, "decide_retry", reckless)
    report = await run_chaos(ChaosConfig(runs=10, seed=SEED, fault_rate=0.0, on_fake=configure))
    assert report.duplicate_submissions >= 1
    with pytest.raises(AssertionError, match="duplicate"):
        check(report)


async def _wait_for(predicate, *, within: float = 15.0) -> None:
    """Check `predicate()` as the loop turns, under a bounded deadline (not a guessed sleep).

    The emulator's counters have no event to wait on, so this polls them; it fails loudly
    after `within` seconds instead of guessing a duration.
    """
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 (polling counters that have no event)
            await asyncio.sleep(0.001)


@pytest.mark.asyncio
async def test_cancellation_storm_loses_hangs_and_leaks_nothing():
    # Callers cancelled at random awaits (waiting for a slot, mid-create, awaiting the
    # handle), creates given up by asyncio.wait_for at the limiter or on the wire, a tight
    # budget, latency (so creates spend time on the wire), faults, and the client closed
    # mid-flight: every run the server made is known by id, nothing hangs or leaks.
    report = await run_chaos(
        ChaosConfig(
            runs=400,
            seed=SEED,
            fault_rate=0.05,
            faults=ALL_BUT_SLOW,
            durations=(0.0, 0.3),
            latency=(0.01, 0.1),
            rate_limit=(40, 0.2),
            cancel_rate=0.3,
            cancel_within=1.0,
            create_timeout=0.6,
            close_after_creates=370,
            deadline=10.0,
        )
    )
    check(report)
    lines = report.lines()
    # The storm happened, at every await: before anything was sent (slot waits), on the wire
    # (runs made for callers that were gone, announced and listed in orphaned_runs), and
    # while awaiting handles; and the close caught runs in flight.
    assert report.cancelled >= 50, lines
    assert report.outcomes["CreateTimedOut"] + report.outcomes["Cancelled"] >= 50, lines
    assert report.cancelled_before_sending >= 10, lines
    assert report.cancelled_runs_announced >= 1, lines
    assert report.cancelled_runs_orphaned >= 1, lines
    assert report.cancelled_awaiting >= 5, lines
    assert report.outcomes["RunDetachedError"] >= 1, lines
    assert report.lost_run_ids == 0
    assert report.hung == 0
    assert report.leaked_tasks == 0
