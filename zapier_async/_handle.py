"""RunHandle: what a caller holds for one action run.

A handle is passive: the client's single poller (see `_scheduler`) reads the run and pushes
each new state into the handle, so `handle.status` stays live whether or not anyone awaits.
Awaiting creates a waiter future only for that await; a handle nobody awaits costs no future,
no task and no timer beyond its one entry in the poller's heap.

The handle keeps its run's status, its latest read and its waiters; everything about how the
run is read (reads sent and failed, the poller's timer, the planner's plan) is one
`_cadence.PollRecord` in its ``reads`` slot (the planner keeps no per-run table of its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from . import errors
from ._cadence import PollRecord
from ._protocol import RunLocator, encode_continuation_token
from .models import Run, RunStatus

if TYPE_CHECKING:
    from ._clock import Clock


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


class Poller(Protocol):
    """What a handle needs of the poller that reads it (`_scheduler.Poller` is one)."""

    @property
    def clock(self) -> Clock: ...

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> _Cancellable: ...

    def forget(self, handle: RunHandle) -> None: ...


__all__ = ["RunHandle"]

_END = object()


class RunHandle:
    """The awaitable handle of one action run.

    `await handle` returns the final `Run` when it succeeded, and raises `RunFailedError`
    (carrying the `Run`) when it ended with status ``error``. The run id is known from the
    start, so nothing Zapier accepted is ever lost: `client.resume(handle.id)` or
    `client.resume(handle.continuation_token())` picks the run up again, even in another
    process.

    Handles are created by the client (`ZapierClient.run`, `ZapierClient.resume`), not
    directly.
    """

    __slots__ = (
        "__weakref__",
        "_callback_token",
        "_callbacks",
        "_listeners",
        "_locator",
        "_outcome",
        "_poller",
        "_run",
        "_status",
        "_waiters",
        "created_at",
        "credential",
        "deadline",
        "reads",
        "submitted_at",
        "via_callback",
    )

    def __init__(
        self,
        locator: RunLocator,
        poller: Poller,
        *,
        created_at: float,
        status: RunStatus = RunStatus.WAITING,
    ) -> None:
        self._locator = locator
        self._poller = poller
        self._status = status
        self._run: Run | None = None
        self._outcome: Run | BaseException | None = None
        self._waiters: list[asyncio.Future[Run]] = []
        self._listeners: list[asyncio.Queue[object]] = []
        self._callbacks: list[Callable[[RunHandle], object]] = []
        # Bookkeeping below is not part of the public API.
        self.created_at = created_at
        # The run's whole polling record (`_cadence.PollRecord`): its action, reads sent and
        # failed, the poller's timer and the planner's state. Written by the poller, the
        # engine and the planner; the handle itself never reads it.
        self.reads = PollRecord()
        # When the create was sent (owned by `_metrics`, for the run's latency).
        self.submitted_at: float | None = None
        # Created with a callback_url: polled at the safety-net cadence (see `_actions`).
        self.via_callback = False
        # The secret the client put in that callback_url (`zapier_async_token`): only a
        # callback that carries it resolves this handle. Never in repr, logs or tokens.
        self._callback_token: str | None = None
        # Whose token polls it (the engine's `Credential`; None: the client's own).
        self.credential: object | None = None
        # The caller's deadline for the whole run (`run(timeout=)`), on the poller's clock.
        self.deadline: float | None = None

    # --- public surface --------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id Zapier returned."""
        return self._locator.run_id

    @property
    def status(self) -> RunStatus:
        """The latest status seen; updated by the poller in the background."""
        return self._status

    @property
    def run(self) -> Run | None:
        """The latest `Run` read (None before the first read)."""
        return self._run

    @property
    def callback_token(self) -> str | None:
        """The secret this run's `callback_url` carries (``zapier_async_token``), or None.

        Only for a run created with a `callback_url`. Treat it as a secret: whoever has it
        can resolve the handle with a forged callback. It is not in `continuation_token()`;
        keep it next to that token only if another process must accept the run's callbacks
        (``client.resume(token, callback_token=...)``).
        """
        return self._callback_token

    @property
    def locator(self) -> RunLocator:
        """Where the run is read from."""
        return self._locator

    def done(self) -> bool:
        """True once the run ended, failed to be followed, or the handle was cancelled."""
        return self._outcome is not None

    @property
    def awaited(self) -> bool:
        """True while someone awaits the result or iterates updates (polls go first)."""
        return bool(self._waiters or self._listeners)

    def __await__(self) -> Generator[Any, None, Run]:
        return self.result().__await__()

    async def result(self, timeout: float | None = None) -> Run:
        """Wait for the run to end.

        Args:
            timeout: Seconds to wait at most (on the client's clock). None waits as long as it
                takes, or, for a run started with ``run(..., timeout=)``, until that deadline.

        Returns:
            The final `Run`, when it succeeded.

        Raises:
            RunFailedError: The run ended with status ``error``; `.run` has its errors.
            RunTimeoutError: `timeout` (or the run's deadline) ran out. The run goes on and
                is still polled; await again, with a timeout, or resume it later.
            RunDetachedError: Polling stopped (handle cancelled, client closed).
            APIError: The run could not be read (e.g. 404 once past Zapier's retention).
        """
        if self._outcome is not None:
            return self._unwrap()
        if timeout is None and self.deadline is not None:
            timeout = self.deadline - self._poller.clock.monotonic()
            if timeout <= 0:
                raise errors.RunTimeoutError(self.id, self._status, 0.0)
        if timeout is not None and timeout <= 0:
            raise errors.RunTimeoutError(self.id, self._status, float(timeout))
        waiter: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        deadline = None
        if timeout is not None:
            deadline = self._poller.call_later(timeout, self._expire, waiter, float(timeout))
        try:
            return await waiter
        finally:
            if deadline is not None:
                deadline.cancel()
            self._waiters.remove(waiter)

    async def updates(self) -> AsyncIterator[RunStatus]:
        """Yield the current status, then each change, ending after a terminal status.

        Raises:
            RunDetachedError: Polling stopped before the run ended.
            APIError: The run could not be read.
        """
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._listeners.append(queue)
        try:
            last = self._status
            yield last
            if self._outcome is not None:
                self._raise_if_not_run()
                return
            while True:
                item = await queue.get()
                if item is _END:
                    self._raise_if_not_run()
                    return
                assert isinstance(item, RunStatus)
                if item is not last:
                    last = item
                    yield item
        finally:
            self._listeners.remove(queue)

    def add_done_callback(self, fn: Callable[[RunHandle], object]) -> None:
        """Call `fn(handle)` (soon, on the event loop) once the handle is done."""
        if self._outcome is not None:
            asyncio.get_running_loop().call_soon(fn, self)
        else:
            self._callbacks.append(fn)

    def remove_done_callback(self, fn: Callable[[RunHandle], object]) -> int:
        """Remove every registration of `fn`; returns how many were removed."""
        before = len(self._callbacks)
        self._callbacks = [cb for cb in self._callbacks if cb != fn]
        return before - len(self._callbacks)

    def cancel(self) -> bool:
        """Stop following this run locally. Nothing is cancelled at Zapier.

        Awaiters get `RunDetachedError`; the run can be resumed by id later.

        Returns:
            False if the handle was already done.
        """
        if self._outcome is not None:
            return False
        self._poller.forget(self)
        self._finish(errors.RunDetachedError(self.id, "cancelled"))
        return True

    def continuation_token(self) -> str:
        """A versioned string that `client.resume()` accepts; it holds no secret.

        In particular it does not hold the callback token of a run created with a
        `callback_url`: a run resumed from it in another client cannot be resolved by a
        callback, so it is polled at the ordinary cadence (see `ZapierClient.resume`).
        """
        return encode_continuation_token(self._locator)

    def __repr__(self) -> str:
        state = "done" if self._outcome is not None else "pending"
        return f"<RunHandle id={self.id!r} status={self._status.value!r} {state}>"

    # --- driven by the poller --------------------------------------------------------------

    def _update(self, run: Run) -> None:
        """A new read of the run arrived."""
        if self._outcome is not None:
            return
        if self._run is None or run != self._run:
            # Keep the earlier, equal value otherwise: the new one then dies young instead of
            # living in the oldest GC generation until the next poll, and full collections
            # (which stall the event loop ~50-100 ms with 10,000 runs in flight) stay rare.
            self._run = run
        if run.status is not self._status:
            self._status = run.status
            for queue in self._listeners:
                queue.put_nowait(run.status)
        if run.status.is_terminal:
            if run.status is RunStatus.ERROR:
                self._finish(errors.RunFailedError(run), run=run)
            else:
                self._finish(run, run=run)

    def _finish(self, outcome: Run | BaseException, *, run: Run | None = None) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome
        if run is not None:
            self._run = run
        for waiter in self._waiters:
            if not waiter.done():
                if isinstance(outcome, BaseException):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
        for queue in self._listeners:
            queue.put_nowait(_END)
        callbacks, self._callbacks = self._callbacks, []
        if callbacks:
            loop = asyncio.get_running_loop()
            for fn in callbacks:
                loop.call_soon(fn, self)

    def _expire(self, waiter: asyncio.Future[Run], timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(errors.RunTimeoutError(self.id, self._status, timeout))

    def _unwrap(self) -> Run:
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    def _raise_if_not_run(self) -> None:
        outcome = self._outcome
        if isinstance(outcome, BaseException) and not isinstance(outcome, errors.RunFailedError):
            raise outcome
