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

Layout: argument parsing and `main` here; ``run``/``resume`` in `.run`, ``bulk`` in
`.bulk` (its journal is `zapier_async.journal.FileJournal`), ``demo``/``serve-fake`` in `.demo`
(the only commands that import the emulator), progress bars and tables in `._output`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from zapier_async import __version__
from zapier_async._client import DEFAULT_BASE_URL

from ._common import EXIT_CODES, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from .bulk import bulk_command
from .demo import demo_command, serve_fake_command
from .run import resume_command, run_command

__all__ = ["EXIT_CODES", "main"]

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


# --- entry point ----------------------------------------------------------------------------------

_COMMANDS: Final = {
    "demo": demo_command,
    "run": run_command,
    "resume": resume_command,
    "bulk": bulk_command,
    "serve-fake": serve_fake_command,
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
    except UsageError as exc:
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
