"""A discrete-event simulator of bulk jobs under a fixed-window rate budget (issue #15).

No asyncio, no HTTP: a heap of events on a simulated clock. It drives a real poll planner
(`AdaptivePolling`, through the hooks the client calls) and compares it with the
hand-written loop (a semaphore of C, sleep ``interval`` then check, every ``interval``
after; on a 429 sleep ``Retry-After`` and send again).

The model:

- the server counts every request, refused ones included, per FIXED window of `limit`
  requests per `window` seconds; a window starts at the first request after the previous
  one ended (``align="first"``) or on multiples of `window` (``"aligned"``); a refused
  request gets a 429 with ``Retry-After`` = the seconds to the window's end, rounded up;
- every request takes a round trip of `rtt` +- `rtt_spread` seconds (loopback: 2-5 ms) plus
  `server_latency`; the server acts on it at half its round trip (a run starts when its create
  arrives, a read sees the run as it is when it arrives);
- the library's limiter sends one request alone until the first answer (`Budget`'s probe
  mode), then knows the window (as the real one does), sends nothing the server would
  refuse, serves waiters by priority (INTERACTIVE, POLL, BULK), and spends the window as
  fast as the server allows (``spend_window``) except that background requests leave
  `reserve` of the limit to INTERACTIVE ones until just before the window may end
  (``interactive_reserve``, released ``max(4 rtt, window / limit)`` before the end);
- `run_many`: C workers; a worker holds its slot from before its create waits at the limiter
  until its run is seen ended (Little's law); creates go at BULK, polls at POLL (a bulk
  job's runs leave the interactive reserve alone) until the job has nothing left to create,
  then at INTERACTIVE (its lane raised: what its caller waits for is its last runs);
- reads ahead of plan on budget a window would lose (`_spare.SpareReads`, on by default as
  the client's limiter spends the window): at the reserve's release, the requests nobody
  waits for read the runs likeliest ended (``simulate_library(spare=False)``: none);
- the planner's ``pressure`` callable gets the real `_limits.Pressure` value, filled as
  `Limiter.pressure()` fills it (see `_Limiter.pressure`): times on the simulated clock,
  ``period`` and ``window_ends_at`` as whole-second ``Reset`` values let the budget learn
  them (a second over the truth at most), nothing known before the first answer; with
  ``Workload(rate_window=True)`` (the client told the window's length) both exact.

Run ``python -m tests.cadence_sim`` for the table of the issue's workloads.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from zapier_async._cadence import PollRecord
from zapier_async._limits import Pressure

__all__ = ["Result", "Workload", "simulate_again", "simulate_hand", "simulate_library"]

INTERACTIVE, POLL, BULK = 0, 1, 2
_PRECISION = 1.0  # the server's Reset is in whole seconds


@attrs.frozen
class Workload:
    runs: int
    durations: tuple[float, float]
    limit: float = math.inf
    window: float = 5.0
    concurrency: int = 50
    rtt: float = 0.0035
    rtt_spread: float = 0.0015
    server_latency: float = 0.0
    reserve: float = 0.1  # the limiter's interactive_reserve
    align: str = "first"
    seed: int = 1
    interval: float = 0.5  # the hand-written loop's sleep
    # The limiter's remaining estimate over the server's truth (a live estimate can be off by
    # a request or two: which answers it has counted, the probe's, the reserve's rounding).
    remaining_skew: int = 0
    # The window's length declared to the client (``ZapierClient(rate_window=window)``): the
    # limiter knows each window's end to the round trip and reports the exact ``period``.
    rate_window: bool = False

    def minimum(self, k: int = 2) -> float:
        lo, hi = self.durations
        mean = (lo + hi) / 2
        budget = 0.0
        if math.isfinite(self.limit):
            budget = (k * self.runs - self.limit) / (self.limit / self.window)
        return max(budget, self.runs * mean / self.concurrency, 0.0)


@attrs.define
class Result:
    requests: int = 0
    polls: int = 0
    refused: int = 0
    refused_late: int = 0
    wall: float = 0.0
    lags: list[float] = attrs.Factory(list)
    minimum: float = 0.0
    runs: int = 0
    # The profile: (time sent, "create" | "poll" | "hit") per request, the slot-seconds
    # spent waiting for the create's grant, on the create, and between a run's end and
    # the answer that saw it.
    sends: list[tuple[float, str]] = attrs.Factory(list)
    create_waits: list[float] = attrs.Factory(list)
    early: int = 0  # reads ahead of plan on spare budget

    @property
    def per_run(self) -> float:
        return self.requests / self.runs

    @property
    def polls_per_run(self) -> float:
        return self.polls / self.runs

    @property
    def lag(self) -> float:
        return statistics.fmean(self.lags)

    @property
    def ratio(self) -> float:
        return self.wall / self.minimum if self.minimum else math.nan

    def row(self, name: str) -> str:
        return (
            f"{name:<22} req/run {self.per_run:5.2f}  polls/run {self.polls_per_run:5.2f}  "
            f"wall {self.wall:7.2f} s  min {self.minimum:6.2f}  x{self.ratio:5.2f}  "
            f"lag {self.lag * 1000:5.0f} ms  429s {self.refused}"
        )


class _Loop:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), fn))

    def run(self) -> None:
        while self._heap:
            t, _, fn = heapq.heappop(self._heap)
            self.now = t
            fn()


class _Server:
    """Fixed windows counting every request; runs with their true end times."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.start: float | None = None
        self.count = 0

    def window_end(self, t: float) -> float:
        self._roll(t)
        assert self.start is not None
        return self.start + self.w.window

    def _roll(self, t: float) -> None:
        if self.w.align == "aligned":
            start = math.floor(t / self.w.window) * self.w.window
            if start != self.start:
                self.start, self.count = start, 0
        elif self.start is None or t >= self.start + self.w.window:
            self.start, self.count = t, 0

    def admit(self, t: float) -> float | None:
        """Count a request arriving at `t`; None if admitted, else its Retry-After."""
        if not math.isfinite(self.w.limit):
            return None
        self._roll(t)
        self.count += 1
        if self.count <= self.w.limit:
            return None
        assert self.start is not None
        return float(max(1, math.ceil(self.start + self.w.window - t)))

    def remaining(self, t: float) -> int | None:
        if not math.isfinite(self.w.limit):
            return None
        if self.start is None:
            return int(self.w.limit)
        if self.w.align == "aligned":
            if math.floor(t / self.w.window) * self.w.window != self.start:
                return int(self.w.limit)
        elif t >= self.start + self.w.window:
            return int(self.w.limit)
        return max(int(self.w.limit) - self.count, 0)


