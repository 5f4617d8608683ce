"""Processes for the kill-one-worker acceptance test of `RunJournal` (tests/test_redis_journal.py).

``python tests/_journal_worker.py serve --durations 1,3 --seed 5``
    FakeZapier on 127.0.0.1 in its own process: prints its URL, serves until SIGTERM, then
    prints one JSON line with its stats and every run it accepted (server-side truth).

``python tests/_journal_worker.py hold --redis-url URL --name N --worker W``
    Opens a journal (heartbeat TTL 0.5 s), journals ``maybe-sent`` (no run id) and
    ``submitted`` (run ``run-1``), prints ``ready`` and blocks: the test SIGKILLs it.

``python tests/_journal_worker.py work --url URL --redis-url URL --name N --worker W --total T``
    One worker: prints ``ready``, waits for a line on stdin, then takes item keys from the
    shared Redis list ``work:{N}:todo`` until it is empty (LMOVE into its own
    ``work:{N}:taken:{W}``, so an item is never in no list), with ``--concurrency`` items at
    once. Per item: ``journal.sending`` -> ``client.run`` -> ``journal.record`` -> await the
    run -> outcome written with HSETNX into ``work:{N}:outcomes`` -> ``journal.forget``. Its
    recovery task watches `RunJournal.orphans`, claims a dead worker's entries, resumes those
    with a run id, records ``outcome_unknown`` for the "maybe sent" ones, and finishes the
    dead worker's taken items that were never journalled (never sent). It exits once every
    one of the ``--total`` items has an outcome, printing its counters as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskGroup

import zapier_async as za
from zapier_async.redis import RunJournal, WorkerAliveError
from zapier_async.testing import FakeZapier

POLLS = za.PollPolicy(initial=0.05, factor=1.5, cap=0.3, jitter=0.1)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def work_keys(name: str) -> tuple[str, str, str]:
    """The shared work list, the outcomes hash and the prefix of the per-worker taken lists."""
    base = f"work:{name}"
    return f"{base}:todo", f"{base}:outcomes", f"{base}:taken:"


async def serve(args: argparse.Namespace) -> None:
    low, _, high = args.durations.partition(",")
    fake = FakeZapier(
        seed=args.seed,
        durations=(float(low), float(high or low)),
        error_rate=args.error_rate,
        latency=(0.0, 0.02),
        record_requests=False,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with fake:
        print(fake.url, flush=True)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        loop.remove_signal_handler(signal.SIGTERM)
        stats = fake.stats
        runs = [{"id": run.id, "item": run.inputs.get("item")} for run in fake.runs()]
    print(
        json.dumps(
            {
                "runs_created": stats.runs_created,
                "duplicate_submissions": stats.duplicate_submissions,
                "requests": stats.requests,
                "runs": runs,
            }
        ),
        flush=True,
    )


class Worker:
    def __init__(
        self, args: argparse.Namespace, redis: aioredis.Redis, journal: RunJournal
    ) -> None:
        self.args = args
        self.redis = redis
        self.journal = journal
        self.me = journal.worker
        self.todo, self.outcomes, self.taken_prefix = work_keys(args.name)
        self.taken = self.taken_prefix + self.me
        self.counts: Counter[str] = Counter()
        self.client: za.ZapierClient | None = None

    async def all_done(self) -> bool:
        done: int = await self.redis.hlen(self.outcomes)
        return done >= int(self.args.total)

    async def outcome(self, key: str, status: str, run_id: str | None, how: str) -> None:
        value = json.dumps({"status": status, "run_id": run_id, "worker": self.me, "how": how})
        if await self.redis.hsetnx(self.outcomes, key, value):
            self.counts["outcomes_written"] += 1
        else:
            self.counts["outcome_collisions"] += 1  # finished twice (resumed); kept the first
        await self.journal.forget(key)
        await self.redis.lrem(self.taken, 1, key)

    async def finish(self, key: str, handle: za.RunHandle, how: str) -> None:
        try:
            await handle
        except za.RunFailedError:
            status = "failed"
        except za.ZapierError as exc:
            status = f"error:{type(exc).__name__}"
        else:
            status = "success"
        await self.outcome(key, status, handle.id, how)

    async def process(self, key: str, how: str) -> None:
        assert self.client is not None
        if await self.redis.hexists(self.outcomes, key):
            await self.redis.lrem(self.taken, 1, key)
            return
        await self.journal.sending(key)
        try:
            handle = await self.client.run(
                "core:journal", authentication=None, inputs={"item": key}
            )
        except za.OutcomeUnknownError:
            await self.outcome(key, "outcome_unknown", None, how)
            return
        self.counts["submitted"] += 1
        await self.journal.record(key, handle)
        await self.finish(key, handle, how)

    async def take_loop(self) -> None:
        while True:
            key = await self.redis.lmove(self.todo, self.taken, "LEFT", "RIGHT")
            if key is None:
                return
            await self.process(text(key), "own")

    async def recover_loop(self, tg: TaskGroup) -> None:
        assert self.client is not None
        while not await self.all_done():
            for dead in await self.journal.orphans():
                try:
                    entries = await self.journal.claim(dead)
                except WorkerAliveError:
                    continue
                if not entries:
                    self.counts["claims_lost"] += 1  # another worker claimed them first
                    continue
                self.counts["claimed_workers"] += 1
                self.counts["claimed_entries"] += len(entries)
                keys = {entry.key for entry in entries}
                for entry in entries:
                    if entry.token is not None:
                        self.counts["resumed"] += 1
                        handle = self.client.resume(entry.token)
                        tg.start_soon(self.finish, entry.key, handle, "resumed")
                    else:
                        # Maybe sent: never re-sent automatically.
                        self.counts["maybe_sent"] += 1
                        await self.outcome(entry.key, "outcome_unknown", None, "claimed")
                # The dead worker's taken items that were never journalled were never sent.
                source = self.taken_prefix + dead
                while (raw := await self.redis.lmove(source, self.taken)) is not None:
                    key = text(raw)
                    if key in keys or await self.redis.hexists(self.outcomes, key):
                        await self.redis.lrem(self.taken, 1, key)
                        continue
                    self.counts["taken_over_unsent"] += 1
                    tg.start_soon(self.process, key, "taken_over")
            await anyio.sleep(0.05)  # the worker's own orphan-check cadence


async def work(args: argparse.Namespace) -> None:
    redis = aioredis.from_url(args.redis_url, socket_timeout=10)
    journal = RunJournal(
        redis,
        name=args.name,
        prefix="journal",
        worker=args.worker,
        heartbeat_ttl=args.heartbeat_ttl,
        heartbeat_interval=args.heartbeat_ttl / 5,
    )
    worker = Worker(args, redis, journal)
    try:
        async with (
            journal,
            za.ZapierClient(
                auth=za.BearerToken("journal-test"), base_url=args.url, poll_policy=POLLS
            ) as client,
        ):
            worker.client = client
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            async with anyio.create_task_group() as tg:
                for _ in range(args.concurrency):
                    tg.start_soon(worker.take_loop)
                tg.start_soon(worker.recover_loop, tg)
            worker.counts["left_in_journal"] = len(await journal.entries())
    finally:
        await redis.aclose()
    print(json.dumps({"worker": args.worker, **worker.counts}), flush=True)


async def hold(args: argparse.Namespace) -> None:
    redis = aioredis.from_url(args.redis_url, socket_timeout=10)
    try:
        journal = RunJournal(
            redis, name=args.name, worker=args.worker, heartbeat_ttl=0.5, heartbeat_interval=0.1
        )
        async with journal:
            await journal.sending("maybe-sent")
            await journal.sending("submitted")
            await journal.record("submitted", "run-1")
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--durations", default="1,3")
    s.add_argument("--error-rate", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=None)
    h = sub.add_parser("hold")
    h.add_argument("--redis-url", required=True)
    h.add_argument("--name", required=True)
    h.add_argument("--worker", required=True)
    w = sub.add_parser("work")
    w.add_argument("--url", required=True)
    w.add_argument("--redis-url", required=True)
    w.add_argument("--name", required=True)
    w.add_argument("--worker", required=True)
    w.add_argument("--total", type=int, required=True)
    w.add_argument("--concurrency", type=int, default=6)
    w.add_argument("--heartbeat-ttl", type=float, default=1.0)
    args = parser.parse_args(argv)
    runner: Any = {"serve": serve, "hold": hold, "work": work}[args.command]
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
