"""The blocking handle and iterators of `SyncZapierClient` (see `_sync`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from . import errors
from ._sync_loop import Session, refuse_in_event_loop

if TYPE_CHECKING:
    from ._bulk import Outcome, RunMany
    from ._handle import RunHandle
    from .models import Run, RunStatus

__all__ = ["SyncIterator", "SyncRunHandle", "SyncRunMany"]

T = TypeVar("T")


class _Done:
    pass


_END: Final = _Done()


async def _next_or_end(iterator: AsyncIterator[T]) -> T | _Done:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


class SyncIterator(Generic[T]):
    """A blocking iterator over an async iterator that lives on the client's loop.

    Each `next()` waits for one item. `close()` (or leaving ``with``) closes the underlying
    async iterator on the loop; one that is dropped unclosed is closed there in the
    background.
    """

    __slots__ = ("_closed", "_iterator", "_session")

    def __init__(self, session: Session, iterator: Any) -> None:
        self._session = session
        self._iterator: Any = iterator
        self._closed = False

    def __iter__(self) -> SyncIterator[T]:
        return self

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        refuse_in_event_loop("__next__")
        session = self._session.check()
        item: T | _Done = session.call(lambda: _next_or_end(self._iterator))
        if isinstance(item, _Done):
            self._closed = True
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop iterating and release what the iterator holds on the loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is None or not self._session.live:
            return
        refuse_in_event_loop("close")
        self._session.call(aclose)

    def __enter__(self) -> SyncIterator[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and hasattr(self._iterator, "aclose"):
            # Dropped mid-iteration in whatever thread the GC runs: hand it to the loop.
            self._session.close_soon(self._iterator)


class SyncRunMany(SyncIterator["Outcome"]):
    """`SyncZapierClient.run_many`: a blocking iterator of `Outcome`, in completion order.

    Breaking out of the loop and dropping it (or `close()`) stops submitting, as
    `RunMany.aclose()` does.
    """

    __slots__ = ()

    def unfinished(self) -> list[Outcome]:
        """Runs accepted but not yet reported (see `RunMany.unfinished`)."""
        job: RunMany = self._iterator
        refuse_in_event_loop("unfinished")
        return self._session.check().call_sync(job.unfinished)

    @property
    def refusal(self) -> BaseException | None:
        """The job-wide refusal that stopped new creates, if any (see `RunMany.refusal`)."""
        job: RunMany = self._iterator
        return job.refusal


class SyncRunHandle:
    """The blocking handle of one action run (`SyncZapierClient.run`, `resume`, ...).

    Wraps a `RunHandle` that lives on the client's loop: `status` stays live without any
    thread waiting; `result()` blocks only the calling thread.
    """

    __slots__ = ("_handle", "_session")

    def __init__(self, session: Session, handle: RunHandle) -> None:
        self._session = session
        self._handle = handle

    @property
    def id(self) -> str:
        """The run id Zapier returned."""
        return self._handle.id

    @property
    def status(self) -> RunStatus:
        """The latest status seen; updated by the client's poller in the background."""
        return self._handle.status

    @property
    def run(self) -> Run | None:
        """The latest `Run` read (None before the first read)."""
        return self._handle.run

    @property
    def callback_token(self) -> str | None:
        """The secret this run's `callback_url` carries (see `RunHandle.callback_token`)."""
        return self._handle.callback_token

    @property
    def async_handle(self) -> RunHandle:
        """The underlying `RunHandle` (use it only on the client's loop)."""
        return self._handle

    def done(self) -> bool:
        """True once the run ended, failed to be followed, or the handle was cancelled."""
        return self._handle.done()

    def continuation_token(self) -> str:
        """A versioned string that `resume()` accepts, in any process; it holds no secret."""
        return self._handle.continuation_token()

    def result(self, timeout: float | None = None) -> Run:
        """Block until the run ends; return the final `Run` when it succeeded.

        Args:
            timeout: Seconds to wait at most (on the client's clock). None waits as long as
                it takes.

        Raises:
            RunFailedError: The run ended with status ``error``; `.run` has its errors.
            RunTimeoutError: `timeout` ran out. Nothing is cancelled at Zapier and the run is
                still polled: call `result()` again later.
            RunDetachedError: Polling stopped (handle cancelled, client closed, or the handle
                was inherited across a fork: resume it by continuation token).
            InvalidRequestError: Called from a running event loop.
        """
        if self._handle.done():
            return _settled(self._handle)
        refuse_in_event_loop("result")
        session = self._live_session()
        return session.call(lambda: self._handle.result(timeout))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends or `timeout` runs out; never raises the run's outcome.

        Returns:
            `done()`: True if the handle is done (call `result()` for the outcome).
        """
        if self._handle.done():
            return True
        refuse_in_event_loop("wait")
        session = self._live_session()
        return session.call(lambda: _wait_done(self._handle, timeout))

    def updates(self) -> SyncIterator[RunStatus]:
        """A blocking iterator of the current status, then each change (see `RunHandle.updates`)."""
        refuse_in_event_loop("updates")
        session = self._live_session()
        return SyncIterator(session, self._handle.updates())

    def cancel(self) -> bool:
        """Stop following this run locally (nothing is cancelled at Zapier); see `RunHandle`."""
        if self._handle.done():
            return False
        refuse_in_event_loop("cancel")
        return self._live_session().call_sync(self._handle.cancel)

    def _live_session(self) -> Session:
        if not self._session.live:
            reason = (
                "the process forked; this handle belongs to the parent's event loop"
                if self._session.pid != os.getpid()
                else "client closed"
            )
            raise errors.RunDetachedError(self.id, reason)
        return self._session

    def __repr__(self) -> str:
        state = "done" if self._handle.done() else "pending"
        return f"<SyncRunHandle id={self.id!r} status={self.status.value!r} {state}>"


def _settled(handle: RunHandle) -> Run:
    """The outcome of a done handle, without a loop: its `result()` returns at once."""
    coroutine = handle.result()
    try:
        coroutine.send(None)
    except StopIteration as stop:
        run: Run = stop.value
        return run
    coroutine.close()  # pragma: no cover (a done handle never waits)
    raise AssertionError("a done RunHandle waited")  # pragma: no cover


async def _wait_done(handle: RunHandle, seconds: float | None) -> bool:
    with contextlib.suppress(errors.ZapierError):
        await handle.result(seconds)
    return handle.done()