class _Latency:
    """Each request's round trip: `rtt` +- `rtt_spread`, plus the server's latency."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.rng = random.Random(w.seed + 7)

    def __call__(self) -> float:
        w = self.w
        spread = w.rtt_spread * (2.0 * self.rng.random() - 1.0)
        return max(w.rtt + spread, 0.0) + w.server_latency


class _Limiter:
    """Knows the server's window after its first answer; never sends what it would refuse;
    priority order; background requests leave the interactive reserve (see the module)."""

    def __init__(self, loop: _Loop, server: _Server) -> None:
        self.loop, self.server = loop, server
        w = server.w
        self.queues: list[deque[Callable[[], None]]] = [deque(), deque(), deque()]
        self.pumping = False
        self.in_flight = 0
        self.known = not math.isfinite(w.limit)  # probe mode until the first answer
        self.reserve = 0
        if math.isfinite(w.limit) and w.reserve > 0:
            self.reserve = max(1, math.ceil(w.reserve * w.limit))
        self.release = max(4 * (w.rtt + w.server_latency), w.window / w.limit)
        self.wake: float | None = None

    def submit(self, priority: int, send: Callable[[], None]) -> None:
        self.queues[priority].append(send)
        self.pump()

    def answered(self) -> None:
        self.in_flight -= 1
        if not self.known:
            self.known = True
            self.pump()

    def pressure(self) -> Pressure:
        """The bucket as the real `Limiter.pressure()` shows it (the real `Pressure` value).

        Times are on the simulated clock (the limiter's monotonic clock). As in the real
        budget: nothing is known in probe mode (before the first answer); ``period`` is the
        longest ``Reset`` seen plus its precision (whole seconds: the window plus 1 s) and
        ``window_ends_at`` the latest the window can end by those whole-second values (its
        true end plus up to 1 s); unlimited, the mode is ``"open"`` and nothing is known.
        """
        q = self.queues
        now = self.loop.now
        w = self.server.w
        limited = math.isfinite(w.limit)
        known = limited and self.known
        remaining = self.server.remaining(now) if known else None
        if remaining is not None:
            remaining += w.remaining_skew
        slop = 0.0 if w.rate_window else _PRECISION
        ends = self.server.window_end(now) + slop if known else None
        if not self.known:
            free = math.inf if self.in_flight else now  # the probe's answer comes first
        elif remaining is None or remaining > self.reserve + sum(len(x) for x in q):
            free = now
        else:
            assert ends is not None
            free = ends - slop
        return Pressure(
            waiting_by_priority=(len(q[0]), len(q[1]), len(q[2])),
            in_flight=self.in_flight,
            remaining_estimate=remaining,
            window_ends_at=ends,
            next_free_at=free,
            frozen_until=None,
            mode="probe" if not self.known else ("window" if limited else "open"),
            limit=int(w.limit) if known else None,
            period=w.window + slop if known else None,
            now=now,
        )

    def _later(self, t: float) -> None:
        if self.wake is not None and self.wake <= t and self.wake > self.loop.now:
            return
        self.wake = t

        def wake() -> None:
            if self.wake == t:
                self.wake = None
            self.pump()

        self.loop.at(t, wake)

    def pump(self) -> None:
        if self.pumping:
            return
        self.pumping = True
        try:
            while any(self.queues):
                now = self.loop.now
                if not self.known:
                    if self.in_flight:
                        return
                    queue = next(q for q in self.queues if q)
                else:
                    remaining = self.server.remaining(now)
                    if remaining is not None and remaining <= 0:
                        self._later(self.server.window_end(now) + 1e-9)
                        return
                    if self.queues[INTERACTIVE]:
                        queue = self.queues[INTERACTIVE]
                    else:
                        if remaining is not None and remaining <= self.reserve:
                            release = self.server.window_end(now) - self.release
                            if now < release:
                                self._later(release)
                                return
                        queue = next(q for q in self.queues if q)
                send = queue.popleft()
                refused = self.server.admit(now)
                assert refused is None
                self.in_flight += 1
                send()
        finally:
            self.pumping = False


class _Run:
    # No __slots__: the planner before #15 (`_head_planner`) kept its per-run state in
    # attributes of the handle.

    def __init__(self, created_at: float, ends_at: float) -> None:
        self.created_at = created_at
        self.ends_at = ends_at
        self.reads = PollRecord()  # the run's polling record, as on a `RunHandle`
        self._done = False

    def done(self) -> bool:
        return self._done

    @property
    def timer(self) -> object | None:  # where the planner before #15 read the poller's timer
        return self.reads.timer


def _durations(w: Workload) -> list[float]:
    rng = random.Random(w.seed)
    lo, hi = w.durations
    return [rng.uniform(lo, hi) for _ in range(w.runs)]


def simulate_library(
    w: Workload,
    make_planner: Callable[[Callable[[], Any]], Any],
    *,
    priority: int = BULK,
    seen_at: bool = True,
    spare: bool = True,
) -> Result:
    """`run_many(concurrency=C)` with `make_planner(pressure)`'s planner deciding polls.

    `spare`: reads ahead of plan on budget a window would lose, as `_spare.SpareReads`
    does with a limiter that spends the window: when the interactive reserve is released
    (just before the window may end), the requests nobody waits for go to the runs
    waiting for their next read, likeliest ended first (`chance_ended`; an unlearnt one
    counts 0.5; none under 0.1).
    """
    loop = _Loop()
    server = _Server(w)
    limiter = _Limiter(loop, server)
    planner = make_planner(limiter.pressure)
    rng = random.Random(w.seed + 1000)
    latency = _Latency(w)
    durations = iter(_durations(w))
    result = Result(minimum=w.minimum(), runs=w.runs)
    left = [w.runs]
    exhausted = [False]  # nothing left to create: the job's last reads go at INTERACTIVE
    followed: set[_Run] = set()  # runs created and not seen ended
    armed: set[float] = set()  # the windows (their start) whose spare reads are armed

    def arm() -> None:
        if not spare or not math.isfinite(w.limit) or not limiter.known:
            return
        end = server.window_end(loop.now)
        if end in armed:
            return
        armed.add(end)
        loop.at(end - limiter.release - 1e-6, lambda: spend(end))

    def spend(end: float) -> None:
        if server.window_end(loop.now) != end:
            return
        remaining = server.remaining(loop.now) or 0
        count = remaining - sum(len(q) for q in limiter.queues)
        ranked = []
        for run in followed:
            if run.reads.timer is None:
                continue  # a read is on its way
            age = loop.now - run.created_at
            chance = planner.chance_ended(run, age)
            chance = 0.5 if chance is None else chance
            if chance >= 0.1:
                ranked.append((chance, age, id(run), run))
        ranked.sort(reverse=True)
        for _, _, _, run in ranked[: max(count, 0)]:
            planner.polled_early(run)
            result.early += 1
            schedule(run, 0.0)

    def worker() -> None:
        duration = next(durations, None)
        if duration is None:
            if not exhausted[0]:
                # The job's lane is raised, its reads already waiting included (`_bulk`).
                exhausted[0] = True
                limiter.queues[INTERACTIVE].extend(limiter.queues[POLL])
                limiter.queues[POLL].clear()
                limiter.pump()
            return

        queued = loop.now

        def send_create() -> None:
            sent, rtt = loop.now, latency()
            result.requests += 1
            result.sends.append((sent, "create"))
            result.create_waits.append(sent - queued)
            loop.at(sent + rtt, lambda: created(sent + rtt / 2 + duration))

        limiter.submit(priority, send_create)

    def created(ends_at: float) -> None:
        limiter.answered()
        run = _Run(loop.now, ends_at)
        followed.add(run)
        arm()
        delay = planner.first_delay(run, "a", rng)
        schedule(run, delay)

    def schedule(run: _Run, delay: float) -> None:
        token = object()
        run.reads.timer = token

        def fire() -> None:
            if run.reads.timer is token and not run.done():
                run.reads.timer = None
                poll(run)

        loop.at(loop.now + delay, fire)

    def poll(run: _Run) -> None:
        asked = loop.now

        def send() -> None:
            sent, rtt = loop.now, latency()
            result.requests += 1
            result.polls += 1
            ended = sent + rtt / 2 >= run.ends_at
            result.sends.append((sent, "hit" if ended else "poll"))
            loop.at(sent + rtt, lambda: answered(run, asked, sent, ended))

        limiter.submit(INTERACTIVE if exhausted[0] else POLL, send)

    def answered(run: _Run, asked: float, sent: float, ended: bool) -> None:
        limiter.answered()
        attempt = run.reads.attempts
        run.reads.attempts += 1
        planner.round_trip(loop.now - asked)
        elapsed = loop.now - run.created_at
        arm()
        if ended:
            run._done = True
            followed.discard(run)
            result.lags.append(loop.now - run.ends_at)
            seen = {"seen_at": sent - run.created_at} if seen_at else {}
            for other, delay in planner.observe(run, elapsed, **seen):
                schedule(other, delay)
            left[0] -= 1
            if left[0] == 0:
                result.wall = loop.now
            worker()
            return
        schedule(run, planner.next_delay(run, attempt + 1, elapsed, rng, hint=None))

    for _ in range(min(w.concurrency, w.runs)):
        worker()
    loop.run()
    return result


def simulate_again(
    w: Workload, make_planner: Callable[[Callable[[], Any]], Any] | None = None
) -> Result:
    """The job twice on one planner (a client that a worker keeps for days), the second one
    measured: it starts with everything the first one taught (plans, longest run, price
    level), in a fresh window, with durations of its own (seed + 10)."""
    made: list[Any] = []

    def first(pressure: Callable[[], Any]) -> Any:
        made.append((make_planner or library())(pressure))
        return made[0]

    def again(pressure: Callable[[], Any]) -> Any:
        made[0].pressure = pressure
        return made[0]

    simulate_library(w, first)
    return simulate_library(attrs.evolve(w, seed=w.seed + 10), again)


def simulate_hand(w: Workload) -> Result:
    """The hand-written loop: sleep `interval` then check; on 429 sleep Retry-After."""
    loop = _Loop()
    server = _Server(w)
    latency = _Latency(w)
    durations = iter(_durations(w))
    result = Result(minimum=w.minimum(), runs=w.runs)
    first_answer = [math.inf]
    left = [w.runs]

    def call(poll: bool, then: Callable[[float], None]) -> None:
        """Send one request; `then(arrived)` with its answer (429s retried)."""
        sent, rtt = loop.now, latency()
        result.requests += 1
        if poll:
            result.polls += 1
        arrived = sent + rtt / 2
        retry = server.admit(arrived)
        if retry is not None:
            result.refused += 1
            if sent > first_answer[0]:
                result.refused_late += 1
            loop.at(sent + rtt + retry, lambda: call(poll, then))
            return
        first_answer[0] = min(first_answer[0], sent + rtt)
        loop.at(sent + rtt, lambda: then(arrived))

    def worker() -> None:
        duration = next(durations, None)
        if duration is None:
            return
        box: list[float] = []

        def check() -> None:
            def answered(arrived: float) -> None:
                if arrived >= box[0]:
                    result.lags.append(loop.now - box[0])
                    left[0] -= 1
                    if left[0] == 0:
                        result.wall = loop.now
                    worker()
                else:
                    loop.at(loop.now + w.interval, check)

            call(True, answered)

        def done(arrived: float) -> None:
            box.append(arrived + duration)
            loop.at(loop.now + w.interval, check)

        call(False, done)

    for _ in range(min(w.concurrency, w.runs)):
        worker()
    loop.run()
    return result


WORKLOADS = {
    "w300": Workload(300, (0.2, 1.5), limit=100, window=5.0, concurrency=50),
    "w1000": Workload(1000, (2.0, 8.0), limit=200, window=5.0, concurrency=100, interval=1.0),
    "short": Workload(100, (0.2, 1.5), limit=100, window=5.0, concurrency=50),
    "w120": Workload(120, (0.2, 1.5), limit=100, window=5.0, concurrency=50),
    "cold": Workload(500, (0.2, 1.5), concurrency=500),
    "slack": Workload(600, (0.2, 1.5), concurrency=100),
}


def library(pressure_aware: bool = True, **kwargs: Any) -> Callable[[Callable[[], Any]], Any]:
    from zapier_async._polling import AdaptivePolling

    def make(pressure: Callable[[], Any]) -> Any:
        if pressure_aware:
            return AdaptivePolling(pressure=pressure, **kwargs)
        return AdaptivePolling(**kwargs)

    return make


def _head_planner() -> Callable[[Callable[[], Any]], Any] | None:
    """The planner of the last commit before issue #15's cadence work, if git has it."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    try:
        source = subprocess.run(
            ["git", "show", "3794b86:zapier_async/_polling.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("zapier_async._polling_before", f.name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return lambda _pressure: module.AdaptivePolling()


def _run_before(w: Workload, make: Callable[[Callable[[], Any]], Any]) -> Result:
    return simulate_library(w, make, seen_at=False)


def profile(r: Result, window: float) -> str:
    """Where the time goes: requests per window by kind, and the mean slot time."""
    by: dict[int, dict[str, int]] = {}
    for t, kind in r.sends:
        row = by.setdefault(int(t // window), {"create": 0, "poll": 0, "hit": 0})
        row[kind] += 1
    lines = [
        f"  create wait {statistics.fmean(r.create_waits or [0.0]):.2f} s  "
        f"lag {r.lag:.2f} s  (per window: creates / polls still going / polls that hit)"
    ]
    cells = [
        f"{k * window:5.0f}: {v['create']:3d}/{v['poll']:3d}/{v['hit']:3d}"
        for k, v in sorted(by.items())
    ]
    for i in range(0, len(cells), 6):
        lines.append("    " + "  ".join(cells[i : i + 6]))
    return "\n".join(lines)


def main() -> None:
    before = _head_planner()
    for name, w in WORKLOADS.items():
        print(f"== {name}: {w}")
        print("  " + simulate_library(w, library()).row("library"))
        print("  " + simulate_again(w).row("library, its 2nd job"))
        if before is not None:
            print("  " + _run_before(w, before).row("before #15"))
        print("  " + simulate_hand(w).row(f"hand ({w.interval} s)"))


if __name__ == "__main__":
    main()
