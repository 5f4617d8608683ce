"""``zapier-async bulk``: one request per JSONL line, one outcome per line, resumable.

Resumable bulk jobs
-------------------
With ``--output OUT``, ``bulk`` keeps a journal next to it (``OUT.journal``, a
`zapier_async.journal.FileJournal` keyed by input line number): a ``sending`` line is written
right before each create goes on the wire, and a ``submitted`` line (line number and run id) as
soon as Zapier returned the id. (Journals written before 0.x, with ``"line"`` instead of
``"key"``, are resumed too.)
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
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final, TextIO

import anyio

from zapier_async import errors
from zapier_async._bulk import Outcome, RunMany, RunRequest
from zapier_async._client import ZapierClient
from zapier_async.journal import (
    FileJournal,
    JournalExistsError,
    JournalLockedError,
    complete_lines,
    open_private,
)
from zapier_async.models import Run, RunStatus

from ._common import (
    EXIT_CODES,
    EXIT_OK,
    EXIT_UNKNOWN,
    UsageError,
    client_from_env,
    dumps,
    exit_code_for,
    outcome_record,
    worse,
)
from ._output import NoProgress, ProgressBar, make_progress, metrics_rows, write_table

# --- bulk ---------------------------------------------------------------------------------------


def _read_complete_lines(path: Path) -> Iterator[str]:
    """The complete lines of `path` (none if it is missing); a torn last line is cut off."""
    if path.exists():
        yield from complete_lines(path)


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
        self.journal: FileJournal | None = None
        self.progress: ProgressBar = NoProgress()
        self.line_of: dict[int, int] = {}  # run_many index -> input line, while in flight
        self.journaled: set[int] = set()  # indices whose "sending" line is written
        self.refusal: BaseException | None = None

    # --- files --------------------------------------------------------------------------------

    def open(self) -> None:
        args = self.args
        output: Path | None = args.output
        if args.resume and output is None:
            raise UsageError("--resume needs --output (the file whose outcomes to resume)")
        if args.retry_failed and not args.resume:
            raise UsageError("--retry-failed continues a job: pass --resume with it")
        if output is None:
            return
        journal = output.with_name(output.name + ".journal")
        if args.resume:
            self.journal = FileJournal(journal, resume=True)
            self._lock_journal()
            self._load(output)
        else:
            # A journal that exists is an earlier job: resume it or refuse, whatever the
            # output holds (a job killed before any run ended has written no outcome).
            refuse = (
                f"{journal} exists: a job with this output was started before (its runs may "
                "have been sent); pass --resume to continue it without re-sending anything, "
                f"or remove {output} and {journal} to start a new job"
            )
            if journal.exists():
                raise UsageError(refuse)
            if output.exists() and output.stat().st_size > 0:
                raise UsageError(
                    f"{output} exists: pass --resume to continue that job, or remove it"
                )
            self.journal = FileJournal(journal, resume=False)
            try:  # O_EXCL: another job that created it since the check got there first
                self._lock_journal()
            except JournalExistsError:
                raise UsageError(refuse) from None
        self.out_fh = os.fdopen(
            open_private(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a", encoding="utf-8"
        )
        self.owns_out = True
        if args.retry_failed:
            self._schedule_retries()
        self.prior["failed"] = len(self.failed)
        self.prior["succeeded"] = self.done.count - len(self.failed)
        for failure in self.failed.values():
            self.prior_exit = worse(self.prior_exit, failure.exit_code)

    def _lock_journal(self) -> None:
        """Open the journal and hold its lock for the job's lifetime; refuse if it is held."""
        assert self.journal is not None
        try:
            self.journal.open()
        except JournalLockedError:
            raise UsageError(
                f"{self.journal.path} is in use by another zapier-async bulk process on the "
                "same output; wait for it to end (or stop it), then --resume"
            ) from None

    def _load(self, output: Path) -> None:
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
        assert self.journal is not None
        for entry in self.journal.entries():
            line, event = entry["key"], entry["event"]
            if not isinstance(line, int):
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
            assert self.journal is not None
            self.journal.retry(line)
            if action == _FOLLOW:
                assert failure.run_id is not None
                self.journal.submitted(line, failure.run_id)
                self.submitted[line] = failure.run_id
            del self.failed[line]
            self.done.discard(line)

    def close(self) -> None:
        self.progress.close()
        if self.journal is not None:
            self.journal.close()  # releases the lock
        if self.owns_out:
            self.out_fh.close()
        else:
            self.out_fh.flush()

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
        self.out_fh.write(dumps(record) + "\n")
        self.out_fh.flush()
        self.counts["succeeded" if error is None else "failed"] += 1
        self.exit = worse(self.exit, exit_code_for(error))
        if error is not None and _Failure.from_record(record, sent=sent).action() != _KEEP:
            self.retryable_now += 1
        self.progress.update(failed=error is not None)

    def summary(self) -> dict[str, Any]:
        """The whole job: earlier invocations and this one."""
        return {
            "exit_code": worse(self.prior_exit, self.exit),
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
            if self.journal is not None:
                self.journal.sending(self.line_of[index])

    def on_submitted(self, index: int, request: RunRequest, run_id: str) -> None:
        if self.journal is not None:
            self.journal.submitted(self.line_of[index], run_id)

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


async def bulk_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path: Path = args.file
    if not await anyio.Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    client = client_from_env(args.base_url)  # before any file is touched
    job = _Job(args, out, err)
    total = 0
    try:
        job.open()
        total = sum(1 for _ in _input_lines(path))  # a streaming count, for the progress bar
        if not args.no_progress:
            job.progress = make_progress(total, err, initial=job.done.count, plain=args.json)
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
        err.write(dumps(summary) + "\n")
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
        write_table(err, "summary", rows)
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
