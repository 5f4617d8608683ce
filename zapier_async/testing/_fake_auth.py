"""FakeZapier's identity and discovery surfaces: the OAuth token endpoint, Get Actions, input,
choice and output fields, and the user's connections.

`FakeAuthServer` emulates ``POST https://zapier.com/oauth/token/``: the client-credentials
grant (https://docs.zapier.com/powered-by-zapier/authentication/methods/app-access-token) and
the White Label token exchange of a partner-signed JWT
(https://docs.zapier.com/white-label/token-exchange, sent as RFC 8693 parameters). It issues
opaque tokens that expire after `token_lifetime` seconds on the emulator's clock; an API
request that carries an expired one gets 401.

`FakeCatalog` holds apps (Get Apps is served by `_fake_apps`), their actions (with stable keys;
every Get Actions lookup hands out fresh random ids, as Zapier does) and the user's
connections, and answers the Partner API's discovery paths in the published spec's shapes
(`tests/spec/zapier-partner-api.yml`).

Both are plain objects attached to a `FakeZapier` (`fake.auth_server`, `fake.catalog`); their
routes go through the emulator's usual pipeline (counting, faults, latency). The token route
is exempt from bearer authentication and from the API rate limit (another host, another
budget).
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal, Protocol
from urllib.parse import parse_qsl

import attrs
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from zapier_async._clock import Clock
from zapier_async.testing._fake_apps import FakeApp, get_apps

__all__ = [
    "FAKE_APP_ID",
    "FakeAction",
    "FakeAuthServer",
    "FakeCatalog",
    "FakeConnection",
]

FAKE_APP_ID: Final = "5a6c1d3e-9f0b-4c2a-8e7d-1b2c3d4e5f60"
"""The app id of the default catalogue."""

TOKEN_PATHS: Final = ("/oauth/token/", "/oauth/token")
_FORM: Final = "application/x-www-form-urlencoded"
_CLIENT_CREDENTIALS: Final = "client_credentials"
_TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
_JWT_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"
_ASYMMETRIC: Final = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
_ALLOWED_TEXT: Final = ", ".join(sorted(_ASYMMETRIC))
_AUDIENCE: Final = "connect.zapier.com"
_MAX_JWT_LIFETIME: Final = 300
_LEEWAY: Final = 5  # seconds of clock skew tolerated on nbf/iat/exp
_ACTION_TYPES: Final = frozenset(
    {"READ", "READ_BULK", "SEARCH", "SEARCH_AND_WRITE", "SEARCH_OR_WRITE", "WRITE"}
)

Answer = tuple[int, Any]
"""What a handler here answers: an HTTP status and a JSON-serialisable body."""


class _Exchange(Protocol):
    """The part of `FakeZapier`'s exchange these handlers read."""

    request: web.Request
    raw: bytes


Handler = Callable[[_Exchange], Awaitable[Answer]]


def _oauth_error(status: int, error: str, description: str) -> Answer:
    # RFC 6749 section 5.2 error body.
    return status, {"error": error, "error_description": description}


def _api_error(status: int, code: str, detail: str, pointer: str | None = None) -> Answer:
    error = {
        "status": status,
        "code": code,
        "title": code,
        "detail": detail,
        "source": None if pointer is None else {"pointer": pointer},
        "meta": None,
    }
    return status, {"errors": [error]}


def _load_public_key(value: object) -> Any:
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return serialization.load_pem_public_key(value)
    return value


# --------------------------------------------------------------------------------------------
# The token endpoint
# --------------------------------------------------------------------------------------------


@attrs.define
class _Issued:
    expires_at: float
    grant: str
    subject: str | None
    tenant: str | None
    claims: Mapping[str, Any] | None = None  # the partner JWT's, for token exchanges


TokenState = Literal["unknown", "valid", "expired"]


