"""Scenario 6 (issue #15): is the rate budget spent on runs, not on polls?

Every workload runs, in one process run and against the same server:

- the library as a new user writes it: a `ZapierClient` with default settings and
  ``client.run_many(requests, concurrency=C)`` for the bulk jobs;
  ``client.run(..., timeout=5)`` then ``await handle`` for the web callers;
- the hand-written loop of `baseline` (aiohttp + a semaphore of C; sleep 0.5 s, then check,
  again every 0.5 s; 1 s for the 2-8 s runs; on 429 sleep ``Retry-After`` and send again).

The server is `FakeZapier` (own process, no limit of its own) behind `_window.WindowFront`,
which counts every request, refused ones included, per FIXED window and answers
``X-RateLimit-Limit/Remaining/Reset`` and 429 + ``Retry-After``. Zapier's exact windowing is
not ours to assume, so both kinds run: windows that start at the first request after the
previous one ended (``first``) and windows aligned on the clock (``aligned``).

Printed per workload: requests per run (all requests the server saw, 429s included), polls
per run, wall time, the physical minimum ``max((k*N - L) / (L / W), N * E[duration] / C)``
(k = 2 with polling, 1 with callbacks; the first window's L requests are free at t = 0; with
``aligned`` windows the first window is partial, so the true minimum is a little higher),
wall / minimum, speed-up against the hand-written loop (its wall / ours), 429s in all and
429s to requests that arrived after the first answer, and the issue's targets with
PASS / MISS.

Run: ``python -m benchmarks.budget [--quick] [--windows first,aligned]
[--only bulk,slack,cold,web] [--workloads w300,w1000,...] [--rate-window] [--warm]``
(``--rate-window``: each bulk job also with the client told the window's length;
``--warm``: also twice on one client, the second job measured from a fresh window). Part of
``python -m benchmarks`` as scenario 6.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import attrs
from aiohttp import web  # noqa: TID251 (the callback receiver's server is the user's app)

import zapier_async as za
from zapier_async.callbacks import CallbackReceiver, CallbackVerifier

from . import baseline, detection
from ._common import Report, Target, fmt_table, library_run_all, median, percentile
from ._server import emulator

__all__ = ["BEFORE", "Bulk", "Web", "measure"]

PASS_MISS = ("PASS", "MISS")
ACTION = "core:bench"
CALLBACK_PATH = "/zapier/callback"

BEFORE = {
    # Scenario 2 ("budget slack"), library, 600 runs / 100 in flight, U[0.2, 1.5] s, no limit:
    # the figures of the code before issue #15 (benchmarks/results.md, scenario 2). "No worse
    # than today" compares against these (5% allowance for the noise of a shared machine).
    "slack_polls": 2.12,
    "slack_lag": 0.222,
}
SLACK_NOISE = 1.05


@attrs.frozen
class Bulk:
    """A bulk job: `runs` runs of U`durations` s at `limit` requests per `window` s."""

    key: str
    label: str
    runs: int
    durations: tuple[float, float]
    limit: int
    window: float
    concurrency: int
    interval: float = 0.5  # the hand-written loop's sleep
    callbacks: bool = False
    hand: bool = True  # False: the hand-written loop of the workload `hand_from` is reused
    hand_from: str = ""

    @property
    def k(self) -> int:
        return 1 if self.callbacks else 2

    def minimum(self) -> float:
        n, lim, w = self.runs, self.limit, self.window
        mean = sum(self.durations) / 2
        return max((self.k * n - lim) / (lim / w), n * mean / self.concurrency, 0.0)


@attrs.frozen
class Web:
    """`callers` web requests at once, each ``run(timeout=timeout)`` then ``await handle``
    (before #15: ``run()`` then ``result(timeout=timeout)``)."""

    callers: int = 100
    limit: int = 50
    window: float = 10.0
    timeout: float = 5.0
    durations: tuple[float, float] = (0.2, 1.5)
    warmup: int = 24


FULL_BULK = (
    Bulk("w300", "300 runs, 0.2-1.5 s, 100 req / 5 s, C 50", 300, (0.2, 1.5), 100, 5.0, 50),
    Bulk(
        "w1000",
        "1,000 runs, 2-8 s, 200 req / 5 s, C 100",
        1000,
        (2.0, 8.0),
        200,
        5.0,
        100,
        interval=1.0,
    ),
    Bulk(
        "short",
        "short job N = L: 100 runs, 0.2-1.5 s, 100 req / 5 s, C 50",
        100,
        (0.2, 1.5),
        100,
        5.0,
        50,
    ),
    Bulk(
        "w120",
        "120 runs, 0.2-1.5 s, 100 req / 5 s, C 50 (issue's table)",
        120,
        (0.2, 1.5),
        100,
        5.0,
        50,
    ),
    Bulk(
        "cb300",
        "callbacks: 300 runs, 0.2-1.5 s, 100 req / 5 s, C 50",
        300,
        (0.2, 1.5),
        100,
        5.0,
        50,
        callbacks=True,
        hand=False,
        hand_from="w300",
    ),
)
QUICK_BULK = (
    Bulk("w300", "60 runs, 0.2-1.5 s, 30 req / 1.5 s, C 30", 60, (0.2, 1.5), 30, 1.5, 30),
    Bulk(
        "short",
        "short job N = L: 30 runs, 0.2-1.5 s, 30 req / 1.5 s, C 30",
        30,
        (0.2, 1.5),
        30,
        1.5,
        30,
    ),
    Bulk(
        "cb300",
        "callbacks: 60 runs, 0.2-1.5 s, 30 req / 1.5 s, C 30",
        60,
        (0.2, 1.5),
        30,
        1.5,
        30,
        callbacks=True,
        hand=False,
        hand_from="w300",
    ),
)


def _client(url: str, **kwargs: Any) -> za.ZapierClient:
    """A client as a new user builds it: a token and a base URL, every default kept."""
    return za.ZapierClient(auth=za.BearerToken("bench"), base_url=url, **kwargs)


def _requests(n: int, callback_url: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        item: dict[str, Any] = {"action": ACTION, "authentication": None, "inputs": {"i": i}}
        if callback_url is not None:
            item["callback_url"] = callback_url
        out.append(item)
    return out


def _inputs(n: int) -> list[dict[str, Any]]:
    return [{"i": i} for i in range(n)]


def _lags(rows: list[list[Any]], resolved: dict[str, float]) -> list[float]:
    return [resolved[r[0]] - r[2] for r in rows if r[0] in resolved]


def _delta(after: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """The front's counts for what was sent after `before` (a warm client's second job)."""
    if before is None:
        return after
    out = dict(after)
    for key in ("requests", "rate_limited", "rate_limited_after_first_answer"):
        out[key] = after[key] - before[key]
    out["requests_by_endpoint"] = {
        k: v - before["requests_by_endpoint"].get(k, 0)
        for k, v in after["requests_by_endpoint"].items()
    }
    out["windows"] = after.get("windows", [])[len(before.get("windows", [])) :]
    return out


async def _library_bulk(
    w: Bulk, align: str, seed: int, rate_window: float | None = None, *, warm: bool = False
) -> dict[str, Any]:
    """The job through `run_many`; `warm`: the same job twice on one client, the second
    measured (from a fresh window: what a worker that embeds the client runs all day)."""
    front = {"limit": w.limit, "window": w.window, "align": align}
    async with emulator(durations=list(w.durations), seed=seed, front=front) as emu:
        resolved: dict[str, float] = {}
        errors: dict[str, int] = {}
        before: dict[str, Any] | None = None
        kwargs: dict[str, Any] = {}
        if rate_window is not None:
            kwargs["rate_window"] = rate_window
        if w.callbacks:
            kwargs["allow_insecure_callback_url_for_testing"] = True
        async with _client(emu.url, **kwargs) as client:
            runner: web.AppRunner | None = None
            callback_url = None
            if w.callbacks:
                verifier = CallbackVerifier(jwks_url=emu.direct + "/.well-known/jwks.json")
                receiver = CallbackReceiver(client, verifier)
                runner = web.AppRunner(receiver.app(CALLBACK_PATH), access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                callback_url = f"http://{host}:{port}{CALLBACK_PATH}"
            via = "run_many"
            try:
                if warm:
                    async with client.run_many(
                        _requests(w.runs, callback_url), concurrency=w.concurrency
                    ) as outcomes:
                        async for _ in outcomes:
                            pass
                    await asyncio.sleep(w.window + 0.2)  # the next job starts a new window
                    before = await emu.front()
                started = time.perf_counter()
                async with client.run_many(
                    _requests(w.runs, callback_url), concurrency=w.concurrency
                ) as outcomes:
                    async for outcome in outcomes:
                        if outcome.run is not None:
                            resolved[outcome.run.id] = time.monotonic()
                        if outcome.error is not None:
                            name = type(outcome.error).__name__
                            errors[name] = errors.get(name, 0) + 1
                wall = time.perf_counter() - started
                state = await emu.front()
                if callback_url is not None and state is not None and state["requests"] == 0:
                    # run_many refused the http:// loopback callback URL before sending
                    # anything (it does not pass the client's
                    # allow_insecure_callback_url_for_testing on): the same job through
                    # client.run + await, the same cap on runs in flight.
                    via, errors = "run + await", {}
                    started = time.perf_counter()
                    results = await library_run_all(
                        client,
                        _inputs(w.runs),
                        concurrency=w.concurrency,
                        callback_url=callback_url,
                    )
                    wall = time.perf_counter() - started
                    resolved = {run_id: t for run_id, _status, t in results}
            finally:
                if runner is not None:
                    await runner.cleanup()
        after = await emu.front()
        assert after is not None
        figures = _bulk_figures(w, wall, _delta(after, before), await emu.runs(), resolved, errors)
        figures["via"] = via
        return figures


async def _hand_bulk(w: Bulk, align: str, seed: int) -> dict[str, Any]:
    front = {"limit": w.limit, "window": w.window, "align": align}
    async with emulator(durations=list(w.durations), seed=seed, front=front) as emu:
        started = time.perf_counter()
        results = await baseline.run_all(
            emu.url,
            _inputs(w.runs),
            concurrency=w.concurrency,
            interval=w.interval,
            shape=baseline.SLEEP_THEN_CHECK,
        )
        wall = time.perf_counter() - started
        resolved = {run_id: t for run_id, _status, t in results}
        return _bulk_figures(w, wall, await emu.front(), await emu.runs(), resolved, {})


def _bulk_figures(
    w: Bulk,
    wall: float,
    front: dict[str, Any] | None,
    rows: list[list[Any]],
    resolved: dict[str, float],
    errors: dict[str, int],
) -> dict[str, Any]:
    assert front is not None
    lags = _lags(rows, resolved)
    return {
        "wall": wall,
        "requests": front["requests"],
        "req_per_run": front["requests"] / w.runs,
        "polls_per_run": front["requests_by_endpoint"]["poll"] / w.runs,
        "429s": front["rate_limited"],
        "429s_late": front["rate_limited_after_first_answer"],
        "lag": statistics.fmean(lags) if lags else float("nan"),
        "errors": errors,
        "windows": front.get("windows", []),
    }


def window_use(windows: Sequence[Sequence[float]]) -> str:
    """Requests admitted per window, ``creates+polls`` (``/r`` refused), from the first."""
    if not windows:
        return "-"
    t0 = windows[0][0]
    parts = []
    for start, creates, polls, others, refused in windows:
        used = f"{int(creates)}+{int(polls)}" + (f"+{int(others)}" if others else "")
        parts.append(f"@{start - t0:.1f}s {used}" + (f" /{int(refused)}r" if refused else ""))
    return ", ".join(parts)


def _bulk_targets(
    w: Bulk, align: str, lib: dict[str, Any], hand: dict[str, Any], told: str = ""
) -> list[Target]:
    ratio = lib["wall"] / w.minimum()
    speedup = hand["wall"] / lib["wall"]
    tag = f"{w.label} [{align}]{told}"
    out: list[Target] = []

    def add(text: str, holds: bool, detail: str) -> None:
        out.append(Target("6", f"{tag}: {text}", holds, detail, PASS_MISS))

    if w.key == "w300":
        add("<= 2.15 requests per run", lib["req_per_run"] <= 2.15, f"{lib['req_per_run']:.2f}")
        add("wall <= 1.15x the physical minimum", ratio <= 1.15, f"{ratio:.2f}x")
        add(">= 1.3x faster than the hand-written loop", speedup >= 1.3, f"{speedup:.2f}x")
        add("0 429s after the first answer", lib["429s_late"] == 0, f"{lib['429s_late']}")
    elif w.key == "w1000":
        add("wall <= 1.35x the physical minimum", ratio <= 1.35, f"{ratio:.2f}x")
        add(">= 1.15x faster than the hand-written loop", speedup >= 1.15, f"{speedup:.2f}x")
        add("0 429s after the first answer", lib["429s_late"] == 0, f"{lib['429s_late']}")
    elif w.key == "short":
        add("wall <= 1.5x its minimum", ratio <= 1.5, f"{ratio:.2f}x")
    elif w.key == "cb300":
        rpr = lib["req_per_run"]
        add("<= 1.1 requests per run (safety-net polls included)", rpr <= 1.1, f"{rpr:.2f}")
    if lib["errors"]:
        add("every run answered", False, f"errors: {lib['errors']}")
    return out


async def _slack(runs: int, concurrency: int) -> tuple[list[Sequence[object]], list[Target]]:
    """Scenario 2's figures (no limit): polls per run and mean lag, library vs today."""
    lib = await detection._one_arm("library", runs, concurrency, seed=1)
    hand = await detection._one_arm(baseline.SLEEP_THEN_CHECK, runs, concurrency, seed=1)
    rows: list[Sequence[object]] = []
    figures = {}
    for name, s in (("library", lib), ("hand-written loop (0.5 s)", hand)):
        polls, lag = statistics.fmean(s["polls"]), statistics.fmean(s["lags"])
        figures[name] = (polls, lag)
        rows.append((name, runs, concurrency, polls, lag, percentile(s["lags"], 95)))
    rows.append(("library before #15", 600, 100, BEFORE["slack_polls"], BEFORE["slack_lag"], "-"))
    polls, lag = figures["library"]
    holds = (
        polls <= BEFORE["slack_polls"] * SLACK_NOISE and lag <= BEFORE["slack_lag"] * SLACK_NOISE
    )
    target = Target(
        "6",
        "budget slack: scenario 2's polls per run and mean lag no worse than before #15 "
        f"({BEFORE['slack_polls']:.2f}, {BEFORE['slack_lag'] * 1000:.0f} ms; 5% noise allowed)",
        holds,
        f"{polls:.2f} polls/run, lag {lag * 1000:.0f} ms",
        PASS_MISS,
    )
    return rows, [target]


async def _cold(runs: int, seed: int = 1) -> tuple[list[Sequence[object]], list[Target]]:
    """A burst of `runs` runs of an action the client knows nothing of, no limit, all at once."""
    figures: dict[str, tuple[float, float, float, float]] = {}
    for arm in ("library", "hand"):
        async with emulator(durations=[0.2, 1.5], seed=seed) as emu:
            resolved: dict[str, float] = {}
            started = time.perf_counter()
            if arm == "library":
                async with (
                    _client(emu.url) as client,
                    client.run_many(_requests(runs), concurrency=runs) as outcomes,
                ):
                    async for outcome in outcomes:
                        if outcome.run is not None:
                            resolved[outcome.run.id] = time.monotonic()
            else:
                results = await baseline.run_all(
                    emu.url,
                    _inputs(runs),
                    concurrency=runs,
                    interval=0.5,
                    shape=baseline.SLEEP_THEN_CHECK,
                )
                resolved = {run_id: t for run_id, _s, t in results}
            wall = time.perf_counter() - started
            stats = await emu.stats()
            lags = _lags(await emu.runs(), resolved)
        figures[arm] = (
            stats["requests"] / runs,
            stats["requests_by_endpoint"]["poll"] / runs,
            statistics.fmean(lags),
            wall,
        )
    rows: list[Sequence[object]] = [
        (name, runs, *figures[arm])
        for name, arm in (("library", "library"), ("hand-written loop (0.5 s)", "hand"))
    ]
    lib, hand = figures["library"], figures["hand"]
    target = Target(
        "6",
        f"cold burst of {runs} unlearnt runs: polls per run <= the hand-written loop's, "
        "at <= its mean lag",
        lib[1] <= hand[1] and lib[2] <= hand[2],
        f"{lib[1]:.2f} vs {hand[1]:.2f} polls/run, lag {lib[2] * 1000:.0f} vs "
        f"{hand[2] * 1000:.0f} ms",
        PASS_MISS,
    )
    return rows, [target]


async def _web(w: Web, align: str, *, warm: bool, seed: int = 1) -> dict[str, Any]:
    """`w.callers` web requests at once on a default client (warm: it has run a few before)."""
    front = {"limit": w.limit, "window": w.window, "align": align}
    async with emulator(durations=list(w.durations), seed=seed, front=front) as emu:
        outcomes: list[tuple[str, float, str | None, float]] = []
        admitted = 0
        async with _client(emu.url) as client:
            if warm:
                async with client.run_many(_requests(w.warmup), concurrency=w.warmup) as it:
                    async for _ in it:
                        pass
                # Start the callers with a fresh window, as a burst of traffic would find it.
                state = await emu.front()
                assert state is not None
                if state["window_end"] is not None:
                    await asyncio.sleep(max(0.0, state["window_end"] - state["now"]) + 0.05)
            before = await emu.front()

            async def caller(i: int) -> None:
                nonlocal admitted
                t0 = time.monotonic()
                try:
                    # One deadline for the whole thing (limiter wait, create, result).
                    handle = await client.run(
                        ACTION, authentication=None, inputs={"web": i}, timeout=w.timeout
                    )
                except za.RateLimitedError:
                    outcomes.append(("rate_limited", time.monotonic() - t0, None, 0.0))
                    return
                except Exception as exc:
                    outcomes.append((type(exc).__name__, time.monotonic() - t0, None, 0.0))
                    return
                admitted += 1
                try:
                    await handle  # the handle carries the deadline
                    outcomes.append(("answered", time.monotonic() - t0, handle.id, 0.0))
                except za.RunTimeoutError as exc:
                    now = time.monotonic()
                    outcomes.append(("timeout", now - t0, exc.run_id, now))
                except Exception as exc:
                    outcomes.append((type(exc).__name__, time.monotonic() - t0, handle.id, 0.0))

            await asyncio.gather(*(caller(i) for i in range(w.callers)))
            after = await emu.front()
        rows = {r[0]: r for r in await emu.runs()}
    assert before is not None
    assert after is not None
    kinds = [o[0] for o in outcomes]
    limited = [o[1] for o in outcomes if o[0] == "rate_limited"]
    timeouts = [o for o in outcomes if o[0] == "timeout"]
    ended = sum(1 for o in timeouts if o[2] in rows and rows[o[2]][2] <= o[3])
    others = {k: kinds.count(k) for k in set(kinds) - {"answered", "rate_limited", "timeout"}}
    return {
        "admitted": admitted,
        "answered": kinds.count("answered"),
        "rate_limited": len(limited),
        "rl_median": median(limited),
        "rl_max": max(limited) if limited else float("nan"),
        "timeouts": len(timeouts),
        "timeouts_ended": ended,
        "others": others,
        "429s": after["rate_limited"] - before["rate_limited"],
        "requests": after["requests"] - before["requests"],
    }


async def measure(
    *,
    quick: bool = False,
    windows: Sequence[str] = ("first", "aligned"),
    parts: Sequence[str] = ("bulk", "slack", "cold", "web"),
    workloads: Sequence[str] | None = None,
    rate_window: bool = False,
    warm: bool = False,
) -> Report:
    bulk = every = QUICK_BULK if quick else FULL_BULK
    if workloads is not None:
        bulk = tuple(w for w in bulk if w.key in workloads or w.hand_from in workloads)
    report = Report(
        number=6,
        title="Rate budget: requests per run against the physical minimum (issue #15)",
        method=(
            "Library as a new user writes it (`ZapierClient` defaults, `run_many(requests, "
            "concurrency=C)`) vs the hand-written loop (aiohttp + semaphore, sleep 0.5 s then "
            "check, 1 s for 2-8 s runs, sleep `Retry-After` on 429), same server in the same "
            "process run: `FakeZapier` behind a fixed-window front counting every request "
            "(`first`: windows start at the first request; `aligned`: clock-aligned). "
            "minimum = max((k*N - L) / (L / W), N * E[d] / C), k = 2 polling, 1 callbacks. "
            "req/run and polls/run count every request the server saw, 429s included. speed-up = "
            "hand-written wall / library wall. 'late 429s' = 429s to requests that arrived "
            "after the first answer."
        ),
        headers=(
            "workload",
            "windows",
            "client",
            "N",
            "req/run",
            "polls/run",
            "wall s",
            "minimum s",
            "wall/min",
            "speed-up",
            "429s",
            "late 429s",
            "mean lag s",
        ),
    )
    via_note = False
    if "bulk" in parts:
        for align in windows:
            hands: dict[str, dict[str, Any]] = {}
            for w in bulk:
                lib = await _library_bulk(w, align, seed=1)
                if not w.hand and w.hand_from not in hands:
                    hands[w.hand_from] = await _hand_bulk(
                        next(b for b in every if b.key == w.hand_from), align, seed=1
                    )
                if w.hand:
                    hand = hands[w.key] = await _hand_bulk(w, align, seed=1)
                else:
                    hand = hands[w.hand_from]
                minimum = w.minimum()
                hand_name = (
                    "hand-written loop"
                    if w.hand
                    else f"hand-written loop (polling, from {w.hand_from})"
                )
                lib_name = "library"
                if lib["via"] != "run_many":
                    lib_name = f"library ({lib['via']}, see note)"
                    via_note = True
                arms = [(lib_name, lib)]
                for told_window in (None, w.window) if rate_window else (None,):
                    if not warm or w.callbacks:
                        break
                    again = await _library_bulk(
                        w, align, seed=1, rate_window=told_window, warm=True
                    )
                    again_name = "library, warm (its second job)"
                    if told_window is not None:
                        again_name = f"library, warm, rate_window={told_window:g}"
                    arms.append((again_name, again))
                    report.targets += _bulk_targets(w, align, again, hand, f" ({again_name})")
                if rate_window:
                    told = await _library_bulk(w, align, seed=1, rate_window=w.window)
                    told_name = f"library, rate_window={w.window:g}"
                    arms.append((told_name, told))
                    report.targets += _bulk_targets(w, align, told, hand, f" ({told_name})")
                for name, r in (*arms, (hand_name, hand)):
                    report.rows.append(
                        (
                            w.label,
                            align,
                            name,
                            w.runs,
                            r["req_per_run"],
                            r["polls_per_run"],
                            r["wall"],
                            minimum,
                            r["wall"] / minimum,
                            hand["wall"] / r["wall"],
                            r["429s"],
                            r["429s_late"],
                            r["lag"],
                        )
                    )
                report.targets += _bulk_targets(w, align, lib, hand)
                print(
                    f"  [{align}] {w.label}: library {lib['wall']:.1f} s, "
                    f"hand-written {hand['wall']:.1f} s\n"
                    f"    library's windows (creates+polls): {window_use(lib['windows'])}"
                    + "".join(
                        f"\n    {name}: {r['wall']:.1f} s, windows {window_use(r['windows'])}"
                        for name, r in arms[1:]
                    ),
                    flush=True,
                )
    if via_note:
        report.notes.append(
            "With callbacks, `run_many` refuses the emulator's http:// loopback callback URL "
            "(InvalidRequestError 'must use https') although the client was built with "
            "`allow_insecure_callback_url_for_testing=True`: `_bulk.py` builds the create "
            "without the client's `allow_loopback_callback`. The callbacks row is therefore "
            "the same job through `client.run(..., callback_url=)` + `await handle` with a "
            "semaphore of C (what `run_many` does), until that is fixed."
        )
    if "slack" in parts:
        rows, targets = await _slack(300 if quick else 600, 100)
        report.targets += targets
        report.notes.append(
            "Budget slack (scenario 2's workload, no limit, U[0.2, 1.5] s):\n\n"
            + fmt_table(("client", "N", "C", "polls/run", "mean lag s", "p95 lag s"), rows)
        )
    if "cold" in parts:
        rows, targets = await _cold(150 if quick else 500)
        report.targets += targets
        report.notes.append(
            "Cold burst (an action the client knows nothing of, all at once, no limit, "
            "U[0.2, 1.5] s):\n\n"
            + fmt_table(("client", "N", "req/run", "polls/run", "mean lag s", "wall s"), rows)
        )
    if "web" in parts:
        w = Web(callers=30, limit=15, window=3.0, timeout=3.0) if quick else Web()
        rows = []
        for align in windows:
            for warm in (False,) if quick else (True, False):
                r = await _web(w, align, warm=warm)
                state = "warm" if warm else "cold"
                rows.append(
                    (
                        state,
                        align,
                        w.callers,
                        r["admitted"],
                        r["answered"],
                        r["rate_limited"],
                        r["rl_median"] * 1000,
                        r["rl_max"] * 1000,
                        r["timeouts"],
                        r["timeouts_ended"],
                        ", ".join(f"{k} {v}" for k, v in sorted(r["others"].items())) or "-",
                        r["429s"],
                    )
                )
                report.targets.append(
                    Target(
                        "6",
                        f"web callers ({state}, {align}): every admitted run answered within "
                        "its deadline; the rest fail fast (median < 50 ms)",
                        r["answered"] == r["admitted"] and not (r["rl_median"] >= 0.050),
                        f"{r['answered']} of {r['admitted']} admitted answered, "
                        f"{r['timeouts']} RunTimeoutError ({r['timeouts_ended']} already ended "
                        f"at the server), {r['rate_limited']} RateLimitedError in median "
                        f"{r['rl_median'] * 1000:.0f} ms",
                        PASS_MISS,
                    )
                )
        report.notes.append(
            f"Web callers: a default `ZapierClient`, {w.limit} requests per {w.window:g} s, "
            f"{w.callers} callers at once, each `run(..., timeout={w.timeout:g})` then "
            "`await handle` (one deadline; before #15 `run()` then "
            f"`result(timeout={w.timeout:g})`); "
            f"warm = after {w.warmup} runs of the action, at the start of a fresh window. "
            "'ended' = RunTimeoutErrors whose run had already ended at the server when the "
            "caller gave up.\n\n"
            + fmt_table(
                (
                    "client",
                    "windows",
                    "callers",
                    "admitted",
                    "answered",
                    "RateLimitedError",
                    "its median ms",
                    "its max ms",
                    "RunTimeoutError",
                    "ended",
                    "other",
                    "429s",
                ),
                rows,
            )
        )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument(
        "--windows",
        default=None,
        help="first,aligned (quick: first); first-ms, aligned-ms: Reset to the millisecond",
    )
    parser.add_argument("--only", default=None, help="bulk,slack,cold,web (quick: no slack)")
    parser.add_argument(
        "--workloads", default=None, help="bulk workloads: w300,w1000,short,w120,cb300"
    )
    parser.add_argument(
        "--rate-window",
        action="store_true",
        help="bulk jobs also with ZapierClient(rate_window=the front's window length)",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="bulk jobs also run twice on one client, the second measured",
    )
    args = parser.parse_args(argv)
    only = args.only or ("bulk,cold,web" if args.quick else "bulk,slack,cold,web")
    windows = args.windows or ("first" if args.quick else "first,aligned")
    report = asyncio.run(
        measure(
            quick=args.quick,
            windows=tuple(x for x in windows.split(",") if x),
            parts=tuple(x for x in only.split(",") if x),
            workloads=None if args.workloads is None else tuple(args.workloads.split(",")),
            rate_window=args.rate_window,
            warm=args.warm,
        )
    )
    print(report.text())
    for note in report.notes:
        print("  " + note.replace("\n", "\n  "))


if __name__ == "__main__":
    main()
