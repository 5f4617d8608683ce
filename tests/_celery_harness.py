"""Real Celery workers against the emulator (tests/test_celery.py, benchmarks/celery_workers.py).

``python tests/_celery_harness.py serve --rate 50/2 --durations 0.05,0.15 [--slow-creates N]``
    FakeZapier on 127.0.0.1 in its own process: prints its URL, serves until SIGTERM, then
    prints one JSON line with its stats and every run it accepted (the server-side truth).
    ``--slow-creates N --slow-after M``: the N creates after the first M are processed (the
    run exists) but answered only after 60 s, so their tasks are caught with the key
    *sending*.

`Cluster` starts that emulator and ``celery worker`` processes (each in its own session, so
that a SIGKILL of its process group takes the pool children too) on one redis-server, sends
``zt.send`` tasks and collects their outcomes from the result backend. Every process is
stopped on exit, even when the body raised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
ROOT = TESTS.parent


# --- the emulator process ---------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    from zapier_async.testing import FakeZapier

    limit, _, per = args.rate.partition("/")
    low, _, high = args.durations.partition(",")
    fake = FakeZapier(
        seed=args.seed,
        durations=(float(low), float(high or low)),
        latency=(0.0, 0.005),
        rate_limit=(int(limit), float(per)) if limit else None,
        record_requests=False,
        slow_delay=60.0,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def slow_later() -> None:
        # Not the first creates: those are the budget's probes, whose answers every process
        # waits for; a held one would stall them all rather than catch one task mid-create.
        while fake.stats.requests_by_endpoint["create"] < args.slow_after:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        fake.inject("slow", count=args.slow_creates, endpoint="create", after_create=True)

    async with fake:
        print(fake.url, flush=True)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        injector = asyncio.create_task(slow_later()) if args.slow_creates else None
        await stop.wait()
        if injector is not None:
            injector.cancel()
        loop.remove_signal_handler(signal.SIGTERM)
        stats = fake.stats
        runs = [{"id": run.id, "item": run.inputs.get("item")} for run in fake.runs()]
    print(
        json.dumps(
            {
                "requests": stats.requests,
                "runs_created": stats.runs_created,
                "duplicate_submissions": stats.duplicate_submissions,
                "rate_limited": stats.rate_limited,
                "by_endpoint": dict(stats.requests_by_endpoint),
                "runs": runs,
            }
        ),
        flush=True,
    )


# --- the cluster ------------------------------------------------------------------------------


class Cluster:
    """An emulator and Celery workers on one Redis; see the module docstring."""

    def __init__(
        self,
        redis_url: str,
        *,
        rate: str = "50/2",
        durations: str = "0.05,0.15",
        slow_creates: int = 0,
        slow_after: int = 4,
        visibility_timeout: float = 60.0,
        seed: int = 7,
    ) -> None:
        self.redis_url = redis_url
        self.rate = rate
        self.durations = durations
        self.slow_creates = slow_creates
        self.slow_after = slow_after
        self.visibility_timeout = visibility_timeout
        self.seed = seed
        self.fake: subprocess.Popen[str] | None = None
        self.fake_url = ""
        self.fake_stats: dict[str, Any] = {}
        self.workers: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, Path] = {}
        self._app: Any = None
        self._tmp: Path | None = None

    # environment of the workers and of the app the test uses as a client
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["ZA_CELERY_REDIS"] = self.redis_url
        env["ZA_CELERY_FAKE"] = self.fake_url
        env["ZA_CELERY_VISIBILITY"] = str(self.visibility_timeout)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
        env.pop("PYTHONWARNINGS", None)
        return env

    @contextlib.contextmanager
    def running(self, tmp: Path) -> Iterator[Cluster]:
        self._tmp = tmp
        try:
            self._start_fake()
            yield self
        finally:
            for name in list(self.workers):
                self.stop_worker(name)
            self._stop_fake()

    def _start_fake(self) -> None:
        command = [sys.executable, str(TESTS / "_celery_harness.py"), "serve", "--rate",
                   self.rate, "--durations", self.durations, "--seed", str(self.seed),
                   "--slow-creates", str(self.slow_creates),
                   "--slow-after", str(self.slow_after)]  # fmt: skip
        self.fake = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
        )
        assert self.fake.stdout is not None
        self.fake_url = self.fake.stdout.readline().strip()
        if not self.fake_url.startswith("http"):
            raise AssertionError("the emulator did not start")

    def _stop_fake(self) -> None:
        if self.fake is None or self.fake.poll() is not None:
            return
        self.fake.send_signal(signal.SIGTERM)
        try:
            out, _ = self.fake.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.fake.kill()
            out, _ = self.fake.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if lines:
            self.fake_stats = json.loads(lines[-1])

    def stop_fake(self) -> dict[str, Any]:
        """Stop the emulator and return its stats (and every run it accepted)."""
        self._stop_fake()
        return self.fake_stats

    def start_worker(self, name: str, *, concurrency: int = 4) -> None:
        assert self._tmp is not None
        log = self._tmp / f"{name}.log"
        self.logs[name] = log
        command = [sys.executable, "-m", "celery", "-A", "_celery_app", "worker",
                   "-P", "prefork", "-c", str(concurrency), "-n", f"{name}@%h", "-Q", "zt",
                   "-l", "warning", "--without-gossip", "--without-mingle",
                   "--without-heartbeat"]  # fmt: skip
        with log.open("w") as out:
            self.workers[name] = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=TESTS,
                env=self.env(),
                start_new_session=True,  # its own process group: killpg reaches the pool
            )

    def wait_ready(self, names: list[str], timeout: float = 40.0) -> None:
        """Until every named worker's ``worker_ready`` marker is in Redis."""
        r = self.markers()
        deadline = time.monotonic() + timeout
        while True:
            ready = {n for n in names if r.exists(f"zt:ready:{n}@{os.uname().nodename}")}
            if ready == set(names):
                return
            for name in names:
                proc = self.workers[name]
                if proc.poll() is not None:
                    raise AssertionError(f"worker {name} exited:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not ready: {set(names) - ready}")
            time.sleep(0.1)

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text()[-4000:] if path is not None and path.exists() else ""

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker and its pool processes (its whole process group)."""
        proc = self.workers[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown: running tasks finish
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # pool children left behind, if any
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    # --- the client side -------------------------------------------------------------------

    def markers(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url, socket_timeout=10, decode_responses=True)

    def app(self) -> Any:
        if self._app is None:
            saved = dict(os.environ)
            os.environ.update(self.env())
            try:
                sys.modules.pop("_celery_app", None)
                if str(TESTS) not in sys.path:
                    sys.path.insert(0, str(TESTS))
                import _celery_app

                self._app = _celery_app.app
            finally:
                os.environ.clear()
                os.environ.update(saved)
        return self._app

    def send(self, count: int, *, prefix: str = "item") -> list[str]:
        """Send `count` ``zt.send`` tasks (arguments ``f"{prefix}-{i}"``); returns their ids.

        Only ids are kept: an `AsyncResult` alive when the backend is closed complains at
        interpreter exit.
        """
        app = self.app()
        return [app.send_task("zt.send", args=[f"{prefix}-{i}"]).id for i in range(count)]

    def ready(self, task_ids: list[str]) -> set[str]:
        """The ids among `task_ids` whose task has ended (success or failure)."""
        backend = self.app().backend
        return {tid for tid in task_ids if backend.get_task_meta(tid)["status"] in READY}

    def collect(self, task_ids: list[str], timeout: float) -> dict[str, Any]:
        """Wait for every task; returns ``{task_id: value or exception}`` (a timeout: raises)."""
        backend = self.app().backend
        deadline = time.monotonic() + timeout
        outcomes: dict[str, Any] = {}
        while len(outcomes) < len(task_ids):
            for tid in task_ids:
                if tid in outcomes:
                    continue
                meta = backend.get_task_meta(tid)
                if meta["status"] == "SUCCESS":
                    outcomes[tid] = meta["result"]
                elif meta["status"] in READY:
                    outcomes[tid] = backend.exception_to_python(meta["result"])
            if len(outcomes) < len(task_ids):
                if time.monotonic() > deadline:
                    missing = [tid for tid in task_ids if tid not in outcomes]
                    states = ", ".join(
                        f"{tid[:8]} {backend.get_task_meta(tid)['status']}" for tid in missing
                    )
                    logs = "".join(f"\n--- worker {n} ---\n{self.log(n)}" for n in self.logs)
                    raise AssertionError(
                        f"{len(missing)} of {len(task_ids)} tasks have no outcome ({states}){logs}"
                    )
                time.sleep(0.05)
        return outcomes

    def close_client(self) -> None:
        if self._app is not None:
            with contextlib.suppress(Exception):
                self._app.backend.client.close()
            self._app.close()
            self._app = None


def _main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--rate", default="50/2")
    s.add_argument("--durations", default="0.05,0.15")
    s.add_argument("--slow-creates", type=int, default=0)
    s.add_argument("--slow-after", type=int, default=0)
    s.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    _main()