@attrs.define(kw_only=True, eq=False)
class FakeAuthServer:
    """The emulated OAuth token endpoint (``POST /oauth/token/`` on the emulator).

    Args:
        client_credentials: ``{client_id: client_secret}`` accepted by both grants; None
            accepts any non-empty pair.
        partner_keys: ``{kid: public key}`` (PEM or a loaded key) against which partner JWTs
            are verified; None refuses every token exchange.
        partner_issuer: The ``iss`` partner JWTs must carry; None accepts any.
        tenant_claim: The tenant claim partner JWTs must carry.
        token_lifetime: Seconds an issued token is valid, on the emulator's clock.
        reported_lifetime: The ``expires_in`` to report; None reports `token_lifetime`.
            Set it longer than `token_lifetime` to make tokens lapse before the client
            expects (it then learns from a 401).
        report_expires_in: False leaves ``expires_in`` out of the answer.
        require_issued_tokens: True refuses API requests whose bearer token this server
            did not issue (static `FakeZapier(tokens=...)` still count as issued).
    """

    client_credentials: Mapping[str, str] | None = attrs.field(default=None, repr=False)
    partner_keys: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    partner_issuer: str | None = None
    tenant_claim: str = "tenant_id"
    token_lifetime: float = 3600.0
    reported_lifetime: float | None = None
    report_expires_in: bool = True
    require_issued_tokens: bool = False

    token_requests: int = attrs.field(init=False, default=0)
    """Requests to the token endpoint."""
    tokens_issued: int = attrs.field(init=False, default=0)
    """Tokens issued."""
    token_refusals: int = attrs.field(init=False, default=0)
    """Token requests refused."""
    expired_token_refusals: int = attrs.field(init=False, default=0)
    """API requests refused with 401 because their issued token had expired."""
    refusal_reasons: list[str] = attrs.field(init=False, factory=list)
    """The `error_description` of every refusal, oldest first."""
    exchanges: list[dict[str, Any]] = attrs.field(init=False, factory=list, repr=False)
    """The verified claims of every accepted partner JWT, oldest first."""

    _issued: dict[str, _Issued] = attrs.field(init=False, factory=dict, repr=False)
    _keys: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.token_lifetime > 0 or math.isinf(self.token_lifetime):
            raise ValueError(
                f"token_lifetime must be finite seconds > 0, got {self.token_lifetime}"
            )
        self._keys = {kid: _load_public_key(k) for kid, k in (self.partner_keys or {}).items()}

    # ---------------------------------------------------------------------- test API

    def check(self, token: str, now: float) -> TokenState:
        """Whether `token` is one this server issued, and whether it is still valid."""
        issued = self._issued.get(token)
        if issued is None:
            return "unknown"
        return "valid" if now < issued.expires_at else "expired"

    def expire_all(self, now: float) -> None:
        """Let every issued token lapse at `now` (on the emulator's clock)."""
        for issued in self._issued.values():
            issued.expires_at = min(issued.expires_at, now)

    def claims_of(self, token: str) -> Mapping[str, Any] | None:
        """The verified claims of the partner JWT `token` was exchanged for, or None.

        None for a token this server did not issue or issued to the client-credentials
        grant. Handy in `FakeZapier(rate_limit_for=...)` to size a user's budget by the
        JWT's ``rate_limit`` claim, as Zapier does.
        """
        issued = self._issued.get(token)
        return None if issued is None else issued.claims

    @property
    def issued(self) -> int:
        """How many tokens were issued (same as `tokens_issued`)."""
        return len(self._issued)

    # ---------------------------------------------------------------------- the route

    def _refuse(self, status: int, error: str, description: str) -> Answer:
        self.token_refusals += 1
        self.refusal_reasons.append(description)
        return _oauth_error(status, error, description)

    async def handle(self, exchange: _Exchange, *, clock: Clock, rng: random.Random) -> Answer:
        """`POST /oauth/token/`."""
        self.token_requests += 1
        request = exchange.request
        if request.content_type != _FORM:
            return self._refuse(
                400, "invalid_request", f"Content-Type must be {_FORM}, not {request.content_type}"
            )
        try:
            pairs = parse_qsl(exchange.raw.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            return self._refuse(400, "invalid_request", "The body is not form-encoded.")
        form: dict[str, str] = {}
        for name, value in pairs:
            if name in form:  # RFC 6749 section 3.2: parameters must not repeat
                return self._refuse(400, "invalid_request", f"Parameter {name} is repeated.")
            form[name] = value
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not client_id or not secret:
            return self._refuse(401, "invalid_client", "Client authentication failed.")
        if self.client_credentials is not None and self.client_credentials.get(client_id) != secret:
            return self._refuse(401, "invalid_client", "Client authentication failed.")
        grant = form.get("grant_type")
        if grant == _CLIENT_CREDENTIALS:
            audience = form.get("audience")
            if audience is not None and audience != "zapier.com":
                return self._refuse(400, "invalid_request", "audience must be zapier.com.")
            return self._issue(clock, rng, _CLIENT_CREDENTIALS, None, None, form.get("scope"))
        if grant == _TOKEN_EXCHANGE:
            return self._exchange(form, clock, rng)
        return self._refuse(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}.")

    def _exchange(self, form: Mapping[str, str], clock: Clock, rng: random.Random) -> Answer:
        if form.get("subject_token_type") != _JWT_TYPE:
            return self._refuse(400, "invalid_request", f"subject_token_type must be {_JWT_TYPE}.")
        token = form.get("subject_token", "")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            return self._refuse(400, "invalid_grant", "subject_token is not a JWT.")
        alg = header.get("alg")
        if alg not in _ASYMMETRIC:
            return self._refuse(
                400,
                "invalid_grant",
                f"JWT algorithm {alg!r} is not allowed; use one of {_ALLOWED_TEXT}.",
            )
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            return self._refuse(400, "invalid_grant", f"No partner key with kid {kid!r}.")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=_AUDIENCE,
                issuer=self.partner_issuer,
                # Times are checked below against the emulator's clock, not the system's.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["sub", "iss", "aud", "iat", "nbf", "exp"],
                },
            )
        except jwt.InvalidSignatureError:
            return self._refuse(400, "invalid_grant", "JWT signature verification failed.")
        except jwt.InvalidAudienceError:
            return self._refuse(400, "invalid_grant", f"JWT aud must be {_AUDIENCE}.")
        except jwt.InvalidIssuerError:
            return self._refuse(400, "invalid_grant", "JWT iss is not the registered issuer.")
        except jwt.InvalidTokenError as exc:
            return self._refuse(400, "invalid_grant", f"Invalid JWT: {exc}.")
        now = clock.time()
        times = [claims.get(name) for name in ("iat", "nbf", "exp")]
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times):
            return self._refuse(400, "invalid_grant", "JWT iat, nbf and exp must be numbers.")
        iat, nbf, exp = (float(t) for t in times)  # type: ignore[arg-type]
        if exp <= now - _LEEWAY:
            return self._refuse(400, "invalid_grant", "JWT has expired.")
        if nbf > now + _LEEWAY or iat > now + _LEEWAY:
            return self._refuse(400, "invalid_grant", "JWT is not valid yet.")
        if exp - iat > _MAX_JWT_LIFETIME + _LEEWAY:
            return self._refuse(400, "invalid_grant", "JWT lifetime exceeds 5 minutes.")
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            return self._refuse(400, "invalid_grant", f"JWT has no {self.tenant_claim} claim.")
        self.exchanges.append(claims)
        return self._issue(
            clock, rng, _TOKEN_EXCHANGE, str(claims["sub"]), tenant, None, claims=claims
        )

    def _issue(
        self,
        clock: Clock,
        rng: random.Random,
        grant: str,
        subject: str | None,
        tenant: str | None,
        scope: str | None,
        *,
        claims: Mapping[str, Any] | None = None,
    ) -> Answer:
        token = f"fzat_{rng.getrandbits(128):032x}"
        self._issued[token] = _Issued(
            clock.monotonic() + self.token_lifetime, grant, subject, tenant, claims
        )
        self.tokens_issued += 1
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.report_expires_in:
            reported = self.reported_lifetime
            body["expires_in"] = math.ceil(self.token_lifetime if reported is None else reported)
        if scope:
            body["scope"] = scope
        return 200, body


