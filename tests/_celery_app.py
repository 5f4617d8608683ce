"""The Celery app the Celery tests and benchmark start workers of (`tests/_celery_harness.py`).

Configured from the environment the harness sets:

- ``ZA_CELERY_REDIS``: broker, result backend, budget and run store (one redis-server);
- ``ZA_CELERY_FAKE``: the emulator's URL (`FakeZapier` in its own process);
- ``ZA_CELERY_VISIBILITY``: the broker's visibility timeout in seconds.

``zt.send(item)`` runs one action whose inputs carry ``item`` (so the emulator's run list
maps every run back to its task), under the task id as idempotency key, and returns
``{"item", "run_id", "status", "worker"}``. Before the create it adds ``item`` to the Redis
hash ``zt:started`` (value: the worker's hostname) and ``"<item> <worker> <time> <pid>"`` to
the list ``zt:starts``, so a test knows which workers (and pool processes) ran it, and when;
once the run is created (or resumed) it adds ``"<item> <run id> <pid>"`` to ``zt:created``.
``worker_ready`` sets ``zt:ready:<hostname>`` to the worker's pid.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import redis
from celery import Celery, signals

import zapier_async as za
from zapier_async.celery import configure, recommended_settings, zapier_task

REDIS_URL = os.environ.get("ZA_CELERY_REDIS", "redis://127.0.0.1:6379/0")
FAKE_URL = os.environ.get("ZA_CELERY_FAKE", "http://127.0.0.1:1")
VISIBILITY = float(os.environ.get("ZA_CELERY_VISIBILITY", "60"))

app = Celery("zt", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(recommended_settings(visibility_timeout=VISIBILITY))
app.conf.update(
    task_default_queue="zt",
    # Kombu scans for messages past their visibility timeout every interval x throttle
    # seconds (100 s by default); the kill test needs the redelivery within its time. Each
    # scan holds a lock in Redis that expires after unacked_mutex_expire (300 s by default):
    # a worker SIGKILLed mid-scan (scanning every second here, a few percent of kills) left
    # it held, and no worker redelivered anything for five minutes (the kill test's rare
    # "4 of 40 tasks have no outcome (... PENDING)").
    broker_transport_options={
        "visibility_timeout": VISIBILITY,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 2,
    },
    result_expires=600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
configure(
    app,
    auth=za.BearerToken("celery-test-token"),
    base_url=FAKE_URL,
    limiter_options={"fallback_rate": (1, 1.0)},
)

_markers = redis.Redis.from_url(REDIS_URL, socket_timeout=10)


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    _markers.set(f"zt:ready:{sender.hostname}", os.getpid())


@zapier_task(app, name="zt.send")
def send(self: Any, item: str) -> dict[str, Any]:
    worker = self.request.hostname or socket.gethostname()
    _markers.hset("zt:started", item, worker)
    _markers.rpush("zt:starts", f"{item} {worker} {time.time():.3f} {os.getpid()}")
    handle = self.zapier_start("core:celery", authentication=None, inputs={"item": item})
    _markers.rpush("zt:created", f"{item} {handle.id} {os.getpid()}")
    run = handle.result(timeout=120)
    return {"item": item, "run_id": run.id, "status": run.status.value, "worker": worker}
