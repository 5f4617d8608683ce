"""The chaos harness: the real client against `FakeZapier` with faults, and the invariants.

One function, `run_chaos`, drives a workload of N callers through a real `ZapierClient`
against a `FakeZapier` configured to misbehave, then compares what every caller was told with
the emulator's server-side truth (`FakeZapier.runs()`). `ChaosReport.violations` lists every
broken invariant; `check` raises with all of them. The tests in this package run it briefly;
`python -m benchmarks.soak` runs it for 10,000 runs and prints the numbers.

Invariants (checked after the client and the emulator are closed):

1. Every caller ends with a `Run` or a typed `ZapierError`; nothing else escapes.
2. Every run the server created is known to exactly one caller by id, except runs whose
   create got `OutcomeUnknownError`; and each of those corresponds to exactly the request
   that got it (it carries that caller's unique input). A caller told anything else on create
   (a refusal, `RateLimitedError`, a connect error) has no run on the server.
3. Zero duplicate submissions: at most one server run per caller, and the emulator counted
   no duplicate create.
4. Outcomes agree with the server: a `Run` is the server's successful run (same id, the
   results echo the caller's own input), `RunFailedError` is a run that ended in error.
5. Nothing leaks: no task of ours left after close, no socket left open, no unraisable
   exception (an unclosed session or transport is reported as one).
6. Cancellation loses nothing (the cancellation storm: `cancel_rate`, `create_timeout`): a
   caller cancelled at any await, or whose create timed out under `asyncio.wait_for`, may end
   without a handle, but every run the server created for it is reachable by its id: the
   client announced it (a ``"started"`` `RunEvent`) although its caller was gone, and lists
   it in `ZapierClient.orphaned_runs`. The one exception is the same as in invariant 2: a
   create whose outcome the client could not know (the answer was a 5xx, a reset, ...) and
   reported as unknown (counted in `Metrics.outcome_unknown`, logged); each such report
   accounts for at most one unannounced run of a cancelled caller.
7. Nothing hangs: every caller ends before `deadline`; a caller still running then is hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs

import zapier_async as za
from zapier_async import errors
from zapier_async.testing import FakeZapier

__all__ = ["ChaosConfig", "ChaosReport", "check", "open_sockets", "run_chaos"]

OUTCOME_UNKNOWN = "OutcomeUnknownError"


@attrs.frozen(kw_only=True)
class ChaosConfig:
    """One chaos workload.

    Attributes:
        runs: Callers, each starting one run and awaiting it.
        concurrency: Callers in flight at most.
        seed: Seeds the emulator and the client's jitter.
        fault_rate: Probability that a request is hit by a fault from `faults`.
        faults: Fault kinds (see `FakeZapier`).
        fault_after_create: Probability that a fault on a create hits after the run was made.
        fault_retry_after: `Retry-After` seconds on a refusing 503 (None: no header).
        slow_delay: How late a `"slow"` fault answers (real seconds).
        request_timeout: The client's per-request timeout.
        durations: Run durations at the emulator.
        error_rate: Runs that end with status error.
        rate_limit: The emulator's `(limit, window)`, or None.
        cooldown_after_429: The emulator's cool-down after its limit was exceeded.
        max_rate_limit_wait: The client's cap on waiting for the budget.
        max_poll_failures: Consecutive failed polls before a handle gives up.
        max_attempts: The clients' `RetryPolicy.max_attempts` (a create refused this many
            times ends in `TooManyRequestsError`).
        close_after_creates: Close the client once this many creates were answered, with
            the rest of the runs (and some creates) still in flight. None: never.
        latency: Extra emulator latency per response.
        auth: The auth provider (default: a bearer token).
        tokens: Tokens the emulator accepts (None: any).
        on_fake: Called with the started emulator, to configure or inject faults.
        clients: Clients (each with its own limiter, like separate workers) the callers are
            spread over round-robin; several of them overrun a shared server budget.
        fake_options: More `FakeZapier` keyword arguments (e.g. an `auth_server`).
        auth_factory: Builds each client's auth provider from the started emulator (e.g.
            `ClientCredentials` against `fake.token_url`); overrides `auth`.
        cancel_rate: Probability that a caller's task is cancelled, at a uniformly random
            moment within `cancel_within` seconds of its start (once it passed the
            `concurrency` gate: waiting for a slot, during its create, or awaiting its handle).
        cancel_within: See `cancel_rate`.
        create_timeout: Wrap each create in `asyncio.wait_for` with this timeout (callers
            that give up on the limiter or the POST); None: no timeout.
        deadline: Seconds after which callers still running count as hung (and are
            cancelled so that the report can be made).
    """

    runs: int = 300
    concurrency: int = 100
    seed: int = 1
    fault_rate: float = 0.10
    faults: frozenset[str] = frozenset({"500", "502", "503", "504", "reset", "non_json"})
    fault_after_create: float = 0.5
    fault_retry_after: int | None = 0
    slow_delay: float = 1.0
    request_timeout: float = 5.0
    durations: tuple[float, float] = (0.0, 0.05)
    error_rate: float = 0.05
    rate_limit: tuple[int, float] | None = None
    cooldown_after_429: float = 0.0
    max_rate_limit_wait: float | None = None
    max_poll_failures: int = 50
    max_attempts: int = 4
    close_after_creates: int | None = None
    latency: float | tuple[float, float] = 0.0
    auth: za.AuthProvider | None = None
    tokens: frozenset[str] | None = None
    on_fake: Callable[[FakeZapier], None] | None = None
    clients: int = 1
    fake_options: dict[str, Any] = attrs.Factory(dict)
    auth_factory: Callable[[FakeZapier], za.AuthProvider] | None = None
    cancel_rate: float = 0.0
    cancel_within: float = 0.5
    create_timeout: float | None = None
    deadline: float = 240.0


@attrs.define(kw_only=True)
class ChaosReport:
    """What happened, from both sides."""

    runs: int
    outcomes: Counter[str] = attrs.Factory(Counter)
    faults: dict[str, int] = attrs.Factory(dict)
    requests: int = 0
    requests_by_endpoint: dict[str, int] = attrs.Factory(dict)
    responses_by_status: dict[int, int] = attrs.Factory(dict)
    rate_limited: int = 0
    runs_created: int = 0
    duplicate_submissions: int = 0
    unknown_outcome: int = 0
    unknown_outcome_created: int = 0
    unknown_causes: Counter[str] = attrs.Factory(Counter)
    cancelled: int = 0
    cancelled_before_sending: int = 0
    cancelled_runs_announced: int = 0
    cancelled_runs_unknown: int = 0
    cancelled_runs_orphaned: int = 0
    cancelled_awaiting: int = 0
    lost_run_ids: int = 0
    hung: int = 0
    untyped: int = 0
    leaked_tasks: int = 0
    wall_time: float = 0.0
    violations: list[str] = attrs.Factory(list)

    def lines(self) -> list[str]:
        """The numbers, one per line, for humans."""
        return [
            f"runs requested:          {self.runs}",
            f"wall time:               {self.wall_time:.2f} s",
            "outcomes by type:        "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
            "faults by kind:          "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()) if v)
            + f" (total {sum(self.faults.values())})",
            f"requests:                {self.requests} "
            f"{dict(sorted(self.requests_by_endpoint.items()))}",
            f"responses by status:     {dict(sorted(self.responses_by_status.items()))}",
            f"rate limited (429):      {self.rate_limited}",
            f"runs created (server):   {self.runs_created}",
            f"duplicate submissions:   {self.duplicate_submissions}",
            f"outcome unknown:         {self.unknown_outcome} "
            f"(of which the run exists: {self.unknown_outcome_created})",
            "outcome unknown causes:  "
            + ", ".join(f"{k!r}={v}" for k, v in self.unknown_causes.most_common(5)),
            f"cancelled callers:       {self.cancelled} (before anything was sent: "
            f"{self.cancelled_before_sending}, on the wire with a run made and announced by "
            f"id: {self.cancelled_runs_announced} ({self.cancelled_runs_orphaned} in "
            f"orphaned_runs), or reported outcome unknown: "
            f"{self.cancelled_runs_unknown}, awaiting their handle: {self.cancelled_awaiting})",
            f"lost run ids:            {self.lost_run_ids}",
            f"hung callers:            {self.hung}",
            f"untyped errors:          {self.untyped}",
            f"leaked tasks:            {self.leaked_tasks}",
            f"invariant violations:    {len(self.violations)}",
        ]


def check(report: ChaosReport) -> None:
    """Raise AssertionError listing every violated invariant."""
    if report.violations:
        shown = "\n  ".join(report.violations[:30])
        more = len(report.violations) - 30
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise AssertionError(
            f"{len(report.violations)} chaos invariant(s) violated:\n  {shown}{tail}\n"
            + "\n".join(report.lines())
        )


def open_sockets() -> int | None:
    """Sockets this process has open (Linux /proc), or None where that cannot be told."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    count = 0
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
    return count


