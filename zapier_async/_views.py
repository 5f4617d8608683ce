"""The methods a client and its per-user views share: runs, resumes, bulk, discovery.

`ZapierClient` is a `RunsView` over its own credential; `client.with_auth(auth)` returns an
`AuthView` over another one. Both hold only a reference to the client's `_engine.Engine`
and a `Credential`: a view costs no task and no I/O, needs no closing, and is closed with its
client (a later call raises `InvalidRequestError`; its handles are detached).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from . import _actions as actions
from . import _discovery as disco
from . import _protocol as proto
from . import errors
from ._engine import UNSET, Engine, Unset
from ._guards import bind_callback_url
from ._limiter import Priority
from ._pipeline import Credential
from ._runstore import check_key
from ._stored import StoredActions
from .models import Action, App, ChoicePage, Connection, OutputField, Run

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Iterable

    from ._auth import AuthProvider
    from ._bulk import Outcome, RunMany, RunRequest
    from ._handle import RunHandle
    from ._metrics import CredentialMetrics
    from .journal import Journal

__all__ = ["AuthView", "RunsView"]


class RunsView:
    """Runs, resumes, bulk runs, stored actions and discovery, sent with one credential."""

    _engine: Engine
    _credential: Credential | None  # None: the client's own
    stored_actions: StoredActions
    """Stored actions of the Actions API: create, get, update, delete, list, run, pages."""

    def _attach(self, engine: Engine, credential: Credential | None) -> None:
        self._engine = engine
        self._credential = credential
        self.stored_actions = StoredActions(engine, credential, owner=self)

    async def run(
        self,
        action: str | None = None,
        *,
        app: str | None = None,
        action_key: str | None = None,
        action_type: str = "WRITE",
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        max_rate_limit_wait: float | Unset | None = UNSET,
        idempotency_key: str | None = None,
        validate_inputs: bool = False,
        timeout: float | None = None,
    ) -> RunHandle:
        """Start an action run (`POST /v2/action-runs`) and return its handle.

        The POST is awaited, so when this returns Zapier has accepted the run and
        `handle.id` is known. Awaiting the handle waits for the outcome.

        Cancelling the caller (``task.cancel()``, ``asyncio.wait_for``, an anyio cancel
        scope, a web handler whose visitor left) is safe at any point. While it waits for the
        rate budget, nothing was sent and nothing stays counted. Once the limiter let the
        POST go, it is not cut off (Zapier may already be creating the run): the caller gets
        `CancelledError` at once, the client finishes the exchange, and if Zapier created
        the run the client follows it to its end, announces its id to ``on_event``
        listeners (a ``"started"`` `RunEvent`), logs a WARNING with the id (``extra``
        ``run_id``) and lists its handle in `orphaned_runs`. The POST is never re-sent for
        a caller that left. `run_action` and `stored_actions.run` behave the same way.

        Name the action either by `action` (an id you looked up) or by `app` and
        `action_key`: then a fresh id is looked up with Get Actions right before the run, as
        Zapier asks (ids change between lookups; keys are stable). The lookup is one more
        request through the same rate limiter.

        Args:
            action: The action id from Get Actions (e.g. ``"core:abc123"``).
            app: The app whose action to run (with `action_key`, instead of `action`): its id,
                or its name or slug (``"Slack"``, ``"google-sheets"``), resolved with one Get
                Apps request (`find_app`).
            action_key: The action's stable key, e.g. ``"send_email"``.
            action_type: The action's type for the lookup (``"WRITE"``, ``"SEARCH"``, ...).
            authentication: The authentication (connection) id, or None for apps that need
                none.
            inputs: Input field id to value; must be JSON-serialisable.
            callback_url: An https URL Zapier POSTs the outcome to. The client appends a
                secret per-run token to it (query parameter ``zapier_async_token``), and
                `deliver_callback` accepts only callbacks that carry it.
            max_rate_limit_wait: Overrides the client's cap for this call.
            idempotency_key: At most one run per key, whoever calls (needs
                ``ZapierClient(run_store=...)``): a later call with the same key (a
                redelivered task, another process) resumes the recorded run instead of
                creating one; a key whose create never recorded its run raises
                `OutcomeUnknownError` and is never re-sent.
            validate_inputs: Check `inputs` against the action's input fields first (one
                more request, `action_inputs`): a missing required field or an unknown one
                raises `InvalidInputsError` and nothing is created.
            timeout: One deadline, in seconds from now, for the whole run: the wait for
                the rate budget, the create and the result. The create is admitted only if
                the budget before the deadline covers it and the reads its run will need
                (reads of runs someone awaits go before new creates); otherwise
                `RateLimitedError` is raised at once (its ``retry_at`` says when the budget
                is free again). The handle carries the deadline: ``await handle`` or
                ``handle.result()`` without a timeout raise `RunTimeoutError` at it (the run
                goes on and is still polled; nothing is cancelled at Zapier). The wait for
                the budget is capped by the smaller of the deadline and
                ``max_rate_limit_wait``.

        Raises:
            InvalidRequestError: Bad input; nothing was sent.
            InvalidInputsError: With `validate_inputs`, the inputs do not fit the action.
            AppNotFoundError: `app` names no app (`AmbiguousAppError`: several).
            RateLimitedError: The budget would not allow sending within the cap, or Zapier
                asked to wait longer than `max_server_wait`; nothing was created.
            OutcomeUnknownError: The POST failed after it may have reached Zapier (a timeout, a
                5xx, a redirect); it was not re-sent (that could run the action twice).
            ActionNotFoundError: The app has no action with `action_key` of `action_type`.
            APIError: Zapier refused the request.
            UnexpectedError: The auth provider failed in a way it did not type; nothing
                was sent.
        """
        self._engine.ensure_open()
        deadline = self._deadline(timeout)
        self._check_idempotency_key(idempotency_key)
        if action is not None and (app is not None or action_key is not None):
            raise errors.InvalidRequestError(
                "pass either action (an id) or app and action_key, not both", "action"
            )
        if action is None:
            if app is None or action_key is None:
                raise errors.InvalidRequestError(
                    "name the action: pass action (an id), or app and action_key", "action"
                )
            # Validate everything else first: a bad input must not cost a lookup.
            proto.create_action_run(
                action="lookup",
                authentication=authentication,
                inputs=inputs,
                callback_url=callback_url,
                allow_loopback_callback=self._engine.allow_loopback_callback,
            )
            app_id = (
                app
                if disco.is_app_id(app)
                else (await self.find_app(app, max_rate_limit_wait=max_rate_limit_wait)).id
            )
            found = await self.find_action(
                app_id, action_key, action_type=action_type, max_rate_limit_wait=max_rate_limit_wait
            )
            action = found.id
        if validate_inputs:
            fields = await self.action_inputs(
                action,
                authentication=authentication,
                inputs=inputs,
                max_rate_limit_wait=max_rate_limit_wait,
            )
            inputs = disco.check_inputs(fields, inputs)
        bound_url, callback_token = bind_callback_url(callback_url)
        request = proto.create_action_run(
            action=action,
            authentication=authentication,
            inputs=inputs,
            callback_url=bound_url,
            allow_loopback_callback=self._engine.allow_loopback_callback,
        )
        if app is not None:
            # Looked-up ids change per lookup; learn the action's durations under its key.
            request = attrs.evolve(request, poll_key=f"{app}/{action_key}/{action_type}")
        return await self._engine.create(
            request,
            priority=Priority.INTERACTIVE,
            max_wait=self._engine.cap(max_rate_limit_wait),
            auth=self._credential,
            callback_token=callback_token,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    def _deadline(self, timeout: float | None) -> float | None:
        """The monotonic deadline `timeout` seconds from now (None: no deadline)."""
        if timeout is None:
            return None
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            raise errors.InvalidRequestError(f"must be a number > 0, got {timeout!r}", "timeout")
        return self._engine.clock.monotonic() + float(timeout)

    async def run_action(
        self,
        *,
        selected_api: str,
        action_key: str,
        action_type: str,
        inputs: Mapping[str, Any] | None = None,
        connection_id: str | None = None,
        page: str | int | None = None,
        callback_url: str | None = None,
        max_rate_limit_wait: float | Unset | None = UNSET,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> RunHandle:
        """Start a one-off Actions API run (`POST /actions/v1/runs`) and return its handle.

        The same never-duplicate rules as `run()` apply: the POST is re-sent only when it
        provably did not reach Zapier. The run is read at `GET /actions/v1/runs/{id}` (HTTP
        202 means still running), or with long-polls when the client has `long_poll`.

        Args:
            selected_api: The app implementation, e.g. ``"SlackCLIAPI@1.0.0"``.
            action_key: The action's stable key.
            action_type: ``"read"``, ``"write"`` or ``"search"`` (any case; sent lowercase).
            inputs: Input field id to value; must be JSON-serialisable.
            connection_id: The connection (authentication) id, or None.
            page: For bulk reads, the `next_page` of the previous run.
            callback_url: An https URL Zapier POSTs the outcome to (see `deliver_callback`).
            max_rate_limit_wait: Overrides the client's cap for this call.
            idempotency_key: At most one run per key, as for `run`.
            timeout: One deadline for the whole run, as for `run`.

        Raises:
            InvalidRequestError: Bad input; nothing was sent.
            RateLimitedError: The budget would not allow sending within the cap.
            OutcomeUnknownError: The POST may have reached Zapier; it was not re-sent.
            APIError: Zapier refused the request.
        """
        self._engine.ensure_open()
        deadline = self._deadline(timeout)
        self._check_idempotency_key(idempotency_key)
        bound_url, callback_token = bind_callback_url(callback_url)
        request = actions.create_run(
            selected_api=selected_api,
            action_key=action_key,
            action_type=action_type,
            inputs=inputs,
            connection_id=connection_id,
            page=page,
            callback_url=bound_url,
            allow_loopback_callback=self._engine.allow_loopback_callback,
        )
        return await self._engine.create(
            request,
            priority=Priority.INTERACTIVE,
            max_wait=self._engine.cap(max_rate_limit_wait),
            auth=self._credential,
            kind="actions_v1",
            callback_token=callback_token,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )

    def resume(
        self,
        token_or_run_id: str,
        *,
        callback: bool = False,
        callback_token: str | None = None,
    ) -> RunHandle:
        """Follow a run again from its id or `continuation_token()`.

        Within one client, resuming a run that is still followed returns the same handle, so
        a run is never polled twice; a run whose handle is done (ended, cancelled) gets a
        fresh handle that reads it again. The run is read once at once.

        Args:
            token_or_run_id: A continuation token, or a `/v2/action-runs` run id.
            callback: The run was created with a `callback_url` whose callbacks reach this
                client. Only with its `callback_token` can they be accepted; without it,
                its callbacks are refused and the run is polled at the ordinary cadence.
            callback_token: The original handle's `RunHandle.callback_token` (a secret):
                callbacks carrying it resolve the handle (`deliver_callback`), and after the
                first read the run is polled only at the safety-net cadence
                (`CallbackPolling`), as it was before the resume. Implies `callback`.
        """
        return self._engine.resume(
            token_or_run_id, auth=self._credential, callback_token=callback_token
        )

    async def get_run(
        self, run_id: str, *, max_rate_limit_wait: float | Unset | None = UNSET
    ) -> Run:
        """Read a run's current state once (`GET /v2/action-runs/{id}`), without following it."""
        self._engine.ensure_open()
        request = proto.get_action_run(run_id)
        response = await self._engine.send(
            request, max_wait=self._engine.cap(max_rate_limit_wait), auth=self._credential
        )
        return proto.parse_run(response, request, run_id=run_id)

    # --- what _bulk still calls (thin aliases until it calls the engine: see _engine) -----------

    def _ensure_open(self) -> None:
        self._engine.ensure_open()

    async def _send(
        self, request: proto.Request, *, priority: Priority, max_wait: float | None
    ) -> proto.Response:
        return await self._engine.send(
            request, priority=priority, max_wait=max_wait, auth=self._credential
        )

    def _check_idempotency_key(self, key: str | None) -> None:
        if key is None:
            return
        if self._engine.run_store is None:
            raise errors.InvalidRequestError(
                "needs a run store: ZapierClient(run_store=MemoryRunStore()) or "
                "zapier_async.redis.RedisRunStore; nothing was sent",
                "idempotency_key",
            )
        check_key(key, "idempotency_key")

    # --- bulk ---------------------------------------------------------------------------------

    def run_many(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]]
        | AsyncIterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
        on_sending: Callable[[int, RunRequest], object] | None = None,
        on_submitted: Callable[[int, RunRequest, str], object] | None = None,
        journal: Journal | None = None,
    ) -> RunMany:
        """Fan runs out, at most `concurrency` live at once; iterate outcomes as they end.

        The input is read lazily (an iterable or async iterable of any length is never
        materialised), submissions share this client's rate limiter (at `Priority.BULK`,
        waiting for the budget instead of raising `RateLimitedError`) and retry budget, and
        one item's failure never stops the others: it becomes that item's `Outcome`.

        Breaking out of ``async for``, cancelling the consumer, `RunMany.aclose()` or leaving
        ``async with client.run_many(...) as outcomes:`` stops submitting and ends every task
        the job started. Runs accepted but not yet reported then stay reachable by id via
        `RunMany.unfinished()` (and `client.resume(run_id)`).

        Args:
            requests: `RunRequest` values, or mappings with the same keys (``action``,
                ``authentication``, ``inputs``, ``callback_url``, ``key``). An item that is
                neither, or is invalid, yields an `Outcome` with `InvalidRequestError` and is
                never sent.
            concurrency: Runs submitted and not yet ended, at most.
            progress: Called with each outcome as it is yielded (exceptions are logged).
            on_sending: Journal hook ``(index, request)``, called right before the create
                goes on the wire (after the rate limiter allowed it). If it raises, nothing
                is sent and the item's outcome carries the exception.
            on_submitted: Journal hook ``(index, request, run_id)``, called as soon as Zapier
                accepted the run (exceptions are logged).
            journal: A `zapier_async.journal.Journal` (e.g. ``FileJournal(path)``) that makes
                the job resumable: each item needs a str or int ``key``; "sending" is
                journaled right before its create goes on the wire (if that write raises,
                nothing is sent), its run id once accepted, and its outcome when handed
                over. A job run again with the same journal skips items handed over, follows
                accepted runs by their token, and reports items that may have been sent as
                `OutcomeUnknownError` instead of sending them again.

        Returns:
            An async iterator (and async context manager) of `Outcome`, in completion order.
        """
        from ._bulk import RunMany

        self._engine.ensure_open()
        return RunMany(
            self,
            requests,
            concurrency=concurrency,
            progress=progress,
            on_sending=on_sending,
            on_submitted=on_submitted,
            journal=journal,
        )

    async def gather(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]]
        | AsyncIterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
        journal: Journal | None = None,
    ) -> list[Outcome]:
        """Like `run_many`, but wait for every outcome and return them in input order.

        The outcomes are kept in memory: for very large inputs iterate `run_many` instead.

        Args:
            requests: As for `run_many`.
            concurrency: Runs submitted and not yet ended, at most.
            progress: Called with each outcome as it arrives.
            journal: As for `run_many` (items handed over by an earlier invocation are
                skipped, so fewer outcomes than items then come back).

        Returns:
            One `Outcome` per input item, in input order.
        """
        async with self.run_many(
            requests, concurrency=concurrency, progress=progress, journal=journal
        ) as outcomes:
            collected = [outcome async for outcome in outcomes]
        collected.sort(key=lambda outcome: outcome.index)
        return collected

    # --- discovery ------------------------------------------------------------------------
    # https://docs.zapier.com/powered-by-zapier/api-reference/actions/get-actions and the
    # inputs/choices/outputs/authentications pages. Discovery requests go through `_send` at
    # INTERACTIVE priority, like any caller-facing request; the POSTs among them create
    # nothing, so they are marked idempotent and may be retried.

    async def _discover(
        self, request: proto.Request, max_rate_limit_wait: float | Unset | None
    ) -> proto.Response:
        self._engine.ensure_open()
        return await self._engine.send(
            request, max_wait=self._engine.cap(max_rate_limit_wait), auth=self._credential
        )

    async def list_apps(
        self,
        query: str | None = None,
        *,
        category: str | None = None,
        ids: Sequence[str] | None = None,
        page_size: int = 100,
        max_rate_limit_wait: float | Unset | None = UNSET,
    ) -> AsyncGenerator[App, None]:
        """Apps in Zapier's catalogue (`GET /v2/apps`), most popular first, page by page.

        Args:
            query: Only apps whose titles match this text (Zapier's search).
            category: Only apps in this category (a slug such as ``"ai-tools"``).
            ids: Only these app ids (not with `category`).
            page_size: Apps asked for per request.
            max_rate_limit_wait: Overrides the client's cap for each request.

        Yields:
            `App` values.
        """
        offset: int | None = 0
        while offset is not None:
            request = disco.list_apps(
                query=query, category=category, ids=ids, limit=page_size, offset=offset
            )
            response = await self._discover(request, max_rate_limit_wait)
            page = disco.parse_apps(response, request, offset=offset)
            for app in page.apps:
                yield app
            offset = page.next_offset

    async def find_app(
        self, name: str, *, max_rate_limit_wait: float | Unset | None = UNSET
    ) -> App:
        """The app whose title or slug is `name`, ignoring case (one Get Apps request).

        Args:
            name: ``"Slack"``, ``"google-sheets"``, ...
            max_rate_limit_wait: Overrides the client's cap for this call.

        Raises:
            AppNotFoundError: No app has that title or slug (`candidates` lists what the
                search found); `AmbiguousAppError` when several do: pass the app's id.
        """
        request = disco.find_app_request(name)
        response = await self._discover(request, max_rate_limit_wait)
        return disco.pick_app(disco.parse_apps(response, request).apps, name)

    async def list_actions(
        self,
        app: str,
        action_type: str | None = None,
        *,
        max_rate_limit_wait: float | Unset | None = UNSET,
    ) -> list[Action]:
        """An app's actions (`GET /v2/actions`), each with a fresh id.

        Args:
            app: The app id (a uuid from `/v2/apps`).
            action_type: Only actions of this type (``"WRITE"``, ``"SEARCH"``, ...).
            max_rate_limit_wait: Overrides the client's cap for this call.
        """
        request = disco.get_actions(app, action_type)
        return disco.parse_actions(await self._discover(request, max_rate_limit_wait), request)

    async def find_action(
        self,
        app: str,
        action_key: str,
        *,
        action_type: str | None = "WRITE",
        max_rate_limit_wait: float | Unset | None = UNSET,
    ) -> Action:
        """Look up an action by its stable key, with a fresh id (one Get Actions request).

        Args:
            app: The app id.
            action_key: The action's key, e.g. ``"send_email"``.
            action_type: Its type; None matches any type.
            max_rate_limit_wait: Overrides the client's cap for this call.

        Raises:
            ActionNotFoundError: The app lists no such action.
        """
        if not isinstance(action_key, str) or not action_key:
            raise errors.InvalidRequestError("must be a non-empty string", "action_key")
        kind = None if action_type is None else disco.check_action_type(action_type)
        actions = await self.list_actions(app, kind, max_rate_limit_wait=max_rate_limit_wait)
        return disco.pick_action(actions, app=app, action_key=action_key, action_type=kind)

    async def action_inputs(
        self,
        action_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        max_rate_limit_wait: float | Unset | None = UNSET,
    ) -> list[disco.InputItem]:
        """An action's input fields (`POST /v2/actions/{id}/inputs`).

        Args:
            action_id: The action id from Get Actions.
            authentication: The connection id, or None for apps that need none.
            inputs: Values given so far (dynamic fields depend on them).
            max_rate_limit_wait: Overrides the client's cap for this call.

        Returns:
            `InputField`, `InfoField` and `Fieldset` values, in Zapier's order.
        """
        request = disco.action_inputs(action_id, authentication=authentication, inputs=inputs)
        response = await self._discover(request, max_rate_limit_wait)
        return disco.parse_input_fields(response, request)

    async def action_choices(
        self,
        action_id: str,
        input_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        page: int | None = None,
        max_rate_limit_wait: float | Unset | None = UNSET,
    ) -> ChoicePage:
        """One page of the values a SELECT input field takes (`POST .../choices`).

        Args:
            action_id: The action id from Get Actions.
            input_id: The input field's id.
            authentication: The connection id, or None.
            inputs: Values given so far, or None.
            page: The page (1-based); None for the first. `ChoicePage.next_page` says
                what to ask for next.
            max_rate_limit_wait: Overrides the client's cap for this call.
        """
        request = disco.action_choices(
            action_id, input_id, authentication=authentication, inputs=inputs, page=page
        )
        return disco.parse_choices(await self._discover(request, max_rate_limit_wait), request)

    async def action_outputs(
        self,
        action_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        fetch_live_samples: bool = False,
        max_rate_limit_wait: float | Unset | None = UNSET,
    ) -> list[OutputField]:
        """The fields an action's results have (`POST /v2/actions/{id}/outputs`).

        Args:
            action_id: The action id from Get Actions.
            authentication: The connection id, or None.
            inputs: Values given so far.
            fetch_live_samples: Ask the app for live samples (slower; not for WRITE actions).
            max_rate_limit_wait: Overrides the client's cap for this call.
        """
        request = disco.action_outputs(
            action_id,
            authentication=authentication,
            inputs=inputs,
            fetch_live_samples=fetch_live_samples,
        )
        response = await self._discover(request, max_rate_limit_wait)
        return disco.parse_output_fields(response, request)

    async def list_connections(
        self,
        app: str,
        *,
        page_size: int = 100,
        expired: bool | None = None,
        max_rate_limit_wait: float | Unset | None = UNSET,
    ) -> AsyncGenerator[Connection, None]:
        """Every connection (authentication) the user owns for `app`, page by page.

        Follows `GET /v2/authentications?app=&limit=&offset=` until `links.next` is empty.
        Expired connections are included (`Connection.is_expired`) unless `expired` says.

        Args:
            app: The app id.
            page_size: Connections asked for per request.
            expired: Only expired (True) or only usable (False) connections; None for all.
            max_rate_limit_wait: Overrides the client's cap for each request.

        Yields:
            `Connection` values, in Zapier's order.
        """
        offset: int | None = 0
        while offset is not None:
            request = disco.list_authentications(app, limit=page_size, offset=offset)
            response = await self._discover(request, max_rate_limit_wait)
            page = disco.parse_connections(response, request, offset=offset)
            for connection in page.connections:
                if disco.connection_matches(connection, expired=expired):
                    yield connection
            offset = page.next_offset

    async def find_connection(
        self, app: str, *, max_rate_limit_wait: float | Unset | None = UNSET
    ) -> Connection:
        """The user's first usable (not expired) connection to `app`.

        Args:
            app: The app id.
            max_rate_limit_wait: Overrides the client's cap for each request.

        Raises:
            NoConnectionError: None, or only expired ones (`expired` says how many); the user
                has to connect (or reconnect) the app.
        """
        expired = 0
        async with contextlib.aclosing(
            self.list_connections(app, max_rate_limit_wait=max_rate_limit_wait)
        ) as connections:
            async for connection in connections:
                if not connection.is_expired:
                    return connection
                expired += 1
        raise errors.NoConnectionError(app, expired)


