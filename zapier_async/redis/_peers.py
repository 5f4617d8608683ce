"""The other processes sharing a `RedisLimiter` bucket, as this process sees them.

**Sharing a window's leftover** (`RedisLimiter.spare`). Every process sharing the window
sees the same leftover at the same moment, but only its own waiters. Offered whole to each,
N processes would read ahead N times what is left: no 429 (each read still waits for a slot
of the shared budget), but the reads not granted before the window ends go into the next
one, ahead of planned reads and creates. So the leftover is split evenly between this
process and the others seen spending the bucket within the last two window lengths (their
slots in flight in the states this process read or wrote); this one's share, rounded up,
less its own waiters, is what it offers. Alike workers (a Celery pool,
`benchmarks.redis_workers`) then read ahead just what is left; a process seen but with
nothing to read leaves its share unspent (early reads lost, nothing worse). Alone, a
process gets what `zapier_async.Limiter.spare` would give it.

**Every process's line** (`RedisLimiter.pressure`). A planner prices a poll by the bucket's
line (`zapier_async._cadence`: a poll that may find its run still going is a create not
sent, when creates wait). Each process waits in its own line, so a process with nobody
waiting would think the budget slack while other processes' creates wait for it, and poll
early. So each process writes its waiters per priority, with the time, into the bucket's
``line`` hash with every read and commit it makes of the bucket (`_scripts._LINE`: no round
trip of its own), and each reply brings the other processes' waiters and their number:
`pressure` shows the bucket's whole line, and how many processes share it
(`SharedPressure.processes`). A line is as fresh as its process's last round trip: one
whose count changed writes it within ``poll_interval`` (a read, if nothing else is
written), one with waiters every ``lease / 3`` seconds; a line older than ``lease`` is
dropped (its process stopped, or died).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from zapier_async._limits import Pressure

from ._line import Bucket

__all__ = ["Peers", "SharedPressure"]


@attrs.frozen(kw_only=True)
class SharedPressure(Pressure):
    """A `Pressure` of a bucket shared through Redis: ``waiting_by_priority`` counts the
    waiters of every process sharing it (as last seen).

    Attributes:
        processes: The processes seen using the bucket within the last ``lease`` seconds,
            this one included (a planner's share of the budget is about ``1 / processes``
            of it when they are alike).
    """

    processes: int = 1


class Peers:
    """When each other process was last seen spending each bucket (local time), by its id.

    Args:
        owner: This process's id (the prefix of its slot ids).
        track: Whether to keep them (``spend_window``: `share` needs them); without it,
            `note` only tells whether others have slots in flight.
    """

    __slots__ = ("_owner", "_seen", "_track")

    def __init__(self, owner: str, *, track: bool) -> None:
        self._owner = owner
        self._track = track
        self._seen: dict[Bucket, dict[str, float]] = {}

    def note(self, bucket: Bucket, now: float, horizon: Callable[[], float]) -> bool:
        """Whether other processes have slots in flight in the bucket's state as seen;
        when tracking, they are seen at ``now``, and those last seen before ``horizon()``
        are forgotten."""
        owner = self._owner
        if not self._track:
            return any(not slot_id.startswith(owner) for slot_id in bucket.in_flight)
        others = {i.partition(":")[0] for i in bucket.in_flight if not i.startswith(owner)}
        seen = self._seen.get(bucket)
        if others:
            if seen is None:
                seen = self._seen[bucket] = {}
            seen.update(dict.fromkeys(others, now))
        if seen:
            self._trim(seen, horizon())
        return bool(others)

    def share(self, bucket: Bucket, count: int, horizon: float) -> int:
        """This process's share of ``count`` requests nobody waits for: an even split
        between it and the others seen since ``horizon``, rounded up, less its own waiters
        (see the module docstring)."""
        seen = self._seen.get(bucket)
        others = self._trim(seen, horizon) if seen else 0
        return -(-count // (1 + others)) - bucket.waiting()

    def forget(self, bucket: Bucket) -> None:
        """The bucket is no longer kept locally."""
        self._seen.pop(bucket, None)

    @staticmethod
    def _trim(seen: dict[str, float], horizon: float) -> int:
        for peer in [peer for peer, at in seen.items() if at < horizon]:
            del seen[peer]
        return len(seen)
