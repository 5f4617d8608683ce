"""Celery integration: tasks that run Zapier actions once per task, under one shared budget.

Install the extra: ``pip install 'zapier-async[celery]'`` (Celery with its Redis transport).

Theory of operation
-------------------
Celery on Redis delivers a task *at least once*: a worker that dies, a visibility timeout
that runs out, a ``retry()``: the same task id runs again. A create sent twice is a second
email to a real person, so every create made through `ZapierTask.zapier_run` carries an
idempotency key (the task id by default, or a business key the task chooses) recorded in a
`zapier_async.redis.RedisRunStore`: the first execution records the key as *sending*, then
the run id; a later execution of the same task **resumes that run** instead of creating
another. A key left *sending* by a worker that died with the create on the wire cannot be
told apart from one that never went out: the task fails with
`zapier_async.errors.OutcomeUnknownError` (state ``FAILURE``, the exception in the result
backend) and nothing is re-sent. Do not retry that error automatically; check in Zapier, or
alert a person. (The key becomes *sending* only once the shared budget granted the create
its slot, right before it goes on the wire: a worker killed, or a task cancelled or refused
with `zapier_async.errors.RateLimitedError`, while waiting for the budget leaves the key
free, and the redelivery sends.)

Every worker process has one `zapier_async.SyncZapierClient`, built lazily on its first task
(in the pool child, after the prefork pool forked it) from what `configure` recorded on the
Celery app: one event-loop thread, one connection pool and one poller for all the tasks of
that process. The rate budget is shared by every process of every worker through a
`zapier_async.redis.RedisLimiter` on the same Redis (Zapier limits the account, not the
process). A process that forks after it built its client (a pool child of a parent that ran
a task) builds a fresh one in the child; the parent's is left alone.

Settings, and why
-----------------
`ZapierTask` sets ``acks_late`` and ``reject_on_worker_lost`` on its own tasks; the others
are the worker's and the broker's (`recommended_settings` returns all of them):

``task_acks_late = True``
    The message is acknowledged when the task *ends*, not when it starts. A worker killed
    mid-task (OOM, a deploy, a lost machine) leaves the message unacknowledged and it is
    delivered again; without it the task is lost. Redelivery is safe: the second execution
    resumes the first one's run through the run store.
``task_reject_on_worker_lost = True``
    With late acks, a task whose pool process died (SIGKILL, a segfault) is requeued rather
    than acknowledged as failed (Celery's default), which would lose it.
``broker_transport_options = {"visibility_timeout": ...}``
    The Redis broker delivers an unacknowledged message again once it has been out for the
    visibility timeout (1 hour by default), *even if its worker is still running it*; this
    is also how the tasks of a worker killed outright come back. Set it above your longest
    task: its time reserved in the worker, the waits for the shared budget and the run's
    ``timeout``. Below it, a slow task runs twice at once: the run store makes the second
    execution resume the first one's run (or, while the first is still *sending*, fail with
    `OutcomeUnknownError`), wasted work either way. Keep it well under the run store's TTL
    (6 days). Kombu scans for such messages every ``unacked_restore_interval`` x
    ``unacked_restore_throttle`` seconds (10 x 10 by default): that scan period is added to
    the redelivery delay. Each scan holds a lock in Redis that expires after
    ``unacked_mutex_expire`` seconds (300): a worker killed mid-scan stops every redelivery
    until then. If you scan often, lower it too (a scan takes milliseconds).
``worker_prefetch_multiplier = 1``
    With late acks a worker reserves ``concurrency x multiplier`` messages; the reserved ones
    wait in that worker (their visibility clock running) while other workers may be idle,
    and all of them come back only after the visibility timeout if it dies. One per pool
    process keeps the queue in the broker, where any worker can take it.

Example::

    from celery import Celery
    from zapier_async import BearerToken
    from zapier_async.celery import configure, recommended_settings, run_summary, zapier_task

    app = Celery("shop", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")
    app.conf.update(recommended_settings(visibility_timeout=3600))
    configure(app, auth=BearerToken("..."))  # Redis: the broker's; budget name "zapier"


    @zapier_task(app)
    def send_invoice(self, order_id: str, email: str) -> dict:
        run = self.zapier_run("core:send_email", authentication="conn_id",
                              inputs={"to": email}, key=f"invoice-{order_id}", timeout=300)
        return run_summary(run)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import celery  # type: ignore[import-untyped]  # celery ships no type hints
from celery import signals

from . import errors
from ._sync import SyncZapierClient

if TYPE_CHECKING:
    from ._runstore import Claim, RunStore
    from ._sync_handles import SyncRunHandle
    from .models import Run

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "ZapierTask",
    "close_client",
    "configure",
    "recommended_settings",
    "run_summary",
    "zapier_client",
    "zapier_task",
]

logger = logging.getLogger("zapier_async.celery")

DEFAULT_KEY_PREFIX: Final = "celery:"
"""Prefix of every idempotency key `ZapierTask` makes (task ids and business keys alike)."""

_SETTINGS_KEY: Final = "zapier_async"
_F = TypeVar("_F", bound=Callable[..., Any])


@attrs.frozen(kw_only=True)
class _Settings:
    client_factory: Callable[[], SyncZapierClient] | None
    redis_url: str | None
    limiter_name: str
    limiter_options: Mapping[str, Any]
    run_store_options: Mapping[str, Any]
    client_options: Mapping[str, Any]
    key_prefix: str
    default_timeout: float | None


def recommended_settings(*, visibility_timeout: float = 3600.0) -> dict[str, Any]:
    """The Celery settings `ZapierTask` relies on (see the module docstring for why).

    Args:
        visibility_timeout: Seconds, above the longest task (budget waits and the run's
            ``timeout`` included).

    Returns:
        A dict for ``app.conf.update(...)``. If you set ``broker_transport_options``
        yourself, merge its ``visibility_timeout`` into yours.

    Raises:
        InvalidRequestError: `visibility_timeout` is not a positive number.
    """
    if not visibility_timeout > 0:
        raise errors.InvalidRequestError(
            f"must be > 0, got {visibility_timeout!r}", "visibility_timeout"
        )
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": visibility_timeout},
        "result_transport_options": {"visibility_timeout": visibility_timeout},
    }


def configure(
    app: celery.Celery,
    *,
    client_factory: Callable[[], SyncZapierClient] | None = None,
    redis_url: str | None = None,
    limiter_name: str = "zapier",
    limiter_options: Mapping[str, Any] | None = None,
    run_store_options: Mapping[str, Any] | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    default_timeout: float | None = 300.0,
    **client_options: Any,
) -> None:
    """Record on `app` how its worker processes build their shared `SyncZapierClient`.

    Nothing is built here: each worker process builds its own client on its first task.
    By default that client is ``SyncZapierClient(limiter=RedisLimiter(redis,
    name=limiter_name), run_store=RedisRunStore(redis), **options)``, where ``options`` are
    read from the environment as `ZapierClient.from_env` does unless ``auth`` is among
    `client_options`, and `client_options` take precedence. ``max_rate_limit_wait``
    defaults to None (a background task waits for the shared budget rather than failing).

    Args:
        app: The Celery app (call this where the app is defined, so workers see it too).
        client_factory: Builds the process's client instead (give it a ``run_store``, or
            keys are refused, and a shared limiter); called once per process, in the
            process, with no arguments.
        redis_url: The Redis of the budget and the run store; default: the app's broker URL
            (when it is a ``redis://``, ``rediss://`` or ``unix://`` URL).
        limiter_name: `RedisLimiter`'s ``name``: processes spending one Zapier budget share it.
        limiter_options: Other keyword arguments of `RedisLimiter`.
        run_store_options: Keyword arguments of `RedisRunStore` (``prefix``, ``ttl``).
        key_prefix: Put before every idempotency key `ZapierTask` makes.
        default_timeout: `ZapierTask.zapier_run`'s default ``timeout`` in seconds.
        **client_options: Keyword arguments of `SyncZapierClient` (``auth``, ``base_url``,
            ``poll_policy``, ...).

    Raises:
        InvalidRequestError: `client_factory` together with client, limiter or store
            options, or a ``limiter``/``run_store`` among `client_options` (the integration
            builds them; use `client_factory` to bring your own).
    """
    if client_factory is not None and (
        client_options or limiter_options or run_store_options or redis_url is not None
    ):
        raise errors.InvalidRequestError(
            "client_factory builds the whole client: pass either it or client options",
            "client_factory",
        )
    for name in ("limiter", "run_store"):
        if name in client_options:
            raise errors.InvalidRequestError(
                f"configure() builds the {name} on Redis itself; pass client_factory= to "
                "build your own client",
                name,
            )
    app.conf[_SETTINGS_KEY] = _Settings(
        client_factory=client_factory,
        redis_url=redis_url,
        limiter_name=limiter_name,
        limiter_options=dict(limiter_options or {}),
        run_store_options=dict(run_store_options or {}),
        client_options=dict(client_options),
        key_prefix=key_prefix,
        default_timeout=default_timeout,
    )


def _settings(app: celery.Celery) -> _Settings:
    settings = app.conf.get(_SETTINGS_KEY)
    if not isinstance(settings, _Settings):
        raise errors.InvalidRequestError(
            "the Celery app has no Zapier client configured: call "
            "zapier_async.celery.configure(app, ...) where the app is defined",
            "app",
        )
    return settings


# --- one client per process -----------------------------------------------------------------


class _LoopRecordingStore:
    """The `RedisRunStore` the integration builds, remembering the event loop it runs on.

    The Redis client, the limiter and the store live on the sync client's loop thread; at
    shutdown the limiter and the Redis connections must be closed there, before the loop
    stops (`_ProcessClient.close`).
    """

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self.loop: asyncio.AbstractEventLoop | None = None

    def _seen(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()

    async def begin(self, key: str) -> Claim:
        self._seen()
        return await self._store.begin(key)

    async def record(self, key: str, run_id: str, continuation_token: str) -> bool:
        self._seen()
        return await self._store.record(key, run_id, continuation_token)

    async def fail(self, key: str) -> bool:
        self._seen()
        return await self._store.fail(key)

    async def forget(self, key: str) -> bool:
        self._seen()
        return await self._store.forget(key)

    async def get(self, key: str) -> Claim | None:
        self._seen()
        return await self._store.get(key)

    def __repr__(self) -> str:
        return repr(self._store)


class _ProcessClient:
    """The client of one app in this process, with what it owns; rebuilt after a fork."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = -1
        self.client: SyncZapierClient | None = None
        self.store: _LoopRecordingStore | None = None
        self.owned: list[Any] = []  # the limiter and the Redis client we built, if we did

    def get(self, app: celery.Celery) -> SyncZapierClient:
        """The client, built (in this process) on first use."""
        client, pid = self.client, os.getpid()
        if client is not None and self.pid == pid and not client.closed:
            return client
        with self.lock:
            if self.client is None or self.pid != pid or self.client.closed:
                if self.pid != pid:
                    # Inherited from the parent: its loop and sockets are the parent's.
                    # Dropped, never closed here (SyncZapierClient forgets it after a fork).
                    self.owned, self.store = [], None
                self.client = self._build(_settings(app), app.conf.broker_url)
                self.pid = pid
            return self.client

    def _build(self, settings: _Settings, broker_url: str | None) -> SyncZapierClient:
        if settings.client_factory is not None:
            client = settings.client_factory()
            if not isinstance(client, SyncZapierClient):
                raise errors.InvalidRequestError(
                    f"must return a SyncZapierClient, returned {type(client).__name__}",
                    "client_factory",
                )
            return client
        import redis.asyncio as aioredis

        from ._config import client_options_from_env
        from .redis import RedisLimiter, RedisRunStore

        options: dict[str, Any] = {"max_rate_limit_wait": None}
        if "auth" not in settings.client_options:
            options.update(client_options_from_env(os.environ))
        options.update(settings.client_options)
        url = settings.redis_url or _broker_redis_url(broker_url)
        # socket_timeout: a partitioned Redis is noticed instead of hanging every task.
        redis = aioredis.Redis.from_url(url, socket_timeout=10)
        limiter = RedisLimiter(redis, name=settings.limiter_name, **settings.limiter_options)
        store = _LoopRecordingStore(RedisRunStore(redis, **settings.run_store_options))
        client = SyncZapierClient(limiter=limiter, run_store=store, **options)
        self.owned, self.store = [limiter, redis], store
        return client

    def close(self) -> None:
        """Close the client (and the limiter and Redis client built with it). Idempotent."""
        with self.lock:
            client, self.client = self.client, None
            owned, self.owned = self.owned, []
            store, self.store = self.store, None
            if client is None or self.pid != os.getpid():
                return
        loop = None if store is None else store.loop
        try:
            if owned and loop is not None and loop.is_running():
                # On the loop they were used on, before the client's close stops it.
                future = asyncio.run_coroutine_threadsafe(_aclose_all(owned), loop)
                try:
                    future.result(timeout=15)
                except Exception:
                    logger.exception("closing the shared limiter and Redis client failed")
        finally:
            client.close()


async def _aclose_all(closeables: list[Any]) -> None:
    for closeable in closeables:
        await closeable.aclose()


def _broker_redis_url(broker: str | None) -> str:
    if broker and broker.split("://", 1)[0] in {"redis", "rediss", "unix"}:
        return broker
    raise errors.InvalidRequestError(
        "the broker is not Redis: pass configure(app, redis_url=...) for the run store and "
        "the shared budget",
        "redis_url",
    )


_CLIENTS: weakref.WeakKeyDictionary[celery.Celery, _ProcessClient] = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()


def zapier_client(app: celery.Celery) -> SyncZapierClient:
    """This process's shared `SyncZapierClient` for `app`, built on first use.

    Raises:
        InvalidRequestError: `configure` was not called on `app`, or its settings are
            invalid (as `SyncZapierClient` says).
    """
    with _CLIENTS_LOCK:
        holder = _CLIENTS.get(app)
        if holder is None:
            holder = _CLIENTS[app] = _ProcessClient()
    return holder.get(app)


def close_client(app: celery.Celery) -> None:
    """Close this process's client for `app` (workers do it themselves at shutdown).

    Also closes the `RedisLimiter` and the Redis client `configure` built for it. The next
    `zapier_client` call builds a new one. Idempotent.
    """
    with _CLIENTS_LOCK:
        holder = _CLIENTS.get(app)
    if holder is not None:
        holder.close()


def _close_on_process_shutdown(**_: object) -> None:
    # A pool child (or a solo/threads worker) is exiting: close its client, so creates on
    # the wire are drained and the loop thread is joined, before the interpreter goes.
    with _CLIENTS_LOCK:
        holders = list(_CLIENTS.values())
    for holder in holders:
        try:
            holder.close()
        except Exception:  # one failing close must not stop the others
            logger.exception("closing the Zapier client at worker shutdown failed")


signals.worker_process_shutdown.connect(_close_on_process_shutdown, weak=False)
signals.worker_shutdown.connect(_close_on_process_shutdown, weak=False)


# --- the task base ----------------------------------------------------------------------------


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


_UNSET: Final = _Unset()


class ZapierTask(celery.Task):  # type: ignore[misc]  # Task is Any to mypy
    """A Celery task base whose tasks run Zapier actions at most once per task.

    ``@app.task(base=ZapierTask, bind=True)`` (or `zapier_task`): the task body gets
    ``self.zapier`` (the process's shared `SyncZapierClient`) and `zapier_run`, which
    creates a run under the task's idempotency key and waits for it. ``acks_late`` and
    ``reject_on_worker_lost`` are on for these tasks (see the module docstring).
    """

    acks_late = True
    reject_on_worker_lost = True

    @property
    def zapier(self) -> SyncZapierClient:
        """The process's shared client (see `zapier_client`)."""
        return zapier_client(self.app)

    def idempotency_key(self, key: str | None = None) -> str:
        """The idempotency key of this execution: `key` (a business key) or the task id.

        Both get the prefix `configure` set. A task id is the same on every delivery and
        ``retry()`` of a task, so every execution of one task shares one run.

        Raises:
            InvalidRequestError: No `key` and no task id (the task was called directly,
                not through ``delay``/``apply_async``/``apply``).
        """
        if key is None:
            key = self.request.id
            if not key:
                raise errors.InvalidRequestError(
                    "no task id to use as idempotency key: call the task through "
                    "delay()/apply_async(), or pass key=",
                    "key",
                )
        return _settings(self.app).key_prefix + str(key)

    def zapier_start(
        self,
        action: str | None = None,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        key: str | None = None,
        **options: Any,
    ) -> SyncRunHandle:
        """Create the run of this task (or resume it), without waiting for it to end.

        Args:
            action, authentication, inputs: As for `ZapierClient.run`.
            key: A business key instead of the task id (e.g. ``f"invoice-{order_id}"``):
                every task using it shares one run.
            **options: Other keyword arguments of `SyncZapierClient.run` (``app``,
                ``action_key``, ``callback_url``, ``max_rate_limit_wait``, ...).

        Raises:
            OutcomeUnknownError: The key was left *sending* (a worker died with the create
                on the wire, or another execution is sending it now): never re-sent.
            ZapierError: As `ZapierClient.run`.
        """
        return self.zapier.run(
            action,
            authentication=authentication,
            inputs=inputs,
            idempotency_key=self.idempotency_key(key),
            **options,
        )

    def zapier_run(
        self,
        action: str | None = None,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        key: str | None = None,
        timeout: float | _Unset | None = _UNSET,
        **options: Any,
    ) -> Run:
        """Create the run of this task (or resume it) and wait for it to end.

        Args:
            action, authentication, inputs, key, **options: As for `zapier_start`.
            timeout: Seconds to wait for the run; default `configure`'s ``default_timeout``.

        Returns:
            The ended run.

        Raises:
            OutcomeUnknownError: As for `zapier_start`.
            RunFailedError: The run ended with status ``error``.
            RunTimeoutError: `timeout` ran out (the run goes on at Zapier; a retry of this
                task resumes it).
            ZapierError: As `ZapierClient.run`.
        """
        handle = self.zapier_start(
            action, authentication=authentication, inputs=inputs, key=key, **options
        )
        wait = _settings(self.app).default_timeout if isinstance(timeout, _Unset) else timeout
        return handle.result(timeout=wait)


def zapier_task(app: celery.Celery, **task_options: Any) -> Callable[[_F], Any]:
    """``@zapier_task(app, ...)``: ``@app.task(base=ZapierTask, bind=True, ...)``.

    The function's first argument is the task (``self``), with `ZapierTask.zapier_run`.
    """
    task_options.setdefault("base", ZapierTask)
    task_options.setdefault("bind", True)

    def decorate(function: _F) -> Any:
        return app.task(**task_options)(function)

    return decorate


def run_summary(run: Run) -> dict[str, Any]:
    """A JSON-friendly summary of an ended run, for a task's return value."""
    return {
        "id": run.id,
        "status": str(run.status.value),
        "results": list(run.results),
        "errors": [
            {"code": None if e.code is None else str(e.code.value), "title": e.title,
             "detail": e.detail}
            for e in run.errors
        ],
    }  # fmt: skip
