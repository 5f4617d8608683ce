"""The process's event-loop thread behind `SyncZapierClient`, and one client's session on it.

See `_sync` for the theory of operation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import errors

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ._client import ZapierClient

__all__ = ["CLOSED_MESSAGE", "LOOP_THREAD_NAME", "LoopThread", "Session", "refuse_in_event_loop"]

T = TypeVar("T")

LOOP_THREAD_NAME: Final = "zapier_async-loop"
"""The name of the background event-loop thread (one per process at most)."""

CLOSED_MESSAGE: Final = "the client is closed"


class LoopThread:
    """The process's one event-loop thread, leased by every open sync client."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases = 0
        self.cm: AbstractContextManager[BlockingPortal] | None = None
        self.portal: BlockingPortal | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def acquire(self) -> tuple[BlockingPortal, asyncio.AbstractEventLoop]:
        with self.lock:
            if self.cm is None:
                cm = start_blocking_portal(name=LOOP_THREAD_NAME)
                portal = cm.__enter__()
                self.loop = portal.call(asyncio.get_running_loop)
                self.cm, self.portal = cm, portal
            self.leases += 1
            assert self.portal is not None
            assert self.loop is not None
            return self.portal, self.loop

    def release(self) -> None:
        # The last release stops the loop and joins its thread under the lock, so a client
        # opened meanwhile waits and then starts a fresh thread: never two at once.
        with self.lock:
            self.leases -= 1
            if self.leases or self.cm is None:
                return
            cm, self.cm, self.portal, self.loop = self.cm, None, None, None
            cm.__exit__(None, None, None)


def refuse_in_event_loop(what: str) -> None:
    """A blocking call from a running event loop would stall it (or deadlock): refuse it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    where = (
        "on its own event-loop thread (e.g. in an on_event listener)"
        if threading.current_thread().name == LOOP_THREAD_NAME
        else "from a running event loop"
    )
    raise errors.InvalidRequestError(
        f"SyncZapierClient.{what} blocks and cannot be called {where}; "
        "in async code use zapier_async.ZapierClient and await it",
        what,
    )


class Session:
    """One live generation of a sync client: the leased loop and the client built in it."""

    __slots__ = ("background", "client", "closed", "futures", "loop", "pid", "portal")

    def __init__(
        self, portal: BlockingPortal, loop: asyncio.AbstractEventLoop, client: ZapierClient
    ) -> None:
        self.portal = portal
        self.loop = loop
        self.client = client
        self.pid = os.getpid()
        self.futures: set[concurrent.futures.Future[Any]] = set()
        self.background: set[asyncio.Task[Any]] = set()
        # Set when the client closes, and in a forked child (see `_sync`).
        self.closed = False

    @property
    def live(self) -> bool:
        """Usable from here: not closed, and this is the process that opened it."""
        return not self.closed and self.pid == os.getpid()

    def check(self) -> Session:
        """This session if `live`, else `InvalidRequestError` saying why not."""
        if self.pid != os.getpid():
            raise errors.InvalidRequestError(
                "this object belongs to the parent process's event loop (the process forked)"
            )
        if self.closed:
            raise errors.InvalidRequestError(CLOSED_MESSAGE)
        return self

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await fn()`` on the loop; block the calling thread until it is done."""
        return self._call(fn)

    def call_sync(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the loop (it touches loop-owned state); block until it is done."""
        return self._call(lambda: _plain(fn))

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        # The caller owns the future before anything is scheduled: an interrupt that lands
        # anywhere from here on (even while the portal is still handing the task to the loop,
        # which may already be running it) finds a future to cancel, and the task sees it.
        outer: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self.futures.add(outer)
            try:
                self.portal.start_task_soon(_relay, fn, outer)
            except RuntimeError:  # the portal stopped: the client was closed meanwhile
                raise errors.InvalidRequestError(CLOSED_MESSAGE) from None
            return outer.result()
        except concurrent.futures.CancelledError:
            # Only close() cancels a future that the caller still waits on.
            raise errors.InvalidRequestError(
                "the client was closed while this call was in progress"
            ) from None
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt, ...): cancel only this call, on
            # the loop, as an ordinary cancellation; the loop thread goes on.
            outer.cancel()
            raise
        finally:
            self.futures.discard(outer)

    def close_soon(self, closeable: Any) -> None:
        """From any thread, without waiting: schedule ``await closeable.aclose()`` on the loop."""

        def spawn() -> None:
            task = asyncio.get_running_loop().create_task(closeable.aclose())
            self.background.add(task)
            task.add_done_callback(self.background.discard)

        if self.pid == os.getpid():
            with contextlib.suppress(RuntimeError):  # a closed loop holds nothing to release
                self.loop.call_soon_threadsafe(spawn)


async def _plain(fn: Callable[[], T]) -> T:
    # Returned as is: the portal would await an awaitable result (a RunHandle is one).
    return fn()


async def _relay(fn: Callable[[], Awaitable[T]], outer: concurrent.futures.Future[T]) -> None:
    """On the loop: ``await fn()`` into the caller's `outer`, cancelled when `outer` is."""
    loop = asyncio.get_running_loop()
    with anyio.CancelScope() as scope:

        def on_done(f: concurrent.futures.Future[T]) -> None:
            if f.cancelled():
                with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to stop
                    loop.call_soon_threadsafe(scope.cancel)

        outer.add_done_callback(on_done)  # runs at once if the caller already gave up
        try:
            result = await fn()
        except asyncio.CancelledError:
            outer.cancel()  # the caller gave up, or the loop is stopping (client closed)
            raise
        except BaseException as exc:
            if outer.set_running_or_notify_cancel():
                outer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if outer.set_running_or_notify_cancel():
            outer.set_result(result)
