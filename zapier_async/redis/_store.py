"""Idempotent create by key, shared through Redis: `RedisRunStore`.

The `zapier_async.RunStore` protocol (see `zapier_async._runstore` for the states and why)
with its records in Redis, so that every process pointed at the same Redis and ``prefix``
agrees on each key: of any number of concurrent `RedisRunStore.begin` calls for one key, in
any processes, exactly one is told to send.

**Shared state.** One hash per key, ``{prefix}:k:{key}``: ``s`` (``sending`` or ``sent``),
``o`` (the owner that began it: ``hostname-pid-random`` by default), ``t`` (the Redis
server's time of the last write: processes' clocks are never compared), ``r`` and ``c``
(the run id and its continuation token, once recorded). Its TTL (``ttl``, 6 days by
default, always under Zapier's 7-day retention of runs) is set by `begin` and again by
`record`. Nothing secret is stored: a continuation token names the kind of run and its ids
only, and it is re-encoded from its parsed form before it is written.

**One script per transition.** `begin`, `record`, `fail` and `forget` are each ONE Lua
script, so the check and the write are atomic. Each takes a fresh request id and keeps its
reply under it for `ONCE_TTL` (``_scripts.once``): redis-py re-sends a command that timed
out (``Redis(host=...)`` retries up to 10 times), and after a stall Redis runs both copies;
the copy that runs second answers with the first one's reply and changes nothing. Without
it, a `begin` whose reply was lost would be re-run, find its own ``sending`` and answer
``"unknown"`` (nothing sent, yet reported as maybe sent), and a re-run `fail` could delete
another caller's newer ``sending`` (a duplicate). When every retry failed, the outcome is
unknown: a failed `begin` may still have written ``sending`` (the caller must not send; a
later `begin` says ``"unknown"``), a failed `record` leaves ``sending`` (reported as
outcome unknown later, never re-sent).

Keys of a Redis Cluster: each transition touches one record key and its request key; both
share the ``{prefix}`` only, so use a standalone Redis (as the limiter needs).
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any, Final

import redis.asyncio as aioredis

from zapier_async._runstore import (
    DEFAULT_RUN_STORE_TTL,
    Claim,
    ClaimState,
    check_key,
    check_run,
    check_ttl,
    default_owner,
)

from ._scripts import ONCE_TTL, STORE_BEGIN, STORE_FAIL, STORE_FORGET, STORE_RECORD, text

__all__ = ["RedisRunStore"]

logger = logging.getLogger("zapier_async")

_STATES: Final[dict[str, ClaimState]] = {"send": "send", "resume": "resume", "unknown": "unknown"}


class RedisRunStore:
    """A `zapier_async.RunStore` in Redis, shared by every process using the same ``prefix``.

    ``ZapierClient(run_store=RedisRunStore(redis))`` makes ``client.run(...,
    idempotency_key=key)`` create each key's run at most once across processes. See the
    module docstring for how it works. The Redis client is the caller's: the store never
    closes it. Give it a ``socket_timeout`` so that a partitioned Redis is noticed.

    Args:
        redis: A ``redis.asyncio.Redis`` client (``decode_responses`` either way).
        prefix: Key prefix in Redis: stores sharing keys use the same one.
        ttl: Seconds a key is kept after its last write; > 0 and under 7 days (Zapier's
            retention of runs). Default 6 days.
        owner: Recorded with each ``sending`` (default ``hostname-pid-random``).

    Raises:
        InvalidRequestError: A bad argument (checked before any Redis call).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "zapier_async:runs",
        ttl: float = DEFAULT_RUN_STORE_TTL,
        owner: str | None = None,
    ) -> None:
        self._prefix = check_key(prefix, "prefix")
        self._ttl = check_ttl(ttl)
        self._owner = default_owner() if owner is None else check_key(owner, "owner")
        self._redis = redis
        self._ttl_ms = str(max(1, math.ceil(self._ttl * 1000)))
        self._once_ms = str(math.ceil(ONCE_TTL * 1000))
        self._begin = redis.register_script(STORE_BEGIN)
        self._record = redis.register_script(STORE_RECORD)
        self._fail = redis.register_script(STORE_FAIL)
        self._forget = redis.register_script(STORE_FORGET)

    @property
    def ttl(self) -> float:
        """Seconds a key is kept after its last write."""
        return self._ttl

    @property
    def owner(self) -> str:
        """The owner id recorded with this store's ``sending`` records."""
        return self._owner

    def key_of(self, key: str) -> str:
        """The Redis key holding `key`'s record."""
        return f"{self._prefix}:k:{check_key(key)}"

    def __repr__(self) -> str:
        return f"RedisRunStore(prefix={self._prefix!r}, ttl={self._ttl!r}, owner={self._owner!r})"

    async def begin(self, key: str) -> Claim:
        """Atomically claim `key` for one create, or report what an earlier one left.

        Returns:
            A `Claim`: ``"send"`` (the key is now ``sending`` for this caller: send, then
            `record` or `fail`), ``"resume"`` (follow ``claim.continuation_token``) or
            ``"unknown"`` (a create may be on the wire or lost with its process: never
            re-send).

        Raises:
            InvalidRequestError: `key` is not a non-empty string of at most 1024 characters.
            RedisError: Redis failed; the key may now be ``sending``: do not send.
        """
        name = self.key_of(key)
        reply = await self._once(self._begin, name, self._owner, self._ttl_ms)
        return _claim(key, reply)

    async def record(self, key: str, run_id: str, continuation_token: str) -> bool:
        """Record the run Zapier accepted for `key` (``sending -> sent``); refreshes the TTL.

        A key that expired or was forgotten meanwhile is written anyway: the run exists.

        Returns:
            True if this run is the key's recorded run; False if another run is (kept).

        Raises:
            InvalidRequestError: A bad key, run id or token, or a token of another run.
            RedisError: Redis failed; the key may still be ``sending``.
        """
        name = self.key_of(key)
        run_id, token = check_run(run_id, continuation_token)
        reply = await self._once(self._record, name, run_id, token, self._owner, self._ttl_ms)
        return int(reply) == 1

    async def fail(self, key: str) -> bool:
        """Free `key` after a create that provably never reached Zapier (only if ``sending``).

        Returns:
            True if the ``sending`` record was removed.
        """
        return int(await self._once(self._fail, self.key_of(key))) > 0

    async def forget(self, key: str) -> bool:
        """Delete `key`'s record, whatever its state. Returns True if one was deleted."""
        return int(await self._once(self._forget, self.key_of(key))) > 0

    async def get(self, key: str) -> Claim | None:
        """What `begin` would report for `key`, without claiming it; None if absent."""
        fields = await self._redis.hmget(self.key_of(key), ["s", "o", "t", "r", "c"])
        if fields[0] is None:
            return None
        state = "unknown" if fields[3] is None else "resume"
        return _claim(key, [state, *("" if f is None else f for f in fields[1:])])

    async def _once(self, script: Any, key: str, *args: str) -> Any:
        once_key = f"{self._prefix}:once:{uuid.uuid4().hex}"
        return await script(keys=[key, once_key], args=[*args, self._once_ms])


def _claim(key: str, reply: Any) -> Claim:
    try:
        state = _STATES[text(reply[0])]
        owner, since, run_id, token = (text(v) for v in reply[1:5])
        return Claim(
            key=key,
            state=state,
            run_id=run_id or None,
            continuation_token=token or None,
            owner=owner or None,
            since=float(since) if since else None,
        )
    except (KeyError, ValueError, IndexError, TypeError):
        # Unreadable: a create may have been sent, so it can only be "unknown".
        logger.warning("the run store's record of %r is unreadable", key)
        return Claim(key=key, state="unknown")
