"""Processes for the Redis run-store tests (tests/test_redis_journal.py, tests/test_run_store.py).

``python tests/_journal_worker.py serve --durations 1,3 --seed 5``
    FakeZapier on 127.0.0.1 in its own process: prints its URL, serves until SIGTERM, then
    prints one JSON line with its stats and every run it accepted (server-side truth).

``python tests/_journal_worker.py hold --redis-url URL --prefix P``
    Begins ``maybe-sent`` (never recorded) and ``submitted`` (run ``run-1`` recorded) in a
    `RedisRunStore`, prints ``ready`` and blocks: the test SIGKILLs it.

``python tests/_journal_worker.py race --redis-url URL --prefix P --keys N --tasks T``
    Prints ``ready``, waits for a line on stdin, then `begin`s each of N keys from T tasks
    at once and prints the keys it was told to send, as one JSON line.

``python tests/_journal_worker.py work --url URL --redis-url URL --name N --worker W --total T``
    One worker of an at-least-once queue: prints ``ready``, waits for a line on stdin, then
    takes item keys from the shared Redis list ``work:{N}:todo`` (LMOVE into its own
    ``work:{N}:taken:{W}``: the test, playing the broker, moves a killed worker's taken items
    back to the todo list, i.e. redelivers them), with ``--concurrency`` items at once. Per
    item, the idempotency key is the item key: `RedisRunStore.begin` -> ``"send"``:
    ``client.run`` -> `record` -> await the run; ``"resume"``: ``client.resume(token)`` ->
    await it; ``"unknown"``: outcome unknown, never sent. The outcome is written with HSETNX
    into ``work:{N}:outcomes``, then the item is acked (LREM from its taken list). It exits
    once every one of the ``--total`` items has an outcome, printing its counters as JSON.
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

import zapier_async as za
from zapier_async.redis import RedisRunStore
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
        self, args: argparse.Namespace, redis: aioredis.Redis, store: RedisRunStore
    ) -> None:
        self.args = args
        self.redis = redis
        self.store = store
        self.me = args.worker
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
            self.counts["outcome_collisions"] += 1  # finished twice; kept the first
        await self.redis.lrem(self.taken, 1, key)  # the ack

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

    async def process(self, key: str) -> None:
        assert self.client is not None
        if await self.redis.hexists(self.outcomes, key):  # acked late: already done
            await self.redis.lrem(self.taken, 1, key)
            return
        claim = await self.store.begin(key)
        if claim.state == "resume":
            assert claim.continuation_token is not None
            self.counts["resumed"] += 1
            await self.finish(key, self.client.resume(claim.continuation_token), "resumed")
            return
        if claim.state == "unknown":
            self.counts["unknown"] += 1  # maybe sent by a worker that died: never re-sent
            await self.outcome(key, "outcome_unknown", None, "unknown")
            return
        try:
            handle = await self.client.run(
                "core:journal", authentication=None, inputs={"item": key}
            )
        except za.OutcomeUnknownError:
            await self.outcome(key, "outcome_unknown", None, "own")
            return
        self.counts["submitted"] += 1
        await self.store.record(key, handle.id, handle.continuation_token())
        await self.finish(key, handle, "own")

    async def take_loop(self) -> None:
        while not await self.all_done():
            key = await self.redis.lmove(self.todo, self.taken, "LEFT", "RIGHT")
            if key is None:
                await anyio.sleep(0.05)  # the queue may deliver again (a redelivery)
                continue
            await self.process(text(key))


async def work(args: argparse.Namespace) -> None:
    redis = aioredis.from_url(args.redis_url, socket_timeout=10)
    store = RedisRunStore(redis, prefix=f"journal:{args.name}", owner=args.worker)
    worker = Worker(args, redis, store)
    try:
        async with za.ZapierClient(
            auth=za.BearerToken("journal-test"), base_url=args.url, poll_policy=POLLS
        ) as client:
            worker.client = client
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            async with anyio.create_task_group() as tg:
                for _ in range(args.concurrency):
                    tg.start_soon(worker.take_loop)
    finally:
        await redis.aclose()
    print(json.dumps({"worker": args.worker, **worker.counts}), flush=True)


async def hold(args: argparse.Namespace) -> None:
    redis = aioredis.from_url(args.redis_url, socket_timeout=10)
    try:
        store = RedisRunStore(redis, prefix=args.prefix, owner="holder")
        assert (await store.begin("maybe-sent")).state == "send"
        assert (await store.begin("submitted")).state == "send"
        await store.record("submitted", "run-1", "run-1")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        await redis.aclose()


async def race(args: argparse.Namespace) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(
        args.redis_url, socket_timeout=10, max_connections=64, timeout=30
    )
    redis = aioredis.Redis(connection_pool=pool)
    try:
        store = RedisRunStore(redis, prefix=args.prefix)
        keys = [f"key-{i}" for i in range(args.keys)]
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        claims = await asyncio.gather(*(store.begin(k) for k in keys for _ in range(args.tasks)))
    finally:
        await redis.aclose()
        await pool.aclose()
    sent = [c.key for c in claims if c.state == "send"]
    print(json.dumps({"send": sent, "states": Counter(c.state for c in claims)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--durations", default="1,3")
    s.add_argument("--error-rate", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=None)
    h = sub.add_parser("hold")
    h.add_argument("--redis-url", required=True)
    h.add_argument("--prefix", required=True)
    r = sub.add_parser("race")
    r.add_argument("--redis-url", required=True)
    r.add_argument("--prefix", required=True)
    r.add_argument("--keys", type=int, default=30)
    r.add_argument("--tasks", type=int, default=20)
    w = sub.add_parser("work")
    w.add_argument("--url", required=True)
    w.add_argument("--redis-url", required=True)
    w.add_argument("--name", required=True)
    w.add_argument("--worker", required=True)
    w.add_argument("--total", type=int, required=True)
    w.add_argument("--concurrency", type=int, default=6)
    args = parser.parse_args(argv)
    runner: Any = {"serve": serve, "hold": hold, "race": race, "work": work}[args.command]
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
