"""The buckets' state in Redis, for `RedisLimiter`: reading it, and writing a change with
compare-and-set (`_scripts` holds the two scripts; `_limiter` the rest of the theory).

*Why the rules run in Python, not in a Lua port:* ``_budget`` is some 500 lines of rules
(two lower bounds, window bounds, boundary probes and their learning, pacing, the
interactive reserve, freezes and the cap); a port would be a second implementation that
must agree with the first, the very problem issue 17 names. So Redis keeps the state and
one compare-and-set script (`BUCKET_COMMIT`) replaces it whole: a change is computed on the
state last seen; a conflict answers with the state found, and the change is computed again
(one round trip per retry, not two). What it costs, measured on one redis-server on
loopback on a loaded 2-core machine:

- the scenario table (``tests/test_redis_limiter_scenarios.py`` prints it; one process
  unless said): the same wall times as the pure machine (e.g. 1.039x to 1.110x the physical
  minimum, 0 429s), at 2.0 to 2.4 round trips per request on 2 s windows and 3.3 to 3.6 on
  paced 60 s and 300 s windows (a commit per grant, one per answer, a read before a long
  wait), 0.8 to 1.2 with ``spend_window`` (answers ride on grants' commits); two processes
  on one budget: 4.2 round trips and 0.94 conflicts per request, and 0 429s where two
  independent in-memory limiters get 18;
- throughput (``test_throughput_through_four_processes``: 100 callers, answers after 2 ms,
  a budget that never runs out): one process 720 requests/s at 1.16 round trips per slot;
  four processes on one budget 350 to 370 requests/s at 3.7 round trips and 2.7 conflicts
  per slot (they contend for one hash; separate keys do not). Zapier's budgets are a few
  requests per second at most, so this is ample;
- four real worker processes (``python -m benchmarks.redis_workers --workers 4 --runs 300
  --rate 50/2``): 0 429s, 1.064x the minimum.

The state grows with the answers of the current window (the budget keeps each one's
arrival number and lowest ``Remaining``), so its size is bounded by the server's limit per
window: a few kilobytes for Zapier's.

**Losing the state.** Redis may lose the keys (``FLUSHALL``, a restart without
persistence, an eviction). Each bucket's state carries an ``epoch``, created by the commit
that finds none; each slot carries the epoch that granted it. The answer to a slot of a
lost epoch counts for nothing but a freeze (its "answers before it was granted" count
answers of a budget nobody knows), so the new epoch starts in probe mode, as a forgotten
in-memory budget does. A state that does not decode (another version wrote it) is treated
the same way.

**Scripts that run once.** redis-py re-sends a command that timed out (``Redis(host=...)``
does so up to 10 times by default), and after a stall Redis runs both copies. A commit takes
a request id and keeps its reply under it for `ONCE_TTL`: a re-run answers "written" and
writes nothing more (without it the re-run would see its own write as a conflict, and the
answers it carried would be counted twice).

**Leases.** A slot whose process died is never answered: each slot in flight carries a lease
(``lease`` seconds), and the first change after it ran out completes it without an answer,
so the budget (and the one probe) is not blocked forever.
"""

from __future__ import annotations

import itertools
import logging
import math

import redis.asyncio as aioredis

from zapier_async._budget import Answer, Budget, BudgetConfig, Grant
from zapier_async._clock import Clock
from zapier_async._ratelimit import RateLimitState, pause_after

from ._codec import InFlight, StateError, dump, load
from ._line import Bucket, Op, SharedClock
from ._scripts import BUCKET_COMMIT, BUCKET_READ, ONCE_TTL, text

__all__ = ["BucketStore", "apply", "expire_leases"]

logger = logging.getLogger("zapier_async")