# --------------------------------------------------------------------------------------------
# Discovery: actions, fields, choices, connections
# --------------------------------------------------------------------------------------------


@attrs.define(kw_only=True, eq=False)
class FakeAction:
    """An action in the emulated catalogue.

    Args:
        key: The stable key.
        action_type: ``WRITE``, ``READ``, ``SEARCH``, ...
        title: Its title.
        description: Its description.
        is_instant: For instant triggers.
        inputs: The `RootFieldset` items `POST .../inputs` answers (spec shapes).
        outputs: The `OutputField` items `POST .../outputs` answers.
        choices: ``{input_id: [Choice, ...]}`` for `POST .../inputs/{input_id}/choices`.
    """

    key: str
    action_type: str = "WRITE"
    title: str = ""
    description: str = ""
    is_instant: bool = False
    inputs: list[dict[str, Any]] = attrs.field(factory=list)
    outputs: list[dict[str, Any]] = attrs.field(factory=list)
    choices: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict)


@attrs.define(kw_only=True, eq=False)
class FakeConnection:
    """A user's connection (authentication) in the emulated catalogue."""

    id: str
    title: str = ""
    is_expired: bool = False


def _input_field(id: str, title: str, **extra: Any) -> dict[str, Any]:
    field = {
        "type": "input_field",
        "id": id,
        "default_value": "",
        "depends_on": [],
        "description": f"The {title.lower()}.",
        "format": "MULTILINE",
        "invalidates_input_fields": False,
        "is_required": False,
        "items": {},
        "placeholder": "",
        "title": title,
        "value_type": "STRING",
    }
    field.update(extra)
    return field


