"""`client.stored_actions`: the Actions API's stored actions, as a namespace of the client.

https://docs.zapier.com/white-label/api-reference/stored-actions (notes section 5.1). Every
request goes through the client's limiter, retries and auth like any other; runs of stored
actions get the same `RunHandle` as every other run (locator kind ``"stored_action"``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from . import _actions as actions
from . import errors
from ._guards import bind_callback_url
from ._limiter import Priority
from .models import Run, StoredAction

if TYPE_CHECKING:
    from ._engine import Engine
    from ._handle import RunHandle
    from ._pipeline import Credential

__all__ = ["StoredActions"]


class StoredActions:
    """Create, read, change, delete, list and run stored actions (``client.stored_actions``).

    Not created directly: every `ZapierClient` (and every view, `with_auth`) has one; it
    sends with its owner's credential through the client's engine.
    """

    __slots__ = ("_credential", "_engine", "_owner")

    def __init__(self, engine: Engine, credential: Credential | None, *, owner: object) -> None:
        self._engine = engine
        self._credential = credential
        self._owner = owner

    def __repr__(self) -> str:
        return f"<StoredActions of {self._owner!r}>"

    async def _call(self, request: Any) -> Any:
        engine = self._engine
        engine.ensure_open()
        return await engine.send(request, max_wait=engine.max_wait, auth=self._credential)

    async def create(
        self,
        *,
        connection_id: str | None = None,
        selected_api: str,
        action_key: str,
        action_type: str,
        inputs: Mapping[str, Any] | None = None,
    ) -> StoredAction:
        """Save a stored action (`POST /actions/v1/stored-actions`); nothing runs yet.

        Args:
            connection_id: The connection (authentication) it runs with; None (the default)
                for apps that need none (the published spec marks it optional).
            selected_api: The app implementation, e.g. ``"SlackCLIAPI@1.0.0"``.
            action_key: The action's key.
            action_type: ``"read"``, ``"write"`` or ``"search"`` (any case).
            inputs: The saved inputs.

        Returns:
            The new record; Zapier answers only its id, so the other fields are echoed from
            the arguments.

        Raises:
            InvalidRequestError: Bad input; nothing was sent.
            OutcomeUnknownError: The POST may have created a record; it was not re-sent.
            APIError: Zapier refused it (e.g. not a core action).
        """
        request = actions.create_stored_action(
            connection_id=connection_id,
            selected_api=selected_api,
            action_key=action_key,
            action_type=action_type,
            inputs=inputs,
        )
        created = actions.parse_stored_action(await self._call(request), request)
        return StoredAction(
            id=created.id,
            connection_id=connection_id,
            selected_api=selected_api,
            action_key=action_key,
            action_type=actions.action_type(action_type),
            inputs=dict(inputs or {}),
        )

    async def get(self, stored_action_id: str) -> StoredAction:
        """Read one stored action (`GET /actions/v1/stored-actions/{id}`)."""
        request = actions.get_stored_action(stored_action_id)
        return actions.parse_stored_action(await self._call(request), request)

    async def update(
        self,
        stored_action_id: str,
        *,
        action_key: str | None = None,
        action_type: str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> StoredAction:
        """Change a stored action (`PATCH`); returns the whole updated record.

        `connection_id` and `selected_api` cannot be changed: delete and create again.
        """
        request = actions.update_stored_action(
            stored_action_id, action_key=action_key, action_type=action_type, inputs=inputs
        )
        return actions.parse_stored_action(await self._call(request), request)

    async def delete(self, stored_action_id: str) -> None:
        """Delete a stored action (`DELETE /actions/v1/stored-actions/{id}`)."""
        await self._call(actions.delete_stored_action(stored_action_id))

    async def list(self) -> list[StoredAction]:
        """Every stored action of the caller (`GET /actions/v1/stored-actions`)."""
        request = actions.list_stored_actions()
        return actions.parse_stored_action_list(await self._call(request), request)

    async def run(
        self,
        stored_action_id: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        page: str | int | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> RunHandle:
        """Run a stored action (`POST .../stored-actions/{id}/run`) and return its handle.

        The run is read at `GET .../stored-actions/{id}/runs/{run_id}`; its `Run.next_page`
        is set for bulk reads with more pages (see `pages`). Never re-sent unless it provably
        did not reach Zapier, like every create.

        Args:
            stored_action_id: The stored action's id.
            inputs: Inputs for this run.
            page: For bulk reads, the previous run's `next_page`.
            callback_url: An https URL Zapier POSTs the outcome to; the client appends the
                run's secret token to it (see `ZapierClient.deliver_callback`).
            idempotency_key: At most one run per key, as for `ZapierClient.run` (needs a
                run store).
        """
        engine = self._engine
        engine.ensure_open()
        if idempotency_key is not None and engine.run_store is None:
            raise errors.InvalidRequestError(
                "needs a run store (ZapierClient(run_store=...)); nothing was sent",
                "idempotency_key",
            )
        bound_url, callback_token = bind_callback_url(callback_url)
        request = actions.run_stored_action(
            stored_action_id,
            inputs=inputs,
            page=page,
            callback_url=bound_url,
            allow_loopback_callback=engine.allow_loopback_callback,
        )
        return await engine.create(
            request,
            priority=Priority.INTERACTIVE,
            max_wait=engine.max_wait,
            auth=self._credential,
            kind="stored_action",
            stored_action_id=stored_action_id,
            callback_token=callback_token,
            idempotency_key=idempotency_key,
        )

    async def pages(
        self,
        stored_action_id: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        page: str | int | None = None,
    ) -> AsyncIterator[Run]:
        """Every page of a bulk read: run, await, yield the `Run`, run again with `next_page`.

        Stops after a run without `next_page`. A failed run raises `RunFailedError`.

        Args:
            stored_action_id: The stored action's id (a bulk-read action).
            inputs: Inputs for every run.
            page: The page to start from (None: the first).

        Yields:
            Each page's final `Run`; its `results` are that page's records.
        """
        next_page: str | int | None = page
        while True:
            handle = await self.run(stored_action_id, inputs=inputs, page=next_page)
            run = await handle
            yield run
            if run.next_page is None or run.next_page == "":
                return
            next_page = run.next_page
