"""FakeZapier's Actions API surfaces and its signed completion callbacks.

Routes (all through the emulator's pipeline: counted, rate limited, faults, bearer auth):

- ``POST /actions/v1/runs`` and ``GET /actions/v1/runs/{id}`` (HTTP 202 while pending), the
  one-off runs of the Actions API (notes section 5.2, Zapier SDK wire format);
- ``/actions/v1/stored-actions`` CRUD, ``POST .../{id}/run`` and the FLAT
  ``GET .../{id}/runs/{run_id}`` with ``next_page`` for bulk reads
  (https://docs.zapier.com/white-label/api-reference/stored-actions);
- ``GET /actions/v2/runs/{id}?wait_seconds=N``, the long-poll read: the request is held until
  the run ends or N s pass on the emulator's clock, then 202 if still pending; with
  probability `long_poll_early_rate` it comes back early with ``Retry-After``
  (https://docs.zapier.com/api-reference/actions/action-runs/read-an-action-run);
- ``GET /.well-known/jwks.json``: the public key that signs callbacks (no auth, not limited);
  `FakeActions.rotate_key` replaces it, as Zapier rotates its keys.

Runs of every surface live in the emulator's one run table (`FakeZapier.run`, `complete`,
durations and error rate apply). A run created with a ``callback_url`` (here or on
``/v2/action-runs``) gets its outcome POSTed there when it ends, signed like Zapier's
(``Zapier-Callback-Signature``: an RS256 JWT valid 5 minutes, https://docs.zapier.com/
powered-by-zapier/running-actions/action-run-callbacks), tried up to 3 times on 5xx and
network errors. A callback is POSTed to the exact ``callback_url`` the create carried, query
string included, byte for byte (the client binds a callback to its run with a token there).
One dispatcher task sleeps on the emulator's clock until the next run ends;
there is still no task per pending run.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import json
import math
import uuid
from collections.abc import Sequence
from typing import Any, Final, Literal

import aiohttp
import attrs
import jwt
import yarl
from cryptography.hazmat.primitives.asymmetric import rsa

from zapier_async.testing._fake_runs import (
    _RESERVED_INPUT,
    _canonical,
    _CreateRequest,
    _new_run,
    _parse_override,
    _Run,
    _RunHost,
)
from zapier_async.testing._fake_wire import _TERMINAL, _error, _Exchange, _Reply, _reply

__all__ = ["CallbackRecord", "FakeActions", "ForgeKind"]

ForgeKind = Literal["bad_signature", "expired", "unknown_kid", "missing"]
"""How a forged callback is wrong (see `FakeActions.forge_callbacks`)."""

JWKS_PATH: Final = "/.well-known/jwks.json"
_ACTION_TYPES: Final = frozenset({"read", "write", "search"})
_RUN_KEYS: Final = frozenset(
    {
        "selected_api",
        "action_id",
        "action_key",
        "action_type",
        "inputs",
        "authentication_id",
        "page",
        "callback_url",
    }
)
_VALIDITY: Final = 300
_ATTEMPTS: Final = 3
_MAX_WAIT_SECONDS: Final = 60.0


def _bad_request(detail: str) -> _Reply:
    # The Actions API answers DRF-style flat bodies (notes section 5.2, the PROBE capture).
    return _reply(400, {"code": "bad-request", "detail": detail})


def _not_found() -> _Reply:
    return _error(404, "not_found", "NotFound", "Not found.")


@attrs.frozen(kw_only=True)
class CallbackRecord:
    """Server-side truth about one run's callback.

    Attributes:
        run_id: The run.
        url: Where it goes.
        attempts: POSTs made (all copies, all tries).
        statuses: The HTTP status of each attempt (None: network error).
        delivered_at: When a first attempt got a 2xx (emulator's clock), or None.
        lost: The callback was dropped on purpose (`callback_loss_rate`).
        duplicated: A second copy was sent (`callback_duplicate_rate`).
        forged: Attempts sent with a forged signature.
    """

    run_id: str
    url: str
    attempts: int
    statuses: tuple[int | None, ...]
    delivered_at: float | None
    lost: bool
    duplicated: bool
    forged: int


@attrs.define
class _Callback:
    run_id: str
    url: str
    attempts: int = 0
    statuses: list[int | None] = attrs.Factory(list)
    delivered_at: float | None = None
    lost: bool = False
    duplicated: bool = False
    forged: int = 0
    done: bool = False


@attrs.define
class _Stored:
    id: str
    connection_id: str
    selected_api: str
    action_key: str
    action_type: str
    inputs: dict[str, Any]

    def record(self) -> dict[str, Any]:
        return {
            "type": "stored_action",
            "id": self.id,
            "connection_id": self.connection_id,
            "selected_api": self.selected_api,
            "action_key": self.action_key,
            "action_type": self.action_type,
            "inputs": self.inputs,
        }


def _check_rate(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


@attrs.define(kw_only=True, eq=False)
class FakeActions:
    """The Actions API side of a `FakeZapier` (``fake.actions``) and its callbacks.

    Args:
        callback_loss_rate: Probability that a run's callback is never sent.
        callback_duplicate_rate: Probability that a delivered callback is sent twice.
        callback_retry_delays: Seconds (emulator's clock) before the 2nd and 3rd attempt.
        long_poll_early_rate: Probability that a long-poll read comes back early with 202.
        long_poll_early_after: Seconds after which an early 202 comes back.
        long_poll_retry_after: ``Retry-After`` seconds on an early 202 (None: no header).
        page_size: Records per page of a bulk read (see `set_records`).
    """

    callback_loss_rate: float = attrs.field(default=0.0, validator=_check_rate)
    callback_duplicate_rate: float = attrs.field(default=0.0, validator=_check_rate)
    callback_retry_delays: tuple[float, float] = (0.5, 1.0)
    long_poll_early_rate: float = attrs.field(default=0.0, validator=_check_rate)
    long_poll_early_after: float = 0.5
    long_poll_retry_after: int | None = 1
    page_size: int = 2

    _zapier: _RunHost | None = attrs.field(init=False, default=None, repr=False)
    _stored: dict[str, _Stored] = attrs.field(init=False, factory=dict, repr=False)
    _kinds: dict[str, tuple[str, str | None, str | None]] = attrs.field(
        init=False, factory=dict, repr=False
    )  # run id -> (kind, stored action id, next_page)
    _records: dict[str, list[Any]] = attrs.field(init=False, factory=dict, repr=False)
    _callbacks: dict[str, _Callback] = attrs.field(init=False, factory=dict, repr=False)
    _due: list[tuple[float, int, str]] = attrs.field(init=False, factory=list, repr=False)
    _seq: Any = attrs.field(init=False, factory=itertools.count, repr=False)
    _outstanding: set[str] = attrs.field(init=False, factory=set, repr=False)
    _tasks: set[asyncio.Task[None]] = attrs.field(init=False, factory=set, repr=False)
    _dispatcher: asyncio.Task[None] | None = attrs.field(init=False, default=None, repr=False)
    _wakers: set[asyncio.Future[None]] = attrs.field(init=False, factory=set, repr=False)
    _forge: collections.deque[ForgeKind] = attrs.field(
        init=False, factory=collections.deque, repr=False
    )
    _key: rsa.RSAPrivateKey | None = attrs.field(init=False, default=None, repr=False)
    _other_key: rsa.RSAPrivateKey | None = attrs.field(init=False, default=None, repr=False)
    _kid: str = attrs.field(init=False, factory=lambda: f"fake-{uuid.uuid4().hex[:8]}")
    _previous: list[tuple[str, rsa.RSAPrivateKey]] = attrs.field(
        init=False, factory=list, repr=False
    )  # retired keys still published (rotate_key(keep_previous=True))
    _session: aiohttp.ClientSession | None = attrs.field(init=False, default=None, repr=False)
    _closed: bool = attrs.field(init=False, default=False, repr=False)
    _posting: int = attrs.field(init=False, default=0, repr=False)

    # ---------------------------------------------------------------------------- test API

    def set_records(
        self, key: str, records: Sequence[Any], *, page_size: int | None = None
    ) -> None:
        """Give bulk reads of `key` (a stored action id or an action key) these records.

        A successful run then answers the page its ``page`` names (``"0"`` or absent: the
        first), and ``next_page`` while more remain.
        """
        self._records[key] = list(records)
        if page_size is not None:
            self.page_size = page_size

    def forge_callbacks(self, *kinds: ForgeKind) -> None:
        """Send the next callback attempts with these forged signatures, one per attempt."""
        self._forge.extend(kinds)

    def callback(self, run_id: str) -> CallbackRecord:
        """The callback record of a run (KeyError if it had no callback_url)."""
        c = self._callbacks[run_id]
        return CallbackRecord(
            run_id=c.run_id,
            url=c.url,
            attempts=c.attempts,
            statuses=tuple(c.statuses),
            delivered_at=c.delivered_at,
            lost=c.lost,
            duplicated=c.duplicated,
            forged=c.forged,
        )

    def callbacks(self) -> list[CallbackRecord]:
        """Every callback record, in creation order."""
        return [self.callback(run_id) for run_id in self._callbacks]

    @property
    def pending_callbacks(self) -> int:
        """Callbacks of ended-or-pending runs not yet done with (sent, failed or lost)."""
        return len(self._outstanding)

    @property
    def callbacks_in_flight(self) -> int:
        """Callback POSTs on the wire now (not counting retries waiting for their turn)."""
        return self._posting

    def stored_action(self, stored_action_id: str) -> dict[str, Any]:
        """The stored record as the emulator keeps it (KeyError if absent)."""
        return self._stored[stored_action_id].record()

    @property
    def kid(self) -> str:
        """The ``kid`` of the key that signs callbacks now."""
        return self._kid

    def rotate_key(self, *, keep_previous: bool = False) -> str:
        """Sign from now on with a new key under a new ``kid``, as Zapier rotates its keys.

        The JWKS serves the new key at once (a verifier learns it by fetching again).

        Args:
            keep_previous: Keep publishing the retired key too, so signatures made before
                the rotation still verify (an overlapping rotation).

        Returns:
            The new ``kid``.
        """
        if keep_previous:
            self._previous.append((self._kid, self._signing_key()))
        else:
            self._previous.clear()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = f"fake-{uuid.uuid4().hex[:8]}"
        return self._kid

    def jwks(self) -> dict[str, Any]:
        """The JWKS document served at ``/.well-known/jwks.json`` (current key first)."""
        keys = []
        for kid, key in [(self._kid, self._signing_key()), *reversed(self._previous)]:
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
            keys.append(jwk)
        return {"keys": keys}

    def sign(self, *, forge: ForgeKind | None = None) -> str | None:
        """A ``Zapier-Callback-Signature`` value as the emulator sends it (now, its clock)."""
        now = int(self._z.clock.time())
        claims = {"iat": now, "exp": now + _VALIDITY}
        key, kid = self._signing_key(), self._kid
        if forge == "missing":
            return None
        if forge == "expired":
            claims = {"iat": now - 2 * _VALIDITY, "exp": now - _VALIDITY}
        elif forge == "bad_signature":
            if self._other_key is None:
                self._other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key = self._other_key
        elif forge == "unknown_kid":
            kid = "forged-kid"
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    # ---------------------------------------------------------------------------- wiring

    @property
    def _z(self) -> _RunHost:
        assert self._zapier is not None, "FakeActions is not attached to a FakeZapier"
        return self._zapier

    def _bind(self, zapier: _RunHost) -> None:
        self._zapier = zapier

    def _signing_key(self) -> rsa.RSAPrivateKey:
        if self._key is None:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._key

    def routes(self) -> list[tuple[str, str, str, Any]]:
        """(method, path, endpoint name, handler) of every route here, for `FakeZapier`."""
        base = "/actions/v1/stored-actions"
        return [
            ("POST", "/actions/v1/runs", "create", self._create_run),
            ("GET", "/actions/v1/runs/{id}", "poll", self._get_run_v1),
            ("GET", "/actions/v2/runs/{id}", "poll", self._get_run_v2),
            ("POST", base, "stored_actions", self._create_stored),
            ("GET", base, "stored_actions", self._list_stored),
            ("GET", base + "/{sid}", "stored_actions", self._get_stored),
            ("PATCH", base + "/{sid}", "stored_actions", self._update_stored),
            ("DELETE", base + "/{sid}", "stored_actions", self._delete_stored),
            ("POST", base + "/{sid}/run", "create", self._run_stored),
            ("GET", base + "/{sid}/runs/{id}", "poll", self._get_stored_run),
            ("GET", JWKS_PATH, "jwks", self._serve_jwks),
        ]

    def run_created(self, run: _Run) -> None:
        """The emulator created `run` (any surface): schedule its callback if it has one."""
        if run.callback_url is None:
            return
        self._callbacks[run.id] = _Callback(run.id, run.callback_url)
        self._outstanding.add(run.id)
        self._push(run)

    def run_changed(self, run: _Run) -> None:
        """`FakeZapier.complete()` moved a run's end: wake long-polls and the dispatcher."""
        for waker in list(self._wakers):
            if not waker.done():
                waker.set_result(None)
        if run.id in self._outstanding:
            self._push(run)

    async def aclose(self) -> None:
        """Stop the dispatcher and deliveries, release parked long-polls."""
        self._closed = True
        for waker in list(self._wakers):
            if not waker.done():
                waker.set_result(None)
        tasks = list(self._tasks)
        if self._dispatcher is not None:
            tasks.append(self._dispatcher)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---------------------------------------------------------------------------- runs

    def _new_run(
        self,
        exchange: _Exchange,
        *,
        data: dict[str, Any],
        action: str,
        authentication: str | None,
        inputs: dict[str, Any],
        kind: str,
        stored_id: str | None,
        records_key: str,
        page: object,
    ) -> _Reply:
        z = self._z
        callback_url = data.get("callback_url")
        if callback_url is not None and (
            not isinstance(callback_url, str) or not 0 < len(callback_url) <= 2048
        ):
            return _bad_request("callback_url must be a URL of at most 2048 characters")
        override = None
        if _RESERVED_INPUT in inputs:
            parsed = _parse_override(inputs[_RESERVED_INPUT])
            if isinstance(parsed, _Reply):
                return parsed
            override = parsed
        request = _CreateRequest(data, action, authentication, inputs, callback_url, override)
        run = _new_run(z, request)
        next_page = None
        records = self._records.get(records_key)
        if records is not None and run.final_status == "success":
            try:
                index = int(str(page)) if page is not None else 0
            except ValueError:
                return _bad_request("page must be a page number")
            size = max(1, self.page_size)
            run.results = records[index * size : (index + 1) * size]
            if (index + 1) * size < len(records):
                next_page = str(index + 1)
        self._kinds[run.id] = (kind, stored_id, next_page)
        # Kept (and its callback scheduled, `run_created`) by the emulator's one run table.
        z._store.add(run, _canonical({"path": exchange.request.path, "data": data}))
        return _reply(200, {"data": {"type": "run", "id": run.id}})

    async def _create_run(self, exchange: _Exchange) -> _Reply:
        body = exchange.body
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return _bad_request('The request body must be {"data": {...}}.')
        missing = [k for k in ("selected_api", "action_key", "action_type") if not data.get(k)]
        if missing:
            return _bad_request(
                "Missing required action fields: action_key, action_type, and selected_api "
                "are required"
            )
        unexpected = sorted(set(data) - _RUN_KEYS)
        if unexpected:
            return _bad_request(f"Unexpected fields: {', '.join(unexpected)}")
        if data["action_type"] not in _ACTION_TYPES:
            return _bad_request("action_type must be one of read, write, search (lowercase)")
        inputs = data.get("inputs", {})
        if not isinstance(inputs, dict):
            return _bad_request("inputs must be an object")
        auth = data.get("authentication_id")
        return self._new_run(
            exchange,
            data=data,
            action=f"{data['selected_api']}/{data['action_key']}",
            authentication=auth if isinstance(auth, str) else None,
            inputs=inputs,
            kind="actions_v1",
            stored_id=None,
            records_key=str(data["action_key"]),
            page=data.get("page"),
        )

    def _read(self, run: _Run, *, flat: bool, pending_status: int) -> _Reply:
        z = self._z
        status = z._store.read(run, z.clock.monotonic(), z.pending_statuses)
        terminal = status in _TERMINAL
        data: dict[str, Any] = {
            "type": "run",
            "id": run.id,
            "status": status,
            "results": run.results if terminal else [],
            "errors": run.errors if terminal else [],
        }
        next_page = self._kinds.get(run.id, ("", None, None))[2]
        if terminal and next_page is not None:
            data["next_page"] = next_page
        body = data if flat else {"data": data}
        return _reply(200 if terminal else pending_status, body)

    def _run_of(self, exchange: _Exchange, kind: str | None) -> _Run | None:
        run_id = exchange.request.match_info["id"]
        run = self._z._store.runs.get(run_id)
        if run is None:
            return None
        if kind is not None and self._kinds.get(run_id, ("action_run",))[0] != kind:
            return None
        return run

    async def _get_run_v1(self, exchange: _Exchange) -> _Reply:
        run = self._run_of(exchange, "actions_v1")
        return _not_found() if run is None else self._read(run, flat=False, pending_status=202)

    async def _get_run_v2(self, exchange: _Exchange) -> _Reply:
        run = self._run_of(exchange, None)
        if run is None:
            return _not_found()
        raw = exchange.request.query.get("wait_seconds", "0")
        try:
            wait = float(raw)
        except ValueError:
            return _bad_request("wait_seconds must be a number")
        if not 0 <= wait <= _MAX_WAIT_SECONDS:
            return _bad_request(f"wait_seconds must be between 0 and {_MAX_WAIT_SECONDS:g}")
        z = self._z
        start = z.clock.monotonic()
        deadline = start + wait
        early = self.long_poll_early_rate > 0 and z._rng.random() < self.long_poll_early_rate
        if early:
            deadline = min(deadline, start + self.long_poll_early_after)
        while not self._closed:
            now = z.clock.monotonic()
            if now >= run.ends_at or now >= deadline:
                break
            await self._park(min(run.ends_at, deadline) - now)
        reply = self._read(run, flat=False, pending_status=202)
        if reply.status == 202 and early and self.long_poll_retry_after is not None:
            reply = attrs.evolve(reply, retry_at=z.clock.monotonic() + self.long_poll_retry_after)
        return reply

    async def _park(self, seconds: float) -> None:
        """Sleep `seconds` on the emulator's clock, or until a run changes or we close."""
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()
        self._wakers.add(waker)
        sleeper = None
        if math.isfinite(seconds):
            sleeper = loop.create_task(self._z.clock.sleep(seconds))
        try:
            if sleeper is None:
                await waker
            else:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wakers.discard(waker)
            if sleeper is not None:
                sleeper.cancel()
            if not waker.done():
                waker.cancel()

    # ---------------------------------------------------------------------------- stored

    async def _create_stored(self, exchange: _Exchange) -> _Reply:
        body = exchange.body
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return _bad_request('The request body must be {"data": {...}}.')
        if "action_id" in data:
            return _bad_request(
                "action_id is not accepted; send selected_api, action_key, action_type"
            )
        fields = ("connection_id", "selected_api", "action_key", "action_type")
        missing = [k for k in fields if not isinstance(data.get(k), str) or not data[k]]
        if missing:
            return _bad_request(f"Missing required fields: {', '.join(missing)}")
        if data["action_type"] not in _ACTION_TYPES:
            return _bad_request("action_type must be one of read, write, search (lowercase)")
        inputs = data.get("inputs", {})
        if not isinstance(inputs, dict):
            return _bad_request("inputs must be an object")
        sid = str(uuid.UUID(int=self._z._rng.getrandbits(128), version=4))
        self._stored[sid] = _Stored(
            sid, data["connection_id"], data["selected_api"], data["action_key"],
            data["action_type"], dict(inputs),
        )  # fmt: skip
        return _reply(201, {"type": "stored_action", "id": sid})

    async def _list_stored(self, exchange: _Exchange) -> _Reply:
        return _reply(200, {"results": [s.record() for s in self._stored.values()]})

    async def _get_stored(self, exchange: _Exchange) -> _Reply:
        stored = self._stored.get(exchange.request.match_info["sid"])
        return _not_found() if stored is None else _reply(200, stored.record())

    async def _update_stored(self, exchange: _Exchange) -> _Reply:
        stored = self._stored.get(exchange.request.match_info["sid"])
        if stored is None:
            return _not_found()
        body = exchange.body
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return _bad_request('The request body must be {"data": {...}}.')
        for fixed in ("connection_id", "selected_api"):
            if fixed in data and data[fixed] != getattr(stored, fixed):
                return _bad_request(f"{fixed} cannot be changed; delete and recreate")
        if "action_type" in data:
            if data["action_type"] not in _ACTION_TYPES:
                return _bad_request("action_type must be one of read, write, search")
            stored.action_type = data["action_type"]
        if "action_key" in data:
            stored.action_key = str(data["action_key"])
        if "inputs" in data:
            if not isinstance(data["inputs"], dict):
                return _bad_request("inputs must be an object")
            stored.inputs = dict(data["inputs"])
        return _reply(200, stored.record())

    async def _delete_stored(self, exchange: _Exchange) -> _Reply:
        if self._stored.pop(exchange.request.match_info["sid"], None) is None:
            return _not_found()
        return _reply(204, None)

    async def _run_stored(self, exchange: _Exchange) -> _Reply:
        sid = exchange.request.match_info["sid"]
        stored = self._stored.get(sid)
        if stored is None:
            return _not_found()
        body = exchange.body
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return _bad_request('The request body must be {"data": {...}}.')
        unexpected = sorted(set(data) - {"inputs", "page", "callback_url"})
        if unexpected:
            return _bad_request(f"Unexpected fields: {', '.join(unexpected)}")
        inputs = data.get("inputs", {})
        if not isinstance(inputs, dict):
            return _bad_request("inputs must be an object")
        return self._new_run(
            exchange,
            data=data,
            action=f"{stored.selected_api}/{stored.action_key}",
            authentication=stored.connection_id,
            inputs={**stored.inputs, **inputs},
            kind="stored_action",
            stored_id=sid,
            records_key=sid,
            page=data.get("page"),
        )

    async def _get_stored_run(self, exchange: _Exchange) -> _Reply:
        run = self._run_of(exchange, "stored_action")
        sid = exchange.request.match_info["sid"]
        if run is None or self._kinds[run.id][1] != sid:
            return _not_found()
        return self._read(run, flat=True, pending_status=self._z.pending_http_status)

    async def _serve_jwks(self, exchange: _Exchange) -> _Reply:
        return _reply(200, self.jwks())

    # ---------------------------------------------------------------------------- callbacks

    def _push(self, run: _Run) -> None:
        heapq.heappush(self._due, (run.ends_at, next(self._seq), run.id))
        if self._closed:
            return
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(), name="fake-zapier-callbacks"
            )
        else:
            for waker in list(self._wakers):
                if not waker.done():
                    waker.set_result(None)

    async def _dispatch(self) -> None:
        z = self._z
        while not self._closed:
            now = z.clock.monotonic()
            while self._due and self._due[0][0] <= now:
                when, _, run_id = heapq.heappop(self._due)
                run = z._store.runs.get(run_id)
                if run is None or run_id not in self._outstanding:
                    continue
                if run.ends_at > when:
                    continue  # complete() or a later push re-queued it
                task = asyncio.get_running_loop().create_task(self._deliver(run))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                self._outstanding.discard(run_id)
                self._outstanding.add(f"sending:{run_id}")
            if not self._due:
                return
            await self._park(self._due[0][0] - now)

    async def _deliver(self, run: _Run) -> None:
        z = self._z
        record = self._callbacks[run.id]
        try:
            if self.callback_loss_rate > 0 and z._rng.random() < self.callback_loss_rate:
                record.lost = True
                return
            copies = 1
            if self.callback_duplicate_rate > 0 and z._rng.random() < self.callback_duplicate_rate:
                copies = 2
                record.duplicated = True
            data = {
                "type": "run",
                "id": run.id,
                "status": run.final_status,
                "results": run.results,
                "errors": run.errors,
            }
            next_page = self._kinds.get(run.id, ("", None, None))[2]
            if next_page is not None:
                data["next_page"] = next_page
            body = json.dumps({"data": data}, separators=(",", ":")).encode()
            for _ in range(copies):
                await self._post(record, body)
        finally:
            self._outstanding.discard(f"sending:{run.id}")

    async def _post(self, record: _Callback, body: bytes) -> None:
        z = self._z
        if self._session is None:
            self._session = aiohttp.ClientSession()
        for attempt in range(_ATTEMPTS):
            forge = self._forge.popleft() if self._forge else None
            if forge is not None:
                record.forged += 1
            headers = {"Content-Type": "application/json"}
            token = self.sign(forge=forge)
            if token is not None:
                headers["Zapier-Callback-Signature"] = token
            record.attempts += 1
            status: int | None
            self._posting += 1
            try:
                # encoded=True: the exact URL the create carried, not a re-quoted one.
                async with self._session.post(
                    yarl.URL(record.url, encoded=True),
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                status = None
            finally:
                self._posting -= 1
            record.statuses.append(status)
            if status is not None and status < 500:
                # 2xx delivered; 4xx is not retried (Zapier's documented behaviour).
                if 200 <= status < 300 and record.delivered_at is None:
                    record.delivered_at = z.clock.monotonic()
                return
            if attempt + 1 < _ATTEMPTS:
                await z.clock.sleep(self.callback_retry_delays[min(attempt, 1)])