def _default_actions() -> list[FakeAction]:
    channels = [
        {"id": f"c{i:02d}", "type": "choice", "label": f"#channel-{i}", "value": f"C{i:04d}"}
        for i in range(45)
    ]
    return [
        FakeAction(
            key="send_message",
            title="Send Message",
            description="Posts a message to a channel.",
            inputs=[
                _input_field("channel", "Channel", format="SELECT", is_required=True),
                _input_field("text", "Text", is_required=True),
                {"type": "info_field", "id": "note", "description": "Messages are public."},
                {
                    "type": "fieldset",
                    "id": "attachments",
                    "title": "Attachments",
                    "fields": [_input_field("url", "URL")],
                },
            ],
            outputs=[
                {"type": "output_field", "id": "id", "title": "Message ID", "sample": "m_123"},
                {"type": "output_field", "id": "ts", "title": "Timestamp", "sample": "1700.1"},
            ],
            choices={"channel": channels},
        ),
        FakeAction(
            key="find_contact",
            action_type="SEARCH",
            title="Find Contact",
            description="Finds a contact by email.",
            inputs=[_input_field("email", "Email", is_required=True)],
            outputs=[{"type": "output_field", "id": "id", "title": "Contact ID"}],
        ),
        FakeAction(
            key="new_message",
            action_type="READ",
            title="New Message",
            description="Triggers on a new message.",
            is_instant=True,
        ),
    ]


def _default_apps() -> dict[str, list[FakeAction]]:
    return {FAKE_APP_ID: _default_actions()}


def _default_app_profiles() -> dict[str, FakeApp]:
    # Most popular first. FAKE_APP_ID is the one with actions and connections; the others
    # are there to be searched for (and "Slack" to be told from "Slack Legacy").
    return {
        FAKE_APP_ID: FakeApp(
            title="Slack",
            description="Slack is a platform for team communication.",
            categories=("team-chat",),
            selected_api="SlackCLIAPI@1.21.1",
            hex_color="4a154b",
        ),
        "1e4fcbf4-d80b-4ec3-b33b-c085f1ecbbaa": FakeApp(
            title="HubSpot",
            description="HubSpot is your all-in-one stop for all of your marketing needs.",
            categories=("crm", "marketing-automation"),
            selected_api="HubSpotCLIAPI@1.7.1",
        ),
        "0b9d7c4e-2f6a-4e38-9a51-7c3d2e1f0a94": FakeApp(
            title="Google Sheets",
            description="Create, edit, and share spreadsheets wherever you are.",
            categories=("spreadsheets",),
            selected_api="GoogleSheetsV2CLIAPI@2.9.1",
        ),
        "7f3e2d1c-0b9a-4c8d-8e7f-6a5b4c3d2e1f": FakeApp(
            title="Slack Legacy",
            description="The old Slack integration.",
            categories=("team-chat",),
            selected_api="SlackAPI@1.0.0",
        ),
        "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98": FakeApp(
            title="Formatter by Zapier",
            description="Format text, numbers and dates.",
            categories=("zapier-tools",),
        ),
    }


def _default_connections() -> dict[str, list[FakeConnection]]:
    return {
        FAKE_APP_ID: [
            FakeConnection(id="conn_expired", title="old@example.com", is_expired=True),
            FakeConnection(id="conn_ok", title="user@example.com"),
        ]
    }


