"""Fixtures shared across test modules.

The Redis fixtures (`redis_server`, `rclient`) exist only when the ``redis`` extra is
installed (the ``test`` extra includes it); the modules using them skip themselves otherwise.
Without a ``redis-server`` executable the tests that need one skip with the command that
installs it (`_redis_fixtures.SKIP_REASON`).
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("redis") is not None:
    from _redis_fixtures import rclient, redis_server

    __all__ = ["rclient", "redis_server"]
