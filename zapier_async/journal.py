"""Journals that make a `ZapierClient.run_many` job resumable: `Journal`, `FileJournal`.

A job killed at any instant (Ctrl-C, OOM, a lost machine) leaves three kinds of items: runs
Zapier accepted that nobody follows any more, creates that were on the wire when it died (they
may or may not have created a run), and items never sent. A journal tells them apart, so a
second invocation of the same job follows the first kind, reports the second as outcome
unknown and sends only the third: **no run is ever created twice**. A duplicate run is a
duplicate email to a real person.

Usage::

    from zapier_async.journal import FileJournal

    requests = (RunRequest(action=..., authentication=..., inputs=row, key=row["id"])
                for row in rows)
    with FileJournal("job.journal") as journal:
        async with client.run_many(requests, journal=journal) as outcomes:
            async for outcome in outcomes:
                store(outcome)

Run the same code again after a crash: items with an outcome journaled are skipped (they were
handed to you before), accepted runs are followed by their continuation token, and creates
that may have reached Zapier come back as `OutcomeUnknownError` (never re-sent). Every item
needs a `RunRequest.key` (a ``str`` or an ``int``) that names it across invocations.

The hooks (see `Journal`)
-------------------------
``run_many`` calls, for each item:

1. `Journal.sending` right before its create may go on the wire (after the rate limiter
   granted the slot; if it raises, nothing is sent and the item's outcome carries the error);
2. `Journal.submitted` as soon as Zapier accepted the run, with the run id and its
   continuation token;
3. `Journal.finished` when its outcome is handed to the consumer (not for an item that was
   never sent: it is sent again by the next invocation);

and once, before the first item, `Journal.load`: what earlier invocations left.

The file format
---------------
One JSON object per line, appended and written with one ``write`` each: ``{"key": K,
"event": "sending"}``, ``{"key": K, "event": "submitted", "run_id": ..., "token": ...}``,
``{"key": K, "event": "done", "ok": ..., "run_id": ..., "error": <type name>}``, and
``{"key": K, "event": "retry"}`` (the key's earlier events no longer count). A line torn by a
crash is cut off when the journal is read. Lines written by the command line before 0.x
(``"line"`` instead of ``"key"``) are read too. The file is created with mode 0600 (continuation
tokens and run ids are not for other users), an existing one is narrowed to its owner, and an
open `FileJournal` holds an exclusive ``flock`` on it: a second job on the same journal is
refused at once (`JournalLockedError`) instead of racing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

import attrs

from . import errors

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, O_EXCL still guards
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FileJournal",
    "Journal",
    "JournalError",
    "JournalExistsError",
    "JournalKey",
    "JournalLockedError",
    "JournalState",
    "open_private",
]

JournalKey: TypeAlias = str | int
"""What names an item across invocations: its `RunRequest.key` (a ``str`` or an ``int``)."""

_EVENTS: Final = frozenset({"sending", "submitted", "done", "retry"})


@attrs.define(auto_exc=True, eq=False)
class JournalError(errors.ZapierError):
    """A journal cannot be used as asked; nothing was sent.

    Attributes:
        message: What is wrong and what to do.
        path: The journal file.
    """

    message: str
    path: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@attrs.define(auto_exc=True, eq=False)
class JournalExistsError(JournalError):
    """The journal exists and `FileJournal` was told to start a new job (``resume=False``)."""


@attrs.define(auto_exc=True, eq=False)
class JournalLockedError(JournalError):
    """Another process (or another `FileJournal`) holds the journal: a job is running on it."""


@attrs.frozen(kw_only=True)
class JournalState:
    """What earlier invocations of a job left, as `Journal.load` reads it.

    Attributes:
        done: Keys whose outcome was handed to the consumer: not sent, not reported again.
        in_flight: Key -> continuation token (or run id) of runs Zapier accepted and whose
            outcome was not handed over: followed, never re-sent.
        maybe_sent: Keys whose create may have reached Zapier without an answer: reported as
            `OutcomeUnknownError`, never re-sent.
    """

    done: frozenset[JournalKey] = frozenset()
    in_flight: Mapping[JournalKey, str] = attrs.field(factory=dict)
    maybe_sent: frozenset[JournalKey] = frozenset()


@runtime_checkable
class Journal(Protocol):
    """What `ZapierClient.run_many` needs of a journal (see the module docs for when)."""

    def load(self) -> JournalState:
        """What earlier invocations left; called once, before the first item is sent."""
        ...

    def sending(self, key: JournalKey) -> None:
        """The item's create may go on the wire next. Raise to keep it from being sent."""
        ...

    def submitted(self, key: JournalKey, run_id: str, token: str | None) -> None:
        """Zapier accepted the item's run (`token`: its continuation token)."""
        ...

    def finished(self, key: JournalKey, *, ok: bool, run_id: str | None, error: str | None) -> None:
        """The item's outcome was handed to the consumer (`error`: the error's type name)."""
        ...


