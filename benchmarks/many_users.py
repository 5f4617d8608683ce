"""Many end users on one client (issue #16): budgets per credential, memory per user.

Three scenarios, each printing its targets as PASS / MISS (with by how much and why):

(a) ``mixed``: 200 light users (5 runs each, runs of 0.2-1.5 s) and one heavy user (100 runs
    through a 40-per-5-s budget) on one client at once, against an emulator in a child
    process that limits each token separately (``rate_limit_per_token``; the heavy token's
    budget from ``rate_limit_for``, the light users' the default 200 per 5 minutes). Targets:
    light users see 0 429s and p95 <= 3 s; the heavy user within 1.2x its physical minimum,
    ``(2 * 100 - 40) / (40 / 5) = 20 s`` (two requests a run, the first window's 40 free).

(b) ``scale``: 10,000 users, each with its own `ClientCredentials` (tokens from the
    emulator's token endpoint) and one run in flight (runs last 10 minutes). Targets: one
    poller task, <= 8 KB of RSS per user (RSS delta / users; tracemalloc's figure for the
    client's own allocations printed beside it), token fetches single-flight per user (each
    user's provider is asked twice at once; token requests / users must be 1.00).

(c) ``day``: a 24-hour simulated worker (`FakeClock`, an in-memory transport answering
    token exchanges, creates and reads) cycling through 100,000 users, one run each, with
    `PartnerTokenExchange.for_subject` (ES256) per user and per-credential metrics on.
    Target: memory flat after warm-up (tracemalloc at each simulated hour; the last hour
    within 10% + 256 KB of hour 3), with evicted limiter buckets, tokens and metrics
    counted and printed.

Run: ``python -m benchmarks.many_users [mixed|scale|day|all] [--quick] [--polls=N]
[--rate-window=S]`` (``--polls`` sets the client's ``max_concurrent_polls`` for ``mixed``;
``--rate-window`` its ``rate_window``, the heavy user's 5 s). Only 127.0.0.1 is
contacted. `--quick` runs small sizes (the tests run smaller ones still:
``tests/test_many_users.py``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import zapier_async as za
from zapier_async._scheduler import POLLER_TASK_NAME
from zapier_async._wire import Request, Response
from zapier_async.testing import FakeClock

from ._common import percentile, rss_now_kb

__all__ = ["day", "mixed", "scale"]

HEAVY = "heavy-user"
LIGHT_PREFIX = "light-"
SECRET = "s3cret-for-benchmarks"


def _verdict(ok: bool, name: str, detail: str) -> bool:
    print(f"    {'PASS' if ok else 'MISS'}  {name}: {detail}", flush=True)
    return ok


# --- the emulator in a child process -----------------------------------------------------------


async def _serve(config: dict[str, Any]) -> None:
    from zapier_async.testing import FakeZapier
    from zapier_async.testing._fake_auth import FakeAuthServer

    heavy = tuple(config.get("heavy_budget") or (40, 5.0))

    def budget_for(token: str) -> tuple[int, float] | None:
        return heavy if token == HEAVY else None  # type: ignore[return-value]

    users = int(config.get("credential_users", 0))
    auth_server = FakeAuthServer(
        client_credentials={f"user-{i}": SECRET for i in range(users)} or None
    )
    durations = config.get("durations", [0.2, 1.5])
    fake = FakeZapier(
        seed=7,
        durations=math.inf if durations == "inf" else tuple(durations),
        rate_limit=(200, 300.0),
        rate_limit_per_token=True,
        rate_limit_for=budget_for,
        record_requests=False,
        auth_server=auth_server,
    )
    await fake.start()
    print(json.dumps({"url": fake.url}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            stats = fake.stats
            print(
                json.dumps(
                    {
                        "rate_limited_by_token": dict(stats.rate_limited_by_token),
                        "token_requests": stats.token_requests,
                        "runs_created": stats.runs_created,
                        "requests": stats.requests,
                    }
                ),
                flush=True,
            )
    await fake.close()


class _Child:
    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url

    async def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"stats\n")
        await self.process.stdin.drain()
        return dict(json.loads(await self.process.stdout.readline()))


@asynccontextmanager
async def _emulator(**config: Any) -> AsyncIterator[_Child]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.many_users",
        "serve",
        json.dumps(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        yield _Child(process, json.loads(line)["url"])
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


# --- (a) light users beside a heavy one -------------------------------------------------------


async def mixed(
    *, light_users: int = 200, runs_each: int = 5, heavy_runs: int = 100, **client_options: Any
) -> bool:
    """Scenario (a); returns whether every target holds (`client_options` go to the client,
    e.g. ``max_concurrent_polls``)."""
    print(f"\n(a) {light_users} light users x {runs_each} runs + 1 heavy user x {heavy_runs}")
    limit, window = 40, 5.0
    physical = (2 * heavy_runs - limit) / (limit / window)
    async with (
        _emulator(durations=[0.2, 1.5], heavy_budget=[limit, window]) as emu,
        za.ZapierClient(
            auth=za.BearerToken("partner-token"),
            base_url=emu.url,
            max_rate_limit_wait=None,
            **client_options,
        ) as client,
    ):
        latencies: list[float] = []

        async def light(i: int) -> None:
            view = client.with_auth(za.BearerToken(f"{LIGHT_PREFIX}{i:04d}-token"))

            async def one(j: int) -> None:
                started = time.monotonic()
                handle = await view.run("core:x", authentication=None, inputs={"u": i, "j": j})
                await handle
                latencies.append(time.monotonic() - started)

            await asyncio.gather(*(one(j) for j in range(runs_each)))

        async def heavy() -> float:
            view = client.with_auth(za.BearerToken(HEAVY))
            started = time.monotonic()
            requests = [
                za.RunRequest(action="core:x", authentication=None, inputs={"h": k})
                for k in range(heavy_runs)
            ]
            outcomes = await view.gather(requests, concurrency=heavy_runs)
            assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
            return time.monotonic() - started

        started = time.monotonic()
        heavy_task = asyncio.ensure_future(heavy())
        await asyncio.gather(*(light(i) for i in range(light_users)))
        heavy_time = await heavy_task
        total = time.monotonic() - started
        stats = await emu.stats()
    by_token = stats["rate_limited_by_token"]
    light_429 = sum(n for token, n in by_token.items() if token.startswith(LIGHT_PREFIX))
    heavy_429 = by_token.get(HEAVY, 0)
    p95 = percentile(latencies, 95)
    print(
        f"    light runs {len(latencies)}: p50 {percentile(latencies, 50):.2f} s, p95 "
        f"{p95:.2f} s, p99 {percentile(latencies, 99):.2f} s, max {max(latencies):.2f} s; "
        f"light 429s {light_429}; heavy "
        f"{heavy_time:.2f} s ({heavy_time / physical:.3f}x of {physical:.1f} s), heavy "
        f"429s {heavy_429}; requests {stats['requests']}, wall {total:.1f} s"
    )
    ok = [
        _verdict(light_429 == 0, "light users see 0 429s", f"{light_429}"),
        _verdict(
            p95 <= 3.0,
            "light p95 <= 3 s",
            f"{p95:.2f} s" + ("" if p95 <= 3.0 else f" ({p95 - 3.0:.2f} s over)"),
        ),
        _verdict(
            heavy_time <= 1.2 * physical,
            "heavy within 1.2x its physical minimum",
            f"{heavy_time:.2f} s = {heavy_time / physical:.3f}x of {physical:.1f} s"
            + (
                ""
                if heavy_time <= 1.2 * physical
                else f" ({heavy_time - 1.2 * physical:.2f} s over 1.2x)"
            ),
        ),
    ]
    return all(ok)


# --- (b) 10,000 users with a run each in flight ---------------------------------------------


async def scale(*, users: int = 10_000) -> bool:
    """Scenario (b); returns whether every target holds."""
    print(f"\n(b) {users} users, one run each in flight, ClientCredentials per user")
    async with (
        _emulator(durations="inf", credential_users=users) as emu,
        za.ZapierClient(
            auth=za.BearerToken("partner-token"),
            base_url=emu.url,
            max_rate_limit_wait=None,
        ) as client,
    ):
        token_url = emu.url + "/oauth/token/"
        # Warm up: pool, poller, first imports; then the baseline.
        warm = za.ClientCredentials("user-0", SECRET, token_url=token_url)
        await client.with_auth(warm).run("core:x", authentication=None, inputs={})
        gc.collect()
        rss_before = rss_now_kb()
        traced = users <= 2_000
        if traced:
            tracemalloc.start()
        handles: list[za.RunHandle] = []
        providers: list[za.ClientCredentials] = []

        async def user(i: int) -> None:
            auth = za.ClientCredentials(f"user-{i}", SECRET, token_url=token_url)
            providers.append(auth)
            view = client.with_auth(auth)
            # Two demands at once (the run's create, another caller): one token request.
            handle, _ = await asyncio.gather(
                view.run("core:x", authentication=None, inputs={"u": i}), auth.token()
            )
            handles.append(handle)

        items = iter(range(1, users))

        async def worker() -> None:
            for i in items:
                await user(i)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(200)))
        created_in = time.monotonic() - started
        await asyncio.sleep(2.0)  # a few poll rounds
        gc.collect()
        rss_after = rss_now_kb()
        traced_kb = 0.0
        if traced:
            traced_kb = tracemalloc.get_traced_memory()[0] / 1024
            top = tracemalloc.take_snapshot().statistics("lineno")[:12]
            tracemalloc.stop()
            print("    largest allocations (tracemalloc, per user):")
            for stat in top:
                frame = stat.traceback[0]
                name = "/".join(frame.filename.split("/")[-2:])
                print(f"      {stat.size / (users - 1):8.0f} B  {name}:{frame.lineno}")
        tasks = asyncio.all_tasks()
        pollers = sum(1 for t in tasks if t.get_name() == POLLER_TASK_NAME)
        in_flight = client.in_flight
        stats = await emu.stats()
    n = users - 1
    per_user = (rss_after - rss_before) / n
    token_ratio = (stats["token_requests"] - 1) / n
    print(
        f"    {n} users created in {created_in:.1f} s; in flight {in_flight}; tasks "
        f"{len(tasks)}; RSS {rss_before} -> {rss_after} KB ({per_user:.2f} KB/user)"
        + (f"; tracemalloc {traced_kb / n:.2f} KB/user" if traced else "")
        + f"; token requests {stats['token_requests'] - 1} for {n} users"
    )
    ok = [
        _verdict(pollers == 1, "one poller task", f"{pollers}"),
        _verdict(
            per_user <= 8.0,
            "<= 8 KB RSS per user",
            f"{per_user:.2f} KB" + ("" if per_user <= 8.0 else f" ({per_user - 8:.2f} KB over)"),
        ),
        _verdict(
            token_ratio == 1.0, "token fetches single-flight per user", f"{token_ratio:.2f}/user"
        ),
    ]
    return all(ok)


# --- (c) a simulated day through 100,000 users ----------------------------------------------


class DayTransport:
    """An in-memory Zapier: token exchanges, creates and reads, answered at once.

    A run ends `duration` seconds (on the shared `FakeClock`) after its create; every answer
    carries rate-limit headers of a 200-per-300-s window per token.
    """

    def __init__(
        self, clock: FakeClock, duration: float = 1.0, token_lifetime: float = 3600
    ) -> None:
        self.clock = clock
        self.duration = duration
        self.token_lifetime = token_lifetime
        self.ends: dict[str, float] = {}
        self.created = 0
        self.token_requests = 0
        self.requests = 0

    async def send(
        self,
        request: Request,
        *,
        base_url: str,
        headers: Any,
        timeout: float | None,
    ) -> Response:
        self.requests += 1
        now = self.clock.monotonic()
        if request.path.endswith("/oauth/token/"):
            self.token_requests += 1
            body = {
                "access_token": f"user-token-{self.token_requests:09d}",
                "expires_in": self.token_lifetime,
            }
            return Response(status=200, body=json.dumps(body).encode())
        limit = {
            "x-ratelimit-limit": "200",
            "x-ratelimit-remaining": "190",
            "x-ratelimit-reset": str(300 - int(now) % 300),
        }
        if request.method == "POST":
            self.created += 1
            run_id = f"run-{self.created:09d}"
            self.ends[run_id] = now + self.duration
            body = {"data": {"type": "run", "id": run_id}}
            return Response(status=201, headers=limit, body=json.dumps(body).encode())
        run_id = request.path.rsplit("/", 1)[-1]
        ends = self.ends.get(run_id, 0.0)
        done = now >= ends
        if done:
            self.ends.pop(run_id, None)
        status = "success" if done else "running"
        body = {"data": {"status": status, "results": [{"ok": True}] if done else []}}
        return Response(status=200, headers=limit, body=json.dumps(body).encode())

    async def aclose(self) -> None:
        return None


async def day(
    *,
    users: int = 100_000,
    hours: float = 24.0,
    per_hour: Callable[[int, dict[str, Any]], None] | None = None,
    quiet: bool = False,
    token_lifetime: float = 3600,
    metrics_limit: int = 1000,
    warm_sample: int = 3,
) -> dict[str, Any]:
    """Scenario (c); returns the figures (and whether the target holds, under ``"ok"``)."""
    if not quiet:
        print(f"\n(c) a simulated {hours:g}-hour worker cycling through {users} users")
    clock = FakeClock()
    transport = DayTransport(clock, token_lifetime=token_lifetime)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    exchange = za.PartnerTokenExchange(
        private_key=pem,
        algorithm="ES256",
        key_id="k1",
        issuer="bench",
        subject="user-0",
        tenant="acme",
        client_id="partner",
        client_secret=SECRET,
        token_url="http://127.0.0.1:9/oauth/token/",
    )
    limiter = za.Limiter(clock=clock, bucket_idle=600.0)
    gap = hours * 3600 / users
    samples: list[tuple[int, float]] = []
    async with za.ZapierClient(
        auth=za.BearerToken("partner-token"),
        base_url="https://api.zapier.com",
        transport=transport,  # type: ignore[arg-type]
        clock=clock,
        limiter=limiter,
        max_rate_limit_wait=None,
    ) as client:
        recorder = client._engine.metrics
        recorder.track_credentials(metrics_limit)
        tracemalloc.start()
        pending: set[asyncio.Task[Any]] = set()

        async def one(i: int) -> None:
            view = client.with_auth(exchange.for_subject(f"user-{i}", "acme"))
            handle = await view.run("core:x", authentication=None, inputs={"u": i})
            await handle

        step = hours * 3600 / 24  # 24 samples: one per simulated hour of a full day
        next_hour = step
        for i in range(users):
            task = asyncio.ensure_future(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await clock.advance(gap)
            if clock.monotonic() >= next_hour - 1e-6:
                gc.collect()
                current = tracemalloc.get_traced_memory()[0] / 1024
                samples.append((round(clock.monotonic() / step), current))
                if per_hour is not None:
                    per_hour(i, {"kb": current})
                next_hour += step
        await clock.advance(60.0)
        while pending:
            await clock.advance(5.0)
        gc.collect()
        final_kb = tracemalloc.get_traced_memory()[0] / 1024
        tracemalloc.stop()
        lstats = limiter.snapshot()
        figures: dict[str, Any] = {
            "runs": transport.created,
            "token_requests": transport.token_requests,
            "samples": samples,
            "final_kb": final_kb,
            "buckets": lstats.buckets,
            "bucket_evictions": lstats.evictions,
            "cached_tokens": exchange.cached_tokens,
            "evicted_tokens": exchange.evicted_tokens,
            "metrics_tracked": (
                recorder.credential_metrics(None) or za.CredentialMetrics(bucket_id=None)
            ).tracked,
            "metrics_evicted": (
                recorder.credential_metrics(None) or za.CredentialMetrics(bucket_id=None)
            ).evicted,
            "credentials": len(client._engine._credentials),
        }
    warm = next(
        (kb for h, kb in samples if h >= warm_sample), samples[0][1] if samples else final_kb
    )
    last = samples[-1][1] if samples else final_kb
    flat = last <= warm * 1.10 + 256
    figures["ok"] = flat
    figures["warm_kb"] = warm
    figures["last_kb"] = last
    if not quiet:
        print(
            f"    tracemalloc every {step / 60:g} simulated minutes (KB): "
            + ", ".join(f"h{h}:{kb:.0f}" for h, kb in samples)
            + f"; after draining {final_kb:.0f}"
        )
        print(
            f"    runs {figures['runs']}, token requests {figures['token_requests']}; "
            f"limiter buckets {figures['buckets']} (evicted {figures['bucket_evictions']}); "
            f"tokens cached {figures['cached_tokens']} (evicted {figures['evicted_tokens']}); "
            f"metrics tracked {figures['metrics_tracked']} (evicted "
            f"{figures['metrics_evicted']}); engine credentials {figures['credentials']}"
        )
        _verdict(
            flat,
            "memory flat after warm-up",
            f"{warm:.0f} KB at sample {warm_sample} -> {last:.0f} KB at sample {len(samples)}"
            + ("" if flat else f" (+{last - warm:.0f} KB)"),
        )
    return figures


async def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")] or ["all"]
    ok = True
    if names[0] in ("mixed", "all"):
        polls = [int(a.split("=", 1)[1]) for a in argv if a.startswith("--polls=")]
        options: dict[str, Any] = {"max_concurrent_polls": polls[0]} if polls else {}
        # --rate-window=S: the client told the windows' length (the heavy user's is 5 s; the
        # light users' 300 s windows refute it on their first answer, so they learn theirs).
        told = [float(a.split("=", 1)[1]) for a in argv if a.startswith("--rate-window=")]
        if told:
            options["rate_window"] = told[0]
        ok &= await mixed(light_users=40 if quick else 200, **options)
    if names[0] in ("scale", "all"):
        ok &= await scale(users=1_000 if quick else 10_000)
    if names[0] in ("day", "all"):
        figures = await day(users=5_000 if quick else 100_000, hours=2 if quick else 24)
        ok &= bool(figures["ok"])
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        asyncio.run(_serve(json.loads(sys.argv[2])))
    else:
        sys.exit(asyncio.run(main(sys.argv[1:])))