@contextlib.contextmanager
def _unraisable_recorder(sink: list[str]) -> Iterator[None]:
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        sink.append(f"unraisable: {unraisable.exc_type.__name__}: {unraisable.exc_value}")
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


@attrs.define
class _Caller:
    index: int
    handle_id: str | None = None
    create_error: str | None = None
    unknown_cause: str | None = None
    outcome: str | None = None
    run: za.Run | None = None
    failed_run: za.Run | None = None
    escaped: BaseException | None = None
    cancelled: bool = False
    hung: bool = False


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run the workload; return the report with every invariant violation listed."""
    report = ChaosReport(runs=config.runs)
    unraisable: list[str] = []
    before_tasks = set(asyncio.all_tasks())
    sockets_before = open_sockets()
    started = time.perf_counter()
    with _unraisable_recorder(unraisable):
        callers = [_Caller(i) for i in range(config.runs)]
        async with FakeZapier(
            seed=config.seed,
            durations=config.durations,
            error_rate=config.error_rate,
            fault_rate=config.fault_rate,
            faults=config.faults,
            fault_after_create=config.fault_after_create,
            fault_retry_after=config.fault_retry_after,
            slow_delay=config.slow_delay,
            rate_limit=config.rate_limit,
            cooldown_after_429=config.cooldown_after_429,
            latency=config.latency,
            tokens=config.tokens,
            record_requests=False,
            **config.fake_options,
        ) as fake:
            if config.on_fake is not None:
                config.on_fake(fake)
            announced, orphans, unknown_reports = await _drive(fake, config, callers)
            stats = fake.stats
            server_runs = fake.runs()
        report.wall_time = time.perf_counter() - started
        # Let aiohttp's connection-closing callbacks run, then collect: an unclosed session or
        # transport shows up as an unraisable ResourceWarning here, not later in another test.
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
    current = asyncio.current_task()
    leftover = [
        t
        for t in asyncio.all_tasks()
        if t not in before_tasks and t is not current and not t.done()
    ]
    _fill(report, stats, callers, server_runs, announced, orphans, unknown_reports)
    v = report.violations
    v.extend(unraisable)
    report.leaked_tasks = len(leftover)
    if leftover:
        v.append(f"{len(leftover)} task(s) left after close: {[t.get_name() for t in leftover]}")
    sockets_after = open_sockets()
    if sockets_before is not None and sockets_after is not None and sockets_after > sockets_before:
        v.append(f"sockets leaked: {sockets_before} open before, {sockets_after} after close")
    return report


async def _drive(
    fake: FakeZapier, config: ChaosConfig, callers: list[_Caller]
) -> tuple[set[str], set[str], int]:
    """Run every caller.

    Returns:
        The ids of the runs the clients announced as started, the ids in their
        `orphaned_runs`, and how many creates they reported as outcome unknown.
    """
    announced: set[str] = set()

    def listen(event: za.Event) -> None:
        if isinstance(event, za.RunEvent) and event.kind == "started":
            announced.add(event.run_id)

    clients = [
        za.ZapierClient(
            auth=_auth_for(config, fake),
            base_url=fake.url,
            poll_policy=za.PollPolicy(initial=0.02, factor=1.5, cap=0.1),
            retry_policy=za.RetryPolicy(max_attempts=config.max_attempts, base=0.005, cap=0.05),
            request_timeout=config.request_timeout,
            max_rate_limit_wait=config.max_rate_limit_wait,
            max_poll_failures=config.max_poll_failures,
            rng=random.Random(config.seed + n),
            on_event=listen,
        )
        for n in range(config.clients)
    ]
    storm = random.Random(config.seed * 7919 + 1)
    # When each caller is cancelled, counted from the moment it passes the gate (so that the
    # cancel lands in its create or its await, not while it queues for the gate).
    cancel_after: dict[int, float] = {}
    for caller in callers:
        if config.cancel_rate and storm.random() < config.cancel_rate:
            cancel_after[caller.index] = storm.uniform(0.0, config.cancel_within)
    cancelling: set[int] = set()
    timers: list[asyncio.TimerHandle] = []
    loop = asyncio.get_running_loop()

    def cancel(index: int, task: asyncio.Task[Any]) -> None:
        if not task.done():
            cancelling.add(index)
            task.cancel()

    gate = asyncio.Semaphore(config.concurrency)
    creates_answered = 0
    closing: asyncio.Task[Any] | None = None

    async def one(caller: _Caller) -> None:
        nonlocal creates_answered, closing
        client = clients[caller.index % len(clients)]
        async with gate:
            delay = cancel_after.get(caller.index)
            if delay is not None:
                me = asyncio.current_task()
                assert me is not None
                timers.append(loop.call_later(delay, cancel, caller.index, me))
            try:
                create = client.run("core:chaos", authentication=None, inputs={"i": caller.index})
                if config.create_timeout is not None:
                    handle = await asyncio.wait_for(create, config.create_timeout)
                else:
                    handle = await create
            except errors.ZapierError as exc:
                caller.create_error = caller.outcome = type(exc).__name__
                if isinstance(exc, errors.OutcomeUnknownError):
                    caller.unknown_cause = exc.cause.split(" (")[0]
                return
            except asyncio.TimeoutError:
                # asyncio.wait_for gave up on the create: the caller is gone, like a cancel.
                caller.cancelled = True
                caller.outcome = "CreateTimedOut"
                return
            finally:
                creates_answered += 1
                if (
                    config.close_after_creates is not None
                    and creates_answered >= config.close_after_creates
                    and closing is None
                ):
                    closing = asyncio.create_task(_close_all(clients))
            caller.handle_id = handle.id
            try:
                caller.run = await handle
            except errors.RunFailedError as exc:
                caller.failed_run = exc.run
                caller.outcome = "RunFailedError"
            except errors.ZapierError as exc:
                caller.outcome = type(exc).__name__
            else:
                caller.outcome = "Run"

    async def guarded(caller: _Caller, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError as exc:
            if caller.index not in cancelling:
                caller.escaped = exc
                raise
            # The storm cancelled this caller (at any await): an ordinary event.
            caller.cancelled = True
            caller.outcome = "Cancelled"
        except BaseException as exc:  # invariant 1: record what escaped, do not hide it
            caller.escaped = exc
            if not isinstance(exc, Exception):
                raise

    tasks = [asyncio.create_task(guarded(c, one(c))) for c in callers]
    try:
        _done, pending = await asyncio.wait(tasks, timeout=config.deadline)
        for caller, task in zip(callers, tasks, strict=True):
            if task in pending:
                caller.hung = True
                task.cancel()
        if pending:
            await asyncio.wait(pending)
    finally:
        for timer in timers:
            timer.cancel()
        if closing is not None:
            await closing
        await _close_all(clients)
    if not all(c.closed for c in clients):
        raise AssertionError("a client did not close")
    orphans = {handle.id for client in clients for handle in client.orphaned_runs}
    unknown_reports = sum(client.metrics().outcome_unknown for client in clients)
    return announced, orphans, unknown_reports


def _auth_for(config: ChaosConfig, fake: FakeZapier) -> za.AuthProvider:
    if config.auth_factory is not None:
        return config.auth_factory(fake)
    return config.auth if config.auth is not None else za.BearerToken("chaos-token")


async def _close_all(clients: list[za.ZapierClient]) -> None:
    for client in clients:
        await client.aclose()


def _fill(
    report: ChaosReport,
    stats: Any,
    callers: list[_Caller],
    server_runs: list[Any],
    announced: set[str],
    orphans: set[str],
    unknown_reports: int,
) -> None:
    v = report.violations
    report.faults = dict(stats.faults)
    report.requests = stats.requests
    report.requests_by_endpoint = dict(stats.requests_by_endpoint)
    report.responses_by_status = dict(stats.responses_by_status)
    report.rate_limited = stats.rate_limited
    report.runs_created = stats.runs_created
    report.duplicate_submissions = stats.duplicate_submissions
    if stats.duplicate_submissions:
        v.append(f"the emulator counted {stats.duplicate_submissions} duplicate submission(s)")
    if len(server_runs) != stats.runs_created:
        v.append(f"{len(server_runs)} run records but {stats.runs_created} runs created")

    by_index: dict[int, list[Any]] = {}
    for record in server_runs:
        index = record.inputs.get("i") if isinstance(record.inputs, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(callers):
            v.append(f"server run {record.id} carries no caller index: {record.inputs!r}")
            continue
        by_index.setdefault(index, []).append(record)

    # Creates reported outcome unknown that no caller was told about: their callers were
    # cancelled while the create was on the wire (invariant 6).
    told_unknown = sum(1 for c in callers if c.create_error == OUTCOME_UNKNOWN)
    unknown_for_cancelled = max(0, unknown_reports - told_unknown)
    for caller in callers:
        i = caller.index
        mine = by_index.get(i, [])
        if caller.hung:
            report.hung += 1
            v.append(f"caller {i}: still running at the deadline (hung)")
            continue
        if caller.escaped is not None:
            report.untyped += 1
            v.append(f"caller {i}: {type(caller.escaped).__name__} escaped: {caller.escaped!r}")
            continue
        if caller.cancelled and caller.handle_id is None:
            # Gone before it held a handle: any run made for it must still be known by id.
            report.cancelled += 1
            report.outcomes[caller.outcome or "Cancelled"] += 1
            if len(mine) > 1:
                v.append(f"caller {i}: {len(mine)} runs on the server (a duplicate)")
            if not mine:
                report.cancelled_before_sending += 1  # or refused, or made nothing
            for record in mine:
                if record.id in announced:
                    report.cancelled_runs_announced += 1
                    # Else its create returned a handle just as the caller was cancelled
                    # (asyncio.wait_for can drop a result): tracked all the same.
                    report.cancelled_runs_orphaned += record.id in orphans
                elif report.cancelled_runs_unknown < unknown_for_cancelled:
                    report.cancelled_runs_unknown += 1
                else:
                    report.lost_run_ids += 1
                    v.append(
                        f"caller {i} was cancelled during its create; run {record.id} exists "
                        "on the server and the client never announced its id (a lost run)"
                    )
            continue
        if caller.cancelled:
            # Cancelled while awaiting its handle: it held the id, so nothing is lost.
            report.cancelled += 1
            report.cancelled_awaiting += 1
            report.outcomes["Cancelled"] += 1
            if len(mine) > 1:
                v.append(f"caller {i}: {len(mine)} runs on the server (a duplicate)")
            elif not mine or mine[0].id != caller.handle_id:
                v.append(f"caller {i}: holds id {caller.handle_id}, not its server run")
            continue
        if caller.outcome is None:
            v.append(f"caller {i}: no outcome at all")
            continue
        report.outcomes[caller.outcome] += 1
        if len(mine) > 1:
            v.append(f"caller {i}: {len(mine)} runs on the server (a duplicate)")
            continue
        if caller.create_error is not None:
            if caller.create_error == OUTCOME_UNKNOWN:
                report.unknown_outcome += 1
                report.unknown_causes[caller.unknown_cause or "?"] += 1
                report.unknown_outcome_created += len(mine)
            elif mine:
                report.lost_run_ids += 1
                v.append(
                    f"caller {i}: create raised {caller.create_error} but run {mine[0].id} "
                    "exists on the server (a lost run)"
                )
            continue
        if not mine:
            v.append(f"caller {i}: holds run id {caller.handle_id} the server never created")
            continue
        record = mine[0]
        if record.id != caller.handle_id:
            v.append(f"caller {i}: holds id {caller.handle_id}, the server's run is {record.id}")
        if caller.run is not None:
            if record.final_status != "success" or caller.run.id != record.id:
                v.append(f"caller {i}: got a successful Run, the server says {record.final_status}")
            expected = [{"id": record.id, "inputs": {"i": i}}]
            if caller.run.results != expected:
                v.append(f"caller {i}: results {caller.run.results!r} are not its own run's")
        if caller.failed_run is not None and (
            record.final_status != "error" or caller.failed_run.id != record.id
        ):
            v.append(f"caller {i}: got RunFailedError, the server says {record.final_status}")
    accounted = sum(report.outcomes.values()) + report.untyped + report.hung
    if accounted != len(callers):
        v.append("some callers were not accounted for")


def reproducible_seed() -> int:
    """A seed from `CHAOS_SEED`, else a fixed one (so failures reproduce)."""
    raw = os.environ.get("CHAOS_SEED", "")
    return int(raw) if raw.isdigit() else 8