def open_private(path: Path, flags: int) -> int:
    """Open (creating with mode 0600) a file that holds run data; narrow an existing one.

    Returns:
        The file descriptor.
    """
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


def complete_lines(path: Path) -> Iterator[str]:
    """The complete (newline-terminated) lines of `path`; a torn last line is cut off."""
    with path.open("rb+") as fh:
        data_end = fh.seek(0, os.SEEK_END)
        if data_end:
            pos = data_end
            keep = 0
            while pos > 0:  # the end of the last complete line, reading backwards
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


def _is_key(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class FileJournal:
    """A JSON-lines journal file for resumable `run_many` jobs (see the module docs).

    The file is opened on first use (`open`, `load`, or a hook) and held, locked, until
    `close` (or the end of ``with``, or garbage collection).

    Args:
        path: The journal file.
        resume: None (default): start a new job if the file does not exist, else resume it.
            False: start a new job; an existing file raises `JournalExistsError` (created
            with ``O_EXCL``, so two processes cannot both start it). True: resume (a missing
            file is an empty journal).
    """

    __slots__ = ("_fd", "_resume", "path")

    def __init__(self, path: str | os.PathLike[str], *, resume: bool | None = None) -> None:
        self.path = Path(path)
        self._resume = resume
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"FileJournal({str(self.path)!r}, open={self._fd is not None})"

    # --- the file -------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) and lock the file; idempotent.

        Raises:
            JournalExistsError: ``resume=False`` and the file exists.
            JournalLockedError: Another job holds the file.
            OSError: The file cannot be opened.
        """
        if self._fd is not None:
            return
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        if self._resume is False or (self._resume is None and not self.path.exists()):
            flags |= os.O_EXCL
        try:
            fd = open_private(self.path, flags)
        except FileExistsError:
            raise JournalExistsError(
                "exists: a job with this journal was started before (its runs may have been "
                "sent); resume it, or remove the file to start a new job",
                str(self.path),
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise JournalLockedError(
                    "is in use by another job (it holds the lock); wait for it to end",
                    str(self.path),
                ) from None
        self._fd = fd

    def close(self) -> None:
        """Release the lock and close the file; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def closed(self) -> bool:
        """True unless the file is open (and locked) by this object."""
        return self._fd is None

    def __enter__(self) -> FileJournal:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # --- reading --------------------------------------------------------------------------

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every complete entry, in order, with its key under ``"key"``; others are skipped.

        Opens the file first (so the lock is held while a torn last line is cut off).
        """
        self.open()
        for text in complete_lines(self.path):
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if not isinstance(entry, dict) or entry.get("event") not in _EVENTS:
                continue
            key = entry.get("key", entry.get("line"))  # "line": the CLI's journals before 0.x
            if not _is_key(key):
                continue
            entry["key"] = key
            yield entry

    def load(self) -> JournalState:
        """What earlier invocations left (see `JournalState`)."""
        done: set[JournalKey] = set()
        accepted: dict[JournalKey, str] = {}
        sent: set[JournalKey] = set()
        for entry in self.entries():
            key, event = entry["key"], entry["event"]
            if event == "retry":
                done.discard(key)
                accepted.pop(key, None)
                sent.discard(key)
            elif event == "done":
                done.add(key)
                accepted.pop(key, None)
                sent.discard(key)
            elif event == "sending":
                sent.add(key)
            elif event == "submitted":
                follow = entry.get("token") or entry.get("run_id")
                if isinstance(follow, str) and follow:
                    accepted[key] = follow
                    sent.add(key)
        return JournalState(
            done=frozenset(done),
            in_flight=accepted,
            maybe_sent=frozenset(k for k in sent if k not in accepted),
        )

    # --- writing --------------------------------------------------------------------------

    def _write(self, entry: Mapping[str, Any]) -> None:
        self.open()
        assert self._fd is not None
        data = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        while data:  # one write for a line that fits the pipe buffer; the rest if cut short
            data = data[os.write(self._fd, data) :]

    def sending(self, key: JournalKey) -> None:
        """Journal that the item's create may go on the wire next."""
        self._write({"key": key, "event": "sending"})

    def submitted(self, key: JournalKey, run_id: str, token: str | None = None) -> None:
        """Journal the run Zapier accepted for the item (followed by `token`, else `run_id`)."""
        entry: dict[str, Any] = {"key": key, "event": "submitted", "run_id": run_id}
        if token is not None:
            entry["token"] = token
        self._write(entry)

    def finished(
        self, key: JournalKey, *, ok: bool, run_id: str | None = None, error: str | None = None
    ) -> None:
        """Journal that the item's outcome was handed over (never sent or followed again)."""
        self._write({"key": key, "event": "done", "ok": ok, "run_id": run_id, "error": error})

    def retry(self, key: JournalKey) -> None:
        """Forget the item's earlier events: the next invocation sends it again."""
        self._write({"key": key, "event": "retry"})