class BucketStore:
    """Reads and writes of bucket hashes; counts round trips and conflicts. Each read and
    commit also writes this process's line and takes the others' (`_peers`).

    Args:
        redis: The client.
        config: The budgets' settings (each process has them; Redis holds only state).
        clock: This process's clock; ``time`` the shared one.
        base: The key prefix of the limiter.
        owner: This process's id (epochs and request ids start with it).
        lease: Seconds a slot in flight counts without an answer.
        bucket_idle: Seconds a bucket lives in Redis without a write.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        config: BudgetConfig,
        clock: Clock,
        time: SharedClock,
        *,
        base: str,
        owner: str,
        lease: float,
        bucket_idle: float,
    ) -> None:
        self._config = config
        self._clock = clock
        self._time = time
        self._once_prefix = f"{base}:once:{owner}:c"
        self._once_ms = str(math.ceil(ONCE_TTL * 1000))
        self._owner = owner
        self._lease = lease
        self._bucket_idle = bucket_idle
        self._ids = itertools.count()
        self.read_script = redis.register_script(BUCKET_READ)
        self.commit_script = redis.register_script(BUCKET_COMMIT)
        self.round_trips = 0
        self.conflicts = 0
        self.io = 0  # commands outstanding

    def view(self, bucket: Bucket | None) -> Budget:
        """The budget as last seen (a fresh one when never read): for reading only."""
        if bucket is None:
            return Budget(self._config)
        if bucket.budget is None and bucket.state:
            bucket.budget, bucket.in_flight = self.decode(bucket)
        return bucket.budget or Budget(self._config)

    def decode(self, bucket: Bucket) -> tuple[Budget, InFlight]:
        """A private copy of the bucket's state to change; a lost or unreadable state reads
        as a fresh budget (probe mode)."""
        if bucket.state:
            try:
                return load(bucket.state, self._config)
            except StateError as exc:
                logger.warning("unreadable limiter state in Redis (%s)", exc)
        return Budget(self._config), {}

    def _take(self, bucket: Bucket, state: str, epoch: str, version: str) -> None:
        bucket.state, bucket.epoch, bucket.version = state, epoch, version
        bucket.budget, bucket.in_flight = None, {}  # decoded when needed
        bucket.seen_at = self._clock.monotonic()

    def _line(
        self, bucket: Bucket, counts: tuple[int, int, int]
    ) -> tuple[tuple[int, int, int], list[str]]:
        """This process's line in the bucket and the arguments that write it (`_LINE`)."""
        now = self._time.now()
        entry = f"{now!r} {counts[0]} {counts[1]} {counts[2]}"
        return counts, [self._owner, entry, repr(now - self._lease)]

    def _take_line(self, bucket: Bucket, counts: tuple[int, int, int], others: object) -> None:
        bucket.published, bucket.published_at = counts, self._clock.monotonic()
        first, poll, bulk, processes = (int(n) for n in text(others).split())
        bucket.others, bucket.processes = (first, poll, bulk), processes

    async def read(self, bucket: Bucket) -> None:
        """Take what Redis holds for the bucket (and write this process's line there)."""
        counts, line = self._line(bucket, bucket.counts())
        ttl = str(math.ceil(max(self._bucket_idle, 2 * self._lease) * 1000))
        sent = self._clock.monotonic()
        self.io += 1
        try:
            reply = await self.read_script(keys=[bucket.name, bucket.line], args=[*line, ttl])
        finally:
            self.io -= 1
        self.round_trips += 1
        self._time.note(reply, sent, self._clock.monotonic())
        self._take(bucket, text(reply[2]), text(reply[0]), text(reply[1]))
        self._take_line(bucket, counts, reply[3])

    async def commit(
        self, bucket: Bucket, budget: Budget, in_flight: InFlight, line: tuple[int, int, int]
    ) -> str | None:
        """Write the new state if nobody wrote since it was read; its epoch, or None (then
        the bucket holds what Redis has). ``line``: this process's waiters once it is in."""
        now = self._time.now()
        epoch = bucket.epoch or f"{self._owner}.{next(self._ids)}"
        frozen = budget.view(now).frozen_until
        ttl = max(self._bucket_idle, 2 * self._lease, (frozen or now) - now + self._lease)
        state = dump(budget, in_flight)
        counts, args = self._line(bucket, line)
        sent = self._clock.monotonic()
        self.io += 1
        try:
            reply = await self.commit_script(
                keys=[bucket.name, bucket.line, f"{self._once_prefix}{next(self._ids)}"],
                args=[
                    bucket.epoch,
                    bucket.version,
                    state,
                    epoch,
                    str(math.ceil(ttl * 1000)),
                    *args,
                    self._once_ms,
                ],
            )
        finally:
            self.io -= 1
        self.round_trips += 1
        self._time.note(reply, sent, self._clock.monotonic())
        self._take_line(bucket, counts, reply[4])
        if int(reply[0]) == 1:
            bucket.state, bucket.epoch, bucket.version = state, epoch, text(reply[2])
            bucket.budget, bucket.in_flight = budget, in_flight
            bucket.seen_at = self._clock.monotonic()
            return epoch
        self.conflicts += 1
        self._take(bucket, text(reply[3]), text(reply[1]), text(reply[2]))
        return None


def apply(
    budget: Budget, in_flight: InFlight, epoch: str, op: Op, now: float, cooldown: float
) -> Answer | None:
    """Apply one recorded change (``now``: its time on the shared clock) to a copy of the
    state; the budget's answer, if it gave one (``cooldown``: the default one)."""
    kind, slot_id, slot_epoch, status, headers, _ = op
    if kind == "freeze":
        return budget.freeze(float(headers["s"]), now=now, wall=now)
    record = in_flight.pop(slot_id, None) if slot_epoch == epoch else None
    if record is None:
        # A slot of a budget Redis lost (or whose lease ran out): only a freeze counts.
        if kind == "answer" and status is not None:
            state = RateLimitState.from_headers(headers, now=now)
            pause = pause_after(status, state, default_cooldown=cooldown)
            if pause is not None:
                return budget.freeze(pause, now=now, wall=now)
        return None
    grant = Grant(float(record[0]), int(record[1]), bool(record[2]))
    if kind == "undo":
        budget.ungrant(grant)
        return None
    return budget.complete(grant, status, headers, now=max(now, grant.sent), wall=now)


def expire_leases(budget: Budget, in_flight: InFlight, now: float) -> bool:
    """Complete, without an answer, the slots whose lease ran out (their process died)."""
    expired = [slot_id for slot_id, record in in_flight.items() if record[3] <= now]
    for slot_id in expired:
        record = in_flight.pop(slot_id)
        grant = Grant(float(record[0]), int(record[1]), bool(record[2]))
        budget.complete(grant, None, {}, now=now, wall=now)
    return bool(expired)
