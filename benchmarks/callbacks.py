"""Scenario 5: with callbacks on: polls per run and detection lag, durations U[0.2, 1.5] s.

The workload of scenario 2 (`detection`), with the library creating every run with a
``callback_url``: a `zapier_async.callbacks.CallbackReceiver` is mounted on a loopback
`aiohttp.web` server in this process, the emulator (own process, `_server`) POSTs each run's
outcome there when the run ends, signed with an RS256 JWT that the receiver's
`CallbackVerifier` checks against the emulator's JWKS, and the receiver resolves the handle.
Polls are then only the safety net (`CallbackPolling`).

Arms, interleaved per repeat, each against a fresh emulator:

- ``library + callbacks``: default `CallbackPolling` (first safety-net poll after ~45 s), no
  callback lost. The #7 target is evaluated on this arm.
- ``library + callbacks, 5% lost``: the emulator drops 5% of the callbacks
  (`FakeActions.callback_loss_rate`) and the safety net is tightened to a first poll after
  ~2 s, then every ~1 s: what a lost callback costs when the safety net is set for this
  duration range (with the 45 s default, a lost callback costs ~45 s of lag).
- the two baselines of scenario 2 (fixed 0.5 s polling, no callbacks).

Lag = caller's ``await`` returned - `RunRecord.ends_at` (server truth, both processes on
``CLOCK_MONOTONIC``); polls = the emulator's GET count per run.

Run: ``python -m benchmarks.callbacks [--runs 400] [--concurrency 100] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from aiohttp import web  # noqa: TID251 (the receiver's server is the user's aiohttp app)

import zapier_async as za
from zapier_async.callbacks import CallbackReceiver, CallbackVerifier

from . import baseline, detection
from ._common import Report, Target, library_run_all, make_client, median, percentile
from ._server import emulator

TITLE = "With callbacks on: polls per run and detection lag"
CALLBACKS = "library + callbacks"
LOSSY = "library + callbacks, 5% lost"
ARMS = (CALLBACKS, LOSSY, *baseline.SHAPES)
LOSS_RATE = 0.05
TIGHT_SAFETY_NET = za.CallbackPolling(first_delay=2.0, interval=1.0)
PATH = "/zapier/callback"


def unavailable_reason() -> str | None:
    """Why the scenario cannot run, or None once it can (it can: kept for the harness)."""
    return None


async def _library_arm(
    runs: int, concurrency: int, seed: int, *, loss: float, safety_net: za.CallbackPolling | None
) -> dict[str, Any]:
    inputs = [{"i": i} for i in range(runs)]
    config: dict[str, Any] = {"durations": list(detection.DURATIONS), "seed": seed}
    if loss:
        config["actions"] = {"callback_loss_rate": loss}
    async with emulator(**config) as emu:
        async with make_client(
            emu.url,
            allow_insecure_callback_url_for_testing=True,
            callback_polling=safety_net,
        ) as client:
            receiver = CallbackReceiver(
                client, CallbackVerifier(jwks_url=emu.url + "/.well-known/jwks.json")
            )
            runner = web.AppRunner(receiver.app(PATH), access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                results = await library_run_all(
                    client,
                    inputs,
                    concurrency=concurrency,
                    callback_url=f"http://{host}:{port}{PATH}",
                )
            finally:
                await runner.cleanup()
            stats = receiver.stats
        records = {row[0]: row for row in await emu.runs()}
    resolved = {run_id: t for run_id, _status, t in results}
    ordered = sorted(records.values(), key=lambda row: row[1])
    return {
        "lags": [resolved[row[0]] - row[2] for row in ordered],
        "polls": [row[3] for row in ordered],
        "half": len(ordered) // 2,
        "delivered": stats.delivered,
        "rejected": stats.rejected_signatures + stats.bad_bodies,
    }


async def _one_arm(arm: str, runs: int, concurrency: int, seed: int) -> dict[str, Any]:
    if arm == CALLBACKS:
        return await _library_arm(runs, concurrency, seed, loss=0.0, safety_net=None)
    if arm == LOSSY:
        return await _library_arm(
            runs, concurrency, seed, loss=LOSS_RATE, safety_net=TIGHT_SAFETY_NET
        )
    return await detection._one_arm(arm, runs, concurrency, seed)


def _summary(samples: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "polls": median([statistics.fmean(s["polls"]) for s in samples]),
        "lag": median([statistics.fmean(s["lags"]) for s in samples]),
        "p95": median([percentile(s["lags"], 95) for s in samples]),
        "max": median([max(s["lags"]) for s in samples]),
        "delivered": median([s.get("delivered", float("nan")) for s in samples]),
    }


async def measure(*, runs: int = 600, concurrency: int = 100, repeats: int = 2) -> Report:
    samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for rep in range(repeats):
        for arm in ARMS:
            samples[arm].append(await _one_arm(arm, runs, concurrency, seed=rep + 1))
    summary = {arm: _summary(samples[arm]) for arm in ARMS}
    report = Report(
        number=5,
        title=TITLE,
        method=(
            f"{runs} runs, {concurrency} in flight, durations U[0.2, 1.5] s, median of "
            f"{repeats} interleaved repeats. The library creates each run with a "
            "`callback_url` pointing at a `CallbackReceiver` on a loopback aiohttp.web "
            "server; the emulator POSTs signed callbacks (RS256, verified against its "
            "JWKS). Lag = caller's `await` returned - `RunRecord.ends_at` (server truth); "
            "polls counted by the emulator. '5% lost': the emulator drops 5% of the "
            "callbacks and the safety net polls after ~2 s, then every ~1 s."
        ),
        headers=(
            "client",
            "polls/run",
            "mean lag s",
            "p95 lag s",
            "max lag s",
            "callbacks delivered/run",
        ),
    )
    for arm in ARMS:
        s = summary[arm]
        name = arm if arm in (CALLBACKS, LOSSY) else f"baseline {arm} (0.5 s)"
        report.rows.append((name, s["polls"], s["lag"], s["p95"], s["max"], s["delivered"] / runs))
    lib = summary[CALLBACKS]
    rejected = sum(s["rejected"] for arm in (CALLBACKS, LOSSY) for s in samples[arm])
    for shape in baseline.SHAPES:
        base = summary[shape]
        fewer = 1 - lib["polls"] / base["polls"]
        report.targets.append(
            Target(
                "5",
                "with callbacks: >= 30% fewer polls per run at <= mean detection lag vs "
                f"baseline {shape} (0.5 s fixed poll)",
                fewer >= 0.30 and lib["lag"] <= base["lag"],
                f"{fewer:.0%} fewer polls ({lib['polls']:.2f} vs {base['polls']:.2f}), "
                f"lag {lib['lag']:.3f} vs {base['lag']:.3f} s",
            )
        )
    lossy = summary[LOSSY]
    report.notes.append(
        f"Callback signatures rejected by the receiver: {rejected} (expected 0). With 5% of "
        f"the callbacks lost and a ~2 s safety net: {lossy['polls']:.2f} polls/run, mean lag "
        f"{lossy['lag']:.3f} s (max {lossy['max']:.2f} s): a lost callback costs latency, not "
        "the run. With the default safety net (`CallbackPolling()`: first poll after ~45 s, "
        "sized for Zapier's rate budgets) a lost callback would cost ~45 s instead."
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.callbacks", description=__doc__)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    report = asyncio.run(
        measure(runs=args.runs, concurrency=args.concurrency, repeats=args.repeats)
    )
    print(report.text())
    for note in report.notes:
        print("  " + note)


if __name__ == "__main__":
    main()
