"""Idempotent create by key: the `RunStore` protocol and `MemoryRunStore`.

Theory of operation
-------------------
A queue that delivers at least once (Celery, SQS, a retried HTTP request) hands the same
item out again; a create sent twice is a second email to a real person. A run store keeps,
per idempotency key, what became of the item's create, in three states::

    absent --begin()--> sending --record()--> sent (run id + continuation token)
       ^                   |
       +------fail()-------+          forget(): back to absent from any state

- `RunStore.begin` is the one atomic step: an absent key becomes ``sending`` (with the
  caller's owner id and the time) and the caller is told to send (`Claim.state` ``"send"``);
  a key already ``sending`` answers ``"unknown"``: another call (maybe in a process that
  died) may have put the create on the wire, and nobody can tell, so it is NEVER sent again
  (the client raises `zapier_async.OutcomeUnknownError`); a key already ``sent`` answers
  ``"resume"`` with the run id and continuation token, and the caller follows that run.
- `RunStore.record` writes the run Zapier accepted (``sending -> sent``).
- `RunStore.fail` is for a create that provably never reached Zapier (refused before the
  wire, a connect error, a 429): the key goes back to absent, so a later call may send. It
  never removes a recorded run.
- `RunStore.forget` deletes the key, whatever its state (the outcome is stored elsewhere).

Every record expires ``ttl`` seconds after its last write (6 days by default), always under
Zapier's 7-day retention of runs (`RETENTION`): past it a run id is a 404 and resuming it
would fail anyway. The stored values are the state, the owner, a time, the run id and the
continuation token: a token names the kind of run and its ids only (no credential, no
callback token), and stores re-encode it from its parsed form, so nothing else can ride
along.

`MemoryRunStore` serves one process (and tests); `zapier_async.redis.RedisRunStore` shares
the keys between processes, each transition one Lua script.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Final, Literal, Protocol, runtime_checkable

import attrs

from zapier_async import _protocol as proto
from zapier_async.errors import InvalidRequestError

__all__ = [
    "DEFAULT_RUN_STORE_TTL",
    "RETENTION",
    "Claim",
    "ClaimState",
    "MemoryRunStore",
    "RunStore",
]

RETENTION: Final = 7 * 86_400.0
"""Seconds Zapier keeps a run's data; a stored key must expire before its run does."""

DEFAULT_RUN_STORE_TTL: Final = 6 * 86_400.0
"""Default seconds a key is kept after its last write (a day under `RETENTION`)."""

MAX_KEY_LENGTH: Final = 1024

ClaimState = Literal["send", "resume", "unknown"]


@attrs.frozen(kw_only=True)
class Claim:
    """What `RunStore.begin` (or `RunStore.get`) found for an idempotency key.

    Attributes:
        key: The idempotency key.
        state: ``"send"``: the key was absent and is now ``sending`` for this caller, who
            must send the create, then `RunStore.record` its run (or `RunStore.fail` the key
            if the create provably never reached Zapier). ``"resume"``: a run was recorded;
            follow it with ``client.resume(continuation_token)``, never create another.
            ``"unknown"``: a create was started (``sending``) and its run never recorded:
            it may have reached Zapier (its process may have died on the wire, or may still
            be sending). Never re-send it automatically: report it as outcome unknown.
        run_id: The recorded run's id (``"resume"`` only).
        continuation_token: The recorded run's continuation token (``"resume"`` only;
            secret-free).
        owner: Who wrote the record (a store's ``owner``: host, pid and a random part).
        since: When the record was last written, in epoch seconds.
    """

    key: str
    state: ClaimState
    run_id: str | None = None
    continuation_token: str | None = None
    owner: str | None = None
    since: float | None = None

    @property
    def may_send(self) -> bool:
        """True only for ``"send"``: this caller owns the create."""
        return self.state == "send"


@runtime_checkable
class RunStore(Protocol):
    """Where idempotency keys record what became of their create (see the module docstring).

    Every method is safe to retry after a failure that left its outcome unknown (a timeout):
    a retried `begin` of the same call answers as the first did in the Redis store, and a
    retried `record`, `fail` or `forget` changes nothing more. Implementations raise
    `zapier_async.InvalidRequestError` for a bad key, run id or token before touching
    storage, and let storage errors through (the caller must not send then).
    """

    async def begin(self, key: str) -> Claim:
        """Atomically claim `key` for one create, or report what an earlier one left."""
        ...

    async def record(self, key: str, run_id: str, continuation_token: str) -> bool:
        """Record the run Zapier accepted for `key` (``sending -> sent``).

        Returns:
            True if this run is the key's recorded run (also when it already was); False if
            the key holds a different run (kept: the first recorded run wins).
        """
        ...

    async def fail(self, key: str) -> bool:
        """The create for `key` provably never reached Zapier: free the key for a later call.

        Returns:
            True if a ``sending`` record was removed; False if there was none or the key
            holds a recorded run (never removed by `fail`).
        """
        ...

    async def forget(self, key: str) -> bool:
        """Delete `key`'s record, whatever its state. Returns True if one was deleted."""
        ...

    async def get(self, key: str) -> Claim | None:
        """What `begin` would report for `key` without claiming it; None if absent.

        The state is ``"resume"`` (a run is recorded) or ``"unknown"`` (``sending``).
        """
        ...


