"""zapier_async: an asyncio client for Zapier's action-run APIs.

Start a Zapier action, await its outcome, and stay inside the rate budget::

    import zapier_async as za

    async with za.ZapierClient(auth=za.BearerToken("...")) as client:
        handle = await client.run("core:abc123", authentication="auth_id", inputs={...})
        run = await handle
"""

from . import errors
from ._actions import CallbackPolling, LongPoll
from ._auth import AuthContext, AuthProvider, BearerToken, ClientCredentials, PartnerTokenExchange
from ._backoff import PollPolicy, RetryPolicy
from ._bulk import Outcome, RunMany, RunRequest
from ._client import ZapierClient
from ._clock import Clock, SystemClock
from ._handle import RunHandle
from ._limiter import Limiter, LimiterLike, LimiterStats, Priority
from ._metrics import (
    CredentialMetrics,
    Event,
    EventListener,
    Metrics,
    RateLimitEvent,
    RequestEvent,
    RetryEvent,
    RunEvent,
)
from ._runstore import DEFAULT_RUN_STORE_TTL, Claim, MemoryRunStore, RunStore
from ._stored import StoredActions
from ._sync import SyncAuthView, SyncClientOptions, SyncStoredActions, SyncZapierClient
from ._sync_handles import SyncIterator, SyncRunHandle, SyncRunMany
from ._transport import AiohttpTransport, Transport
from ._version import __version__
from ._views import AuthView
from .errors import (
    ActionNotFoundError,
    APIError,
    DecodeError,
    InvalidRequestError,
    LimiterClosedError,
    NoConnectionError,
    OutcomeUnknownError,
    RateLimitedError,
    ResponseTooLargeError,
    RunDetachedError,
    RunFailedError,
    RunTimeoutError,
    TokenRequestError,
    TransportError,
    UnexpectedError,
    WrongEventLoopError,
    ZapierError,
)
from .models import (
    Action,
    ActionType,
    Choice,
    ChoicePage,
    Connection,
    FieldFormat,
    Fieldset,
    InfoField,
    InputField,
    OutputField,
    Run,
    RunErrorCode,
    RunErrorDetail,
    RunStatus,
    StoredAction,
    ValueType,
)

__all__ = [
    "DEFAULT_RUN_STORE_TTL",
    "APIError",
    "Action",
    "ActionNotFoundError",
    "ActionType",
    "AiohttpTransport",
    "AuthContext",
    "AuthProvider",
    "AuthView",
    "BearerToken",
    "CallbackPolling",
    "Choice",
    "ChoicePage",
    "Claim",
    "ClientCredentials",
    "Clock",
    "Connection",
    "CredentialMetrics",
    "DecodeError",
    "Event",
    "EventListener",
    "FieldFormat",
    "Fieldset",
    "InfoField",
    "InputField",
    "InvalidRequestError",
    "Limiter",
    "LimiterClosedError",
    "LimiterLike",
    "LimiterStats",
    "LongPoll",
    "MemoryRunStore",
    "Metrics",
    "NoConnectionError",
    "Outcome",
    "OutcomeUnknownError",
    "OutputField",
    "PartnerTokenExchange",
    "PollPolicy",
    "Priority",
    "RateLimitEvent",
    "RateLimitedError",
    "RequestEvent",
    "ResponseTooLargeError",
    "RetryEvent",
    "RetryPolicy",
    "Run",
    "RunDetachedError",
    "RunErrorCode",
    "RunErrorDetail",
    "RunEvent",
    "RunFailedError",
    "RunHandle",
    "RunMany",
    "RunRequest",
    "RunStatus",
    "RunStore",
    "RunTimeoutError",
    "StoredAction",
    "StoredActions",
    "SyncAuthView",
    "SyncClientOptions",
    "SyncIterator",
    "SyncRunHandle",
    "SyncRunMany",
    "SyncStoredActions",
    "SyncZapierClient",
    "SystemClock",
    "TokenRequestError",
    "Transport",
    "TransportError",
    "UnexpectedError",
    "ValueType",
    "WrongEventLoopError",
    "ZapierClient",
    "ZapierError",
    "__version__",
    "errors",
]
