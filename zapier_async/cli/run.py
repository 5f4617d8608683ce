"""``run`` and ``resume``: one run, followed to its end."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import TextIO

from zapier_async import errors
from zapier_async._client import ZapierClient
from zapier_async._handle import RunHandle
from zapier_async.models import Run, RunStatus

from ._common import UsageError, client_from_env, dumps, exit_code_for, outcome_record

# --- run / resume -------------------------------------------------------------------------------


async def run_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def start(client: ZapierClient) -> RunHandle:
        return await client.run(
            args.action,
            authentication=args.auth,
            inputs=dict(args.inputs),
            callback_url=args.callback_url,
            max_rate_limit_wait=None,
        )

    return await _follow_one(args, out, err, start)


async def resume_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
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
    client = client_from_env(args.base_url)
    handle: RunHandle | None = None
    run: Run | None = None
    error: BaseException | None = None
    async with client:
        try:
            handle = await start(client)
            run = await handle.result(timeout=args.timeout)
        except errors.InvalidRequestError as exc:
            raise UsageError(str(exc)) from None
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
        out.write(dumps(record) + "\n")
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