def default_owner() -> str:
    """``hostname-pid-random``: unique among live processes."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def check_key(value: object, field: str = "key") -> str:
    """A non-empty string of at most `MAX_KEY_LENGTH` characters."""
    if not isinstance(value, str) or not value:
        raise InvalidRequestError("must be a non-empty string", field)
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidRequestError(f"must be at most {MAX_KEY_LENGTH} characters", field)
    return value


def check_ttl(value: object, field: str = "ttl") -> float:
    """Seconds, > 0 and under Zapier's 7-day retention of runs."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"must be a number of seconds, not {type(value).__name__}", field)
    seconds = float(value)
    if not (math.isfinite(seconds) and 0 < seconds < RETENTION):
        raise InvalidRequestError(
            f"must be > 0 and < 7 days (Zapier's retention of runs), got {value!r}", field
        )
    return seconds


def check_run(run_id: object, continuation_token: object) -> tuple[str, str]:
    """The run id and the canonical (re-encoded, so secret-free) token of one run.

    Raises:
        InvalidRequestError: Either is invalid, or the token names another run.
    """
    if not isinstance(run_id, str) or not run_id:
        raise InvalidRequestError("must be a non-empty string", "run_id")
    locator = proto.decode_continuation_token(continuation_token)
    if locator.run_id != run_id:
        raise InvalidRequestError("names another run than run_id", "continuation_token")
    return run_id, proto.encode_continuation_token(locator)


@attrs.define
class _Record:
    owner: str
    since: float
    expires: float
    run_id: str | None = None
    token: str | None = None

    def claim(self, key: str) -> Claim:
        if self.run_id is None:
            return Claim(key=key, state="unknown", owner=self.owner, since=self.since)
        return Claim(
            key=key,
            state="resume",
            run_id=self.run_id,
            continuation_token=self.token,
            owner=self.owner,
            since=self.since,
        )


class MemoryRunStore:
    """A `RunStore` in this process's memory: for one process, and for tests.

    Keys expire ``ttl`` seconds after their last write (checked on access; expired records
    are swept as keys are written). Thread-safe: every transition holds one lock and never
    awaits, so it is atomic among tasks and threads.

    Args:
        ttl: Seconds a key is kept after its last write; > 0 and under 7 days.
        owner: Recorded with each ``sending`` (default ``hostname-pid-random``).
        clock: Monotonic seconds (injected by tests).
        wall_clock: Epoch seconds for `Claim.since`.

    Raises:
        InvalidRequestError: A bad ``ttl`` or ``owner``.
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_RUN_STORE_TTL,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = check_ttl(ttl)
        self._owner = default_owner() if owner is None else check_key(owner, "owner")
        self._clock = clock
        self._wall = wall_clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()
        self._writes = 0

    @property
    def ttl(self) -> float:
        """Seconds a key is kept after its last write."""
        return self._ttl

    @property
    def owner(self) -> str:
        """The owner id recorded with this store's ``sending`` records."""
        return self._owner

    def __len__(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for r in self._records.values() if r.expires > now)

    def __repr__(self) -> str:
        return f"MemoryRunStore(ttl={self._ttl!r}, owner={self._owner!r})"

    def _live(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and record.expires <= now:
            del self._records[key]
            return None
        return record

    def _sweep(self, now: float) -> None:
        self._writes += 1
        if self._writes % 1024 == 0:
            for key in [k for k, r in self._records.items() if r.expires <= now]:
                del self._records[key]

    async def begin(self, key: str) -> Claim:
        """See `RunStore.begin`."""
        key = check_key(key)
        now = self._clock()
        with self._lock:
            record = self._live(key, now)
            if record is not None:
                return record.claim(key)
            since = self._wall()
            self._records[key] = _Record(owner=self._owner, since=since, expires=now + self._ttl)
            self._sweep(now)
        return Claim(key=key, state="send", owner=self._owner, since=since)

    async def record(self, key: str, run_id: str, continuation_token: str) -> bool:
        """See `RunStore.record`."""
        key = check_key(key)
        run_id, token = check_run(run_id, continuation_token)
        now = self._clock()
        with self._lock:
            record = self._live(key, now)
            if record is not None and record.run_id is not None and record.run_id != run_id:
                return False
            if record is None:  # expired or forgotten meanwhile: the run exists, keep it
                record = _Record(owner=self._owner, since=self._wall(), expires=0.0)
                self._records[key] = record
            record.run_id, record.token = run_id, token
            record.since = self._wall()
            record.expires = now + self._ttl
            self._sweep(now)
        return True

    async def fail(self, key: str) -> bool:
        """See `RunStore.fail`."""
        key = check_key(key)
        with self._lock:
            record = self._live(key, self._clock())
            if record is None or record.run_id is not None:
                return False
            del self._records[key]
        return True

    async def forget(self, key: str) -> bool:
        """See `RunStore.forget`."""
        key = check_key(key)
        with self._lock:
            record = self._live(key, self._clock())
            if record is None:
                return False
            del self._records[key]
        return True

    async def get(self, key: str) -> Claim | None:
        """See `RunStore.get`."""
        key = check_key(key)
        with self._lock:
            record = self._live(key, self._clock())
            return None if record is None else record.claim(key)