@attrs.define(kw_only=True, eq=False)
class FakeCatalog:
    """Apps, actions and connections the emulator's discovery routes serve.

    Args:
        apps: ``{app_id: [FakeAction, ...]}``. Default: `FAKE_APP_ID` with a WRITE
            ``send_message`` (a SELECT field with 45 choices, an info field, a fieldset), a
            SEARCH ``find_contact`` and an instant READ ``new_message``.
        connections: ``{app_id: [FakeConnection, ...]}``. Default: `FAKE_APP_ID` with one
            expired and one usable connection.
        choices_page_size: Choices per page.
        list_envelopes: Answer Get Apps, Get Actions and Choices as a one-element array of the
            envelope, as the spec types them; False answers the bare envelope.
    """

    apps: dict[str, list[FakeAction]] = attrs.field(factory=_default_apps)
    connections: dict[str, list[FakeConnection]] = attrs.field(factory=_default_connections)
    choices_page_size: int = 20
    list_envelopes: bool = True
    app_profiles: dict[str, FakeApp] = attrs.field(factory=_default_app_profiles)
    """``{app_id: FakeApp}``: the apps Get Apps (`GET /v2/apps`) lists, most popular first."""

    action_lookups: int = attrs.field(init=False, default=0)
    """Get Actions requests answered."""

    _ids: dict[str, tuple[str, FakeAction]] = attrs.field(init=False, factory=dict, repr=False)

    def resolve(self, action_id: str) -> tuple[str, str] | None:
        """``(app, key)`` of an action id handed out by Get Actions, or None."""
        found = self._ids.get(action_id)
        return None if found is None else (found[0], found[1].key)

    def _envelope(self, data: list[Any], meta: Mapping[str, Any], links: Any = None) -> Any:
        body = {"links": links or {"next": None, "prev": None}, "meta": dict(meta), "data": data}
        return [body] if self.list_envelopes else body

    async def get_apps(self, exchange: _Exchange) -> Answer:
        """`GET /v2/apps?query=&category=&ids=&limit=&offset=` (see `_fake_apps`)."""

        def action_types(app_id: str) -> list[str]:
            return sorted({a.action_type for a in self.apps.get(app_id, [])})

        return get_apps(
            exchange.request,
            self.app_profiles,
            action_types=action_types,
            envelope=self._envelope,
        )

    async def get_actions(self, exchange: _Exchange, *, rng: random.Random) -> Answer:
        """`GET /v2/actions?app=&action_type=`: fresh ids on every lookup."""
        query = exchange.request.query
        app = query.get("app")
        if not app:
            return _api_error(400, "invalid", "This field is required.", "/app")
        action_type = query.get("action_type")
        if action_type is not None and action_type not in _ACTION_TYPES:
            return _api_error(400, "invalid", f'"{action_type}" is not a valid choice.')
        self.action_lookups += 1
        data = []
        for action in self.apps.get(app, []):
            if action_type is not None and action.action_type != action_type:
                continue
            # Ids differ per lookup; keys are stable (the Partner API's Action.id docs).
            action_id = f"uag:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
            self._ids[action_id] = (app, action)
            data.append(
                {
                    "id": action_id,
                    "key": action.key,
                    "app": app,
                    "type": "action",
                    "action_type": action.action_type,
                    "is_instant": action.is_instant,
                    "title": action.title,
                    "description": action.description,
                }
            )
        return 200, self._envelope(data, {"count": len(data), "limit": None, "offset": 0})

    def _action(self, exchange: _Exchange) -> FakeAction | Answer:
        found = self._ids.get(exchange.request.match_info["action_id"])
        if found is None:
            return _api_error(404, "not_found", "Not found.")
        return found[1]

    @staticmethod
    def _fields_body(
        exchange: _Exchange, *, nullable_inputs: bool, extra: frozenset[str] = frozenset()
    ) -> dict[str, Any] | Answer:
        if exchange.request.content_type != "application/json":
            return _api_error(415, "unsupported_media_type", "Expected application/json.")
        try:
            body = json.loads(exchange.raw)
        except (ValueError, UnicodeDecodeError):
            return _api_error(400, "parse_error", "Malformed request.")
        if (
            not isinstance(body, dict)
            or set(body) != {"data"}
            or not isinstance(body["data"], dict)
        ):
            return _api_error(400, "invalid", "Expected {data: {...}}.", "/data")
        data: dict[str, Any] = body["data"]
        for key in ("authentication", "inputs"):
            if key not in data:
                return _api_error(400, "invalid", "This field is required.", f"/data/{key}")
        for key in data:
            if key not in {"authentication", "inputs"} | extra:
                return _api_error(400, "invalid", "Unexpected field.", f"/data/{key}")
        auth, inputs = data["authentication"], data["inputs"]
        if auth is not None and not isinstance(auth, str):
            return _api_error(400, "invalid", "Expected a string or null.", "/data/authentication")
        if not (isinstance(inputs, dict) or (nullable_inputs and inputs is None)):
            return _api_error(400, "invalid", "Expected an object.", "/data/inputs")
        return data

    async def inputs(self, exchange: _Exchange) -> Answer:
        """`POST /v2/actions/{action_id}/inputs`."""
        action = self._action(exchange)
        if not isinstance(action, FakeAction):
            return action
        data = self._fields_body(exchange, nullable_inputs=False)
        if not isinstance(data, dict):
            return data
        meta = {"count": len(action.inputs), "limit": None, "offset": 0}
        return 200, {"links": {"next": None, "prev": None}, "meta": meta, "data": action.inputs}

    async def choices(self, exchange: _Exchange) -> Answer:
        """`POST /v2/actions/{action_id}/inputs/{input_id}/choices?page=`."""
        action = self._action(exchange)
        if not isinstance(action, FakeAction):
            return action
        data = self._fields_body(exchange, nullable_inputs=True)
        if not isinstance(data, dict):
            return data
        choices = action.choices.get(exchange.request.match_info["input_id"])
        if choices is None:
            return _api_error(404, "not_found", "Not found.")
        raw_page = exchange.request.query.get("page", "1")
        if not raw_page.isdigit() or int(raw_page) < 1:
            return _api_error(400, "invalid", "A valid page is required.", "/page")
        page = int(raw_page)
        size = self.choices_page_size
        chunk = choices[(page - 1) * size : page * size]
        url = exchange.request.url
        links = {
            "next": str(url.update_query(page=str(page + 1)))
            if page * size < len(choices)
            else None,
            "prev": str(url.update_query(page=str(page - 1))) if page > 1 else None,
        }
        return 200, self._envelope(chunk, {"page": page}, links)

    async def outputs(self, exchange: _Exchange) -> Answer:
        """`POST /v2/actions/{action_id}/outputs`."""
        action = self._action(exchange)
        if not isinstance(action, FakeAction):
            return action
        data = self._fields_body(
            exchange, nullable_inputs=False, extra=frozenset({"fetch_live_samples"})
        )
        if not isinstance(data, dict):
            return data
        if not isinstance(data.get("fetch_live_samples", False), bool):
            return _api_error(400, "invalid", "Must be a boolean.", "/data/fetch_live_samples")
        meta = {"count": len(action.outputs), "limit": None, "offset": 0}
        return 200, {"links": {"next": None, "prev": None}, "meta": meta, "data": action.outputs}

    async def authentications(self, exchange: _Exchange) -> Answer:
        """`GET /v2/authentications?app=&limit=&offset=` (default limit 10, as documented)."""
        query = exchange.request.query
        app = query.get("app")
        if not app:
            return _api_error(400, "invalid", "This field is required.", "/app")
        try:
            limit = int(query.get("limit", "10"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            return _api_error(400, "invalid", "limit and offset must be integers.")
        if limit < 1 or offset < 0:
            return _api_error(400, "invalid", "limit must be >= 1 and offset >= 0.")
        everything = self.connections.get(app, [])
        page = everything[offset : offset + limit]
        data = [
            {
                "type": "authentication",
                "id": c.id,
                "app": app,
                "is_expired": c.is_expired,
                "title": c.title,
            }
            for c in page
        ]
        url = exchange.request.url
        nxt = offset + limit
        links = {
            "next": str(url.update_query(offset=str(nxt), limit=str(limit)))
            if nxt < len(everything)
            else None,
            "prev": str(url.update_query(offset=str(max(0, offset - limit)), limit=str(limit)))
            if offset > 0
            else None,
        }
        meta = {"count": len(everything), "limit": limit, "offset": offset}
        return 200, {"links": links, "meta": meta, "data": data}


def routes(
    server: FakeAuthServer, catalog: FakeCatalog, *, clock: Clock, rng: random.Random
) -> list[tuple[str, str, str, Handler]]:
    """(method, path, endpoint name, handler) of every route here, for `FakeZapier`."""

    async def token(exchange: _Exchange) -> Answer:
        return await server.handle(exchange, clock=clock, rng=rng)

    async def actions(exchange: _Exchange) -> Answer:
        return await catalog.get_actions(exchange, rng=rng)

    table: list[tuple[str, str, str, Handler]] = [
        ("POST", path, "token", token) for path in TOKEN_PATHS
    ]
    table += [
        ("GET", "/v2/apps", "apps", catalog.get_apps),
        ("GET", "/v2/actions", "actions", actions),
        ("POST", "/v2/actions/{action_id}/inputs", "inputs", catalog.inputs),
        ("POST", "/v2/actions/{action_id}/inputs/{input_id}/choices", "choices", catalog.choices),
        ("POST", "/v2/actions/{action_id}/outputs", "outputs", catalog.outputs),
        ("GET", "/v2/authentications", "authentications", catalog.authentications),
    ]
    return table
