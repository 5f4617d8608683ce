"""Reads ahead of plan on budget a window would otherwise lose ("use it or lose it").

Theory of operation
-------------------
A fixed window's budget expires with it: requests not sent by its end are lost. With
``spend_window`` the limiter lets background work take the whole window, down to an
interactive reserve it releases just before the window may end (`Budget.spare`). When, at
that moment, nobody waits for the budget, whatever is left will expire unspent; a read of a
run ahead of its plan then costs nothing, and when it finds the run ended the run is seen
sooner (a `run_many` slot freed sooner: Little's law) and that read is not needed from the
next window. Two workloads leave such budget: a job whose runs' polls are all planned after
a short window ends (the partial first window of clock-aligned windows), and a job where
concurrency binds rather than the budget (runs of 2-8 s, C = 100: windows only partly spent).

So, per bucket (the limiter key a run's reads spend) with runs being followed:

- after each answer the bucket's reads or creates get, `SpareReads.check` asks the limiter
  for its spare budget and arms one timer (on the poller) for the moment it becomes spare,
  once per window end;
- when it fires, the spare count (requests nobody waits for) goes to the bucket's runs
  waiting for their next poll, likeliest ended first (`AdaptivePolling.chance_ended`; a run
  of an action with nothing learnt yet counts as `unlearnt_chance`), skipping runs below
  `min_chance`. They are polled now, at their usual priority; one that is still going goes
  back to its plan.

A limiter that cannot tell its spare budget (a user's own, a paced one, a `RedisLimiter`
without ``spend_window``) leaves this idle. Pure bookkeeping plus one timer per bucket with
runs; no task of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Protocol

from ._limits import LimiterLike, spare_of

if TYPE_CHECKING:
    from ._handle import RunHandle

__all__ = ["SpareReads"]

_SWEEP_EVERY = 1024  # follows between two sweeps of buckets left with no runs


class _Timer(Protocol):
    def cancel(self) -> None: ...


class _Poller(Protocol):
    @property
    def in_flight(self) -> int: ...

    def schedule(self, handle: RunHandle, delay: float) -> None: ...

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: object
    ) -> _Timer: ...


class _Planner(Protocol):
    def chance_ended(self, handle: RunHandle, elapsed: float) -> float | None: ...

    def polled_early(self, handle: RunHandle) -> None: ...


class SpareReads:
    """Spend the budget a window would lose on reads ahead of plan (see the module).

    Args:
        limiter: The client's limiter (`spare_of` reads it).
        poller: Schedules the reads and the timers.
        planner: Says how likely a run has ended, and learns that a read was early.
        monotonic: The client's clock.
        min_chance: Runs less likely than this to have ended are not read early.
        unlearnt_chance: The chance counted for a run of an action nothing is learnt of.
    """

    def __init__(
        self,
        limiter: LimiterLike,
        poller: _Poller,
        planner: _Planner,
        monotonic: Callable[[], float],
        *,
        min_chance: float = 0.1,
        unlearnt_chance: float = 0.5,
    ) -> None:
        self._limiter = limiter
        self._poller = poller
        self._planner = planner
        self._monotonic = monotonic
        self.min_chance = min_chance
        self.unlearnt_chance = unlearnt_chance
        # The runs being followed, per bucket. Plain sets (a weak set costs kilobytes per
        # user when thousands of users have a run each): ended runs leave at their last read,
        # when their bucket's spare budget is handed out, or at the next sweep.
        self._runs: dict[Hashable, set[RunHandle]] = {}
        self._armed: dict[Hashable, tuple[int, _Timer]] = {}  # (window, its timer)
        self._spent: dict[Hashable, int] = {}  # the window whose spare was offered, per bucket
        self._follows = 0
        self.reads = 0  # runs read early (for metrics and tests)

    def follow(self, handle: RunHandle, bucket: Hashable) -> None:
        """`handle`'s reads spend `bucket`: it may be read early on that bucket's spare."""
        runs = self._runs.get(bucket)
        if runs is None:
            runs = self._runs[bucket] = set()
        runs.add(handle)
        self._follows += 1
        if self._follows % _SWEEP_EVERY == 0:
            self._sweep()
        self.check(bucket)

    def following(self, bucket: Hashable) -> int:
        """Runs followed whose reads spend `bucket` (a few that ended without a last read
        here may be counted until the next sweep)."""
        return len(self._runs.get(bucket, ()))

    def read(self, handle: RunHandle, bucket: Hashable) -> None:
        """A read of `handle` (spending `bucket`) was answered: look at the budget again."""
        if handle.done():
            runs = self._runs.get(bucket)
            if runs is not None:
                runs.discard(handle)
        self.check(bucket)

    def check(self, bucket: Hashable) -> None:
        """After an answer in `bucket`: arm its timer for when its budget becomes spare."""
        if not self._runs.get(bucket):
            self._forget(bucket)
            return
        spare = spare_of(self._limiter, bucket)
        if spare is None:
            return
        _, at, window = spare
        if self._spent.get(bucket) == window:
            return  # this window's spare budget was offered already
        armed = self._armed.get(bucket)
        if armed is not None:
            if armed[0] == window:
                return
            armed[1].cancel()
        delay = max(at - self._monotonic(), 0.0)
        self._armed[bucket] = (window, self._poller.call_later(delay, self._fire, bucket, window))

    def close(self) -> None:
        for bucket in list(self._armed):
            self._disarm(bucket)
        self._runs.clear()

    def _sweep(self) -> None:
        """Drop runs that ended without a last read here (a callback, a detach) and the
        buckets left with none: memory stays bounded over days."""
        for bucket, runs in list(self._runs.items()):
            runs.difference_update([h for h in runs if h.done()])
            if not runs:
                self._forget(bucket)

    def _forget(self, bucket: Hashable) -> None:
        self._runs.pop(bucket, None)
        self._spent.pop(bucket, None)
        self._disarm(bucket)

    def _disarm(self, bucket: Hashable) -> None:
        armed = self._armed.pop(bucket, None)
        if armed is not None:
            armed[1].cancel()

    def _fire(self, bucket: Hashable, window: int) -> None:
        armed = self._armed.get(bucket)
        if armed is None or armed[0] != window:
            return
        del self._armed[bucket]
        spare = spare_of(self._limiter, bucket)
        runs = self._runs.get(bucket)
        if spare is None or not runs:
            return
        count, at, window = spare
        now = self._monotonic()
        if at > now + 1e-3:
            self.check(bucket)  # the moment moved later (a new window, a slower answer)
            return
        self._spent[bucket] = window
        ranked: list[tuple[float, float, RunHandle]] = []
        for handle in list(runs):
            if handle.done():
                runs.discard(handle)
                continue
            if handle.reads.timer is None:
                continue  # a read is on its way
            elapsed = now - handle.created_at
            chance = self._planner.chance_ended(handle, elapsed)
            if chance is None:
                chance = self.unlearnt_chance
            if chance >= self.min_chance:
                ranked.append((chance, elapsed, handle))
        ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
        for _, _, handle in ranked[:count]:
            self._planner.polled_early(handle)
            self._poller.schedule(handle, 0.0)
            self.reads += 1
