"""Issue #15: a run admitted is a run answered (admission, one deadline, awaited reads first),
and an interactive run is sent within a second in the middle of a bulk job (spend_window)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from _util import drive

import zapier_async as za
from zapier_async import _protocol as proto
from zapier_async import errors
from zapier_async._limiter import Limiter, Priority
from zapier_async.testing import FakeClock

BASE = "https://api.zapier.com"


class WindowServer:
    """A scripted Zapier on the fake clock: `limit` requests per `window` s (windows start at
    the first request after the previous one ended), runs that last `duration` s."""

    def __init__(self, clock: FakeClock, *, limit: int, window: float, duration: float) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.duration = duration
        self.started: float | None = None
        self.used = 0
        self.ends: dict[str, float] = {}
        self.sent: list[tuple[float, str, str]] = []  # (time, method, run id or "")
        self.refused = 0

    async def send(self, request: proto.Request, *, base_url, headers, timeout):  # type: ignore[no-untyped-def]
        now = self.clock.monotonic()
        if self.started is None or now >= self.started + self.window:
            self.started, self.used = now, 0
        self.used += 1
        reset = str(max(1, round(self.started + self.window - now)))
        head = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.limit - self.used, 0)),
            "X-RateLimit-Reset": reset,
        }
        if self.used > self.limit:
            self.refused += 1
            return proto.Response(status=429, headers={**head, "Retry-After": reset}, body=b"{}")
        if request.method == "POST":
            run_id = f"r-{len(self.ends) + 1}"
            self.ends[run_id] = now + self.duration
            self.sent.append((now, "POST", run_id))
            body = {"data": {"type": "run", "id": run_id}}
        else:
            run_id = request.path.rsplit("/", 1)[-1]
            self.sent.append((now, "GET", run_id))
            status = "success" if now >= self.ends[run_id] else "waiting"
            body = {"data": {"type": "run", "status": status, "results": [], "errors": []}}
        return proto.Response(status=200, headers=head, body=json.dumps(body).encode())

    async def aclose(self) -> None:
        return None


def client_on(server: WindowServer, **kwargs: Any) -> za.ZapierClient:
    return za.ZapierClient(
        auth=za.BearerToken("tok"),
        transport=server,  # type: ignore[arg-type]
        clock=server.clock,
        rng=random.Random(5),
        **kwargs,
    )


async def _callers(client: za.ZapierClient, clock: FakeClock, n: int, timeout: float) -> list[Any]:
    """`n` web callers at once: run(timeout=) then await; (outcome, seconds) each."""
    start = clock.monotonic()
    out: list[Any] = []

    async def caller(i: int) -> None:
        try:
            handle = await client.run(
                "core:a", authentication=None, inputs={"i": i}, timeout=timeout
            )
        except errors.RateLimitedError as exc:
            out.append(("limited", clock.monotonic() - start, exc))
            return
        try:
            await handle
            out.append(("answered", clock.monotonic() - start, handle))
        except errors.RunTimeoutError as exc:
            out.append(("timeout", clock.monotonic() - start, exc))

    tasks = [asyncio.ensure_future(caller(i)) for i in range(n)]
    await drive(clock, lambda: all(t.done() for t in tasks), steps=5000)
    for t in tasks:
        t.result()
    return out


@pytest.mark.asyncio
@pytest.mark.parametrize("warm", [False, True])
async def test_every_admitted_run_is_answered_within_its_deadline_the_rest_fail_fast(
    warm: bool,
) -> None:
    clock = FakeClock()
    server = WindowServer(clock, limit=10, window=10.0, duration=1.0)
    async with client_on(server) as client:
        if warm:
            handle = await client.run("core:a", authentication=None, inputs={}, timeout=5)
            await drive(clock, handle.done)
            await clock.advance(server.started + server.window - clock.monotonic() + 0.01)  # type: ignore[operator]
        out = await _callers(client, clock, 20, timeout=5.0)
    kinds = [o[0] for o in out]
    admitted = kinds.count("answered") + kinds.count("timeout")
    assert kinds.count("timeout") == 0, out
    assert 2 <= admitted <= 5  # each admitted run needs a create and at least one read
    for kind, seconds, _ in out:
        if kind == "answered":
            assert seconds <= 5.0
        else:
            # Failed fast: no waiting out max_rate_limit_wait (10 s) first, even cold (the
            # callers wait only for the first probe's answer, which is instant here).
            assert seconds < 0.05, (kind, seconds)
            assert _.retry_at > clock.time() - seconds  # it says when to come back
    assert server.refused == 0


@pytest.mark.asyncio
async def test_a_handle_carries_the_deadline_of_run_timeout() -> None:
    clock = FakeClock()
    server = WindowServer(clock, limit=100, window=10.0, duration=60.0)
    async with client_on(server) as client:
        handle = await client.run("core:a", authentication=None, inputs={}, timeout=3.0)
        waiter = asyncio.ensure_future(handle.result())
        await drive(clock, waiter.done)
        with pytest.raises(errors.RunTimeoutError):
            waiter.result()
        assert 2.99 <= clock.monotonic() <= 3.01
        assert not handle.done()  # the run goes on, still polled
        with pytest.raises(errors.InvalidRequestError):
            await client.run("core:a", authentication=None, inputs={}, timeout=0)


@pytest.mark.asyncio
async def test_a_create_whose_reads_the_budget_before_the_deadline_cannot_cover_fails_fast() -> (
    None
):
    clock = FakeClock()
    server = WindowServer(clock, limit=4, window=10.0, duration=1.0)
    async with client_on(server) as client:
        first = await client.run("core:a", authentication=None, inputs={}, timeout=5)
        # 3 left in this window: 1 create + 2 reads of an unlearnt action's run are promised,
        # so a second create with a 5 s deadline is refused at once, sending nothing.
        before = len(server.sent)
        with pytest.raises(errors.RateLimitedError) as info:
            await client.run("core:a", authentication=None, inputs={}, timeout=5)
        assert len(server.sent) == before
        assert info.value.retry_after > 5.0
        # Without a deadline of its own only the create must fit (max_rate_limit_wait).
        second = await client.run("core:a", authentication=None, inputs={})
        await drive(clock, lambda: first.done() and second.done())
        assert first.done()
        assert first.run is not None


@pytest.mark.asyncio
async def test_a_read_asked_for_first_goes_before_earlier_creates_of_its_priority() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock, spend_window=True, interactive_reserve=0.0) as limiter:
        async with limiter.slot(Priority.INTERACTIVE, key="k", max_wait=None) as slot:
            slot.record(
                200,
                {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "10"},
            )
        order: list[str] = []

        async def take(name: str, first: bool) -> None:
            async with limiter.slot(Priority.INTERACTIVE, key="k", max_wait=None, first=first):
                order.append(name)

        tasks = [
            asyncio.ensure_future(take("create-1", False)),
            asyncio.ensure_future(take("create-2", False)),
        ]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(take("read", True)))
        await drive(clock, lambda: all(t.done() for t in tasks))
        assert order[0] == "read"
        assert order[1:] == ["create-1", "create-2"]


@pytest.mark.asyncio
async def test_an_awaited_runs_read_goes_before_new_creates() -> None:
    clock = FakeClock()
    server = WindowServer(clock, limit=6, window=10.0, duration=0.5)
    async with client_on(server, max_rate_limit_wait=None) as client:
        handle = await client.run("core:a", authentication=None, inputs={})
        waiter = asyncio.ensure_future(handle.result())
        # Creates without a cap queue up behind the window; the awaited run's read jumps them.
        creates = [
            asyncio.ensure_future(client.run("core:a", authentication=None, inputs={"i": i}))
            for i in range(8)
        ]
        await drive(clock, waiter.done)
        read_at = next(t for t, method, rid in server.sent if method == "GET" and rid == handle.id)
        later = [t for t, method, _ in server.sent if method == "POST" and t > read_at]
        assert later, "some creates waited for the next window"
        assert read_at < 10.0  # read in the first window, not after the queued creates
        for c in creates:
            c.cancel()
        await asyncio.gather(*creates, return_exceptions=True)


@pytest.mark.asyncio
async def test_an_interactive_run_in_the_middle_of_a_bulk_job_is_sent_within_a_second() -> None:
    clock = FakeClock()
    server = WindowServer(clock, limit=50, window=10.0, duration=1.0)
    async with client_on(server) as client:
        requests = [
            {"action": "core:bulk", "authentication": None, "inputs": {"i": i}} for i in range(200)
        ]
        delays: list[float] = []

        async def job() -> None:
            async with client.run_many(requests, concurrency=50) as outcomes:
                seen = 0
                async for _ in outcomes:
                    seen += 1
                    if seen in (60, 120):  # mid-job: the bulk job wants every request
                        asked = clock.monotonic()
                        handle = await client.run("core:web", authentication=None, inputs={})
                        created = next(t for t, _m, rid in server.sent if rid == handle.id)
                        delays.append(created - asked)

        task = asyncio.ensure_future(job())
        await drive(clock, task.done, steps=20_000)
        task.result()
        assert len(delays) == 2
        assert max(delays) <= 1.0
        assert server.refused == 0
