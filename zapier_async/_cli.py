"""The command line: ``python -m zapier_async`` / ``zapier-async``.

Commands:

- ``demo``: start the emulator in-process, fan 1,000 runs out through `run_many` with a
  progress bar, print the client's metrics as a table. No Zapier account needed.
- ``run ACTION [--auth ID] [--input k=v ...]``: start one run and wait for its outcome.
- ``resume TOKEN_OR_RUN_ID``: follow a run started earlier (e.g. by ``run --timeout``) to
  its end.
- ``bulk FILE.jsonl [--output OUT.jsonl] [--resume [--retry-failed]]``: one request per line,
  one outcome per line out (flushed line by line), resumable without duplicate submissions.
- ``serve-fake``: run the emulator for other tools; prints its URL, stops on SIGINT/SIGTERM.

``zapier-async --version`` prints ``zapier-async <version>``.

Credentials come from the environment: ``ZAPIER_TOKEN`` (a bearer token) and
``ZAPIER_BASE_URL`` (default ``https://api.zapier.com``); ``--base-url`` overrides the latter.
Tokens are never accepted on the command line (other users can read argv).

Exit codes (`EXIT_CODES`): 0 every run succeeded; 1 some runs failed (run error, API
refusal, bad input line); 2 usage error; 3 authentication or permission refused; 4 rate
limited; 5 transport failure or outcome unknown (includes runs whose outcome could not be
read, and ``run --timeout`` running out); 130 interrupted. When a bulk job has several
kinds of failure the most serious wins, in the order 3, 5, 4, 1.

Progress and summaries
----------------------
``demo`` and ``bulk`` draw a progress bar (rich: done/total, rate, ETA, failures so far) on
stderr and print the summary as a table when that stream is a terminal; otherwise, and
always with ``--json``, they print plain lines (a progress line every tenth of the job) that
logs and pipes can keep. rich's switches apply: ``TTY_COMPATIBLE=1`` (or ``FORCE_COLOR``)
forces the terminal form, ``TTY_COMPATIBLE=0`` the plain one. The emulator (and rich) are
imported only by the commands that use them.

Resumable bulk jobs
-------------------
With ``--output OUT``, ``bulk`` keeps a journal next to it (``OUT.journal``): a ``sending``
line (the input line number) is written and flushed right before each create goes on the
wire, and a ``submitted`` line (line number and run id) as soon as Zapier returned the id.
Outcome lines carry the input line number and the run id. Both files are created with mode
0600 (they hold run results), and an existing one is narrowed to the owner.

A journal that exists means "resume or refuse": the same command run again without
``--resume`` exits 2 without sending anything, whatever the output holds (a job killed before
any run ended has accepted runs in its journal and nothing in its output). While a job runs it
holds an exclusive lock on its journal (``flock``, not waited for), so a second invocation on
the same files, with or without ``--resume``, exits 2 at once. ``--resume`` reads both files
(dropping a line torn by a crash) and, for each input line:

- an outcome exists: kept (see ``--retry-failed``);
- ``submitted`` but no outcome: the run is followed by id, never re-sent;
- ``sending`` but no ``submitted``: the create may have reached Zapier and its answer was
  lost: recorded as outcome unknown (exit 5), never re-sent, because a duplicate run is a
  duplicate email to a real person;
- nothing: submitted.

So a job killed at any instant ends, after one ``--resume``, with exactly one outcome per
input line and no run submitted twice. The summary, the failure count and the exit code of a
resumed job describe the whole job, lines done by earlier invocations included.

``--resume --retry-failed`` also re-runs failed lines: a line whose create was refused (a
wrong token, a bad request, rate limited) or never sent, and a line whose run ended with
status ``error``, is sent again; a line whose run was accepted but could not be read to its
end is followed by its run id. A line whose create may have reached Zapier without an answer
(outcome unknown) is never re-sent. A retry is journaled (a ``retry`` line) before anything is
sent, and the retried line gets a second outcome line: **the last outcome line of an input
line is its outcome**.

A job stops sending after a refusal that would be the same for every line (401, 403: see
`ZapierClient.run_many`); the lines not sent fail with that refusal, and it is said once.
Fix the cause, then ``--resume --retry-failed``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, TextIO

import anyio

from . import __version__, errors
from ._auth import BearerToken
from ._backoff import PollPolicy
from ._bulk import Outcome, RunMany, RunRequest
from ._client import DEFAULT_BASE_URL, ZapierClient
from ._handle import RunHandle
from ._metrics import Metrics, error_code
from .models import Run, RunStatus

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, O_EXCL still guards
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXIT_CODES", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_RATE_LIMITED: Final = 4
EXIT_UNKNOWN: Final = 5
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final[Mapping[int, str]] = {
    EXIT_OK: "every run succeeded",
    EXIT_FAILED: "some runs failed (run error, API refusal, bad input)",
    EXIT_USAGE: "usage error (bad arguments, unreadable or existing files)",
    EXIT_AUTH: "authentication or permission refused (or no ZAPIER_TOKEN)",
    EXIT_RATE_LIMITED: "rate limited",
    EXIT_UNKNOWN: "transport failure or outcome unknown",
    EXIT_INTERRUPTED: "interrupted (resume a bulk job with --resume)",
}
"""Exit code -> meaning, as documented in ``--help``."""

# Which exit code wins when a bulk job saw several kinds of failure: higher is worse.
_SEVERITY: Final = {EXIT_OK: 0, EXIT_FAILED: 1, EXIT_RATE_LIMITED: 2, EXIT_UNKNOWN: 3, EXIT_AUTH: 4}

DEMO_ACTION: Final = "core:demo_send_email"


def exit_code_for(exc: BaseException | None) -> int:
    """The exit code class of one failure (None: success)."""
    if exc is None:
        return EXIT_OK
    if isinstance(exc, (errors.AuthenticationError, errors.PermissionDeniedError)):
        return EXIT_AUTH
    if isinstance(exc, (errors.RateLimitedError, errors.TooManyRequestsError)):
        return EXIT_RATE_LIMITED
    if isinstance(
        exc,
        (
            errors.TransportError,
            errors.OutcomeUnknownError,
            errors.RunDetachedError,
            errors.RunTimeoutError,
            errors.ServerError,
        ),
    ):
        return EXIT_UNKNOWN
    return EXIT_FAILED


def _worse(a: int, b: int) -> int:
    return a if _SEVERITY.get(a, 0) >= _SEVERITY.get(b, 0) else b


# --- argument parsing ---------------------------------------------------------------------------


def _parse_rate(text: str) -> tuple[int, float]:
    try:
        count, _, window = text.partition("/")
        limit, seconds = int(count), float(window or "1")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LIMIT/SECONDS like 50/2, got {text!r}"
        ) from None
    if limit < 1 or seconds <= 0:
        raise argparse.ArgumentTypeError("LIMIT must be >= 1 and SECONDS > 0")
    return limit, seconds


def _parse_durations(text: str) -> float | tuple[float, float]:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW,HIGH, got {text!r}") from None
    if len(parts) == 1 and parts[0] >= 0:
        return parts[0]
    if len(parts) == 2 and 0 <= parts[0] <= parts[1]:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected SECONDS or LOW,HIGH with LOW <= HIGH: {text!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _parse_input(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw  # not JSON: the text as is
    return key, value


def _build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(
        f"  {code:>3}  {text}" for code, text in EXIT_CODES.items()
    )
    epilog += (
        "\n\nenvironment:\n  ZAPIER_TOKEN     bearer token (run, resume, bulk)\n"
        f"  ZAPIER_BASE_URL  API root (default {DEFAULT_BASE_URL})"
    )
    parser = argparse.ArgumentParser(
        prog="zapier-async",
        description="An asyncio client for Zapier's action-run APIs.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zapier-async {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="run actions against an in-process Zapier emulator and print the metrics",
        description="Start FakeZapier on 127.0.0.1 with a rate limit and injected faults, fan "
        "runs out through ZapierClient.run_many with a progress bar, and print the metrics.",
    )
    demo.add_argument(
        "--runs", type=_positive_int, default=1000, help="how many runs (default 1000)"
    )
    demo.add_argument(
        "--concurrency", type=_positive_int, default=200, help="runs in flight (default 200)"
    )
    demo.add_argument(
        "--error-rate",
        type=_probability,
        default=0.05,
        help="share of runs that end with an error (default 0.05)",
    )
    demo.add_argument(
        "--fault-rate",
        type=_probability,
        default=0.01,
        help="share of requests hit by an injected fault: 5xx, reset, non-JSON (default 0.01)",
    )
    demo.add_argument(
        "--rate-limit",
        type=_parse_rate,
        default=(500, 1.0),
        metavar="LIMIT/SECONDS",
        help="the emulator's rate limit (default 500/1, a scaled-down Zapier window)",
    )
    demo.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    demo.add_argument(
        "--json", action="store_true", help="print the summary as JSON; progress as plain lines"
    )

    run = sub.add_parser(
        "run",
        help="start one action run and wait for its outcome",
        description="Start one run (POST /v2/action-runs) and wait for its outcome. "
        "Credentials: ZAPIER_TOKEN, ZAPIER_BASE_URL.",
    )
    run.add_argument("action", help="the action id from Get Actions, e.g. core:abc123")
    run.add_argument(
        "--auth", default=None, help="the authentication (connection) id; omit for none"
    )
    run.add_argument(
        "--input",
        dest="inputs",
        action="append",
        type=_parse_input,
        default=[],
        metavar="KEY=VALUE",
        help="an input field; VALUE is parsed as JSON when it is valid JSON (repeatable)",
    )
    run.add_argument("--callback-url", default=None, help="an https URL for the outcome")
    run.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the outcome at most; the run goes on at Zapier, and the "
        "command to follow it later is printed",
    )
    run.add_argument("--base-url", default=None, help="overrides ZAPIER_BASE_URL")
    run.add_argument("--json", action="store_true", help="print the outcome as JSON")

    resume = sub.add_parser(
        "resume",
        help="follow a run started earlier to its outcome",
        description="Follow an existing run (its continuation token, as printed by run "
        "--timeout, or a /v2/action-runs run id) to its end; nothing is created. "
        "Credentials: ZAPIER_TOKEN, ZAPIER_BASE_URL.",
    )
    resume.add_argument("token", metavar="TOKEN_OR_RUN_ID", help="continuation token or run id")
    resume.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for the outcome at most"
    )
    resume.add_argument("--base-url", default=None, help="overrides ZAPIER_BASE_URL")
    resume.add_argument("--json", action="store_true", help="print the outcome as JSON")

    bulk = sub.add_parser(
        "bulk",
        help="run one request per JSONL line; outcomes as JSONL; resumable",
        description="Read one request per line (a JSON object with action, authentication, "
        "inputs, and optionally callback_url and key), write one outcome per line (with the "
        "input line number and the run id), flushed as each run ends. With --output, a "
        "journal OUT.journal makes --resume safe: nothing is submitted twice. A journal that "
        "exists is resumed (--resume) or refused; one job at a time holds it.",
    )
    bulk.add_argument("file", type=Path, help="the JSONL file of requests")
    bulk.add_argument(
        "--output", "-o", type=Path, default=None, help="write outcomes here (default stdout)"
    )
    bulk.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted job: skip lines with an outcome in --output, follow "
        "submitted runs by id, never re-send a create that may have reached Zapier; the "
        "summary and exit code describe the whole job",
    )
    bulk.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: re-run failed lines (refused, never sent, or run ended with an "
        "error; accepted runs are followed by id), never those whose outcome is unknown",
    )
    bulk.add_argument(
        "--concurrency", type=_positive_int, default=50, help="runs in flight (default 50)"
    )
    bulk.add_argument("--base-url", default=None, help="overrides ZAPIER_BASE_URL")
    bulk.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    bulk.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON (stderr); progress as plain lines",
    )

    serve = sub.add_parser(
        "serve-fake",
        help="run the Zapier emulator until SIGINT/SIGTERM",
        description="Start FakeZapier, print its URL on the first line of stdout, serve until "
        "SIGINT or SIGTERM, then print its stats as one JSON line.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    serve.add_argument(
        "--durations",
        type=_parse_durations,
        default=(0.0, 0.05),
        metavar="SECONDS|LOW,HIGH",
        help="how long runs take (default 0,0.05)",
    )
    serve.add_argument("--error-rate", type=_probability, default=0.0)
    serve.add_argument("--fault-rate", type=_probability, default=0.0)
    serve.add_argument("--rate-limit", type=_parse_rate, default=None, metavar="LIMIT/SECONDS")
    serve.add_argument(
        "--token",
        dest="tokens",
        action="append",
        default=None,
        help="accept only this bearer token (repeatable; default: any)",
    )
    serve.add_argument("--seed", type=int, default=None)
    return parser


# --- progress -----------------------------------------------------------------------------------


class _ProgressBar(Protocol):
    def update(self, *, failed: bool) -> None: ...

    def close(self) -> None: ...


def _console(stream: TextIO) -> Console:
    """A rich console on `stream` (it knows whether that is a terminal, and rich's switches)."""
    from rich.console import Console

    return Console(file=stream)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class _PlainProgress:
    """A progress line every tenth of the job, for logs and pipes (no control characters)."""

    def __init__(self, total: int, stream: TextIO, *, initial: int = 0) -> None:
        self.total = total
        self.stream = stream
        self.initial = initial
        self.done = initial
        self.failed = 0
        self._started = time.monotonic()
        self._last_decile = -1

    def update(self, *, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        decile = 10 * self.done // max(1, self.total)
        if decile == self._last_decile:
            return
        self._last_decile = decile
        elapsed = time.monotonic() - self._started
        # No rate from the first moments: a burst of instant failures is not a rate.
        rate = (self.done - self.initial) / elapsed if elapsed >= 0.5 else None
        eta = max(0, self.total - self.done) / rate if rate else None
        rate_text = "-" if rate is None else f"{rate:,.1f}"
        self.stream.write(
            f"{self.done}/{self.total} done, {self.failed} failed, {rate_text} runs/s, "
            f"ETA {_fmt_eta(eta)}\n"
        )
        self.stream.flush()

    def close(self) -> None:
        pass


class _RichProgress:
    """rich's progress bar: done/total, rate, ETA, failures so far."""

    def __init__(self, total: int, console: Console, *, initial: int = 0) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                speed = task.finished_speed or task.speed
                return Text("- runs/s" if speed is None else f"{speed:,.1f} runs/s")

        self._failed = 0
        self._progress = Progress(
            TextColumn("runs"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("failed {task.fields[failed]}"),
            console=console,
            refresh_per_second=4,
            # Our output goes to streams held since before the bar: do not swap sys.std*.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task("runs", total=total, completed=initial, failed=0)
        self._progress.start()

    def update(self, *, failed: bool) -> None:
        self._failed += failed
        self._progress.update(self._task, advance=1, failed=self._failed)

    def close(self) -> None:
        self._progress.stop()


class _NoProgress:
    def update(self, *, failed: bool) -> None:
        pass

    def close(self) -> None:
        pass


def _make_progress(
    total: int,
    stream: TextIO,
    *,
    initial: int = 0,
    plain: bool = False,
    console: Console | None = None,
) -> _ProgressBar:
    """A bar on a terminal, plain lines otherwise (or when `plain`: ``--json``)."""
    if not plain:
        console = console if console is not None else _console(stream)
        if console.is_terminal:
            return _RichProgress(total, console, initial=initial)
    return _PlainProgress(total, stream, initial=initial)


# --- output helpers -----------------------------------------------------------------------------


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _fmt_counts(counts: Mapping[Any, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def metrics_rows(m: Metrics) -> list[tuple[str, str]]:
    """The metrics summary as (name, value) rows."""
    return [
        ("runs started", f"{m.runs_started}"),
        ("runs succeeded", f"{m.runs_succeeded}"),
        ("runs failed", f"{m.runs_failed}"),
        ("runs in flight", f"{m.runs_in_flight}"),
        ("outcome unknown", f"{m.outcome_unknown}"),
        ("success / failure rate", f"{_fmt_share(m.success_rate)} / {_fmt_share(m.failure_rate)}"),
        ("runs per day (at this rate)", f"{m.runs_per_day:,.0f}"),
        (
            "latency avg / p50 / p95 / max",
            " / ".join(
                _fmt_seconds(v)
                for v in (m.latency_mean, m.latency_p50, m.latency_p95, m.latency_max)
            ),
        ),
        ("polls per run", "-" if m.polls_per_run is None else f"{m.polls_per_run:.2f}"),
        ("requests by endpoint", _fmt_counts(m.requests_by_endpoint)),
        ("responses by status", _fmt_counts(m.responses_by_status)),
        ("transport errors / retries", f"{m.transport_errors} / {m.retries}"),
        ("429 responses", f"{m.rate_limited}"),
        (
            "limiter waits (total / max)",
            f"{m.limiter_waits} ({m.limiter_wait_total:.2f} s / {m.limiter_wait_max:.2f} s)",
        ),
        ("errors by code", _fmt_counts(m.errors_by_code)),
    ]


def _write_table(
    stream: TextIO,
    title: str,
    rows: Sequence[tuple[str, str]],
    *,
    plain: bool = False,
    console: Console | None = None,
) -> None:
    """A rich table on a terminal; aligned plain lines otherwise (or when `plain`)."""
    if not plain:
        console = console if console is not None else _console(stream)
        if console.is_terminal:
            from rich.table import Table
            from rich.text import Text

            table = Table(title=title, title_justify="left", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            for key, value in rows:
                table.add_row(Text(key), Text(value))
            console.print()
            console.print(table)
            return
    width = max(len(k) for k, _ in rows)
    stream.write(f"\n{title}\n")
    for key, value in rows:
        stream.write(f"  {key.ljust(width)}  {value}\n")
    stream.flush()


def _error_record(exc: BaseException, *, message: str | None = None) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "code": error_code(exc),
        "message": str(exc) if message is None else message,
        "exit_code": exit_code_for(exc),
    }


def _run_record(run: Run | None, status: RunStatus | None = None) -> dict[str, Any]:
    if run is None:
        return {
            "status": None if status is None else status.value,
            "results": None,
            "errors": [],
        }
    return {
        "status": run.status.value,
        "results": run.results,
        "errors": [
            {
                "code": None if e.code is None else e.code.value,
                "title": e.title,
                "detail": e.detail,
                "delay": e.delay,
            }
            for e in run.errors
        ],
    }


def outcome_record(
    *,
    line: int | None,
    key: Any,
    run_id: str | None,
    run: Run | None,
    error: BaseException | None,
    status: RunStatus | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """One outcome as the JSON object ``bulk`` writes (and ``run --json`` prints).

    `status` is the last status seen when `run` is None (a run that did not end); `message`
    replaces the error's own text.
    """
    record: dict[str, Any] = {"line": line, "key": key, "ok": error is None, "run_id": run_id}
    record.update(_run_record(run, status))
    record["error"] = None if error is None else _error_record(error, message=message)
    return record


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), default=str)


# --- credentials ---------------------------------------------------------------------------------


class _UsageError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _client_from_env(base_url: str | None, **kwargs: Any) -> ZapierClient:
    token = os.environ.get("ZAPIER_TOKEN", "").strip()
    if not token:
        raise _UsageError("ZAPIER_TOKEN is not set: export a Zapier access token", EXIT_AUTH)
    url = base_url or os.environ.get("ZAPIER_BASE_URL", "").strip() or DEFAULT_BASE_URL
    try:
        return ZapierClient(
            auth=BearerToken(token), base_url=url, max_rate_limit_wait=None, **kwargs
        )
    except errors.InvalidRequestError as exc:
        raise _UsageError(f"bad configuration: {exc}") from None


# --- demo ---------------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .testing import FakeZapier  # the emulator: only for the commands that serve it

    seed = args.seed if args.seed is not None else random.randrange(2**32)

    def requests() -> Iterator[RunRequest]:
        for i in range(args.runs):
            yield RunRequest(
                action=DEMO_ACTION,
                authentication="demo_auth",
                inputs={"to": f"user{i}@example.com", "subject": f"Hello #{i}"},
                key=i,
            )

    outcomes = 0
    async with FakeZapier(
        durations=(0.2, 1.5),
        error_rate=args.error_rate,
        fault_rate=args.fault_rate,
        rate_limit=args.rate_limit,
        seed=seed,
        record_requests=False,
    ) as fake:
        limit = (
            "no rate limit"
            if args.rate_limit is None
            else "rate limit {}/{:g}s".format(*args.rate_limit)
        )
        err.write(
            f"emulator on {fake.url} (seed {seed}, {limit}, fault rate {args.fault_rate:g}); "
            f"{args.runs} runs, concurrency {args.concurrency}\n"
        )
        started = time.perf_counter()
        progress = _make_progress(args.runs, err, plain=args.json)
        try:
            async with ZapierClient(
                auth=BearerToken("demo-token"),
                base_url=fake.url,
                max_rate_limit_wait=None,  # a script: wait for the budget rather than fail
                poll_policy=PollPolicy(),
                rng=random.Random(seed),
            ) as client:
                async with client.run_many(
                    requests(),
                    concurrency=args.concurrency,
                    progress=lambda o: progress.update(failed=not o.ok),
                ) as stream:
                    async for _ in stream:
                        outcomes += 1
                metrics = client.metrics()
        finally:
            progress.close()
        wall = time.perf_counter() - started
        stats = fake.stats
    rows = [
        ("runs", f"{args.runs}"),
        ("wall time", f"{wall:.2f} s"),
        ("throughput", f"{args.runs / wall:.1f} runs/s"),
        *metrics_rows(metrics),
        ("duplicate submissions (emulator)", f"{stats.duplicate_submissions}"),
    ]
    if args.json:
        summary = {
            "runs": args.runs,
            "outcomes": outcomes,
            "wall_time": wall,
            "seed": seed,
            "metrics": metrics.as_dict(),
            "emulator": {
                "requests": stats.requests,
                "runs_created": stats.runs_created,
                "duplicate_submissions": stats.duplicate_submissions,
                "rate_limited": stats.rate_limited,
                "faults": dict(stats.faults),
            },
        }
        out.write(json.dumps(summary, default=str) + "\n")
    else:
        _write_table(out, "summary", rows)
    # The demo's faults are part of the show: it succeeds when every run got exactly one
    # outcome and the emulator saw no duplicate submission.
    ok = outcomes == args.runs and stats.duplicate_submissions == 0
    return EXIT_OK if ok else EXIT_FAILED


# --- run / resume -------------------------------------------------------------------------------


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def start(client: ZapierClient) -> RunHandle:
        return await client.run(
            args.action,
            authentication=args.auth,
            inputs=dict(args.inputs),
            callback_url=args.callback_url,
            max_rate_limit_wait=None,
        )

    return await _follow_one(args, out, err, start)


async def _resume(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def start(client: ZapierClient) -> RunHandle:
        return client.resume(args.token)

    return await _follow_one(args, out, err, start)


async def _follow_one(
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    start: Callable[[ZapierClient], Awaitable[RunHandle]],
) -> int:
    """Start (or pick up) one run, wait for its end within ``--timeout``, print the outcome.

    When the wait ends first, this process exits and stops following the run (it goes on at
    Zapier): the last status seen is printed, with the command that follows it later.
    """
    client = _client_from_env(args.base_url)
    handle: RunHandle | None = None
    run: Run | None = None
    error: BaseException | None = None
    async with client:
        try:
            handle = await start(client)
            run = await handle.result(timeout=args.timeout)
        except errors.InvalidRequestError as exc:
            raise _UsageError(str(exc)) from None
        except errors.RunFailedError as exc:
            run, error = exc.run, exc
        except errors.ZapierError as exc:
            error = exc
    run_id = handle.id if handle is not None else None
    status = run.status if run is not None else handle.status if handle is not None else None
    token = handle.continuation_token() if handle is not None and run is None else None
    message: str | None = None
    if token is not None and error is not None:
        follow = f"follow it with: zapier-async resume {token}"
        if isinstance(error, errors.RunTimeoutError):
            message = (
                f"no outcome within {error.timeout:g}s (last status: {_status_text(status)}); "
                f"the run goes on at Zapier, this process no longer follows it; {follow}"
            )
        else:
            message = f"{error}; {follow}"
    if args.json:
        record = outcome_record(
            line=None,
            key=None,
            run_id=run_id,
            run=run,
            error=error,
            status=status,
            message=message,
        )
        if token is not None:
            record["continuation_token"] = token
        out.write(_dumps(record) + "\n")
    else:
        if run_id is not None:
            out.write(f"run {run_id}: {_status_text(status)}\n")
        if run is not None and run.results:
            out.write(json.dumps(run.results, indent=2, default=str) + "\n")
        if error is not None:
            err.write(f"error: {error if message is None else message}\n")
    return exit_code_for(error)


def _status_text(status: RunStatus | None) -> str:
    return "not read yet" if status is None else status.value


# --- bulk ---------------------------------------------------------------------------------------


def _read_complete_lines(path: Path) -> Iterator[str]:
    """The complete (newline-terminated) lines of `path`; a torn last line is cut off."""
    if not path.exists():
        return
    with path.open("rb+") as fh:
        data_end = fh.seek(0, os.SEEK_END)
        if data_end:
            # Find the end of the last complete line, reading backwards in blocks.
            pos = data_end
            keep = 0
            while pos > 0:
                step = min(65536, pos)
                pos -= step
                fh.seek(pos)
                block = fh.read(step)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    keep = pos + nl + 1
                    break
            if keep != data_end:
                fh.truncate(keep)  # a line torn by a crash: it never happened
        fh.seek(0)
        for raw in fh:
            yield raw.decode("utf-8", errors="replace")


class _Flags:
    """A growable bit set of line numbers (memory: one bit per input line)."""

    __slots__ = ("_bits", "count")

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0

    def add(self, n: int) -> None:
        byte, bit = divmod(n, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte - len(self._bits) + 1))
        if not self._bits[byte] >> bit & 1:
            self._bits[byte] |= 1 << bit
            self.count += 1

    def discard(self, n: int) -> None:
        if n in self:
            byte, bit = divmod(n, 8)
            self._bits[byte] &= ~(1 << bit) & 0xFF
            self.count -= 1

    def __contains__(self, n: int) -> bool:
        byte, bit = divmod(n, 8)
        return byte < len(self._bits) and bool(self._bits[byte] >> bit & 1)


_RESEND: Final = "resend"
_FOLLOW: Final = "follow"
_KEEP: Final = "keep"


class _Failure:
    """A failed line's outcome, as much as ``--retry-failed`` needs to decide about it."""

    __slots__ = ("exit_code", "run_id", "sent", "status")

    def __init__(
        self, *, exit_code: int, run_id: str | None, status: str | None, sent: bool
    ) -> None:
        self.exit_code = exit_code
        self.run_id = run_id
        self.status = status
        self.sent = sent  # a create of the attempt was journaled as (maybe) on the wire

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, sent: bool = True) -> _Failure:
        error = record.get("error")
        code = error.get("exit_code") if isinstance(error, Mapping) else None
        run_id = record.get("run_id")
        status = record.get("status")
        return cls(
            # A record without an exit code is not ours to interpret: as unknown, never re-sent.
            exit_code=code if isinstance(code, int) and code in EXIT_CODES else EXIT_UNKNOWN,
            run_id=run_id if isinstance(run_id, str) and run_id else None,
            status=status if isinstance(status, str) else None,
            sent=sent,
        )

    def action(self) -> str:
        """What ``--retry-failed`` does with the line: re-send, follow the run, or keep."""
        if self.run_id is not None:
            if self.status == RunStatus.ERROR.value:
                return _RESEND  # the run ended with an error: a new run is the retry
            if self.status == RunStatus.SUCCESS.value:
                return _KEEP
            return _FOLLOW  # accepted, not read to its end: follow it, never re-send
        if not self.sent:
            return _RESEND  # nothing went on the wire
        # On the wire without a run id: re-sent only after a refusal (Zapier answered and
        # did not create it), never when the outcome is unknown.
        return _KEEP if self.exit_code == EXIT_UNKNOWN else _RESEND


def _lock(fd: int, path: Path) -> None:
    """Hold an exclusive lock on the journal for the job's lifetime; refuse if it is held."""
    if fcntl is None:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _UsageError(
            f"{path} is in use by another zapier-async bulk process on the same output; "
            "wait for it to end (or stop it), then --resume"
        ) from None


def _open_private(path: Path, flags: int) -> int:
    """Open (creating with mode 0600) a file that holds run results; narrow an existing one."""
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            with contextlib.suppress(OSError):  # not ours to change (another owner): keep it
                os.fchmod(fd, mode & 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Job:
    """One bulk job's files and bookkeeping, across invocations (see "Resumable bulk jobs")."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.err = err
        # Lines whose outcome earlier invocations wrote (and still stands), and of those the
        # failed ones; lines in flight when the last invocation stopped.
        self.done = _Flags()
        self.failed: dict[int, _Failure] = {}
        self.sending: set[int] = set()  # journal: maybe sent, no run id (from a previous run)
        self.submitted: dict[int, str] = {}  # journal: line -> run id, no outcome yet
        self.prior_exit = EXIT_OK
        self.prior = {"succeeded": 0, "failed": 0}
        # This invocation.
        self.exit = EXIT_OK
        self.counts = {"succeeded": 0, "failed": 0}
        self.retryable_now = 0
        self.out_fh: IO[str] = out
        self.owns_out = False
        self.journal: IO[str] | None = None
        self.journal_fd: int | None = None
        self.progress: _ProgressBar = _NoProgress()
        self.line_of: dict[int, int] = {}  # run_many index -> input line, while in flight
        self.journaled: set[int] = set()  # indices whose "sending" line is written
        self.refusal: BaseException | None = None

    # --- files --------------------------------------------------------------------------------

    def open(self) -> None:
        args = self.args
        output: Path | None = args.output
        if args.resume and output is None:
            raise _UsageError("--resume needs --output (the file whose outcomes to resume)")
        if args.retry_failed and not args.resume:
            raise _UsageError("--retry-failed continues a job: pass --resume with it")
        if output is None:
            return
        journal = output.with_name(output.name + ".journal")
        if args.resume:
            self.journal_fd = _open_private(journal, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            _lock(self.journal_fd, journal)
            self._load(output, journal)
        else:
            # A journal that exists is an earlier job: resume it or refuse, whatever the
            # output holds (a job killed before any run ended has written no outcome).
            refuse = (
                f"{journal} exists: a job with this output was started before (its runs may "
                "have been sent); pass --resume to continue it without re-sending anything, "
                f"or remove {output} and {journal} to start a new job"
            )
            if journal.exists():
                raise _UsageError(refuse)
            if output.exists() and output.stat().st_size > 0:
                raise _UsageError(
                    f"{output} exists: pass --resume to continue that job, or remove it"
                )
            try:
                self.journal_fd = _open_private(
                    journal, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND
                )
            except FileExistsError:  # created since the check: another job got there first
                raise _UsageError(refuse) from None
            _lock(self.journal_fd, journal)
        self.journal = os.fdopen(self.journal_fd, "a", encoding="utf-8")
        self.out_fh = os.fdopen(
            _open_private(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a", encoding="utf-8"
        )
        self.owns_out = True
        if args.retry_failed:
            self._schedule_retries()
        self.prior["failed"] = len(self.failed)
        self.prior["succeeded"] = self.done.count - len(self.failed)
        for failure in self.failed.values():
            self.prior_exit = _worse(self.prior_exit, failure.exit_code)

    def _load(self, output: Path, journal: Path) -> None:
        """Read what earlier invocations left (the caller holds the journal's lock)."""
        # Outcome lines, in order: the last one of a line is its outcome.
        extra: dict[int, int] = {}  # line -> outcome lines beyond the first (retried lines)
        for text in _read_complete_lines(output):
            record = _parse_record(text)
            if record is None:
                continue
            line = record["line"]
            if line in self.done:
                extra[line] = extra.get(line, 0) + 1
            self.done.add(line)
            if record.get("ok") is True:
                self.failed.pop(line, None)
            else:
                self.failed[line] = _Failure.from_record(record)
        # The journal, in order: what each attempt of a line sent. Only lines without a
        # standing success matter, so memory stays bounded by failures and runs in flight.
        retries: dict[int, int] = {}
        sent: set[int] = set()  # since the line's last retry
        accepted: dict[int, str] = {}  # since the line's last retry
        for text in _read_complete_lines(journal):
            try:
                entry = json.loads(text)
                line, event = int(entry["line"]), entry["event"]
            except (ValueError, KeyError, TypeError):
                continue
            if line in self.done and line not in self.failed and line not in extra:
                continue
            if event == "retry":
                retries[line] = retries.get(line, 0) + 1
                sent.discard(line)
                accepted.pop(line, None)
            elif event == "sending":
                sent.add(line)
            elif event == "submitted" and isinstance(entry.get("run_id"), str):
                sent.add(line)
                accepted[line] = entry["run_id"]
        for line, count in retries.items():
            outcomes = 1 + extra.get(line, 0) if line in self.done else 0
            if outcomes <= count:
                # Its latest retry has no outcome yet: the line is in flight again.
                self.done.discard(line)
                self.failed.pop(line, None)
        for line in sent:
            if line in self.done:
                continue
            if line in accepted:
                self.submitted[line] = accepted[line]
            else:
                self.sending.add(line)
        for line, failure in self.failed.items():
            failure.sent = line in sent
            if failure.run_id is None and line in accepted:
                failure.run_id = accepted[line]

    def _schedule_retries(self) -> None:
        """``--retry-failed``: journal each retry before anything is sent for it."""
        for line, failure in sorted(self.failed.items()):
            action = failure.action()
            if action == _KEEP:
                continue
            self._journal({"line": line, "event": "retry"})
            if action == _FOLLOW:
                assert failure.run_id is not None
                self._journal({"line": line, "event": "submitted", "run_id": failure.run_id})
                self.submitted[line] = failure.run_id
            del self.failed[line]
            self.done.discard(line)

    def close(self) -> None:
        self.progress.close()
        if self.journal is not None:
            self.journal.close()  # releases the lock
        elif self.journal_fd is not None:
            os.close(self.journal_fd)
        if self.owns_out:
            self.out_fh.close()
        else:
            self.out_fh.flush()

    def _journal(self, entry: Mapping[str, Any]) -> None:
        if self.journal is not None:
            self.journal.write(_dumps(entry) + "\n")
            self.journal.flush()

    # --- outcomes -----------------------------------------------------------------------------

    def record(
        self,
        line: int,
        *,
        key: Any,
        run_id: str | None,
        run: Run | None,
        error: BaseException | None,
        sent: bool = True,
    ) -> None:
        """Write (and flush) one outcome line."""
        record = outcome_record(line=line, key=key, run_id=run_id, run=run, error=error)
        self.out_fh.write(_dumps(record) + "\n")
        self.out_fh.flush()
        self.counts["succeeded" if error is None else "failed"] += 1
        self.exit = _worse(self.exit, exit_code_for(error))
        if error is not None and _Failure.from_record(record, sent=sent).action() != _KEEP:
            self.retryable_now += 1
        self.progress.update(failed=error is not None)

    def summary(self) -> dict[str, Any]:
        """The whole job: earlier invocations and this one."""
        return {
            "exit_code": _worse(self.prior_exit, self.exit),
            "succeeded": self.prior["succeeded"] + self.counts["succeeded"],
            "failed": self.prior["failed"] + self.counts["failed"],
            "retryable": self.retryable_now
            + sum(f.action() != _KEEP for f in self.failed.values()),
            "this_invocation": dict(self.counts),
        }

    # run_many hooks

    def on_sending(self, index: int, request: RunRequest) -> None:
        if index not in self.journaled:  # a re-send after a refusal journals nothing new
            self.journaled.add(index)
            self._journal({"line": self.line_of[index], "event": "sending"})

    def on_submitted(self, index: int, request: RunRequest, run_id: str) -> None:
        self._journal({"line": self.line_of[index], "event": "submitted", "run_id": run_id})

    def on_outcome(self, outcome: Outcome) -> None:
        line = self.line_of.pop(outcome.index)
        sent = outcome.index in self.journaled
        self.journaled.discard(outcome.index)
        self.record(
            line,
            key=outcome.key,
            run_id=outcome.run_id,
            run=outcome.run,
            error=outcome.error,
            sent=sent,
        )


def _parse_record(text: str) -> dict[str, Any] | None:
    """An outcome line with an integer line number, or None."""
    try:
        record = json.loads(text)
        line = record["line"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(line, int) and not isinstance(line, bool) and line >= 0:
        return record if isinstance(record, dict) else None
    return None


def _input_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of every non-blank line, read lazily."""
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if text.strip():
                yield number, text


async def _bulk(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path: Path = args.file
    if not await anyio.Path(path).is_file():
        raise _UsageError(f"{path}: no such file")
    client = _client_from_env(args.base_url)  # before any file is touched
    job = _Job(args, out, err)
    total = 0
    try:
        job.open()
        total = sum(1 for _ in _input_lines(path))  # a streaming count, for the progress bar
        if not args.no_progress:
            job.progress = _make_progress(total, err, initial=job.done.count, plain=args.json)
        async with client:
            await _bulk_resume_known(job, client)
            await _bulk_submit_rest(job, client, path)
    finally:
        job.close()
    summary = {"lines": total, **job.summary()}
    again = f"zapier-async bulk {args.file} --output {args.output} --resume --retry-failed"
    if job.refusal is not None:
        err.write(
            f"zapier-async bulk: stopped sending after Zapier refused a create: {job.refusal}; "
            "every line not sent yet failed with it (nothing was sent for them). Fix the cause, "
            + ("then: " + again if args.output is not None else "then run the job again")
            + "\n"
        )
    if args.json:
        summary["stopped_by"] = None if job.refusal is None else str(job.refusal)
        summary["metrics"] = client.metrics().as_dict()
        err.write(_dumps(summary) + "\n")
    else:
        rows = [
            ("input lines", f"{total}"),
            ("succeeded / failed", f"{summary['succeeded']} / {summary['failed']}"),
        ]
        if args.resume:
            now = job.counts
            rows.append(("this invocation", f"{now['succeeded']} / {now['failed']}"))
        if summary["retryable"] and args.output is not None:
            rows.append(("failed lines --retry-failed re-runs", f"{summary['retryable']}"))
        rows += metrics_rows(client.metrics())
        _write_table(err, "summary", rows)
        if summary["retryable"] and args.output is not None and job.refusal is None:
            err.write(f"re-run the failed lines with: {again}\n")
    return int(summary["exit_code"])


async def _bulk_resume_known(job: _Job, client: ZapierClient) -> None:
    """Lines a previous attempt left in flight: follow by id, or record outcome unknown."""
    for line in sorted(job.sending):
        job.record(
            line,
            key=None,
            run_id=None,
            run=None,
            error=errors.OutcomeUnknownError(
                "the previous attempt stopped while this create was on the wire",
                "POST /v2/action-runs",
                "not re-sent on --resume: the run may exist",
            ),
        )
    if not job.submitted:
        return
    limit = anyio.Semaphore(job.args.concurrency)

    async def follow(line: int, run_id: str) -> None:
        async with limit:
            run: Run | None = None
            error: BaseException | None = None
            try:
                run = await client.resume(run_id)
            except errors.RunFailedError as exc:
                run, error = exc.run, exc
            except errors.ZapierError as exc:
                error = exc
            job.record(line, key=None, run_id=run_id, run=run, error=error)

    async with anyio.create_task_group() as tg:
        for line, run_id in sorted(job.submitted.items()):
            tg.start_soon(follow, line, run_id)


async def _bulk_submit_rest(job: _Job, client: ZapierClient, path: Path) -> None:
    skip_sent = job.sending | set(job.submitted)

    def requests() -> Iterator[Any]:
        index = 0
        for line, text in _input_lines(path):
            if line in job.done or line in skip_sent:
                continue
            try:
                data = json.loads(text)
            except ValueError as exc:
                job.record(
                    line,
                    key=None,
                    run_id=None,
                    run=None,
                    error=errors.InvalidRequestError(f"not valid JSON: {exc}", f"line {line}"),
                    sent=False,
                )
                continue
            job.line_of[index] = line
            index += 1
            yield data

    stream: RunMany
    async with client.run_many(
        requests(),
        concurrency=job.args.concurrency,
        progress=job.on_outcome,
        on_sending=job.on_sending,
        on_submitted=job.on_submitted,
    ) as stream:
        async for _ in stream:
            pass
    job.refusal = stream.refusal


# --- serve-fake ---------------------------------------------------------------------------------


async def _serve_fake(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .testing import FakeZapier  # the emulator: only for the commands that serve it

    try:
        fake = FakeZapier(
            host=args.host,
            port=args.port,
            seed=args.seed,
            durations=args.durations,
            error_rate=args.error_rate,
            fault_rate=args.fault_rate,
            rate_limit=args.rate_limit,
            tokens=args.tokens,
            record_requests=False,
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with fake:
        out.write(fake.url + "\n")
        out.flush()
        err.write(f"FakeZapier listening on {fake.url}; stop with Ctrl-C or SIGTERM\n")
        err.flush()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
    stats = fake.stats
    out.write(
        _dumps(
            {
                "requests": stats.requests,
                "requests_by_endpoint": dict(stats.requests_by_endpoint),
                "runs_created": stats.runs_created,
                "duplicate_submissions": stats.duplicate_submissions,
                "rate_limited": stats.rate_limited,
                "polls": stats.polls,
            }
        )
        + "\n"
    )
    out.flush()
    return EXIT_OK


# --- entry point ----------------------------------------------------------------------------------

_COMMANDS: Final = {
    "demo": _demo,
    "run": _run,
    "resume": _resume,
    "bulk": _bulk,
    "serve-fake": _serve_fake,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see `EXIT_CODES`).

    Args:
        argv: The arguments (without the program name); default ``sys.argv[1:]``.

    Returns:
        The process exit code.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command = _COMMANDS[args.command]
    handler = _install_log_handler(sys.stderr)
    try:
        return asyncio.run(command(args, sys.stdout, sys.stderr))
    except _UsageError as exc:
        sys.stderr.write(f"zapier-async {args.command}: {exc}\n")
        return exc.code
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted")
        if args.command == "bulk" and args.output is not None:
            sys.stderr.write(
                f"; continue with: zapier-async bulk {args.file} --output {args.output} --resume"
            )
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except OSError as exc:
        sys.stderr.write(f"zapier-async {args.command}: {exc}\n")
        return EXIT_USAGE
    finally:
        if handler is not None:
            logging.getLogger("zapier_async").removeHandler(handler)
        with contextlib.suppress(Exception):
            sys.stdout.flush()


# Library log records the command line reports in its own words (said once, not twice).
_SAID_BY_THE_CLI: Final = frozenset({"run_many_stopped"})


def _install_log_handler(stream: TextIO) -> logging.Handler | None:
    """The library's warnings on stderr, unless the embedding program configured logging."""
    library = logging.getLogger("zapier_async")
    if library.handlers or logging.getLogger().handlers:
        return None
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("zapier-async: %(levelname)s: %(message)s"))
    handler.addFilter(
        lambda record: getattr(record, "zapier_async_event", None) not in _SAID_BY_THE_CLI
    )
    library.addHandler(handler)
    return handler