class AuthView(RunsView):
    """A client's methods sent with another credential (`ZapierClient.with_auth`).

    It shares the client's transport, poller, metrics, limiter and lifecycle; its requests
    carry its own token and spend its own budget (the limiter bucket of its credential). It
    costs no task and no I/O, needs no closing, and ends with its client.
    """

    __slots__ = ("_client", "_credential", "_engine", "stored_actions")

    def __init__(self, client: RunsView, engine: Engine, credential: Credential) -> None:
        self._client = client
        self._attach(engine, credential)

    @property
    def auth(self) -> AuthProvider:
        """The auth provider this view sends with."""
        assert self._credential is not None
        return self._credential.auth

    @property
    def bucket_id(self) -> object:
        """The (non-secret) id of this credential's budget."""
        assert self._credential is not None
        return self._credential.bucket_id

    @property
    def closed(self) -> bool:
        """True once its client is closed."""
        return self._engine.closed

    def metrics(self) -> CredentialMetrics | None:
        """This credential's run figures, or None unless the client tracks credentials
        (``ZapierClient(track_credentials=N)``). A credential evicted from the N most
        recently used (or not used yet) reads as zeros."""
        assert self._credential is not None
        return self._engine.metrics.credential_metrics(self._credential.bucket_id)

    def with_auth(self, auth: AuthProvider) -> AuthView:
        """A view of the same client with yet another credential."""
        return AuthView(self._client, self._engine, self._engine.credential(auth))

    def __repr__(self) -> str:
        return f"<AuthView of {self._client!r} bucket={self.bucket_id!r} auth={self.auth!r}>"
