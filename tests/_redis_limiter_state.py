"""Read a `RedisLimiter` bucket's state back from Redis, for tests."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import Any

from zapier_async._budget import Budget, BudgetConfig
from zapier_async.redis._codec import load


def bucket_name(name: str, key: Hashable = None, prefix: str = "zapier_async:ratelimit") -> str:
    base = f"{prefix}:{name}:bucket"
    if key is None:
        return base
    return f"{base}:{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}"


async def stored(
    client: Any, name: str, key: Hashable = None, prefix: str = "zapier_async:ratelimit"
) -> tuple[Budget, dict[str, list[Any]], str]:
    """The budget, its slots in flight and the epoch kept in Redis (a fresh budget and no
    epoch when there is none)."""
    fields = await client.hgetall(bucket_name(name, key, prefix))
    if not fields:
        return Budget(BudgetConfig()), {}, ""
    budget, in_flight = load(fields[b"s"].decode(), BudgetConfig())
    return budget, in_flight, fields[b"e"].decode()


async def redis_now(client: Any) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


def line_name(name: str, key: Hashable = None, prefix: str = "zapier_async:ratelimit") -> str:
    """The hash of every process's line (waiters per priority) of a bucket."""
    base = f"{prefix}:{name}:line"
    if key is None:
        return base
    return f"{base}:{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}"
