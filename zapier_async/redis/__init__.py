"""State shared by many worker processes and machines, through Redis.

Install with ``pip install 'zapier-async[redis]'``; this package imports ``redis`` and is
not imported by ``import zapier_async``.

- `RedisLimiter` (``_limiter``): the rate budgets (one per key) of every process, run by
  the in-memory limiter's own rules (`zapier_async._budget.Budget`) on a state kept in Redis
  (``_buckets``, ``_codec``; the local line and clock in ``_line``; the other processes
  sharing a bucket in ``_peers``).
- `RedisRunStore` (``_store``): idempotent create by key across processes
  (``ZapierClient(run_store=RedisRunStore(redis))``, ``run(..., idempotency_key=...)``).
- `RunJournal` (``_journal``): journalled bulk jobs and per-item calls over a run store.

Each module's docstring is its theory of operation; ``_scripts`` holds the Lua scripts and
`ONCE_TTL`, the mechanism that makes a script run once under redis-py's retries.
"""

from zapier_async._runstore import RETENTION

from ._journal import JournalClosedError, KeyInFlightError, NotJournalledError, RunJournal
from ._limiter import RedisLimiter, RedisLimiterBackend, RedisSlot
from ._scripts import ONCE_TTL
from ._store import RedisRunStore

__all__ = [
    "ONCE_TTL",
    "RETENTION",
    "JournalClosedError",
    "KeyInFlightError",
    "NotJournalledError",
    "RedisLimiter",
    "RedisLimiterBackend",
    "RedisRunStore",
    "RedisSlot",
    "RunJournal",
]
