"""State shared by many worker processes and machines, through Redis.

Install with ``pip install 'zapier-async[redis]'``; this package imports ``redis`` and is
not imported by ``import zapier_async``.

- `RedisLimiter` (``_limiter``): one rate budget for every process.
- `RunJournal` (``_journal``): journalling of runs in flight.

Each module's docstring is its theory of operation; ``_scripts`` holds the limiter's Lua
and `ONCE_TTL`, the mechanism that makes a script run once under redis-py's retries.
"""

from ._journal import (
    RETENTION,
    JournalClosedError,
    JournalEntry,
    KeyInFlightError,
    NotJournalledError,
    RecoveredRuns,
    RunJournal,
    WorkerAliveError,
)
from ._limiter import RedisLimiter, RedisLimiterBackend, RedisSlot
from ._scripts import ONCE_TTL

__all__ = [
    "ONCE_TTL",
    "RETENTION",
    "JournalClosedError",
    "JournalEntry",
    "KeyInFlightError",
    "NotJournalledError",
    "RecoveredRuns",
    "RedisLimiter",
    "RedisLimiterBackend",
    "RedisSlot",
    "RunJournal",
    "WorkerAliveError",
]
